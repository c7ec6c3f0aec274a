using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Events;

/// <summary>Sample and token counts and microbatch splitting of <see cref="Batch"/>.</summary>
[TestFixture]
public class BatchTests
{
    private static Batch TokenBatch(long rows, long seqLen, bool withMask = true)
    {
        var tensors = new Dictionary<string, Tensor>
        {
            ["input_ids"] = torch.arange(rows * seqLen, dtype: ScalarType.Int64).reshape(rows, seqLen),
            ["labels"] = torch.arange(rows, dtype: ScalarType.Int64),
        };
        if (withMask)
        {
            // Row r has r % seqLen + 1 real tokens.
            tensors["attention_mask"] = torch.arange(seqLen).unsqueeze(0).lt(torch.arange(rows).remainder(seqLen).add(1).unsqueeze(1)).to(ScalarType.Int64);
        }

        return new Batch(tensors);
    }

    [Test]
    public void SplitIntoUnevenMicrobatchesKeepsRowsInOrder()
    {
        using var scope = torch.NewDisposeScope();
        Batch batch = TokenBatch(10, 6);
        IReadOnlyList<Batch> parts = batch.Split(4);

        Assert.That(parts.Select(p => p.NumSamples), Is.EqualTo(new[] { 4L, 4L, 2L }));
        Assert.That(parts.Select(p => p["input_ids"].shape), Is.EqualTo(new[] { new long[] { 4, 6 }, new long[] { 4, 6 }, new long[] { 2, 6 } }));
        long[] labels = parts.SelectMany(p => p["labels"].data<long>().ToArray()).ToArray();
        Assert.That(labels, Is.EqualTo(Enumerable.Range(0, 10).Select(i => (long)i)));
        Assert.That(parts[2]["input_ids"][1, 5].item<long>(), Is.EqualTo(59L), "last element of the last row");
        Assert.That(parts.Select(p => p.Keys.OrderBy(k => k, StringComparer.Ordinal)), Has.All.EqualTo(batch.Keys.OrderBy(k => k, StringComparer.Ordinal)));
    }

    [Test]
    public void MicrobatchTokensAddUpToTheBatchTokens()
    {
        using var scope = torch.NewDisposeScope();
        Batch batch = TokenBatch(10, 6);
        IReadOnlyList<Batch> parts = batch.Split(3);
        Assert.That(parts.Select(p => p.NumTokens), Is.EqualTo(new[] { 18L, 18L, 18L, 6L }));
        Assert.That(parts.Sum(p => p.NumTokens), Is.EqualTo(batch.NumTokens));
    }

    [Test]
    public void SplitViewsShareStorageWithTheBatch()
    {
        using var scope = torch.NewDisposeScope();
        Batch batch = TokenBatch(5, 2, withMask: false);
        Batch second = batch.Split(2)[1];
        second["labels"][0] = torch.tensor(100L);
        Assert.That(batch["labels"][2].item<long>(), Is.EqualTo(100L));
    }

    [Test]
    public void SplitLargerThanTheBatchReturnsItAndNonPositiveSizesThrow()
    {
        using var scope = torch.NewDisposeScope();
        Batch batch = TokenBatch(3, 2);
        Assert.That(batch.Split(3).Single(), Is.SameAs(batch));
        Assert.That(batch.Split(8).Single(), Is.SameAs(batch));
        Assert.Throws<ArgumentOutOfRangeException>(() => batch.Split(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => batch.Split(-2));
    }

    [Test]
    public void TokensDefaultToComposersCountOfInputIds()
    {
        using var scope = torch.NewDisposeScope();
        // Composer's DataSpec counts input_ids.shape[1] * batch size, padding included, even with an attention mask.
        Batch batch = TokenBatch(4, 5);
        Assert.That(batch["attention_mask"].sum().item<long>(), Is.EqualTo(10L), "the mask marks 1+2+3+4 real tokens");
        Assert.That((batch.NumSamples, batch.NumTokens), Is.EqualTo((4L, 20L)));

        var images = new Batch(new Dictionary<string, Tensor> { ["x"] = torch.randn(7, 3, 2, 2), ["y"] = torch.zeros(7, dtype: ScalarType.Int64) });
        Assert.That((images.NumSamples, images.NumTokens), Is.EqualTo((7L, 0L)));
    }

    [Test]
    public void AnExplicitTokenCountIsKept()
    {
        using var scope = torch.NewDisposeScope();
        Batch counted = TokenBatch(4, 5);
        var batch = new Batch(counted.ToDictionary(kv => kv.Key, kv => kv.Value), numTokens: counted["attention_mask"].sum().item<long>());
        Assert.That(batch.NumTokens, Is.EqualTo(10L));
        Assert.That(batch.To(torch.CPU).NumTokens, Is.EqualTo(10L));
    }

    [Test]
    public void MalformedBatchesAreRejectedNamingTheTensor()
    {
        using var scope = torch.NewDisposeScope();
        var mismatch = Assert.Throws<ArgumentException>(() => new Batch(new Dictionary<string, Tensor>
        {
            ["input_ids"] = torch.zeros(4, 3, dtype: ScalarType.Int64),
            ["labels"] = torch.zeros(5, dtype: ScalarType.Int64),
        }));
        Assert.That(mismatch!.Message, Does.Contain("'labels'").And.Contain("5 rows").And.Contain("4"));

        var scalar = Assert.Throws<ArgumentException>(() => new Batch(new Dictionary<string, Tensor> { ["loss_weight"] = torch.tensor(1f) }));
        Assert.That(scalar!.Message, Does.Contain("'loss_weight'"));
        Assert.Throws<ArgumentException>(() => new Batch(new Dictionary<string, Tensor>()));

        Batch ok = TokenBatch(2, 2);
        var missing = Assert.Throws<KeyNotFoundException>(() => _ = ok["pixel_values"]);
        Assert.That(missing!.Message, Does.Contain("'pixel_values'").And.Contain("input_ids"));
    }
}
