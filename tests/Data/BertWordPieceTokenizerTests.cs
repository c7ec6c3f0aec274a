using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Data;

/// <summary>A small BERT vocabulary, written by the tests, read as Hugging Face's BertTokenizer would read it.</summary>
internal static class SmallBertVocabulary
{
    /// <summary>The tokens in id order: the five specials among ordinary tokens, as in BERT's vocab.txt ([PAD] 0, [unused0] 1, …).</summary>
    public static readonly string[] Tokens =
    {
        "[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
        "the", "whale", "swim", "##s", "##ming", "un", "##able", "cafe", "!", ",", ".",
        "win", "money", "now", "free", "prize", "claim", "today", "cheap", "pills", "offer", "click", "here", "to",
        "meeting", "moved", "tuesday", "see", "you", "at", "lunch", "report", "is", "attached", "thanks", "for", "review",
    };

    /// <summary>Writes vocab.txt (and tokenizer_config.json when <paramref name="tokenizerConfig"/> is given) into a new folder under <paramref name="parent"/>.</summary>
    public static string WriteFolder(string parent, string? tokenizerConfig = null, IEnumerable<string>? tokens = null)
    {
        string folder = Path.Combine(parent, "bert-vocab-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "vocab.txt"), string.Join('\n', tokens ?? Tokens) + "\n");
        if (tokenizerConfig is not null)
        {
            File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), tokenizerConfig);
        }

        return folder;
    }

    public static int Id(string token) => Array.IndexOf(Tokens, token);
}

[TestFixture]
public class BertWordPieceTokenizerTests
{
    private string _dir = null!;

    [SetUp]
    public void CreateFolder()
    {
        _dir = Path.Combine(Path.GetTempPath(), "composersharp-wordpiece-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void DeleteFolder() => Directory.Delete(_dir, recursive: true);

    private static int[] Ids(params string[] tokens) => tokens.Select(SmallBertVocabulary.Id).ToArray();

    [Test]
    public void EncodesWithTheVocabularysOwnIdsLikeBertTokenizer()
    {
        var tokenizer = BertWordPieceTokenizer.Load(SmallBertVocabulary.WriteFolder(_dir));

        // Expected ids by hand from the vocabulary lines: lower-casing, punctuation split off, greedy longest-match
        // WordPiece with "##" continuations, accents stripped (uncased default), [UNK] for a word with no split.
        Assert.That(tokenizer.Encode("The whale swims!"), Is.EqualTo(Ids("the", "whale", "swim", "##s", "!")));
        Assert.That(tokenizer.Encode("Unable, swimming."), Is.EqualTo(Ids("un", "##able", ",", "swim", "##ming", ".")));
        Assert.That(tokenizer.Encode("Café xyz"), Is.EqualTo(Ids("cafe", "[UNK]")));
        Assert.That(tokenizer.Encode("the whale swims", 3), Is.EqualTo(Ids("the", "whale", "swim")), "the first tokens under a limit");
        Assert.That(tokenizer.Decode(Ids("whale")), Is.EqualTo("whale"));
        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.Decode(new[] { SmallBertVocabulary.Tokens.Length }));
    }

    [Test]
    public void ItsVocabularyKeepsBertsSpecialIds()
    {
        var tokenizer = BertWordPieceTokenizer.Load(Path.Combine(SmallBertVocabulary.WriteFolder(_dir), "vocab.txt"));
        TokenVocabulary v = tokenizer.Vocabulary;
        Assert.That((v.PadId, v.ClsId, v.EndOfTextId, v.SeparatorId, v.MaskId), Is.EqualTo((0, 3, 4, (int?)4, 5)));
        Assert.That(v.Size, Is.EqualTo(SmallBertVocabulary.Tokens.Length));
        Assert.That(v.SpecialIds, Is.EqualTo(new[] { 0, 2, 3, 4, 5 }), "[PAD], [UNK], [CLS], [SEP], [MASK]");
        Assert.That(v.RegularCount, Is.EqualTo(SmallBertVocabulary.Tokens.Length - 5));
        Assert.That(Enumerable.Range(0, v.RegularCount).Select(v.RegularId), Is.EqualTo(Enumerable.Range(0, v.Size).Where(id => !v.IsSpecial(id))), "the k-th ordinary id skips the specials");
        Assert.That(v.ClassificationInput(Ids("the", "whale", "swim"), 4), Is.EqualTo(new long[] { 3, 6, 7, 4 }), "[CLS] text [SEP], cut to the limit");
        Assert.That(tokenizer.VocabSha256, Has.Length.EqualTo(64));

        // ComposerSharp's own layout is unchanged: specials after the ordinary ids, the k-th ordinary id is k, no separator.
        var own = new TokenVocabulary(10);
        Assert.That(Enumerable.Range(0, 10).Select(own.RegularId), Is.EqualTo(Enumerable.Range(0, 10)));
        Assert.That(own.ClassificationInput(new[] { 1, 2, 3 }, 3), Is.EqualTo(new long[] { own.ClsId, 1, 2 }));
        Assert.That(own, Is.EqualTo(new TokenVocabulary(10)).And.Not.EqualTo(v));
    }

    [Test]
    public void TokenizerConfigSetsCasingAndSpecialTokens()
    {
        string cased = SmallBertVocabulary.WriteFolder(_dir, """{"tokenizer_class": "BertTokenizer", "do_lower_case": false, "cls_token": {"content": "[CLS]", "lstrip": false}}""");
        var tokenizer = BertWordPieceTokenizer.Load(cased);
        Assert.That(tokenizer.Options.LowerCase, Is.False);
        Assert.That(tokenizer.Encode("The whale"), Is.EqualTo(Ids("[UNK]", "whale")), "cased: 'The' is not in the vocabulary");

        // The recorded files rebuild the same tokenizer.
        var rebuilt = BertWordPieceTokenizer.FromFiles(tokenizer.Files, "test");
        Assert.That(rebuilt.VocabSha256, Is.EqualTo(tokenizer.VocabSha256));
        Assert.That(rebuilt.Options, Is.EqualTo(tokenizer.Options));
        Assert.That(rebuilt.Encode("The whale"), Is.EqualTo(tokenizer.Encode("The whale")));
    }

    [Test]
    public void BadVocabulariesAreClearErrorsThatNameFileAndToken()
    {
        string noMask = SmallBertVocabulary.WriteFolder(_dir, tokens: SmallBertVocabulary.Tokens.Where(t => t != "[MASK]"));
        var ex = Assert.Throws<InvalidDataException>(() => BertWordPieceTokenizer.Load(noMask));
        Assert.That(ex!.Message, Does.Contain(Path.Combine(noMask, "vocab.txt")).And.Contain("'[MASK]'"));

        string twice = SmallBertVocabulary.WriteFolder(_dir, tokens: SmallBertVocabulary.Tokens.Append("whale"));
        ex = Assert.Throws<InvalidDataException>(() => BertWordPieceTokenizer.Load(twice));
        Assert.That(ex!.Message, Does.Contain("'whale' twice").And.Contain("lines 8 and"));

        string gpt = SmallBertVocabulary.WriteFolder(_dir, """{"tokenizer_class": "GPT2Tokenizer"}""");
        ex = Assert.Throws<InvalidDataException>(() => BertWordPieceTokenizer.Load(gpt));
        Assert.That(ex!.Message, Does.Contain("tokenizer_class is 'GPT2Tokenizer'").And.Contain("tokenizer_config.json"));

        string badFlag = SmallBertVocabulary.WriteFolder(_dir, """{"do_lower_case": "yes"}""");
        ex = Assert.Throws<InvalidDataException>(() => BertWordPieceTokenizer.Load(badFlag));
        Assert.That(ex!.Message, Does.Contain("do_lower_case is \"yes\""));

        var missing = Assert.Throws<FileNotFoundException>(() => BertWordPieceTokenizer.Load(_dir));
        Assert.That(missing!.Message, Does.Contain(_dir).And.Contain("vocab.txt"));
    }

    [Test]
    public void ClassificationSamplesAreClsTextSepAndMaskingSparesTheSpecials()
    {
        var tokenizer = BertWordPieceTokenizer.Load(SmallBertVocabulary.WriteFolder(_dir));
        string path = Path.Combine(_dir, "data.jsonl");
        File.WriteAllText(path, """{"text": "The whale swims today", "label": "a"}""" + "\n" + """{"text": "win", "label": "b"}""" + "\n");
        var data = JsonlClassificationDataset.Load(new JsonlClassificationOptions { Path = path, MaxLength = 5 }, tokenizer);
        Assert.That(data[0].InputIds, Is.EqualTo(new long[] { 3, 6, 7, 8, 4 }), "[CLS] the whale swim [SEP]: cut to 5 with the separator kept");
        Assert.That(data[1].InputIds, Is.EqualTo(new long[] { 3, SmallBertVocabulary.Id("win"), 4 }));

        // Every real, non-special position is selected and replaced by a random token: none is special, and the
        // ordinary id between the specials ([unused0], 1) is among them.
        using var scope = torch.NewDisposeScope();
        TokenVocabulary v = tokenizer.Vocabulary;
        var samples = Enumerable.Range(0, 40).Select(i => v.ClassificationInput(Enumerable.Repeat(SmallBertVocabulary.Id("whale"), 30).ToArray(), 32)).ToList();
        var collator = new MlmCollator(v, new MlmCollatorOptions { MlmProbability = 1.0, MaskReplaceProbability = 0.0, RandomReplaceProbability = 1.0, Seed = 5 });
        Batch batch = collator.Collate(samples, new CollateContext(0, 0, 0, Enumerable.Range(0, 40).Select(i => (long)i).ToArray()));
        long[] ids = batch["input_ids"].data<long>().ToArray();
        long[] labels = batch["labels"].data<long>().ToArray();
        var replaced = ids.Where((id, i) => labels[i] != MlmCollator.IgnoreIndex).ToArray();
        Assert.That(replaced, Has.Length.EqualTo(40 * 30));
        Assert.That(replaced.Where(id => v.IsSpecial(id) || id >= v.Size), Is.Empty);
        Assert.That(replaced, Does.Contain(1L));
        Assert.That(ids.Where((id, i) => i % 32 == 0), Has.All.EqualTo(3L), "[CLS] is never selected");
    }
}
