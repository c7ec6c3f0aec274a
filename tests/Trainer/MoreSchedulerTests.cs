using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training.Optim;
using NUnit.Framework;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// The schedulers added from Composer's composer/optim/scheduler.py against their formulas, written here in float64
/// from that file, at every batch of a 20-batch run (max duration <c>20ba</c>, or <c>5ep</c> of 4 batches): equal within 1e-12.
/// </summary>
[TestFixture]
public class MoreSchedulerTests
{
    private const int Batches = 20;

    private static double[] Factors(IScheduler scheduler, Time maxDuration)
    {
        var state = new State(TestData.Model()) { MaxDuration = maxDuration, TrainDataloader = TestData.Loader(32, 8) };
        var factors = new double[Batches];
        for (int t = 0; t < Batches; t++)
        {
            factors[t] = scheduler.Factor(state);
            state.Timestamp = state.Timestamp.ToNextBatch();
        }

        return factors;
    }

    private static double[] Expected(Func<double, double> f) => Enumerable.Range(0, Batches).Select(t => f(t)).ToArray();

    private static double Cos(double x, double alphaF) => alphaF + ((1 - alphaF) * (1 + Math.Cos(Math.PI * x)) / 2);

    [Test]
    public void LinearAndExponential()
    {
        Assert.That(Factors(new LinearScheduler(1.0, 0.2, "10ba"), "20ba"), Is.EqualTo(Expected(t => 1.0 + ((0.2 - 1.0) * Math.Min(1, t / 10.0)))).Within(1e-12));
        Assert.That(Factors(new LinearScheduler(0.5, 1.0), "20ba"), Is.EqualTo(Expected(t => 0.5 + (0.5 * t / 20.0))).Within(1e-12));
        // decay_period 1ep = 4 batches here (32 samples, batch 8).
        Assert.That(Factors(new ExponentialScheduler(0.5), "5ep"), Is.EqualTo(Expected(t => Math.Pow(0.5, t / 4.0))).Within(1e-12));
        Assert.That(Factors(new ExponentialScheduler(0.9, "3ba"), "20ba"), Is.EqualTo(Expected(t => Math.Pow(0.9, t / 3.0))).Within(1e-12));
    }

    [Test]
    public void PolynomialWithAndWithoutWarmup()
    {
        Assert.That(Factors(new PolynomialScheduler(2.0, alphaF: 0.1), "20ba"), Is.EqualTo(Expected(t => 0.1 + (0.9 * Math.Pow(1 - (t / 20.0), 2)))).Within(1e-12));
        Assert.That(
            Factors(new PolynomialWithWarmupScheduler("4ba", power: 0.5, alphaF: 0.0), "20ba"),
            Is.EqualTo(Expected(t => t < 4 ? t / 4.0 : Math.Pow(1 - ((t - 4) / 16.0), 0.5))).Within(1e-12));
    }

    [Test]
    public void ConstantAndMultiStepWithWarmup()
    {
        Assert.That(Factors(new ConstantWithWarmupScheduler("5ba", alpha: 0.5, tMax: "15ba"), "20ba"), Is.EqualTo(Expected(t => t < 5 ? 0.5 * t / 5 : t < 15 ? 0.5 : 1.0)).Within(1e-12));
        Assert.That(
            Factors(new MultiStepWithWarmupScheduler("4ba", new Time[] { "8ba", "0.75dur" }, gamma: 0.5), "20ba"),
            Is.EqualTo(Expected(t => t < 4 ? t / 4.0 : t < 8 ? 1.0 : t < 15 ? 0.5 : 0.25)).Within(1e-12));
    }

    [Test]
    public void CosineWarmRestartsRestartsAtEachIntervalEnd()
    {
        // t_0 = 3ba, t_mult = 2: intervals [0, 3), [3, 9), [9, 21).
        Assert.That(
            Factors(new CosineAnnealingWarmRestartsScheduler("3ba", tMult: 2.0, alphaF: 0.1), "20ba"),
            Is.EqualTo(Expected(t => t < 3 ? Cos(t / 3.0, 0.1) : t < 9 ? Cos((t - 3) / 6.0, 0.1) : Cos((t - 9) / 12.0, 0.1))).Within(1e-12));
        Assert.That(Factors(new CosineAnnealingWarmRestartsScheduler("5ba"), "20ba"), Is.EqualTo(Expected(t => Cos(t % 5 / 5.0, 0.0))).Within(1e-12));
        Assert.Throws<InvalidOperationException>(() => Factors(new CosineAnnealingWarmRestartsScheduler("2ba", tMult: 0.4), "20ba"));
    }
}
