using System.Text.Json;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static ComposerSharp.Tests.Models.HuggingFace.HuggingFaceTestSupport;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models.HuggingFace;

/// <summary>
/// The non-circular checks of the Hugging Face format: hf_reference.py (Debian's python3-torch and numpy, its own
/// safetensors parser and writer, a float64 forward pass written from transformers' modeling_bert.py/modeling_gpt2.py)
/// (b) reads what we export and must agree with our fp32 logits within 1e-4, and (c) writes model folders we must read
/// and agree with. Skipped with the reason when /usr/bin/python3 cannot import torch.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public sealed class HuggingFaceReferenceTests
{
    private const double Tolerance = 1e-4;
    private string _dir = null!;

    [SetUp]
    public void SetUp()
    {
        RequireTorchPython();
        _dir = Path.Combine(Path.GetTempPath(), "hf-reference-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        torch.manual_seed(11);
    }

    [TearDown]
    public void TearDown()
    {
        if (_dir is not null && Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [TestCase("bert_mlm")]
    [TestCase("bert_cls")]
    [TestCase("bert_cls_mean")]
    [TestCase("gpt2")]
    public void PythonReferenceReadsOurExportAndAgreesWithOurLogits(string kind)
    {
        using TransformerModel model = Create(kind);
        Perturb(model);
        string folder = Path.Combine(_dir, "model");
        HuggingFaceFormat.Save(model, folder);
        var inputs = Inputs(pad: kind != "gpt2");
        string inputsPath = Path.Combine(_dir, "inputs.safetensors"), logitsPath = Path.Combine(_dir, "logits.safetensors");
        SafetensorsWriter.Write(inputsPath, inputs.ToList());
        SafetensorsWriter.Write(logitsPath, new[] { new KeyValuePair<string, Tensor>("logits", Logits(model, inputs)) });

        JsonElement result = Reference("check", folder, inputsPath, logitsPath);
        double diff = result.GetProperty("max_abs_diff").GetDouble(), scale = result.GetProperty("max_abs_logit").GetDouble();
        Assert.That(scale, Is.GreaterThan(0.1), "logits this small would make the comparison weak");
        Assert.That(diff, Is.LessThan(Tolerance), $"max |ours − reference| = {diff:E2} with |logit| up to {scale:F2}");
    }

    [TestCase("bert_mlm", typeof(BertForMaskedLM))]
    [TestCase("bert_cls", typeof(BertForSequenceClassification))]
    [TestCase("gpt2", typeof(GptForCausalLM))]
    public void AFolderWrittenByPythonLoadsHereAndAgrees(string arch, Type expected)
    {
        string folder = Path.Combine(_dir, "python-" + arch);
        var inputs = Inputs(pad: arch != "gpt2");
        string inputsPath = Path.Combine(_dir, "inputs.safetensors"), referencePath = Path.Combine(_dir, "reference.safetensors");
        SafetensorsWriter.Write(inputsPath, inputs.ToList());
        Reference("make", arch, folder, inputsPath, referencePath);

        PretrainedModel loaded = HuggingFaceFormat.FromPretrained(folder);
        using TransformerModel model = loaded.Model;
        Assert.That(model, Is.InstanceOf(expected));
        if (arch == "bert_cls")
        {
            Assert.That(loaded.Labels, Is.EqualTo(new[] { "negative", "neutral", "positive" }));
        }

        Tensor reference = TorchSharp.PyBridge.Safetensors.LoadStateDict(referencePath)["logits"];
        Tensor ours = Logits(model, inputs);
        Assert.That(ours.shape, Is.EqualTo(reference.shape));
        double diff = (ours - reference).abs().max().item<float>();
        Assert.That(diff, Is.LessThan(Tolerance), $"max |ours − reference| = {diff:E2}");
    }
}

/// <summary>The exported GPT-2 tokenizer files, read by the Python reference's own BPE, give our tokenizer's ids.</summary>
[TestFixture]
[Category(TestCategories.Slow)]
public sealed class Gpt2TokenizerFilesTests
{
    [Test]
    public void PythonBpeFromTheExportedFilesGivesOurIds()
    {
        RequireTorchPython();
        string dir = Path.Combine(Path.GetTempPath(), "hf-tokenizer-" + Guid.NewGuid().ToString("N"));
        try
        {
            ComposerSharp.Inference.Gpt2TokenizerFiles.Write(dir, 1024);
            const string Text = "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse 1851!";
            JsonElement result = Reference("bpe", dir, Text);
            int[] ours = new ComposerSharp.Data.Gpt2Tokenizer().Encode(Text);
            Assert.That(result.GetProperty("vocab").GetInt32(), Is.EqualTo(50257));
            Assert.That(result.GetProperty("merges").GetInt32(), Is.EqualTo(50000));
            Assert.That(result.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(ours));
            Assert.That(File.ReadAllText(Path.Combine(dir, "tokenizer_config.json")), Does.Contain("\"50257\"").And.Contain("<|pad|>"));
        }
        finally
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
    }
}
