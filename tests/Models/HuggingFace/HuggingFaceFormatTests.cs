using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;
using ComposerSharp.Tests.Algorithms;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static ComposerSharp.Tests.Models.HuggingFace.HuggingFaceTestSupport;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models.HuggingFace;

[TestFixture]
public sealed class HuggingFaceFormatTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "hf-format-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        torch.manual_seed(7);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [TestCase("bert_mlm")]
    [TestCase("bert_cls")]
    [TestCase("gpt2")]
    [Category(TestCategories.Slow)]
    public void ExportThenImportIsBitwise(string kind)
    {
        using TransformerModel model = Create(kind);
        Perturb(model);
        HuggingFaceFormat.Save(model, _dir);

        torch.manual_seed(99);
        PretrainedModel loaded = HuggingFaceFormat.FromPretrained(_dir);
        using TransformerModel back = loaded.Model;
        Assert.That(back.GetType(), Is.EqualTo(model.GetType()));
        Assert.That(back.Config, Is.EqualTo(model.Config with { Activation = back.Config.Activation, TypeVocabSize = back.Config.TypeVocabSize }));
        Dictionary<string, Tensor> a = model.state_dict(), b = back.state_dict();
        Assert.That(b.Keys, Is.EquivalentTo(a.Keys));
        foreach (string key in a.Keys)
        {
            Assert.That(b[key].dtype, Is.EqualTo(a[key].dtype), key);
            Assert.That(Bitwise(b[key], a[key]), Is.True, $"{key} differs after export → import");
        }

        Assert.That(loaded.Report.Missing, Is.Empty);
        Assert.That(loaded.Report.Unexpected, Is.Empty);
        var inputs = Inputs(pad: kind != "gpt2");
        Assert.That(Bitwise(Logits(back, inputs), Logits(model, inputs)), Is.True, "the same weights must give the same logits bit for bit");
    }

    [Test]
    public void ExportUsesHuggingFaceNamesShapesDtypesAndConfigFields()
    {
        using var bert = (BertForSequenceClassification)Create("bert_cls");
        HuggingFaceFormat.Save(bert, _dir, new[] { "neg", "neu", "pos" });
        JsonElement header = Header(Path.Combine(_dir, "model.safetensors"));
        Assert.That(header.GetProperty("__metadata__").GetProperty("format").GetString(), Is.EqualTo("pt"));
        AssertTensor(header, "bert.embeddings.token_type_embeddings.weight", 2, 32);
        AssertTensor(header, "bert.encoder.layer.1.attention.self.query.weight", 32, 32);
        AssertTensor(header, "bert.encoder.layer.1.attention.self.value.bias", 32);
        AssertTensor(header, "bert.encoder.layer.0.intermediate.dense.weight", 64, 32);
        AssertTensor(header, "bert.pooler.dense.weight", 32, 32);
        AssertTensor(header, "classifier.weight", 3, 32);
        Assert.That(header.EnumerateObject().Count(), Is.EqualTo(1 + 5 + (2 * 16) + 4), "metadata, embeddings (3 + LayerNorm), 16 per layer, pooler and classifier");
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "config.json")))!.AsObject();
        Assert.That(config["architectures"]![0]!.GetValue<string>(), Is.EqualTo("BertForSequenceClassification"));
        Assert.That(config["hidden_act"]!.GetValue<string>(), Is.EqualTo("gelu"));
        Assert.That(config["layer_norm_eps"]!.GetValue<double>(), Is.EqualTo(1e-12));
        Assert.That(config["type_vocab_size"]!.GetValue<int>(), Is.EqualTo(2));
        Assert.That(config["id2label"]!["2"]!.GetValue<string>(), Is.EqualTo("pos"));

        string gptDir = Path.Combine(_dir, "gpt");
        using TransformerModel gpt = Create("gpt2");
        HuggingFaceFormat.Save(gpt, gptDir);
        JsonElement g = Header(Path.Combine(gptDir, "model.safetensors"));
        AssertTensor(g, "transformer.h.0.attn.c_attn.weight", 32, 96);
        AssertTensor(g, "transformer.h.0.mlp.c_fc.weight", 32, 64);
        AssertTensor(g, "transformer.h.1.mlp.c_proj.weight", 64, 32);
        AssertTensor(g, "transformer.ln_f.bias", 32);
        Assert.That(g.TryGetProperty("lm_head.weight", out _), Is.False, "the tied lm_head is not written, as save_pretrained");
        JsonObject gc = JsonNode.Parse(File.ReadAllText(Path.Combine(gptDir, "config.json")))!.AsObject();
        Assert.That(gc["activation_function"]!.GetValue<string>(), Is.EqualTo("gelu_new"));
        Assert.That(gc["n_positions"]!.GetValue<int>(), Is.EqualTo(24));
    }

    [Test]
    public void AShapeErrorNamesTheConfigurationChangeThatCausedIt()
    {
        using TransformerModel mlm = Create("bert_mlm");
        HuggingFaceFormat.Save(mlm, _dir);
        int positions = mlm.Config.MaxSequenceLength;
        var e = Assert.Throws<InvalidDataException>(() => HuggingFaceFormat.FromPretrained(_dir, new PretrainedOptions { Configure = c => c with { MaxSequenceLength = positions / 2 } }))!;
        Assert.That(e.Message, Does.Contain($"MaxSequenceLength {positions / 2} instead of config.json's {positions}").And.Not.Contain("(from config.json)"));
    }

    [Test]
    public void AFolderLoadLogsCountsAndTheLoadedNamesOnlyAtDebug()
    {
        using TransformerModel mlm = Create("bert_mlm");
        HuggingFaceFormat.Save(mlm, _dir);
        var factory = new CapturingLoggerFactory();
        PretrainedModel loaded = HuggingFaceFormat.FromPretrained(_dir, logger: factory.CreateLogger("hf"));
        using TransformerModel back = loaded.Model;
        int count = loaded.Report.Loaded.Count;
        Assert.That(count, Is.GreaterThan(10));
        string aName = loaded.Report.Loaded[0];
        string[] information = factory.Entries.Where(e => e.Level >= Microsoft.Extensions.Logging.LogLevel.Information).Select(e => e.Message).ToArray();
        Assert.That(information, Has.One.Contains($"Loaded {count} tensors from").And.Contains("(0 missing, 0 unexpected)"));
        Assert.That(information, Has.None.Contains(aName), "no tensor name at Information when nothing is missing or unexpected");
        Assert.That(factory.Entries.Where(e => e.Level == Microsoft.Extensions.Logging.LogLevel.Debug).Select(e => e.Message), Has.One.Contains(aName).And.Contains(loaded.Report.Loaded[^1]));
    }

    [Test]
    public void ClassifierFromAnMlmFolderGetsTheEncoderBitwiseAndAFreshHead()
    {
        using TransformerModel mlm = Create("bert_mlm");
        Perturb(mlm);
        HuggingFaceFormat.Save(mlm, _dir);
        var factory = new CapturingLoggerFactory();
        PretrainedModel loaded = HuggingFaceFormat.FromPretrained(
            _dir, new PretrainedOptions { Architecture = HuggingFaceArchitecture.BertForSequenceClassification }, factory.CreateLogger("hf"));
        using TransformerModel cls = loaded.Model;
        Dictionary<string, Tensor> a = mlm.state_dict(), b = cls.state_dict();
        foreach (string key in a.Keys.Where(k => k.StartsWith("backbone.", StringComparison.Ordinal)))
        {
            Assert.That(Bitwise(b[key], a[key]), Is.True, key);
        }

        Assert.That(loaded.Report.Missing, Is.EquivalentTo(new[] { "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias" }));
        Assert.That(loaded.Report.Unexpected, Has.Member("cls.predictions.bias"));
        Assert.That(b["classifier.bias"].abs().max().item<float>(), Is.Zero, "a fresh head has zero biases");
        Assert.That(factory.Entries.Count(e => e.Message.Contains("initialised fresh", StringComparison.Ordinal)), Is.EqualTo(1));
        Assert.That(factory.Entries.Count(e => e.Message.Contains("(ignored)", StringComparison.Ordinal)), Is.EqualTo(1));
    }

    [Test]
    public void AMissingConfigIsAnErrorNamingTheFolder()
    {
        var ex = Assert.Throws<FileNotFoundException>(() => HuggingFaceFormat.FromPretrained(_dir));
        Assert.That(ex!.Message, Does.Contain(_dir).And.Contain("config.json"));
    }

    [Test]
    public void AWrongShapeIsAnErrorNamingTheFileAndKey()
    {
        using TransformerModel model = Create("gpt2");
        HuggingFaceFormat.Save(model, _dir);
        RewriteTensor("transformer.h.1.attn.c_attn.weight", torch.zeros(96, 32));
        var ex = Assert.Throws<InvalidDataException>(() => HuggingFaceFormat.FromPretrained(_dir));
        Assert.That(ex!.Message, Does.Contain("model.safetensors").And.Contain("transformer.h.1.attn.c_attn.weight").And.Contain("[96, 32]").And.Contain("[32, 96]"));
    }

    [Test]
    public void AWrongDtypeIsAnErrorNamingTheKeyAndDtype()
    {
        using TransformerModel model = Create("bert_mlm");
        HuggingFaceFormat.Save(model, _dir);
        RewriteTensor("cls.predictions.bias", torch.zeros(101, dtype: ScalarType.Int64));
        var ex = Assert.Throws<InvalidDataException>(() => HuggingFaceFormat.FromPretrained(_dir));
        Assert.That(ex!.Message, Does.Contain("cls.predictions.bias").And.Contain("Int64"));
    }

    [Test]
    public void AnUnknownTensorNameIsAnErrorUnlessLoadingNonStrictly()
    {
        using TransformerModel model = Create("gpt2");
        HuggingFaceFormat.Save(model, _dir);
        RewriteTensor("transformer.h.0.attn.rotary.inv_freq", torch.zeros(4));
        var ex = Assert.Throws<InvalidDataException>(() => HuggingFaceFormat.FromPretrained(_dir));
        Assert.That(ex!.Message, Does.Contain("transformer.h.0.attn.rotary.inv_freq"));
        PretrainedModel loose = HuggingFaceFormat.FromPretrained(_dir, new PretrainedOptions { Strict = false });
        Assert.That(loose.Report.Unexpected, Is.EqualTo(new[] { "transformer.h.0.attn.rotary.inv_freq" }));
        loose.Model.Dispose();
    }

    [Test]
    public void AMeanPoolingClassifierExportsUnderItsOwnArchitectureAndComesBackWithTheSameLogits()
    {
        using TransformerModel model = Create("bert_cls_mean");
        Perturb(model);
        HuggingFaceFormat.Save(model, _dir, new[] { "a", "b", "c" });
        JsonElement config = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "config.json"))).RootElement;
        Assert.That(config.GetProperty("architectures")[0].GetString(), Is.EqualTo("BertForMeanPooledSequenceClassification"));
        Assert.That(config.GetProperty("classifier_pooling").GetString(), Is.EqualTo("mean"));
        Assert.That(config.GetProperty("model_type").GetString(), Is.EqualTo("bert"), "BertModel.from_pretrained reads the encoder");
        JsonElement header = Header(Path.Combine(_dir, "model.safetensors"));
        AssertTensor(header, "bert.pooler.dense.weight", 32, 32);
        AssertTensor(header, "classifier.weight", 3, 32);

        var inputs = Inputs(pad: true);
        Tensor ours = Logits(model, inputs);
        PretrainedModel back = HuggingFaceFormat.FromPretrained(_dir);
        using TransformerModel loaded = back.Model;
        Assert.That(((BertForSequenceClassification)loaded).Options.Pooling, Is.EqualTo(SequencePooling.Mean));
        Assert.That(back.Labels, Is.EqualTo(new[] { "a", "b", "c" }));
        Tensor again = Logits(loaded, inputs);
        Assert.That((again - ours).abs().max().item<float>(), Is.LessThan(1e-6f), "export → import gives the same fp32 logits");

        // The comparison is not trivially true: the same weights pooled at [CLS] give other logits.
        using var cls = new BertForSequenceClassification(loaded.Config, new SequenceClassificationOptions { NumLabels = 3 });
        cls.load_state_dict(loaded.state_dict());
        Assert.That((Logits(cls, inputs) - ours).abs().max().item<float>(), Is.GreaterThan(1e-3f));
    }

    [Test]
    public void APoolingThatContradictsTheArchitectureIsAnErrorNamingTheField()
    {
        using TransformerModel model = Create("bert_cls");
        HuggingFaceFormat.Save(model, _dir);
        string path = Path.Combine(_dir, "config.json");
        File.WriteAllText(path, File.ReadAllText(path).Replace("\"classifier_pooling\": \"cls\"", "\"classifier_pooling\": \"mean\"", StringComparison.Ordinal));
        var ex = Assert.Throws<InvalidDataException>(() => HuggingFaceFormat.FromPretrained(_dir));
        Assert.That(ex!.Message, Does.Contain("classifier_pooling is 'mean'").And.Contain("expected cls for architecture BertForSequenceClassification"));
    }

    private static void AssertTensor(JsonElement header, string name, params long[] shape)
    {
        Assert.That(header.TryGetProperty(name, out JsonElement entry), Is.True, $"{name} is missing");
        Assert.That(entry.GetProperty("dtype").GetString(), Is.EqualTo("F32"), name);
        Assert.That(entry.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()), Is.EqualTo(shape), name);
    }

    /// <summary>Re-writes model.safetensors with <paramref name="name"/> set to <paramref name="value"/> (added if new).</summary>
    private void RewriteTensor(string name, Tensor value)
    {
        string path = Path.Combine(_dir, "model.safetensors");
        Dictionary<string, Tensor> tensors = TorchSharp.PyBridge.Safetensors.LoadStateDict(path);
        tensors[name] = value;
        SafetensorsWriter.Write(path, tensors.ToList());
    }
}
