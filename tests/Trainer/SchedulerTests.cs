using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Optim;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Training;

/// <summary>Composer-style schedulers, stepped every batch; the factor in force during batch k uses timestamp k.</summary>
[TestFixture]
public class SchedulerTests
{
    /// <summary>The learning-rate factor in force during each batch (rate / initial rate at BeforeTrainBatch).</summary>
    private static List<double> FactorsDuringBatches(IScheduler scheduler, Time maxDuration, int samples, int batchSize, double lr = 0.1)
    {
        var factors = new List<double>();
        var probe = new ActionCallback(Event.BeforeTrainBatch, s =>
        {
            torch.optim.ILearningRateController g = s.Optimizers[0].ParamGroups.First();
            factors.Add(g.LearningRate / g.InitialLearningRate);
        });
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(samples, batchSize), maxDuration, callbacks: new[] { probe },
            schedulers: new[] { scheduler }, optimizerFactory: p => torch.optim.SGD(p, lr));
        trainer.Fit();
        return factors;
    }

    [Test]
    public void WarmupAsLongAsTheRunGivesZeroThenTenthsAndNoNaN()
    {
        List<double> factors = FactorsDuringBatches(new LinearWithWarmupScheduler("10ba"), "10ba", 80, 8);
        double[] expected = Enumerable.Range(0, 10).Select(k => k / 10.0).ToArray();
        Assert.That(factors, Is.EqualTo(expected).Within(1e-12));
    }

    [Test]
    public void StepSchedulerCountsAcrossEpochs()
    {
        // Step "4ba", gamma 0.5, two epochs of three batches: the counter does not restart at the epoch.
        List<double> factors = FactorsDuringBatches(new StepScheduler("4ba", gamma: 0.5), "2ep", 24, 8);
        Assert.That(factors, Is.EqualTo(new[] { 1, 1, 1, 1, 0.5, 0.5 }).Within(1e-12));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void LinearWithWarmupThenDecayFollowsComposersFormula()
    {
        // Warmup 2ba to alpha_i = 1, then linear to alpha_f = 0.2 at t_max = 1dur = 6ba: (t − 2)/4 of the way.
        List<double> factors = FactorsDuringBatches(new LinearWithWarmupScheduler("2ba", alphaI: 1.0, alphaF: 0.2), "6ba", 48, 8);
        Assert.That(factors, Is.EqualTo(new[] { 0, 0.5, 1.0, 0.8, 0.6, 0.4 }).Within(1e-12));
    }

    [Test]
    public void CosineWithWarmupMatchesTheClosedForm()
    {
        // Warmup 1ep (= 2 batches), max 3ep = 6 batches, alpha_f = 0.1.
        List<double> factors = FactorsDuringBatches(new CosineAnnealingWithWarmupScheduler("1ep", alphaF: 0.1), "3ep", 16, 8);
        double Cos(double x) => 0.1 + 0.9 * (1 + Math.Cos(Math.PI * x)) / 2;
        Assert.That(factors, Is.EqualTo(new[] { 0, 0.5, Cos(0), Cos(0.25), Cos(0.5), Cos(0.75) }).Within(1e-12));
    }

    [Test]
    public void MultiStepAndConstantSchedulers()
    {
        List<double> multi = FactorsDuringBatches(new MultiStepScheduler(new Time[] { "2ba", "0.5dur" }, gamma: 0.1), "8ba", 64, 8);
        Assert.That(multi, Is.EqualTo(new[] { 1, 1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01 }).Within(1e-12));
        List<double> constant = FactorsDuringBatches(new ConstantScheduler(alpha: 0.25, tMax: "3ba"), "5ba", 40, 8);
        Assert.That(constant, Is.EqualTo(new[] { 0.25, 0.25, 0.25, 1, 1 }).Within(1e-12));
    }

    [Test]
    public void TimeConversionFollowsComposer()
    {
        var state = new State(TestData.Model()) { MaxDuration = "3ep", TrainDataloader = TestData.Loader(40, 8) };
        Assert.That(SchedulerTime.Convert("2ep", state), Is.EqualTo(Time.FromBatch(10)));
        Assert.That(SchedulerTime.Convert("0.5dur", state), Is.EqualTo(Time.FromBatch(7)), "int(0.5 × 5 × 3)");
        Assert.That(SchedulerTime.Convert("7sp", state), Is.EqualTo(Time.FromSample(7)));
        state.MaxDuration = "100sp";
        Assert.That(SchedulerTime.Convert("0.25dur", state), Is.EqualTo(Time.FromSample(25)));
        Assert.Throws<ArgumentException>(() => SchedulerTime.Convert("10sec", state));
        var noMax = new State(TestData.Model());
        Assert.That(Assert.Throws<InvalidOperationException>(() => SchedulerTime.Convert("1ba", noMax))!.Message, Does.Contain("max duration"));
    }

    [Test]
    public void WarmupAndMaxInDifferentUnitsAreRefused()
    {
        var state = new State(TestData.Model()) { MaxDuration = "100sp", TrainDataloader = TestData.Loader(40, 8) };
        var ex = Assert.Throws<InvalidOperationException>(() => new LinearWithWarmupScheduler("2ba").Factor(state));
        Assert.That(ex!.Message, Does.Contain("2ba").And.Contain("100sp"));
    }
}
