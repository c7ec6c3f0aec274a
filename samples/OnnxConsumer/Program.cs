// Classifies texts or fills [MASK] with a folder exported by `composersharp export --format onnx`, using only ONNX
// Runtime and Microsoft.ML.Tokenizers (BERT WordPiece: [CLS] text [SEP], as the model was trained).
//   dotnet run --project samples/OnnxConsumer -- EXPORT_FOLDER "first text" "second text" ...
// Prints one line per text: the label and its probability (text-classification), or the top 5 fills of each [MASK]
// (fill-mask); then the mean latency per text. Exit code 2 on a bad folder.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Microsoft.ML.Tokenizers;

if (args.Length < 2)
{
    Console.Error.WriteLine("usage: OnnxConsumer EXPORT_FOLDER TEXT [TEXT ...]");
    return 2;
}

string folder = args[0];
string[] texts = args[1..];
foreach (string required in new[] { "model.onnx", "config.json", "vocab.txt" })
{
    if (!File.Exists(Path.Combine(folder, required)))
    {
        Console.Error.WriteLine($"'{folder}' has no {required}; expected a folder written by `composersharp export --format onnx` of a BERT WordPiece model.");
        return 2;
    }
}

JsonNode config = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!;
string task = config["composersharp_onnx"]?["task"]?.GetValue<string>() ?? "text-classification";
int maxLength = config["max_position_embeddings"]?.GetValue<int>() ?? 512;
bool lowerCase = true;
string tokenizerConfig = Path.Combine(folder, "tokenizer_config.json");
if (File.Exists(tokenizerConfig))
{
    JsonNode tc = JsonNode.Parse(File.ReadAllText(tokenizerConfig))!;
    lowerCase = tc["do_lower_case"]?.GetValue<bool>() ?? true;
    maxLength = Math.Min(maxLength, tc["model_max_length"]?.GetValue<int>() ?? maxLength);
}

BertTokenizer tokenizer = BertTokenizer.Create(Path.Combine(folder, "vocab.txt"), new BertOptions { LowerCaseBeforeTokenization = lowerCase });
using var session = new InferenceSession(Path.Combine(folder, "model.onnx"));
bool tokenTypes = session.InputMetadata.ContainsKey("token_type_ids");
string[] vocabulary = File.ReadAllLines(Path.Combine(folder, "vocab.txt"));
var watch = Stopwatch.StartNew();
foreach (string text in texts)
{
    int[] ids = tokenizer.EncodeToIds(text, maxLength, addSpecialTokens: true, out _, out _).ToArray();
    long[] inputIds = ids.Select(i => (long)i).ToArray();
    var inputs = new List<NamedOnnxValue>
    {
        NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(inputIds, new[] { 1, ids.Length })),
        NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(Enumerable.Repeat(1L, ids.Length).ToArray(), new[] { 1, ids.Length })),
    };
    if (tokenTypes)
    {
        inputs.Add(NamedOnnxValue.CreateFromTensor("token_type_ids", new DenseTensor<long>(new long[ids.Length], new[] { 1, ids.Length })));
    }

    using var results = session.Run(inputs);
    float[] logits = results.First(r => r.Name == "logits").AsTensor<float>().ToArray();
    if (task == "text-classification")
    {
        float[] p = Softmax(logits);
        int best = Array.IndexOf(p, p.Max());
        string label = config["id2label"]?[best.ToString(CultureInfo.InvariantCulture)]?.GetValue<string>() ?? best.ToString(CultureInfo.InvariantCulture);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{label}\t{p[best]:F4}\t{text}"));
    }
    else if (task == "fill-mask")
    {
        int vocab = logits.Length / ids.Length;
        int maskId = tokenizer.MaskingTokenId;
        var fills = new List<string>();
        for (int position = 0; position < ids.Length; position++)
        {
            if (ids[position] != maskId)
            {
                continue;
            }

            float[] p = Softmax(logits.AsSpan(position * vocab, vocab).ToArray());
            fills.Add(string.Join(", ", Enumerable.Range(0, vocab).OrderByDescending(i => p[i]).Take(5)
                .Select(i => string.Create(CultureInfo.InvariantCulture, $"{(i < vocabulary.Length ? vocabulary[i] : "#" + i)} {p[i]:F3}"))));
        }

        Console.WriteLine(fills.Count == 0 ? $"(no [MASK])\t{text}" : $"{string.Join(" | ", fills)}\t{text}");
    }
    else
    {
        Console.Error.WriteLine($"'{folder}' holds a {task} model; this sample classifies texts and fills masks.");
        return 2;
    }
}

Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"OnnxConsumer: {texts.Length} texts, {watch.Elapsed.TotalMilliseconds / texts.Length:F2} ms per text (batch 1, ONNX Runtime {OrtEnv.Instance().GetVersionString()})"));
return 0;

static float[] Softmax(float[] logits)
{
    float max = logits.Max();
    double[] e = logits.Select(l => Math.Exp(l - max)).ToArray();
    double sum = e.Sum();
    return e.Select(v => (float)(v / sum)).ToArray();
}
