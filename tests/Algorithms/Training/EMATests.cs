using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Tests.Training;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms.Training;

/// <summary>
/// EMA: the smoothing from a half-life and the averaging rule (Composer's tests/algorithms/test_ema.py), evaluation
/// on the averaged weights with training continuing on the live ones (against a float64 average computed by hand),
/// the start time, and a bitwise-exact resume with the averaged weights in the checkpoint.
/// </summary>
[TestFixture]
public class EMATests
{
    [TestCase("10ba", null, 0.9330329915368074)] // 2^(-1/10)
    [TestCase("1ep", null, 0.5)]
    [TestCase("10ba", "5ba", 0.7071067811865476)] // 2^(-5/10)
    public void TheSmoothingFollowsFromTheHalfLifeAndInterval(string halfLife, string? interval, double expected)
    {
        var ema = new EMA(halfLife, updateInterval: interval);
        Assert.That(ema.Smoothing, Is.EqualTo(expected).Within(1e-15));
        Assert.That(ema.UpdateInterval.Unit, Is.EqualTo(ema.HalfLife!.Value.Unit));
    }

    [Test]
    public void DefaultsAreComposersAndAGivenSmoothingUpdatesEveryBatch()
    {
        var defaults = new EMA();
        Assert.That((defaults.HalfLife.ToString(), defaults.EmaStart.ToString(), defaults.UpdateInterval.ToString()), Is.EqualTo(("1000ba", new Time(0, TimeUnit.Duration).ToString(), "1ba")));
        var given = new EMA(smoothing: 0.999);
        Assert.That((given.Smoothing, given.HalfLife, given.UpdateInterval.ToString()), Is.EqualTo((0.999, (Time?)null, "1ba")));
    }

    [TestCase("10ba", 0.9, null, "not both")]
    [TestCase("10ba", null, "1ep", "must match")]
    [TestCase("0ba", null, null, "positive integer")]
    [TestCase("1.5ba", null, null, "'1.5ba'")]
    [TestCase("10sp", null, null, "'10sp'")]
    [TestCase(null, 1.0, null, "(0, 1)")]
    public void BadOptionsAreRefusedWithTheValue(string? halfLife, double? smoothing, string? interval, string message)
    {
        var ex = Assert.Throws<ArgumentException>(() => new EMA(halfLife, smoothing, updateInterval: interval));
        Assert.That(ex!.Message, Does.Contain(message));
    }

    [TestCase(0.0)]
    [TestCase(0.5)]
    [TestCase(0.99)]
    [TestCase(1.0)]
    public void ComputeEmaIsTheWeightedAverageOfComposersTest(double smoothing)
    {
        using var scope = torch.NewDisposeScope();
        TinyMlp model = TestData.Model(initSeed: 11);
        TinyMlp other = TestData.Model(initSeed: 12);
        var ema = other.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter.detach().clone());
        var before = ema.ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float64));

        EMA.ComputeEma(model, ema, new Dictionary<string, Tensor>(), smoothing);

        foreach ((string name, Parameter p) in model.named_parameters())
        {
            Tensor expected = before[name] * smoothing + p.detach().to(ScalarType.Float64) * (1 - smoothing);
            double err = (ema[name].to(ScalarType.Float64) - expected).abs().max().item<double>();
            Assert.That(err, Is.LessThan(1e-6), name);
        }
    }

    [Test]
    public void EvaluationRunsOnTheAveragedWeightsAndTrainingContinuesOnTheLiveOnes()
    {
        var live = new List<double[]>();
        var atEval = new List<double[]>();
        var atBatchStart = new List<double[]>();
        var callbacks = new ICallback[]
        {
            new ActionCallback(Event.BatchEnd, s => live.Add(TestData.Weights(s.Model))),
            new ActionCallback(Event.EvalStart, s => atEval.Add(TestData.Weights(s.Model))),
            new ActionCallback(Event.BatchStart, s => atBatchStart.Add(TestData.Weights(s.Model))),
        };
        var ema = new EMA("2ba");
        using Trainer trainer = TestData.Trainer(TestData.Model(), TestData.Loader(48, 8), "6ba", callbacks: callbacks,
            eval: TestData.Loader(8, 8, dataSeed: 5), evalInterval: "3ba", algorithms: new[] { ema });

        trainer.Fit();

        // Reference in float64: the average starts as the weights after batch 1, then w_ema = s·w_ema + (1 − s)·w_t.
        double s = Math.Pow(2, -0.5);
        double[] average = live[0].ToArray();
        var expectedAtEval = new List<double[]>();
        for (int t = 1; t < live.Count; t++)
        {
            average = average.Zip(live[t], (a, w) => (s * a) + ((1 - s) * w)).ToArray();
            if (t is 2 or 5)
            {
                expectedAtEval.Add(average.ToArray());
            }
        }

        Assert.That(atEval, Has.Count.EqualTo(2));
        for (int i = 0; i < 2; i++)
        {
            Assert.That(atEval[i], Is.EqualTo(expectedAtEval[i]).Within(1e-6), $"evaluation {i} sees the averaged weights");
            Assert.That(atEval[i], Is.Not.EqualTo(live[(3 * i) + 2]).Within(1e-6), "and not the live ones");
        }

        // The batch after an evaluation starts from the live weights of the batch before it, bit for bit.
        Assert.That(atBatchStart[3], Is.EqualTo(live[2]));
        Assert.That(TestData.Weights(trainer.Model), Is.EqualTo(live[^1]), "after fit the model holds the live weights");
        Assert.That(ema.EmaWeightsActive, Is.False);

        var copy = TestData.Model(initSeed: 99);
        ema.CopyEmaWeightsTo(copy);
        Assert.That(TestData.Weights(copy), Is.EqualTo(expectedAtEval[1]).Within(1e-6), "CopyEmaWeightsTo gives the averaged weights");
    }

    [Test]
    public void BeforeEmaStartNothingIsAveragedAndEvaluationUsesTheLiveWeights()
    {
        var live = new List<double[]>();
        var atEval = new List<double[]>();
        var ema = new EMA("1ba", emaStart: "3ba");
        var callbacks = new ICallback[]
        {
            new ActionCallback(Event.BatchEnd, s => live.Add(TestData.Weights(s.Model))),
            new ActionCallback(Event.EvalStart, s => atEval.Add(TestData.Weights(s.Model))),
            new ActionCallback(Event.BatchEnd, s => Assert.That(ema.EmaStarted, Is.EqualTo(s.Timestamp.Batch >= 3))),
        };
        using Trainer trainer = TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "4ba", callbacks: callbacks,
            eval: TestData.Loader(8, 8, dataSeed: 5), evalInterval: "2ba", algorithms: new[] { ema });

        trainer.Fit();

        Assert.That(atEval[0], Is.EqualTo(live[1]), "the evaluation at batch 2 ran on the live weights");
        Assert.That(atEval[1], Is.Not.EqualTo(live[3]), "the one at batch 4 on the average of batches 3 and 4");
    }

    [Test]
    public void ResumeWithEmaIsBitwiseExact()
    {
        double[] uninterruptedEma;
        double finalEval;
        Trainer Run(CheckpointOptions? options, EMA ema, params ICallback[] callbacks) =>
            TestData.Trainer(TestData.Model(), TestData.Loader(48, 8, shuffle: true, seed: 3), "6ba", callbacks: callbacks,
                eval: TestData.Loader(8, 8, dataSeed: 5), evalInterval: "2ba", algorithms: new[] { ema }, checkpoint: options,
                optimizerFactory: p => torch.optim.Adam(p, 0.01), runName: "ema-resume");

        var reference = new EMA("3ba", emaStart: "2ba");
        using Trainer uninterrupted = Run(null, reference);
        uninterrupted.Fit();
        uninterruptedEma = Flatten(reference);
        finalEval = uninterrupted.State.Metrics["metrics/eval/CrossEntropy"];

        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "1ba", Autoresume = true };
        using (Trainer interrupted = Run(options, new EMA("3ba", emaStart: "2ba"), new ActionCallback(Event.BatchEnd, s =>
        {
            if (s.Timestamp.Batch == 3)
            {
                s.StopTraining();
            }
        })))
        {
            interrupted.Fit();
        }

        var resumedEma = new EMA("3ba", emaStart: "2ba");
        using Trainer resumed = Run(options, resumedEma);
        Assert.That(resumed.State.Timestamp.Batch, Is.EqualTo(3));
        Assert.That(resumedEma.EmaStarted, Is.True, "the averaging state came from the checkpoint");
        resumed.Fit();

        TestData.AssertBitwiseEqual(resumed.Model, uninterrupted.Model, "live weights, bit for bit");
        Assert.That(Flatten(resumedEma), Is.EqualTo(uninterruptedEma), "averaged weights, bit for bit");
        Assert.That(resumed.State.Metrics["metrics/eval/CrossEntropy"], Is.EqualTo(finalEval), "the evaluation on the averaged weights");
    }

    [Test]
    public void ACheckpointWithoutEmaStateLeavesItFreshWithAWarning()
    {
        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "1ba" };
        using (Trainer first = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ba", checkpoint: options))
        {
            first.Fit();
        }

        var logs = new CapturingLoggerFactory();
        var ema = new EMA("2ba");
        using Trainer resumed = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "4ba", algorithms: new[] { ema }, loggerFactory: logs,
            checkpoint: new CheckpointOptions { LoadPath = Path.Combine(folder, "latest-rank0.ckpt") });

        Assert.That(ema.EmaStarted, Is.False);
        Assert.That(logs.Entries.Select(e => e.Message), Has.Some.Contains("holds no state for algorithm ema"));
    }

    [Test]
    public void TheDescriptionRoundTripsThroughTheCatalog()
    {
        foreach (EMA ema in new[] { new EMA("7ep", emaStart: "0.25dur"), new EMA(smoothing: 0.95, emaStart: "10ba", updateInterval: "4ba") })
        {
            var again = (EMA)AlgorithmCatalog.Create(ema.Describe());
            Assert.That(again.Describe(), Is.EqualTo(ema.Describe()));
            Assert.That((again.Smoothing, again.EmaStart, again.UpdateInterval), Is.EqualTo((ema.Smoothing, ema.EmaStart, ema.UpdateInterval)));
        }
    }

    private static double[] Flatten(EMA ema)
    {
        using var scope = torch.NewDisposeScope();
        AlgorithmState state = ema.StateDict();
        return state.Tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .SelectMany(kv => kv.Value.detach().flatten().to(ScalarType.Float64).data<double>().ToArray()).ToArray();
    }
}
