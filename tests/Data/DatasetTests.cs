using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Data;

[TestFixture]
public class DatasetTests
{
    private static readonly Gpt2Tokenizer Tokenizer = new();
    private string _dir = string.Empty;

    [SetUp]
    public void CreateFolder()
    {
        _dir = Path.Combine(Path.GetTempPath(), "composersharp-data-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void DeleteFolder() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void RandomBytesNamedTxtAreRefusedNamingTheFile()
    {
        var random = new Random(Environment.TickCount);
        byte[] bytes = new byte[4096];
        random.NextBytes(bytes);
        bytes[10] = 0xFF; // never valid in UTF-8
        string path = Path.Combine(_dir, "noise.txt");
        File.WriteAllBytes(path, bytes);
        var ex = Assert.Throws<InvalidDataException>(() => TextBlockDataset.Load(new TextCorpusOptions { Path = _dir, BlockSize = 4 }, Tokenizer));
        Assert.That(ex!.Message, Does.Contain("noise.txt").And.Contain("not UTF-8 text"));

        File.WriteAllText(path, "text\0with a NUL");
        ex = Assert.Throws<InvalidDataException>(() => TextBlockDataset.Load(new TextCorpusOptions { Path = _dir, BlockSize = 4 }, Tokenizer));
        Assert.That(ex!.Message, Does.Contain("NUL"));

        File.WriteAllText(path, "\uFEFFplain text with a byte-order mark, long enough for a few blocks of four tokens each", new System.Text.UTF8Encoding(false));
        Assert.That(TextBlockDataset.Load(new TextCorpusOptions { Path = _dir, BlockSize = 4 }, Tokenizer).Count, Is.Positive);
    }

    private string Write(string name, string content)
    {
        string path = Path.Combine(_dir, name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, content);
        return path;
    }

    [Test]
    public void TextFolderBecomesFixedBlocksInNaturalFileOrder()
    {
        string[] texts = { "Chapter one. Call me Ishmael.", "Chapter two. The carpet-bag.", "Chapter ten. A bosom friend, at last." };
        Write("chapter_10.txt", texts[2]);
        Write("chapter_2.txt", texts[1]);
        Write("chapter_1.txt", texts[0]);
        Write("notes.md", "not part of the corpus");
        var expected = new List<long>();
        foreach (string t in texts)
        {
            expected.AddRange(Tokenizer.Encode(t).Select(i => (long)i));
            expected.Add(50256);
        }

        TextBlockDataset all = TextBlockDataset.Load(new TextCorpusOptions { Path = _dir, BlockSize = 4 }, Tokenizer);
        Assert.That(all.Files.Select(Path.GetFileName), Is.EqualTo(new[] { "chapter_1.txt", "chapter_2.txt", "chapter_10.txt" }));
        Assert.That(all.Count, Is.EqualTo(expected.Count / 4));
        Assert.That(Enumerable.Range(0, (int)all.Count).SelectMany(i => all[i]), Is.EqualTo(expected.Take((int)all.Count * 4)));

        TextBlockDataset train = TextBlockDataset.Load(new TextCorpusOptions { Path = _dir, BlockSize = 4, Split = CorpusSplit.Train, EvalFraction = 0.25 }, Tokenizer);
        TextBlockDataset eval = TextBlockDataset.Load(new TextCorpusOptions { Path = _dir, BlockSize = 4, Split = CorpusSplit.Eval, EvalFraction = 0.25 }, Tokenizer);
        Assert.That(train.Count + eval.Count, Is.EqualTo(all.Count));
        Assert.That(eval.Count, Is.EqualTo((long)Math.Round(all.Count * 0.25)));
        Assert.That(eval[0], Is.EqualTo(all[train.Count]), "eval is the tail of the corpus");
    }

    [Test]
    public void TextCorpusErrorsNameThePath()
    {
        string missing = Path.Combine(_dir, "no-such-folder");
        var e1 = Assert.Throws<FileNotFoundException>(() => TextBlockDataset.Load(new TextCorpusOptions { Path = missing }, Tokenizer))!;
        Assert.That(e1.Message, Does.Contain(missing));

        Write("readme.md", "no text files here");
        var e2 = Assert.Throws<InvalidDataException>(() => TextBlockDataset.Load(new TextCorpusOptions { Path = _dir }, Tokenizer))!;
        Assert.That(e2.Message, Does.Contain(_dir).And.Contain(".txt"));

        string small = Write("small.txt", "Too short.");
        var e3 = Assert.Throws<InvalidDataException>(() => TextBlockDataset.Load(new TextCorpusOptions { Path = small, BlockSize = 128 }, Tokenizer))!;
        Assert.That(e3.Message, Does.Contain(small).And.Contain("128"));

        string empty = Write("empty.txt", string.Empty);
        Assert.That(
            Assert.Throws<InvalidDataException>(() => TextBlockDataset.Load(new TextCorpusOptions { Path = empty, BlockSize = 2, AppendEndOfText = false }, Tokenizer))!.Message,
            Does.Contain(empty).And.Contain("0 tokens"));
    }

    [Test]
    public void JsonLinesRowsBecomeTruncatedClsPrefixedSamples()
    {
        string path = Write("train.jsonl", string.Join('\n',
            """{"text": "Win a free prize now, click here to claim your reward today!", "label": "spam"}""",
            "",
            """{"text": "Meeting moved to 3pm.", "label": "ham", "extra": 1}"""));
        JsonlClassificationDataset data = JsonlClassificationDataset.Load(new JsonlClassificationOptions { Path = path, MaxLength = 6 }, Tokenizer);
        Assert.That(data.Labels, Is.EqualTo(new[] { "ham", "spam" }), "inferred label map in ordinal order");
        Assert.That(data.Count, Is.EqualTo(2));
        Assert.That(data.ClassCounts(), Is.EqualTo(new long[] { 1, 1 }));
        TextClassificationSample first = data[0];
        Assert.That(first.Label, Is.EqualTo(1));
        Assert.That(first.InputIds, Has.Length.EqualTo(6));
        Assert.That(first.InputIds[0], Is.EqualTo(TokenVocabulary.Gpt2.ClsId));
        Assert.That(first.InputIds.Skip(1), Is.EqualTo(Tokenizer.Encode("Win a free prize now").Select(i => (long)i)));

        using var scope = torch.NewDisposeScope();
        Batch batch = new ClassificationCollator(data.Vocabulary, data.MaxLength).Collate(new[] { data[0], data[1] }, default);
        long secondLength = data[1].InputIds.Length;
        Assert.That(batch["attention_mask"][1].sum().item<long>(), Is.EqualTo(secondLength));
        Assert.That(batch.NumTokens, Is.EqualTo(6 + secondLength));

        // Numeric labels are matched by their JSON text against an explicit map.
        string numeric = Write("numeric.jsonl", """{"text": "a", "label": 1}""" + "\n" + """{"text": "b", "label": 0}""");
        var mapped = JsonlClassificationDataset.Load(new JsonlClassificationOptions { Path = numeric, Labels = new[] { "0", "1" } }, Tokenizer);
        Assert.That(new[] { mapped[0].Label, mapped[1].Label }, Is.EqualTo(new long[] { 1, 0 }));
    }

    [TestCase("""{"text": "fine", "label": "ham"}""" + "\n" + """{"text": "broken", "label": """, 2, "malformed JSON")]
    [TestCase("""{"text": "fine", "label": "ham"}""" + "\n\n" + """{"text": "odd", "label": "eggs"}""", 3, "label 'eggs' is not in the label map; expected one of: ham, spam")]
    [TestCase("""{"label": "ham"}""", 1, "missing string field 'text'")]
    [TestCase("""{"text": "no label"}""", 1, "missing field 'label'")]
    [TestCase("""["text", "label"]""", 1, "expected a JSON object")]
    public void BadJsonLinesNameTheFileAndLine(string content, int line, string problem)
    {
        string path = Write("bad.jsonl", content);
        var options = new JsonlClassificationOptions { Path = path, Labels = new[] { "ham", "spam" } };
        var e = Assert.Throws<InvalidDataException>(() => JsonlClassificationDataset.Load(options, Tokenizer))!;
        Assert.That(e.Message, Does.StartWith($"{path}:{line}: ").And.Contain(problem));
    }

    [Test]
    public void MissingOrEmptyJsonLinesFileIsReported()
    {
        string missing = Path.Combine(_dir, "absent.jsonl");
        Assert.That(Assert.Throws<FileNotFoundException>(() => JsonlClassificationDataset.Load(new JsonlClassificationOptions { Path = missing }, Tokenizer))!.Message, Does.Contain(missing));
        string empty = Write("empty.jsonl", "\n\n");
        Assert.That(Assert.Throws<InvalidDataException>(() => JsonlClassificationDataset.Load(new JsonlClassificationOptions { Path = empty }, Tokenizer))!.Message, Does.Contain(empty).And.Contain("no rows"));
    }

    [Test]
    public void SyntheticDatasetsAreDeterministicAndShaped()
    {
        var tokens = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 10, SequenceLength = 20, RegularVocabSize = 30, Branching = 2, Seed = 7 });
        long[] again = tokens[3];
        Assert.That(tokens[3], Is.EqualTo(again).And.Not.SameAs(again));
        Assert.That(tokens[3], Is.Not.EqualTo(tokens[4]));
        Assert.That(tokens[3], Has.Length.EqualTo(20).And.All.InRange(0, 29));
        Assert.That(new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 10, SequenceLength = 20, RegularVocabSize = 30, Seed = 8 })[3], Is.Not.EqualTo(tokens[3]));

        // Each token has at most Branching successors across the whole dataset.
        var successors = new Dictionary<long, HashSet<long>>();
        for (int i = 0; i < 10; i++)
        {
            long[] s = tokens[i];
            for (int t = 0; t + 1 < s.Length; t++)
            {
                (successors.TryGetValue(s[t], out var set) ? set : successors[s[t]] = new HashSet<long>()).Add(s[t + 1]);
            }
        }

        Assert.That(successors.Values.Max(s => s.Count), Is.LessThanOrEqualTo(2));

        var cls = new SyntheticClassificationDataset(new SyntheticClassificationOptions { NumSamples = 200, MinLength = 8, MaxLength = 16, RegularVocabSize = 100, KeywordsPerClass = 5 });
        for (int i = 0; i < 200; i++)
        {
            TextClassificationSample s = cls[i];
            Assert.That(s.InputIds, Has.Length.InRange(8, 16));
            Assert.That(s.InputIds[0], Is.EqualTo(cls.Vocabulary.ClsId));
            Assert.That(s.InputIds.Skip(1).Where(id => id < 10).Select(id => id / 5), Is.Not.Empty.And.All.EqualTo(s.Label), "keywords come from the sample's class only");
        }

        Assert.That(Enumerable.Range(0, 200).Count(i => cls[i].Label == 1), Is.InRange(70, 130));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SyntheticClassificationDataset(new SyntheticClassificationOptions { RegularVocabSize = 16, KeywordsPerClass = 8 }));
    }
}
