using System.Text.RegularExpressions;
using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Tests.Training;
using ComposerSharp.Training;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// Every algorithm of the library in one run of a small BERT MLM under amp_bf16: the run trains, each algorithm left
/// its mark, and at every event the algorithms ran in the order Composer's default passes give
/// (composer/core/passes.py: SelectiveBackprop first, LowPrecisionLayerNorm last, first-in-last-out at the
/// <c>after_*</c> events), checked against an order computed here from those rules.
/// </summary>
[TestFixture]
public class AllAlgorithmsTogetherTests
{
    private static readonly Regex TraceLine = new(@"^Algorithms at (?<event>[a-z_]+): (?<order>.*)$", RegexOptions.Compiled);

    [Test]
    [Category(TestCategories.Slow)]
    public void EveryAlgorithmTrainsTogetherInComposersOrder()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(11);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 32, SequenceLength = 16, RegularVocabSize = 60, Seed = 4 });
        var evalData = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 8, SequenceLength = 16, RegularVocabSize = 60, Seed = 5 });
        var model = new BertForMaskedLM(ModelTestData.Tiny());
        int layerNormsBefore = model.modules().Count(m => m is TorchSharp.Modules.LayerNorm);

        // The user's order: LowPrecisionLayerNorm first (the pass must move it last), SelectiveBackprop late (the pass must move it first).
        IAlgorithm[] algorithms =
        {
            new LowPrecisionLayerNorm(),
            new LowPrecisionGroupNorm(), // BERT has no GroupNorm: it runs at init and finds nothing to replace
            new LowPrecisionRMSNorm(), // nor RMSNorm: the same
            new GatedLinearUnits(),
            new Alibi(maxSequenceLength: 32, trainSequenceLengthScaling: 1.0),
            new StochasticDepth(dropRate: 0.1),
            new SeqLengthWarmup(duration: 0.25, minSeqLength: 8, maxSeqLength: 16, stepSize: 4),
            new SelectiveBackprop(start: 0.0, end: 1.0, keep: 0.5, interrupt: 0),
            new LabelSmoothing(smoothing: 0.1),
            new GradientClipping(ClippingType.Norm, 1.0),
            new SAM(rho: 0.05, interval: 2),
            new LayerFreezing(freezeStart: 0.5, freezeLevel: 0.5),
            new EMA(halfLife: "2ba"),
        };
        string[] userOrder = algorithms.Select(a => a.Name).ToArray();
        Assert.That(userOrder, Is.Unique);
        Assert.That(userOrder, Is.EquivalentTo(AlgorithmCatalog.Names), "every algorithm of the catalog takes part");

        var logs = new CapturingLoggerFactory();
        using (var trainer = TestData.Trainer(model, new DataLoader<long[]>(data, 8, new MlmCollator(data.Vocabulary), shuffle: true, seed: 2), "2ep",
                   eval: new DataLoader<long[]>(evalData, 8, new MlmCollator(evalData.Vocabulary), shuffle: false), evalInterval: "3ba",
                   precision: Precision.AmpBf16, algorithms: algorithms, loggerFactory: logs, optimizerFactory: p => torch.optim.AdamW(p, 1e-3)))
        {
            trainer.Fit();
            Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(8));
            Assert.That(double.IsFinite(trainer.State.Metrics["loss/train/total"]), Is.True);
            Assert.That(double.IsFinite(trainer.State.Metrics["metrics/eval/CrossEntropy"]), Is.True);
        }

        // Each algorithm left its mark.
        Assert.That(model.modules().Count(m => m is TorchSharp.Modules.LayerNorm), Is.Zero, "LPLN converted every LayerNorm, the ones GLU added too");
        Assert.That(model.modules().Count(m => m is LPLayerNorm), Is.GreaterThanOrEqualTo(layerNormsBefore));
        Assert.That(model.modules().Count(m => m.GetType().Name.Contains("Gated", StringComparison.Ordinal)), Is.GreaterThan(0), "GLU surgery");
        Assert.That(model.parameters().Any(p => !p.requires_grad), Is.True, "LayerFreezing froze the earliest layers at the second epoch's end");

        // The order at every event, from Composer's rules applied to the matching algorithms in the user's order.
        var lines = logs.Entries.Where(e => e.Level == LogLevel.Debug).Select(e => TraceLine.Match(e.Message)).Where(m => m.Success).ToList();
        Assert.That(lines, Is.Not.Empty, "the engine logs each event's algorithm order at debug level");
        var seen = new HashSet<string>();
        foreach (Match line in lines)
        {
            string e = line.Groups["event"].Value;
            string[] order = line.Groups["order"].Value.Split(", ");
            Assert.That(order, Is.EqualTo(ComposerOrder(userOrder, order, e)), $"order at {e}");
            seen.UnionWith(order.Select(name => $"{name}@{e}"));
        }

        // The events each algorithm acted at, as its method card says (at least once in this run).
        string[] expectedRuns =
        {
            "selective_backprop@init", "label_smoothing@init", "gated_linear_units@init", "alibi@init", "stochastic_depth@init", "low_precision_layernorm@init",
            "sam@after_load", "seq_length_warmup@after_dataloader", "selective_backprop@after_dataloader",
            "label_smoothing@before_loss", "label_smoothing@after_loss", "gradient_clipping@after_train_batch",
            "layer_freezing@epoch_end", "ema@batch_end", "ema@eval_start", "ema@eval_end",
        };
        Assert.That(seen, Is.SupersetOf(expectedRuns));
        Assert.That(lines.First(l => l.Groups["event"].Value == "init").Groups["order"].Value,
            Is.EqualTo("selective_backprop, low_precision_groupnorm, low_precision_rmsnorm, gated_linear_units, alibi, stochastic_depth, label_smoothing, low_precision_layernorm"),
            "SelectiveBackprop first, the others in the user's order, LPLN last");
    }

    [TestCase(0.5, true)]
    [TestCase(1.0, false)]
    public void AlibiWithASequenceScalingAndSeqLengthWarmupWarnAtInit(double scaling, bool warns)
    {
        using var scope = torch.NewDisposeScope();
        var logs = new CapturingLoggerFactory();
        var model = new BertForMaskedLM(ModelTestData.Tiny());
        using var trainer = TestData.Trainer(model, null, null, loggerFactory: logs,
            algorithms: new IAlgorithm[] { new Alibi(maxSequenceLength: 32, trainSequenceLengthScaling: scaling), new SeqLengthWarmup(maxSeqLength: 16) });
        string[] conflict = logs.Warnings.Where(w => w.Contains("seq_length_warmup", StringComparison.Ordinal) && w.Contains("train_sequence_length_scaling", StringComparison.Ordinal)).ToArray();
        Assert.That(conflict, warns ? Has.Length.EqualTo(1) : Is.Empty);
    }

    /// <summary>
    /// Composer's default passes over the algorithms that ran (<paramref name="ran"/>), starting from the user's order:
    /// sort_selective_backprop_first, sort_low_precision_layernorm_last, then set_filo_order (reversed at the
    /// training step's <c>after_*</c> events).
    /// </summary>
    private static string[] ComposerOrder(string[] userOrder, string[] ran, string e)
    {
        var order = userOrder.Where(ran.Contains).ToList();
        order = order.Where(n => n == "selective_backprop").Concat(order.Where(n => n != "selective_backprop")).ToList();
        order = order.Where(n => n != "low_precision_layernorm").Concat(order.Where(n => n == "low_precision_layernorm")).ToList();
        bool filo = e is "after_load" or "after_dataloader" or "after_forward" or "after_loss" or "after_backward" or "after_train_batch";
        return (filo ? Enumerable.Reverse(order) : order).ToArray();
    }
}
