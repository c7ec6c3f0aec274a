using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// Train 3 batches with LowPrecisionLayerNorm, save, and load into fresh Trainers with and without the
/// algorithm. The Trainer re-creates the missing required-on-load algorithm with a warning, or refuses when asked to.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public class LowPrecisionCheckpointTests
{
    private static readonly TransformerConfig Config = TransformerConfig.Preset("bert-tiny") with
    {
        VocabSize = 128,
        MaxSequenceLength = 32,
        Dropout = 0.0,
        AttentionDropout = 0.0,
    };

    private static IDataLoader Loader()
    {
        var dataset = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 48, SequenceLength = 32, RegularVocabSize = 100, Seed = 5 });
        return new DataLoader<long[]>(dataset, 8, new MlmCollator(dataset.Vocabulary, new MlmCollatorOptions { Seed = 5 }), shuffle: true, dropLast: true, seed: 5);
    }

    private static BertForMaskedLM Model(int seed)
    {
        torch.manual_seed(seed);
        return new BertForMaskedLM(Config);
    }

    private static Trainer Trainer(ComposerModel model, IEnumerable<IAlgorithm> algorithms, CheckpointOptions? checkpoint = null, CapturingLoggerFactory? logs = null) =>
        new(model,
            new TrainerOptions { MaxDuration = "3ba", Precision = Precision.AmpBf16, Device = "cpu", ProgressBar = false, Checkpoint = checkpoint ?? new CheckpointOptions() },
            Loader(), algorithms: algorithms, optimizerFactory: p => optim.AdamW(p, 1e-3), loggerFactory: logs);

    private static void AssertSameWeights(nn.Module expected, nn.Module actual)
    {
        var a = expected.state_dict();
        var b = actual.state_dict();
        Assert.That(b.Keys, Is.EquivalentTo(a.Keys));
        foreach ((string key, Tensor value) in a)
        {
            Assert.That(value.shape, Is.EqualTo(b[key].shape), key);
            Assert.That(value.eq(b[key]).all().item<bool>(), Is.True, $"weight {key} differs");
        }
    }

    private static int Count<T>(nn.Module model) => model.modules().Count(m => m is T);

    [Test]
    public void CheckpointRoundTripWithAndWithoutTheAlgorithm()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-lpln-ckpt-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        string path = Path.Combine(folder, "ba3.ckpt");
        try
        {
            BertForMaskedLM trained = Model(1);
            using (Trainer first = Trainer(trained, new[] { new LowPrecisionLayerNorm() }))
            {
                first.Fit();
                Assert.That(first.State.Timestamp.Batch, Is.EqualTo(3));
                first.SaveCheckpoint(path);
            }

            int replaced = Count<LPLayerNorm>(trained);
            Assert.That(replaced, Is.EqualTo(6), "bert-tiny has 6 LayerNorms (embeddings, 2 per block, MLM head)");
            Assert.That(Count<TorchSharp.Modules.LayerNorm>(trained), Is.Zero);

            // With the algorithm: same weights, same structure.
            BertForMaskedLM withAlgorithm = Model(2);
            using (Trainer second = Trainer(withAlgorithm, new[] { new LowPrecisionLayerNorm() }, new CheckpointOptions { LoadPath = path }))
            {
                AssertSameWeights(trained, withAlgorithm);
                Assert.That(Count<LPLayerNorm>(withAlgorithm), Is.EqualTo(replaced));
            }

            // Without the algorithm: the Trainer re-creates it (required on load), warns, and the weights load.
            var logs = new CapturingLoggerFactory();
            BertForMaskedLM without = Model(3);
            using (Trainer third = Trainer(without, Array.Empty<IAlgorithm>(), new CheckpointOptions { LoadPath = path }, logs))
            {
                AssertSameWeights(trained, without);
                Assert.That(third.State.Algorithms.Select(a => a.Name), Does.Contain("low_precision_layernorm"));
                Assert.That(Count<LPLayerNorm>(without), Is.EqualTo(replaced));
                Assert.That(logs.Warnings, Has.Some.Contains("low_precision_layernorm"), "re-creating a missing required algorithm is warned about");
            }

            // Refusing instead: the message names the algorithm to pass.
            var ex = Assert.Throws<InvalidOperationException>(() => Trainer(
                Model(4), Array.Empty<IAlgorithm>(), new CheckpointOptions { LoadPath = path, MissingAlgorithmPolicy = MissingAlgorithmPolicy.Refuse }));
            Assert.That(ex!.Message, Does.Contain("low_precision_layernorm").And.Contain("algorithms"));

            // A state dict saved from the surgered model loads into a plain model (keys unchanged by surgery).
            BertForMaskedLM plain = Model(5);
            string weights = Path.Combine(folder, "weights.bin");
            trained.save(weights);
            plain.load(weights);
            AssertSameWeights(trained, plain);
            Assert.That(Count<TorchSharp.Modules.LayerNorm>(plain), Is.EqualTo(6));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
