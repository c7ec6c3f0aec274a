using ComposerSharp.Cli;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Cli;

/// <summary>
/// <c>data prepare</c> then training on the shards with <c>streaming_text</c>: a run stopped at batch 3 and
/// autoresumed to batch 6 ends with the same weights, bit for bit, as an uninterrupted 6-batch run (the loader starts
/// at the saved position without reading the skipped samples); and the command's bad inputs exit 2.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public sealed class StreamingTextCliTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("streaming-cli-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void PrepareTrainStopAndAutoresumeReproduceTheUninterruptedRun()
    {
        string corpus = Directory.CreateDirectory(Path.Combine(_dir, "corpus")).FullName;
        var random = new Random(9);
        string[] words = { "whale", "sea", "ship", "captain", "harpoon", "the", "a", "of", "and", "Ishmael", "storm", "deck", "boat", "oil" };
        for (int f = 0; f < 10; f++)
        {
            File.WriteAllText(Path.Combine(corpus, $"part-{f}.txt"), string.Join(" ", Enumerable.Range(0, 150).Select(_ => words[random.Next(words.Length)])));
        }

        string mds = Path.Combine(_dir, "mds");
        var output = new StringWriter();
        Assert.That(CliApp.Run(new[] { "data", "prepare", "--input", corpus, "--output", mds, "--block-size", "32", "--compression", "zstd", "--size-limit", "4kb" }, output), Is.Zero, output.ToString());
        TestContext.Out.WriteLine(output.ToString());
        Assert.That(Directory.GetFiles(mds, "shard.*.mds.zstd"), Has.Length.GreaterThan(1));

        string config = Path.Combine(_dir, "run.yaml");
        File.WriteAllText(config, string.Join("\n",
            "seed: 5",
            "precision: fp32",
            "save_interval: 3ba",
            "model: {name: gpt, num_layers: 1, hidden_size: 32, num_heads: 2, intermediate_size: 64, max_sequence_length: 32}",
            "train_loader: {batch_size: 4, shuffle: true, dataset: {name: streaming_text, local: " + mds + "}}",
            "optimizer: {name: adamw, lr: 1.0e-3}") + "\n");
        string[] Args(string folder, string duration) => new[] { "train", "--config", config, "--run-folder", folder, "--max-duration", duration, "--progress-bar", "false", "--autoresume", "true" };

        string whole = Path.Combine(_dir, "whole"), resumed = Path.Combine(_dir, "resumed");
        Assert.That(CliApp.Run(Args(whole, "6ba"), new StringWriter()), Is.Zero);
        Assert.That(CliApp.Run(Args(resumed, "3ba"), new StringWriter()), Is.Zero);
        Assert.That(CliApp.Run(Args(resumed, "6ba"), output = new StringWriter()), Is.Zero, output.ToString());

        Dictionary<string, torch.Tensor> a = CheckpointFile.ReadModelState(Directory.GetFiles(Path.Combine(whole, "checkpoints"), "*-ba6-*.ckpt").Single());
        Dictionary<string, torch.Tensor> b = CheckpointFile.ReadModelState(Directory.GetFiles(Path.Combine(resumed, "checkpoints"), "*-ba6-*.ckpt").Single());
        Assert.That(b.Keys, Is.EquivalentTo(a.Keys));
        foreach ((string key, torch.Tensor t) in a)
        {
            Assert.That(b[key].bytes.ToArray(), Is.EqualTo(t.bytes.ToArray()), key);
        }
    }

    [Test]
    public void BadInputsExitTwoAndLeaveNothing()
    {
        string corpus = Directory.CreateDirectory(Path.Combine(_dir, "c")).FullName;
        File.WriteAllText(Path.Combine(corpus, "a.txt"), "a few words only");
        (int code, _, string error) = CliRun.Captured(new[] { "data", "prepare", "--input", Path.Combine(_dir, "missing"), "--output", Path.Combine(_dir, "o1") });
        Assert.That(code, Is.EqualTo(2));
        Assert.That(error, Does.Contain("missing"));
        (code, _, error) = CliRun.Captured(new[] { "data", "prepare", "--input", corpus, "--output", Path.Combine(_dir, "o2"), "--block-size", "4096" });
        Assert.That(code, Is.EqualTo(2));
        Assert.That(error, Does.Contain("fewer than one block"));
        (code, _, error) = CliRun.Captured(new[] { "data", "prepare", "--input", corpus, "--output", Path.Combine(_dir, "o3"), "--size-limit", "lots" });
        Assert.That(code, Is.EqualTo(2));
        Assert.That(error, Does.Contain("--size-limit is 'lots'"));
        Assert.That(Directory.GetDirectories(_dir).Select(Path.GetFileName), Is.EquivalentTo(new[] { "c" }), "nothing left behind");
    }
}
