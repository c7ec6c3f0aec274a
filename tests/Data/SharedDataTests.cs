using ComposerSharp.Data;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Data;

/// <summary>Loads the shared real data sets (ignored when ../shared/data is absent).</summary>
[TestFixture]
[Category(TestCategories.Slow)]
public class SharedDataTests
{
    private static readonly Gpt2Tokenizer Tokenizer = new();

    [Test]
    public void MobyDickLoadsAsTokenBlocksStartingAtChapterOne()
    {
        string folder = SharedData.Require("moby-dick");
        var train = TextBlockDataset.Load(new TextCorpusOptions { Path = folder, BlockSize = 128, Split = CorpusSplit.Train, EvalFraction = 0.05 }, Tokenizer);
        var eval = TextBlockDataset.Load(new TextCorpusOptions { Path = folder, BlockSize = 128, Split = CorpusSplit.Eval, EvalFraction = 0.05 }, Tokenizer);
        TestContext.Out.WriteLine($"moby-dick: {train.Files.Count} files, {train.Count} train and {eval.Count} eval blocks of 128 tokens");
        Assert.That(Path.GetFileName(train.Files[0]), Is.EqualTo("chapter_1.txt"));
        Assert.That(Path.GetFileName(train.Files[1]), Is.EqualTo("chapter_2.txt"));
        Assert.That(train.Count, Is.GreaterThan(1000));
        Assert.That(eval.Count, Is.EqualTo((long)Math.Round((train.Count + eval.Count) * 0.05)));
        string firstBlock = Tokenizer.Decode(train[0].Select(i => (int)i));
        string chapterOne = File.ReadAllText(train.Files[0]);
        Assert.That(chapterOne, Does.StartWith(firstBlock));
    }

    [Test]
    public void SpamAssassinLoadsWithTheHamSpamLabelMap()
    {
        string trainPath = SharedData.Require(Path.Combine("spam-assassin", "train.jsonl"));
        var train = JsonlClassificationDataset.Load(new JsonlClassificationOptions { Path = trainPath, MaxLength = 128 }, Tokenizer);
        var test = JsonlClassificationDataset.Load(
            new JsonlClassificationOptions { Path = Path.Combine(Path.GetDirectoryName(trainPath)!, "test.jsonl"), MaxLength = 128, Labels = train.Labels }, Tokenizer);
        TestContext.Out.WriteLine($"spam-assassin: train {string.Join(", ", train.ClassCounts())}, test {string.Join(", ", test.ClassCounts())} ({string.Join(", ", train.Labels)})");
        Assert.That(train.Labels, Is.EqualTo(new[] { "ham", "spam" }));
        Assert.That(train.Count, Is.EqualTo(4800));
        Assert.That(test.Count, Is.EqualTo(1214));
        Assert.That(Enumerable.Range(0, 4800).Max(i => train[i].InputIds.Length), Is.EqualTo(128));
        Assert.That(train.ClassCounts(), Has.All.GreaterThan(100));
    }
}
