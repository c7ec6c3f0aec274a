using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;

namespace ComposerSharp.Tests.Events;

/// <summary><see cref="Timestamp"/> advances like Composer's <c>to_next_batch</c>/<c>to_next_epoch</c>.</summary>
[TestFixture]
public class TimestampTests
{
    private static readonly TimeSpan Ms100 = TimeSpan.FromMilliseconds(100);

    [Test]
    public void WalkThroughBatchesAndEpochsUpdatesEveryCounter()
    {
        // Epoch 0: batches of 4, 4, 2 samples (32, 32, 16 tokens); epoch 1: two batches of 4 samples.
        var ts = new Timestamp();
        ts = ts.ToNextBatch(4, 32, Ms100);
        ts = ts.ToNextBatch(4, 32, 2 * Ms100);
        Assert.That((ts.Batch, ts.BatchInEpoch, ts.Sample, ts.SampleInEpoch, ts.Token, ts.TokenInEpoch), Is.EqualTo((2L, 2L, 8L, 8L, 64L, 64L)));
        ts = ts.ToNextBatch(2, 16, 3 * Ms100);
        Assert.That((ts.Epoch, ts.Batch, ts.BatchInEpoch, ts.Sample, ts.SampleInEpoch), Is.EqualTo((0L, 3L, 3L, 10L, 10L)));
        Assert.That(ts.TotalWallClock, Is.EqualTo(6 * Ms100));
        Assert.That(ts.EpochWallClock, Is.EqualTo(6 * Ms100));
        Assert.That(ts.BatchWallClock, Is.EqualTo(3 * Ms100));

        ts = ts.ToNextEpoch();
        Assert.That((ts.Epoch, ts.EpochInIteration, ts.Batch, ts.BatchInEpoch), Is.EqualTo((1L, 1L, 3L, 0L)));
        Assert.That((ts.Sample, ts.SampleInEpoch, ts.Token, ts.TokenInEpoch, ts.TokenInIteration), Is.EqualTo((10L, 0L, 80L, 0L, 80L)));
        Assert.That(ts.TotalWallClock, Is.EqualTo(6 * Ms100), "the total wall clock survives the epoch");
        Assert.That(ts.IterationWallClock, Is.EqualTo(6 * Ms100));
        Assert.That(ts.EpochWallClock, Is.EqualTo(TimeSpan.Zero));
        Assert.That(ts.BatchWallClock, Is.EqualTo(TimeSpan.Zero));

        ts = ts.ToNextBatch(4, 32, Ms100).ToNextBatch(4, 32, Ms100);
        Assert.That((ts.Batch, ts.BatchInEpoch, ts.Sample, ts.SampleInEpoch, ts.Token, ts.TokenInEpoch), Is.EqualTo((5L, 2L, 18L, 8L, 144L, 64L)));
        ts = ts.ToNextEpoch();
        Assert.That((ts.Epoch, ts.Batch, ts.Sample, ts.Token, ts.BatchInEpoch), Is.EqualTo((2L, 5L, 18L, 144L, 0L)));
        Assert.That(ts.TotalWallClock, Is.EqualTo(8 * Ms100));
    }

    [Test]
    public void ComparesWithTimeInEveryCounterUnit()
    {
        var ts = new Timestamp()
            .ToNextBatch(8, 100, TimeSpan.FromSeconds(1.6))
            .ToNextBatch(8, 100, TimeSpan.FromSeconds(1.6))
            .ToNextEpoch()
            .ToNextBatch(8, 100, TimeSpan.FromSeconds(1.6))
            .ToNextIteration();

        // iteration 1, epoch 1, batch 3, sample 24, token 300, 4.8 s -> 4 whole seconds
        (string now, string before, string after)[] cases =
        {
            ("1iter", "0iter", "2iter"),
            ("1ep", "0ep", "2ep"),
            ("3ba", "2ba", "4ba"),
            ("24sp", "23sp", "25sp"),
            ("300tok", "299tok", "301tok"),
            ("4sec", "3sec", "5sec"),
        };
        foreach ((string now, string before, string after) in cases)
        {
            Time n = Time.Parse(now), b = Time.Parse(before), a = Time.Parse(after);
            Assert.That(ts, Is.EqualTo(n).Using<Timestamp, Time>((x, y) => x == y), now);
            Assert.That(ts != b, Is.True, $"{ts.Get(b.Unit)} != {before}");
            Assert.That(ts >= n && ts <= n, Is.True, now);
            Assert.That(ts > b && ts >= b, Is.True, before);
            Assert.That(ts < a && ts <= a, Is.True, after);
            Assert.That(ts < n || ts > n, Is.False, now);
            Assert.That(ts.Get(n.Unit), Is.EqualTo(n), now);
        }

        Assert.Throws<ArgumentException>(() => _ = ts >= Time.FromDuration(0.5));
    }

    [Test]
    public void ToNextEpochAndIterationAddTheirDurationToTheRunningClocks()
    {
        var ts = new Timestamp().ToNextBatch(1, 0, TimeSpan.FromSeconds(2)).ToNextEpoch(TimeSpan.FromSeconds(3));
        Assert.That(ts.TotalWallClock, Is.EqualTo(TimeSpan.FromSeconds(5)));
        Assert.That(ts.IterationWallClock, Is.EqualTo(TimeSpan.FromSeconds(5)));
        Assert.That(ts.EpochWallClock, Is.EqualTo(TimeSpan.Zero));

        ts = ts.ToNextIteration(TimeSpan.FromSeconds(1));
        Assert.That((ts.Iteration, ts.Epoch, ts.EpochInIteration, ts.TokenInIteration), Is.EqualTo((1L, 1L, 0L, 0L)));
        Assert.That(ts.TotalWallClock, Is.EqualTo(TimeSpan.FromSeconds(6)));
        Assert.That(ts.IterationWallClock, Is.EqualTo(TimeSpan.Zero));
    }

    [Test]
    public void TimestampsAreImmutableValues()
    {
        var start = new Timestamp();
        Timestamp next = start.ToNextBatch(4, 8);
        Assert.That(start.Batch, Is.EqualTo(0));
        Assert.That(next, Is.EqualTo(new Timestamp { Batch = 1, BatchInEpoch = 1, Sample = 4, SampleInEpoch = 4, Token = 8, TokenInEpoch = 8, TokenInIteration = 8 }));
        Assert.That(next, Is.Not.EqualTo(start));
    }

    [Test]
    public void NegativeCountsOrDurationsAreRejected()
    {
        var ts = new Timestamp();
        Assert.Throws<ArgumentOutOfRangeException>(() => ts.ToNextBatch(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => ts.ToNextBatch(1, -5));
        Assert.Throws<ArgumentOutOfRangeException>(() => ts.ToNextBatch(1, 1, TimeSpan.FromSeconds(-1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => ts.ToNextEpoch(TimeSpan.FromSeconds(-1)));
    }
}
