using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Callbacks;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Training;

/// <summary>The Trainer with the elastic loader (Streaming-style shuffle, worker threads): sample-exact autoresume, the loader keys in the checkpoint, <c>time/data_wait</c>.</summary>
[TestFixture]
public class ElasticResumeTests
{
    private static DataLoader<Sample> ElasticLoader(int workers) =>
        new(new ListDataset<Sample>(TestData.Samples(44, 3)), 8, s => TestData.Collate(s), shuffle: true, seed: 11)
        {
            ShuffleAlgo = StreamingShuffle.Py1s, ShuffleBlockSize = 5, NumCanonicalNodes = 2, NumWorkers = workers, PrefetchFactor = 2,
        };

    private static Trainer Run(List<long> seen, int workers, CheckpointOptions? checkpoint = null, ICallback? extra = null, MemoryLogger? logger = null)
    {
        var callbacks = new List<ICallback> { new ActionCallback(Event.AfterDataloader, s => seen.AddRange(s.Batch!["index"].data<long>().ToArray())) };
        if (extra is not null)
        {
            callbacks.Add(extra);
        }

        return new Trainer(
            TestData.Model(initSeed: 4),
            new TrainerOptions { MaxDuration = "2ep", Device = "cpu", Seed = 42, ProgressBar = false, RunName = "elastic", Checkpoint = checkpoint ?? new CheckpointOptions() },
            ElasticLoader(workers),
            callbacks: callbacks,
            loggers: logger is null ? null : new[] { logger },
            optimizerFactory: p => torch.optim.SGD(p, 0.05));
    }

    [Test]
    public void AutoresumeMidEpochContinuesWithTheNextSampleOfTheSameOrder([Values(0, 2)] int workers)
    {
        var reference = new List<long>();
        var logger = new MemoryLogger();
        using (Trainer uninterrupted = Run(reference, workers: 0, logger: logger))
        {
            uninterrupted.Fit();
        }

        Assert.That(reference, Has.Count.EqualTo(2 * 44));
        Assert.That(reference.Take(44).Order(), Is.EqualTo(Enumerable.Range(0, 44).Select(i => (long)i)), "epoch 0 is a permutation");
        Assert.That(logger.Values("time/data_wait"), Has.Exactly(12).Items.And.All.GreaterThanOrEqualTo(0));
        Assert.That(logger.Values("time/data_wait_fraction"), Has.All.InRange(0.0, 1.0));

        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "1ba", Autoresume = true };
        var first = new List<long>();
        using (Trainer interrupted = Run(first, workers, options, TestData.StopAt(Event.BatchEnd, 3)))
        {
            interrupted.Fit();
        }

        string latest = Directory.GetFiles(folder, "*.ckpt", SearchOption.AllDirectories).OrderBy(File.GetLastWriteTimeUtc).Last();
        using (CheckpointReader reader = CheckpointFile.Open(latest))
        {
            SamplerPosition sampler = reader.Header.Sampler!;
            Assert.That((sampler.ShuffleAlgo, sampler.ShuffleSeed, sampler.NumCanonicalNodes, sampler.SampleInEpoch), Is.EqualTo(("py1s", (long?)11, (int?)2, 24L)));
        }

        var second = new List<long>();
        using (Trainer resumed = Run(second, workers, options))
        {
            resumed.Fit();
        }

        Assert.That(first.Concat(second), Is.EqualTo(reference), "the batches after resume equal an uninterrupted run's");
    }
}
