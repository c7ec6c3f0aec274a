using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Training;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms.Training;

/// <summary>
/// SelectiveBackprop: Composer's schedule (should_selective_backprop) and selection weights (select_using_loss), the
/// per-sample losses against a float64 reference, a preference for high-loss samples, and in training the kept
/// samples on the selected batches with the whole batch on the interrupting ones.
/// </summary>
[TestFixture]
public class SelectiveBackpropTests
{
    [TestCase(0.4, 0, 2, false, TestName = "ScheduleBeforeStart")]
    [TestCase(0.5, 0, 2, true, TestName = "ScheduleAtStart")]
    [TestCase(0.6, 1, 2, false, TestName = "ScheduleInterruptingBatch")]
    [TestCase(0.6, 2, 2, true, TestName = "ScheduleBatchAfterTheInterruption")]
    [TestCase(0.6, 1, 0, true, TestName = "ScheduleWithoutInterruptions")]
    [TestCase(0.9, 0, 2, false, TestName = "ScheduleAtEnd")]
    public void TheScheduleIsComposers(double elapsed, long batchIndex, int interrupt, bool expected) =>
        Assert.That(SelectiveBackprop.ShouldSelectiveBackprop(elapsed, batchIndex, 0.5, 0.9, interrupt), Is.EqualTo(expected));

    [Test]
    public void SelectionWeightsGrowWithTheLossRankAndHardSamplesAreKeptMoreOften()
    {
        using var scope = torch.NewDisposeScope();
        Tensor p = SelectiveBackprop.SelectionProbabilities(4, 0.5);
        // keep 0.5: weights ∝ (i + ½)/N = 1/8, 3/8, 5/8, 7/8 → 1/16, 3/16, 5/16, 7/16.
        Assert.That(p.data<double>().ToArray(), Is.EqualTo(new[] { 1 / 16.0, 3 / 16.0, 5 / 16.0, 7 / 16.0 }).Within(1e-15));

        torch.manual_seed(21);
        Tensor losses = torch.tensor(new float[] { 0.9f, 0.1f, 0.5f, 2.0f, 0.3f, 1.1f, 0.7f, 0.2f, 1.6f, 0.05f });
        var counts = new int[10];
        for (int draw = 0; draw < 1000; draw++)
        {
            long[] kept = SelectiveBackprop.SelectUsingLoss(losses, 0.5).data<long>().ToArray();
            Assert.That(kept.Distinct().Count(), Is.EqualTo(5), "⌊0.5 · 10⌋ distinct samples");
            foreach (long k in kept)
            {
                counts[k]++;
            }
        }

        Assert.That(counts[3], Is.GreaterThan(3 * counts[9]), "the highest loss (sample 3) is kept far more often than the lowest (sample 9)");
        Assert.That(counts[3], Is.GreaterThan(counts[5]), "and more often than a middling one (sample 5)");
    }

    [Test]
    public void PerSampleLossesAreTheModelsLossOnEachSample()
    {
        using var scope = torch.NewDisposeScope();
        TinyMlp model = TestData.Model();
        Batch batch = TestData.Collate(TestData.Samples(6));
        Tensor losses = SelectiveBackprop.PerSampleLosses(model, batch);
        Tensor reference = nn.functional.cross_entropy(model.call(batch).to(ScalarType.Float64), batch["y"], reduction: nn.Reduction.None);
        Assert.That((losses.to(ScalarType.Float64) - reference).abs().max().item<double>(), Is.LessThan(1e-6));
    }

    [Test]
    public void SelectedBatchesKeepHalfTheirSamplesAndInterruptingOnesStayWhole()
    {
        var sizes = new List<long>();
        var consistent = new List<bool>();
        var callbacks = new ICallback[]
        {
            new ActionCallback(Event.BeforeForward, s =>
            {
                sizes.Add(s.Batch!.NumSamples);
                // Each kept row is a whole sample: its x and y are those of the sample its index names.
                long[] index = s.Batch["index"].data<long>().ToArray();
                float[] x = s.Batch["x"].data<float>().ToArray();
                long[] y = s.Batch["y"].data<long>().ToArray();
                List<Sample> all = TestData.Samples(48);
                consistent.Add(index.Select((i, r) => all[(int)i].Y == y[r] && all[(int)i].X.SequenceEqual(x.Skip(r * 4).Take(4))).All(ok => ok));
            }),
        };
        using Trainer trainer = TestData.Trainer(TestData.Model(), TestData.Loader(48, 8), "6ba", callbacks: callbacks,
            algorithms: new[] { new SelectiveBackprop(start: 0, end: 1, keep: 0.5, interrupt: 2) });

        trainer.Fit();

        Assert.That(sizes, Is.EqualTo(new long[] { 4, 8, 4, 8, 4, 8 }));
        Assert.That(consistent, Has.All.True);
        Assert.That(trainer.State.Timestamp.Sample, Is.EqualTo(48), "time counts the samples the dataloader produced");
    }

    [Test]
    public void BadArgumentsAndTheDescription()
    {
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new SelectiveBackprop(keep: 0))!.Message, Does.Contain("keep").And.Contain("(0, 1]"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SelectiveBackprop(start: 0.6, end: 0.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SelectiveBackprop(scaleFactor: 1.5));
        var sb = new SelectiveBackprop(0.1, 0.8, 0.3, 1.0, 3);
        Assert.That(AlgorithmCatalog.Create(sb.Describe()).Describe(), Is.EqualTo(sb.Describe()));
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ba", algorithms: new[] { new SelectiveBackprop(0, 1, 0.5, 0.5, 0) });
        var ex = Assert.Throws<AlgorithmException>(() => trainer.Fit());
        Assert.That(ex!.Message, Does.Contain("scale_factor 0.5").And.Contain("image inputs"));
    }
}
