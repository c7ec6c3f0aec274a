using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Models;
using ComposerSharp.Tests.Algorithms;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>load_weights_only + load_strict_model_weights + load_ignore_keys: an MLM checkpoint starts a classifier.</summary>
[TestFixture]
public class FineTuningLoadTests
{
    private static readonly TrainerOptions Cpu = new() { Device = "cpu", ProgressBar = false };

    private static TransformerConfig Config => TransformerConfig.Preset("bert-tiny") with { HiddenSize = 32, NumHeads = 4, IntermediateSize = 64, MaxSequenceLength = 16, VocabSize = 64 };

    private static string SaveMlm(out Dictionary<string, Tensor> weights)
    {
        torch.manual_seed(3);
        var mlm = new BertForMaskedLM(Config);
        using (torch.no_grad())
        {
            foreach (var p in mlm.parameters())
            {
                p.add_(torch.randn_like(p) * 0.1); // as if pretrained: no tensor keeps its initial value
            }
        }

        string path = Path.Combine(TestData.TempFolder(), "mlm.ckpt");
        using (var trainer = new Trainer(mlm, Cpu))
        {
            trainer.SaveCheckpoint(path, weightsOnly: true);
        }

        weights = mlm.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        return path;
    }

    private static Dictionary<string, Tensor> Snapshot(nn.Module m) => m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.bytes.SequenceEqual(b.bytes);

    [Test]
    public void NonStrictLoadBringsTheEncoderBitwiseAndLeavesTheNewHeadFresh()
    {
        string path = SaveMlm(out Dictionary<string, Tensor> mlm);
        torch.manual_seed(4);
        var cls = new BertForSequenceClassification(Config);
        Dictionary<string, Tensor> fresh = Snapshot(cls);
        var logs = new CapturingLoggerFactory();
        using var trainer = new Trainer(cls, Cpu with { Checkpoint = new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true, LoadStrictModelWeights = false } },
            loggerFactory: logs);

        Dictionary<string, Tensor> after = cls.state_dict();
        List<string> encoder = after.Keys.Where(k => k.StartsWith("backbone.", StringComparison.Ordinal)).ToList();
        Assert.That(encoder, Has.Count.GreaterThan(10));
        foreach (string key in encoder)
        {
            Assert.That(Same(after[key], mlm[key]), Is.True, $"{key} must arrive bitwise from the MLM checkpoint");
            Assert.That(Same(after[key], fresh[key]), Is.False, $"{key} must have changed from the fresh initialisation");
        }

        foreach (string key in new[] { "pooler.weight", "pooler.bias", "classifier.weight", "classifier.bias" })
        {
            Assert.That(Same(after[key], fresh[key]), Is.True, $"{key} is a new head and must keep its fresh initialisation");
        }

        string[] messages = logs.Entries.Select(e => e.Message).ToArray();
        Assert.That(messages.Count(m => m.StartsWith("Loaded ", StringComparison.Ordinal) && m.Contains("model tensors", StringComparison.Ordinal)), Is.EqualTo(1));
        Assert.That(messages.Single(m => m.Contains("(initialised fresh)", StringComparison.Ordinal)), Does.Contain("classifier.weight").And.Contain("pooler.bias"));
        Assert.That(messages.Single(m => m.Contains("(ignored)", StringComparison.Ordinal)), Does.Contain("mlm_bias").And.Contain("mlm_transform.weight"));
    }

    [Test]
    public void AMatchingLoadReportsNoMissingOrUnexpectedKeys()
    {
        string path = SaveMlm(out _);
        var logs = new CapturingLoggerFactory();
        using var trainer = new Trainer(new BertForMaskedLM(Config), Cpu with { Checkpoint = new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true } }, loggerFactory: logs);

        string[] messages = logs.Entries.Select(e => e.Message).ToArray();
        Assert.That(messages.Count(m => m.StartsWith("Loaded ", StringComparison.Ordinal) && m.Contains("model tensors", StringComparison.Ordinal)), Is.EqualTo(1));
        Assert.That(messages.Where(m => m.Contains("(initialised fresh)", StringComparison.Ordinal) || m.Contains("(ignored)", StringComparison.Ordinal)), Is.Empty,
            "as Hugging Face's from_pretrained, empty lists of missing and unexpected keys are not logged (every eval printed 'Missing …: 0 []')");
    }

    [Test]
    public void StrictLoadNamesTheKeysAndTheSettingsThatFixIt()
    {
        string path = SaveMlm(out _);
        var cls = new BertForSequenceClassification(Config);
        var ex = Assert.Throws<CheckpointException>(() => new Trainer(cls, Cpu with { Checkpoint = new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true } }));
        Assert.That(ex!.Message, Does.Contain("classifier.weight").And.Contain("mlm_bias").And.Contain("load_strict_model_weights").And.Contain("load_ignore_keys"));
        Assert.That(ex.Message, Does.Not.Contain("required-on-load algorithm"), "no algorithm was involved, so the hint must not blame one");
    }

    [Test]
    public void IgnoreKeysMakeAStrictLoadPass()
    {
        string path = SaveMlm(out Dictionary<string, Tensor> mlm);
        var cls = new BertForSequenceClassification(Config);
        using var trainer = new Trainer(cls, Cpu with
        {
            Checkpoint = new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true, LoadIgnoreKeys = new[] { "mlm_*", "pooler.*", "classifier.*" } },
        });
        Assert.That(Same(cls.state_dict()["backbone.layers.1.attn.qkv.weight"], mlm["backbone.layers.1.attn.qkv.weight"]), Is.True);
    }

    [TestCase("classifier.*", "classifier.weight", true)]
    [TestCase("classifier.*", "backbone.classifier.weight", false)]
    [TestCase("*.ln_?.weight", "backbone.layers.0.ln_1.weight", true)]
    [TestCase("backbone.layers.1*", "backbone.layers.10.mlp.fc_in.bias", true)]
    [TestCase("mlm_bias", "mlm_bias2", false)]
    public void GlobsMatchWholeKeys(string pattern, string key, bool matches) =>
        Assert.That(new KeyGlob(new[] { pattern }).Matches(key), Is.EqualTo(matches));
}
