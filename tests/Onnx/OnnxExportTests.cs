using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Models;
using ComposerSharp.Models.Decoders;
using ComposerSharp.Onnx;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using NUnit.Framework;
using TorchSharp;
using Tensor = TorchSharp.torch.Tensor;

namespace ComposerSharp.Tests.Onnx;

/// <summary>
/// Every exportable family, written to ONNX and run by ONNX Runtime beside the model on fresh random weights and
/// padded random inputs (the verifier of OnnxExport): Float32 weights within 1e-4 (max |Δ| of logits), Float16
/// weights within 1e-2 × max |logit|; decoders also through the past-key/value graph.
/// </summary>
[TestFixture]
public sealed class OnnxExportTests
{
    private string _folder = null!;

    [SetUp]
    public void SetUp() => _folder = Directory.CreateTempSubdirectory("onnx-export-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_folder, recursive: true);

    private static TransformerConfig Tiny(int vocab = 97, double eps = 1e-12) => new()
    {
        NumLayers = 2, HiddenSize = 32, NumHeads = 4, IntermediateSize = 64, MaxSequenceLength = 32, VocabSize = vocab,
        Dropout = 0.1, AttentionDropout = 0.1, LayerNormEps = eps,
    };

    public static IEnumerable<TestCaseData> Families()
    {
        yield return new TestCaseData("bert_mlm", new Func<TransformerModel>(() => new BertForMaskedLM(Tiny()))).SetName("BertForMaskedLM");
        yield return new TestCaseData("bert_cls", new Func<TransformerModel>(() => new BertForSequenceClassification(Tiny(), new SequenceClassificationOptions { NumLabels = 3 }))).SetName("BertForSequenceClassification_cls");
        yield return new TestCaseData("bert_mean", new Func<TransformerModel>(() => new BertForSequenceClassification(Tiny(), new SequenceClassificationOptions { Pooling = SequencePooling.Mean }))).SetName("BertForSequenceClassification_mean");
        yield return new TestCaseData("gpt", new Func<TransformerModel>(() => new GptForCausalLM(Tiny(eps: 1e-5)))).SetName("GptForCausalLM_with_past");
    }

    [TestCaseSource(nameof(Families))]
    public void Float32ExportMatchesTheModelInOnnxRuntime(string name, Func<TransformerModel> create)
    {
        torch.manual_seed(11);
        using TransformerModel model = create();
        OnnxExportResult result = OnnxExport.ExportForInference(model, Path.Combine(_folder, name));
        Assert.That(File.Exists(Path.Combine(_folder, name, "config.json")), Is.True, "Composer's export_for_inference leaves the consumer's config beside model.onnx");
        TestContext.Out.WriteLine($"{name}: {result.Task}, {result.Bytes} bytes, max |Δ| {result.Verification!.MaxAbsDifference:G3} (max |logit| {result.Verification.MaxAbsReference:G3}) over {string.Join("; ", result.Verification.Cases)}");
        Assert.That(result.Verification.MaxAbsDifference, Is.LessThan(1e-4));
        Assert.That(model.training, Is.True, "the model's mode is restored");
        if (result.Task == OnnxTask.TextGenerationWithPast)
        {
            Assert.That(result.Verification.Cases, Has.Some.Contains("cached"));
        }
    }

    [Test]
    public void Float16WeightsHalveTheFileWithinTheStatedBound()
    {
        torch.manual_seed(12);
        using var model = new BertForSequenceClassification(Tiny());
        OnnxExportResult full = OnnxExport.Export(model, Path.Combine(_folder, "fp32.onnx"));
        OnnxExportResult half = OnnxExport.Export(model, Path.Combine(_folder, "fp16.onnx"), new OnnxExportOptions { Float16Weights = true });
        TestContext.Out.WriteLine($"fp32 {full.Bytes} B, fp16 {half.Bytes} B, fp16 max |Δ| {half.Verification!.MaxAbsDifference:G3} of max |logit| {half.Verification.MaxAbsReference:G3}");
        Assert.That(half.Bytes, Is.LessThan(full.Bytes * 0.7), "the weights are most of the file (the graph itself is ~20 kB here)");
        Assert.That(half.Verification.MaxAbsDifference, Is.LessThan(1e-2 * Math.Max(1.0, half.Verification.MaxAbsReference)));
        Assert.That(half.Verification.MaxAbsDifference, Is.GreaterThan(0.0), "the weights were rounded");
    }

    [Test]
    public void AlgorithmChangedModelsExportAsWhatTheyCompute()
    {
        torch.manual_seed(13);
        using var bert = new BertForMaskedLM(Tiny());
        Assert.That(Functional.ApplyLowPrecisionLayerNorm(bert, Precision.AmpBf16), Is.GreaterThan(0));
        Assert.That(Functional.ApplyGatedLinearUnits(bert), Is.EqualTo(2));
        Assert.That(Functional.ApplyAlibi(bert), Is.EqualTo(1));
        Functional.ApplyStochasticDepth(bert, dropRate: 0.3);
        OnnxExportResult result = OnnxExport.Export(bert, Path.Combine(_folder, "bert_all.onnx"));
        TestContext.Out.WriteLine($"LPLN + GLU + ALiBi + StochasticDepth BERT: max |Δ| {result.Verification!.MaxAbsDifference:G3}");
        Assert.That(result.Verification.MaxAbsDifference, Is.LessThan(1e-4));

        using var gpt = new GptForCausalLM(Tiny(eps: 1e-5));
        Functional.ApplyAlibi(gpt);
        Functional.ApplyGatedLinearUnits(gpt, actFn: GluActivation.Silu);
        OnnxExportResult decoder = OnnxExport.Export(gpt, Path.Combine(_folder, "gpt_alibi.onnx"));
        TestContext.Out.WriteLine($"ALiBi + GLU GPT with past: max |Δ| {decoder.Verification!.MaxAbsDifference:G3}");
        Assert.That(decoder.Verification.MaxAbsDifference, Is.LessThan(1e-4));
    }

    [Test]
    public void GreedyGenerationWithThePastKeyValueGraphGivesOurTokens()
    {
        torch.manual_seed(15);
        using var model = new GptForCausalLM(Tiny(eps: 1e-5) with { InitializerRange = 0.5 }); // large weights: varied tokens, not one repeated id
        model.eval();
        string path = Path.Combine(_folder, "gpt.onnx");
        OnnxExport.Export(model, path);
        long[] prompt = { 5, 17, 42, 8 };
        const int NewTokens = 12;

        // Ours: uncached greedy decoding, the whole sequence each step.
        var ours = new List<long>(prompt);
        using (torch.no_grad())
        {
            for (int i = 0; i < NewTokens; i++)
            {
                using var scope = torch.NewDisposeScope();
                Tensor logits = model.forward(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.tensor(ours.ToArray(), new long[] { 1, ours.Count }) }));
                ours.Add(logits[0, -1].argmax().item<long>());
            }
        }

        // ONNX Runtime: the prompt once, then one position per token with present.* fed back as past_key_values.*.
        using var session = new InferenceSession(path);
        int layers = model.Config.NumLayers, heads = model.Config.NumHeads, headDim = model.Config.HiddenSize / heads;
        var past = Enumerable.Range(0, 2 * layers).Select(_ => new DenseTensor<float>(Array.Empty<float>(), new[] { 1, heads, 0, headDim })).ToArray();
        var theirs = new List<long>(prompt);
        long[] step = prompt;
        for (int i = 0; i < NewTokens; i++)
        {
            var inputs = new List<NamedOnnxValue>
            {
                NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(step, new[] { 1, step.Length })),
                NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(Enumerable.Repeat(1L, theirs.Count).ToArray(), new[] { 1, theirs.Count })),
            };
            for (int l = 0; l < layers; l++)
            {
                inputs.Add(NamedOnnxValue.CreateFromTensor($"past_key_values.{l}.key", past[2 * l]));
                inputs.Add(NamedOnnxValue.CreateFromTensor($"past_key_values.{l}.value", past[(2 * l) + 1]));
            }

            using var results = session.Run(inputs);
            float[] logits = results.First(r => r.Name == "logits").AsTensor<float>().ToArray();
            int vocab = model.Config.VocabSize;
            long next = Enumerable.Range(0, vocab).MaxBy(v => logits[((step.Length - 1) * vocab) + v]);
            for (int l = 0; l < layers; l++)
            {
                var key = results.First(r => r.Name == $"present.{l}.key").AsTensor<float>();
                var value = results.First(r => r.Name == $"present.{l}.value").AsTensor<float>();
                past[2 * l] = new DenseTensor<float>(key.ToArray(), key.Dimensions.ToArray());
                past[(2 * l) + 1] = new DenseTensor<float>(value.ToArray(), value.Dimensions.ToArray());
            }

            theirs.Add(next);
            step = new[] { next };
        }

        TestContext.Out.WriteLine($"ours:  {string.Join(" ", ours)}\ntheirs: {string.Join(" ", theirs)}");
        Assert.That(ours.Skip(prompt.Length).Distinct().Count(), Is.GreaterThanOrEqualTo(4), "the comparison covers varied tokens");
        Assert.That(theirs, Is.EqualTo(ours));
    }

    public static IEnumerable<TestCaseData> LlamaShapes()
    {
        yield return new TestCaseData(new LlamaConfig(VocabSize: 101, HiddenSize: 32, IntermediateSize: 48, NumLayers: 2, NumHeads: 4, NumKeyValueHeads: 2, MaxPositionEmbeddings: 32)).SetName("Llama_GQA");
        yield return new TestCaseData(new LlamaConfig(VocabSize: 101, HiddenSize: 32, IntermediateSize: 48, NumLayers: 2, NumHeads: 4, NumKeyValueHeads: 1, MaxPositionEmbeddings: 32, TieWordEmbeddings: true, RopeScaling: new RopeScaling("llama3", 4.0, 1.0, 4.0, 16))).SetName("Llama_MQA_tied_llama3");
        yield return new TestCaseData(new LlamaConfig(VocabSize: 101, HiddenSize: 32, IntermediateSize: 48, NumLayers: 1, NumHeads: 2, NumKeyValueHeads: 2, MaxPositionEmbeddings: 32, AttentionBias: true, MlpBias: true, HeadDim: 8, RopeScaling: new RopeScaling("linear", 2.0))).SetName("Llama_MHA_biases_headdim_linear");
    }

    [TestCaseSource(nameof(LlamaShapes))]
    public void LlamaExportsWithAKeyValueHeadsCacheAndMatchesTheModel(LlamaConfig config)
    {
        torch.manual_seed(16);
        using var model = new LlamaForCausalLM(config with { InitializerRange = 0.2 });
        Assert.That(Functional.ApplyLowPrecisionRMSNorm(model, Precision.AmpBf16), Is.GreaterThan(0), "LowPrecisionRMSNorm exports as the Float32 RMSNorm it computes outside autocast");
        OnnxExportResult result = OnnxExport.Export(model, Path.Combine(_folder, "llama.onnx"));
        TestContext.Out.WriteLine($"{config.NumHeads} heads / {config.NumKeyValueHeads} kv heads: max |Δ| {result.Verification!.MaxAbsDifference:G3} (max |logit| {result.Verification.MaxAbsReference:G3}) over {string.Join("; ", result.Verification.Cases)}");
        Assert.That(result.Task, Is.EqualTo(OnnxTask.TextGenerationWithPast));
        Assert.That(result.Verification.MaxAbsDifference, Is.LessThan(1e-4));
        Assert.That(result.Verification.Cases, Has.Some.Contains("cached"));
    }

    [Test]
    public void AFailedVerificationLeavesNoFile()
    {
        torch.manual_seed(14);
        using var model = new GptForCausalLM(Tiny(eps: 1e-5));
        string path = Path.Combine(_folder, "strict.onnx");
        var ex = Assert.Throws<OnnxVerificationException>(() => OnnxExport.Export(model, path, new OnnxExportOptions { Tolerance = 0.0, Float16Weights = true }));
        Assert.That(ex!.Message, Does.Contain("Nothing was written"));
        Assert.That(Directory.GetFiles(_folder), Is.Empty);
    }

    [Test]
    public void AnUnknownModuleIsRefusedByName()
    {
        using var model = new BertForSequenceClassification(Tiny());
        model.register_parameter("extra_scale", new TorchSharp.Modules.Parameter(torch.ones(1)));
        var ex = Assert.Throws<NotSupportedException>(() => OnnxExport.Export(model, Path.Combine(_folder, "x.onnx")));
        Assert.That(ex!.Message, Does.Contain("extra_scale"));
        Assert.That(Directory.GetFiles(_folder), Is.Empty);
    }
}
