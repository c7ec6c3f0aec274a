using System.IO.Compression;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Callbacks;
using ComposerSharp.Training.Checkpoints;
using ComposerSharp.Training.Optim;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Training;

/// <summary>Checkpoint content, atomic writes, damaged files, rotation, weights-only, required-on-load algorithms and exact resume.</summary>
[TestFixture]
public class CheckpointTests
{
    /// <summary>
    /// A run that exercises every piece of resumable state: dropout (RNG), AdamW (optimizer state), a cosine schedule
    /// with warmup, a shuffled loader, uneven microbatches and a stateful callback. It runs in deterministic mode
    /// because the resume tests compare weights bit for bit, which is promised only there (without it MKL may round
    /// the same product differently for different memory alignments, as on AMD EPYC).
    /// </summary>
    private static Trainer ResumableRun(List<long> seenSamples, CheckpointOptions? checkpoint = null, IEnumerable<ICallback>? extra = null, string? runName = null)
    {
        var record = new ActionCallback(Event.AfterDataloader, s => seenSamples.AddRange(s.Batch!["index"].data<long>().ToArray()));
        var callbacks = new List<ICallback> { record, new SpeedMonitor(windowSize: 2) };
        callbacks.AddRange(extra ?? Array.Empty<ICallback>());
        return new Trainer(
            TestData.Model(initSeed: 21, dropout: 0.3),
            new TrainerOptions
            {
                MaxDuration = "2ep", Device = "cpu", Seed = 42, DeviceTrainMicrobatchSize = 3, ProgressBar = false,
                Checkpoint = checkpoint ?? new CheckpointOptions(), RunName = runName ?? "resume-test", DeterministicMode = true,
            },
            TestData.Loader(40, 8, shuffle: true, seed: 5),
            callbacks: callbacks,
            optimizerFactory: p => torch.optim.AdamW(p, 0.01),
            schedulers: new[] { new CosineAnnealingWithWarmupScheduler("2ba", alphaF: 0.1) });
    }

    [TestCase(Event.BatchEnd, 3L, "1ba", 3L, TestName = "ResumeIsBitwiseExactFromMidEpoch")]
    [TestCase(Event.BatchEnd, 5L, "1ba", 5L, TestName = "ResumeIsBitwiseExactFromTheLastBatchOfAnEpoch")]
    [TestCase(Event.EpochEnd, 1L, "1ep", 0L, TestName = "ResumeIsBitwiseExactFromAnEpochBoundary")]
    [TestCase(Event.BatchEnd, 7L, "1ep", 2L, TestName = "ResumeIsBitwiseExactFromMidSecondEpochWithAFinalSave")]
    [Category(TestCategories.Slow)]
    public void ResumeIsBitwiseExact(Event stopEvent, long stopAt, string saveInterval, long batchInEpochAtResume)
    {
        var reference = new List<long>();
        using Trainer uninterrupted = ResumableRun(reference);
        uninterrupted.Fit();

        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = saveInterval, Autoresume = true };
        var first = new List<long>();
        long stoppedAt;
        using (Trainer interrupted = ResumableRun(first, options, new[] { TestData.StopAt(stopEvent, stopAt) }))
        {
            interrupted.Fit();
            stoppedAt = interrupted.State.Timestamp.Batch;
        }

        var second = new List<long>();
        var steps = new EventRecorder();
        using Trainer resumed = ResumableRun(second, options, new[] { steps });
        Assert.That(resumed.State.Timestamp.Batch, Is.EqualTo(stoppedAt), "autoresume loaded the latest checkpoint");
        Assert.That(resumed.State.Timestamp.BatchInEpoch, Is.EqualTo(batchInEpochAtResume));
        resumed.Fit();

        Assert.That(first.Concat(second), Is.EqualTo(reference), "same data order, no sample repeated or skipped");
        Assert.That(steps.Count(Event.AfterTrainBatch), Is.EqualTo(10 - stoppedAt), "no extra step");
        Assert.That(resumed.State.Timestamp, Is.EqualTo(uninterrupted.State.Timestamp with
        {
            TotalWallClock = resumed.State.Timestamp.TotalWallClock,
            IterationWallClock = resumed.State.Timestamp.IterationWallClock,
            EpochWallClock = resumed.State.Timestamp.EpochWallClock,
            BatchWallClock = resumed.State.Timestamp.BatchWallClock,
        }));
        TestData.AssertBitwiseEqual(resumed.Model, uninterrupted.Model, "the same weights, bit for bit");
        Assert.That(steps.Count(Event.EpochStart), Is.EqualTo(stoppedAt <= 5 ? 1 : 0), "EpochStart only for epochs begun after resuming");
    }

    [Test]
    public void CheckpointHoldsEverythingComposerSaves()
    {
        string path = Path.Combine(TestData.TempFolder(), "{run_name}-ba{batch}.ckpt");
        var stopper = new EarlyStopper("Accuracy", "eval");
        using var trainer = new Trainer(TestData.Model(),
            new TrainerOptions { MaxDuration = "2ep", Precision = Precision.AmpFp16, Device = "cpu", Seed = 99, EvalInterval = "2ba", RunName = "content", ProgressBar = false },
            TestData.Loader(32, 8, shuffle: true), TestData.Loader(8, 8),
            algorithms: new IAlgorithm[] { new ScaleHeadSurgery(1.5f) }, callbacks: new ICallback[] { stopper, new SpeedMonitor() },
            optimizerFactory: p => torch.optim.AdamW(p, 0.01), schedulers: new[] { new LinearWithWarmupScheduler("3ba") });
        trainer.Fit("3ba");
        string written = trainer.SaveCheckpoint(path);
        Assert.That(Path.GetFileName(written), Is.EqualTo("content-ba3.ckpt"));

        using CheckpointReader reader = CheckpointFile.Open(written);
        CheckpointHeader h = reader.Header;
        Assert.That(h.Format, Is.EqualTo(CheckpointFile.FormatName));
        Assert.That((h.RunName, h.Seed, h.Precision, h.Device, h.WeightsOnly), Is.EqualTo(("content", 99, "amp_fp16", "cpu", false)));
        Assert.That(h.Timestamp!.Batch, Is.EqualTo(3));
        Assert.That((h.Sampler!.Epoch, h.Sampler.BatchInEpoch, h.Sampler.SampleInEpoch, h.Sampler.BatchesPerEpoch), Is.EqualTo((0L, 3L, 24L, (long?)4)));
        Assert.That(h.Optimizers.Single().Type, Does.EndWith("AdamW"));
        Assert.That(h.Optimizers.Single().InitialLearningRates, Has.All.EqualTo(0.01));
        Assert.That(h.Optimizers.Single().LearningRates[0], Is.EqualTo(0.01 * 1.0).Within(1e-12), "the rate of batch 3 after warmup 3ba");
        Assert.That(h.Schedulers.Single(), Does.StartWith("LinearWithWarmupScheduler(t_warmup=3ba"));
        Assert.That(double.Parse(h.GradScaler!["scale"], System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(trainer.GradScaler.Scale));
        AlgorithmRecord algo = h.Algorithms.Single();
        Assert.That((algo.Name, algo.RequiredOnLoad, algo.Hyperparameters["scale"]), Is.EqualTo(("scale_head_surgery", true, "1.5")));
        Assert.That(h.Callbacks.Keys, Is.EquivalentTo(new[] { "composersharp.early_stopper/eval/Accuracy", "composersharp.speed_monitor" }));
        Assert.That(h.Metadata.Keys, Is.SupersetOf(new[] { "composersharp_version", "torchsharp_version", "dotnet_version", "os" }));
        Assert.That(h.Metadata["torchsharp_version"], Does.StartWith("0.107"));
        Assert.That(h.EntryHashes.Keys, Is.EquivalentTo(new[] { "model.bin", "optimizers/0.bin", "rng/cpu.bin" }));

        var logs = new CapturingLoggerFactory();
        var restoredStopper = new EarlyStopper("Accuracy", "eval");
        using var restored = new Trainer(TestData.Model(),
            new TrainerOptions
            {
                MaxDuration = "2ep", Precision = Precision.AmpFp16, Device = "cpu", Seed = 1, RunName = "content-2", ProgressBar = false,
                Checkpoint = new CheckpointOptions { LoadPath = written },
            },
            TestData.Loader(32, 8, shuffle: true), TestData.Loader(8, 8),
            algorithms: new IAlgorithm[] { new ScaleHeadSurgery(1.5f) }, callbacks: new ICallback[] { restoredStopper },
            optimizerFactory: p => torch.optim.AdamW(p, 0.5), loggerFactory: logs);
        Assert.That(restored.GradScaler.Scale, Is.EqualTo(trainer.GradScaler.Scale));
        Assert.That(restored.State.Seed, Is.EqualTo(99));
        Assert.That(restoredStopper.Best, Is.EqualTo(stopper.Best), "callback state restored");
        Assert.That(restored.State.Optimizers[0].ParamGroups.First().InitialLearningRate, Is.EqualTo(0.01), "the optimizer's settings come from the checkpoint");
        TestData.AssertBitwiseEqual(restored.Model, trainer.Model);
    }

    [Test]
    public void AFailedWriteLeavesThePreviousCheckpointLoadableAndNoTemporaryFile()
    {
        string folder = TestData.TempFolder();
        var crash = new CrashingStatefulCallback();
        var options = new CheckpointOptions { SaveFolder = folder, SaveFilename = "model.ckpt", SaveOverwrite = true, SaveInterval = "1ba" };
        using (var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "5ba", checkpoint: options,
            callbacks: new ICallback[] { crash, new ActionCallback(Event.BatchEnd, s => crash.Armed = s.Timestamp.Batch == 3) }))
        {
            var ex = Assert.Throws<CheckpointException>(() => trainer.Fit());
            Assert.That(ex!.Message, Does.Contain("model.ckpt").And.Contain("unchanged"));
            Assert.That(ex.InnerException!.Message, Does.Contain("simulated crash"));
        }

        Assert.That(Directory.GetFiles(folder).Select(Path.GetFileName), Is.EquivalentTo(new[] { "model.ckpt", "latest-rank0.ckpt" }), "no temporary file is left");
        Assert.That(CheckpointFile.Resolve(Path.Combine(folder, "latest-rank0.ckpt")), Is.EqualTo(Path.Combine(folder, "model.ckpt")));
        using var reloaded = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "5ba", checkpoint: new CheckpointOptions { LoadPath = Path.Combine(folder, "latest-rank0.ckpt") },
            callbacks: new[] { new CrashingStatefulCallback() });
        Assert.That(reloaded.State.Timestamp.Batch, Is.EqualTo(2), "the checkpoint of batch 2 is intact");
    }

    [Test]
    public void ACheckpointDamagedOnlyInOptimizerStateIsRefusedForResumeButLoadsForWeightsOnly()
    {
        string folder = TestData.TempFolder();
        using var source = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "1ba", optimizerFactory: p => torch.optim.AdamW(p, 0.01));
        source.Fit();
        string path = source.SaveCheckpoint(Path.Combine(folder, "optimizer-damaged.ckpt"));
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            ZipArchiveEntry entry = zip.GetEntry("optimizers/0.bin")!;
            byte[] content;
            using (var ms = new MemoryStream())
            {
                using (Stream es = entry.Open())
                {
                    es.CopyTo(ms);
                }

                content = ms.ToArray();
            }

            content[content.Length / 2] ^= 0xFF;
            entry.Delete();
            using Stream replaced = zip.CreateEntry("optimizers/0.bin").Open();
            replaced.Write(content);
        }

        var ex = Assert.Throws<CheckpointException>(() => TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "1ba", checkpoint: new CheckpointOptions { LoadPath = path }));
        Assert.That(ex!.Message, Does.Contain("optimizers/0.bin").And.Contain("damaged"));

        using var weights = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "1ba", checkpoint: new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true });
        TestData.AssertBitwiseEqual(weights.Model, source.Model, "evaluation and fine-tuning need only the weights, which are intact");
    }

    [Test]
    public void TruncatedForeignAndDamagedFilesGiveErrorsNamingTheFile()
    {
        string folder = TestData.TempFolder();
        using var source = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "1ba");
        source.Fit();
        string good = source.SaveCheckpoint(Path.Combine(folder, "good.ckpt"));
        byte[] bytes = File.ReadAllBytes(good);

        string truncated = Path.Combine(folder, "truncated.ckpt");
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        string foreign = Path.Combine(folder, "foreign.pt");
        File.WriteAllText(foreign, "not a checkpoint at all");
        string zipWithoutHeader = Path.Combine(folder, "other.zip");
        using (var zip = ZipFile.Open(zipWithoutHeader, ZipArchiveMode.Create))
        {
            zip.CreateEntry("readme.txt");
        }

        string damaged = Path.Combine(folder, "damaged.ckpt");
        byte[] flipped = (byte[])bytes.Clone();
        flipped[120] ^= 0xFF;
        File.WriteAllBytes(damaged, flipped);

        (string Path, string Expect)[] cases =
        {
            (truncated, "truncated"),
            (foreign, "not a ComposerSharp checkpoint"),
            (zipWithoutHeader, "no 'checkpoint.json' entry"),
            (damaged, "damaged"),
            (Path.Combine(folder, "missing.ckpt"), "does not exist"),
        };
        foreach ((string path, string expect) in cases)
        {
            var ex = Assert.Throws<CheckpointException>(
                () => TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "1ba", checkpoint: new CheckpointOptions { LoadPath = path }),
                path);
            Assert.That(ex!.Message, Does.Contain(path).And.Contain(expect), path);
            Assert.That(ex.FilePath, Is.EqualTo(path));
        }
    }

    [Test]
    public void RotationKeepsTheNewestAndTheLatestPointerFollows()
    {
        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "1ba", SaveNumCheckpointsToKeep = 2 };
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "5ba", checkpoint: options);
        trainer.Fit();
        Assert.That(Directory.GetFiles(folder).Select(Path.GetFileName),
            Is.EquivalentTo(new[] { "ep0-ba4-rank0.ckpt", "ep0-ba5-rank0.ckpt", "latest-rank0.ckpt" }));
        Assert.That(CheckpointFile.Resolve(Path.Combine(folder, "latest-rank0.ckpt")), Is.EqualTo(Path.Combine(folder, "ep0-ba5-rank0.ckpt")));
        CheckpointSaver saver = trainer.State.Callbacks.OfType<CheckpointSaver>().Single();
        Assert.That(saver.SavedCheckpoints.Select(Path.GetFileName), Is.EqualTo(new[] { "ep0-ba4-rank0.ckpt", "ep0-ba5-rank0.ckpt" }));
        Assert.That(saver.AllSavedCheckpoints, Has.Count.EqualTo(5));
        Assert.Throws<ArgumentOutOfRangeException>(() => new CheckpointSaver(numCheckpointsToKeep: 0));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void RotationHoldsForTheFolderAcrossResumesAndOrphanedTemporaryFilesAreRemoved()
    {
        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "1ba", SaveNumCheckpointsToKeep = 2, Autoresume = true };
        using (var first = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "6ba", checkpoint: options, runName: "rotate", callbacks: new[] { TestData.StopAt(Event.BatchEnd, 3) }))
        {
            first.Fit();
        }

        // What a process killed during a save leaves: the temporary file of a checkpoint that was never renamed.
        string orphan = Path.Combine(folder, $".ep0-ba4-rank0.ckpt.{Guid.NewGuid():N}.tmp");
        File.WriteAllBytes(orphan, new byte[1000]);
        var log = new CapturingLoggerFactory();
        using (var resumed = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "6ba", checkpoint: options, runName: "rotate", loggerFactory: log))
        {
            Assert.That(resumed.State.Timestamp.Batch, Is.EqualTo(3));
            resumed.Fit();
        }

        Assert.That(Directory.GetFiles(folder).Select(Path.GetFileName),
            Is.EquivalentTo(new[] { "ep0-ba5-rank0.ckpt", "ep1-ba6-rank0.ckpt", "latest-rank0.ckpt" }), "the first process's ba2 and ba3 are pruned too, and the orphan is gone");
        Assert.That(log.Warnings, Has.Some.Contains("did not finish"));
    }

    [Test]
    public void TheBestCheckpointByAMonitoredMetricIsKeptBesideTheLatest()
    {
        string folder = TestData.TempFolder();
        var logger = new MemoryLogger();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "100ba", SaveBest = new SaveBestOptions("CrossEntropy", "lt") };
        using (var trainer = TestData.Trainer(TestData.Model(dropout: 0.2), TestData.Loader(40, 4, shuffle: true), "12ba", eval: TestData.Loader(16, 8), evalInterval: "1ba",
                   checkpoint: options, loggers: new[] { logger }, optimizerFactory: p => torch.optim.SGD(p, 0.5)))
        {
            trainer.Fit();
            double[] ce = logger.Values("metrics/eval/CrossEntropy").ToArray();
            Assert.That(ce, Has.Length.GreaterThanOrEqualTo(12));
            CheckpointSaver saver = trainer.State.Callbacks.OfType<CheckpointSaver>().Single();
            Assert.That(saver.BestValue, Is.EqualTo(ce.Min()));
        }

        string best = Path.Combine(folder, "best-rank0.ckpt");
        Assert.That(File.Exists(best), Is.True);
        var reloaded = new MemoryLogger();
        using var check = TestData.Trainer(TestData.Model(dropout: 0.2), TestData.Loader(40, 4), "20ba", eval: TestData.Loader(16, 8), loggers: new[] { reloaded },
            checkpoint: new CheckpointOptions { LoadPath = best, LoadWeightsOnly = true });
        check.Eval();
        Assert.That(reloaded.Values("metrics/eval/CrossEntropy").Last(), Is.EqualTo(logger.Values("metrics/eval/CrossEntropy").Min()).Within(1e-6), "the best file holds the weights of the best evaluation");
        Assert.Throws<ArgumentException>(() => new CheckpointSaver(saveBest: new SaveBestOptions("Accuracy", "sideways")));
    }

    [Test]
    public void AutoresumeBehindALaterCheckpointSaysHowToContinueFromIt()
    {
        // As after a crash between writing a checkpoint and updating the 'latest' pointer: the pointer names batch 2,
        // the folder also holds batch 4. The resumed run must not overwrite it silently, and must not tell the user to
        // "resume with autoresume", which is what they did.
        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "2ba", Autoresume = true };
        using (var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(48, 8), "4ba", checkpoint: options, runName: "r"))
        {
            trainer.Fit();
        }

        CheckpointFile.WriteLatestPointer(Path.Combine(folder, "latest-rank0.ckpt"), Path.Combine(folder, "ep0-ba2-rank0.ckpt"));
        using var resumed = TestData.Trainer(TestData.Model(), TestData.Loader(48, 8), "6ba", checkpoint: options, runName: "r");
        Assert.That(resumed.State.Timestamp.Batch, Is.EqualTo(2));
        var ex = Assert.Throws<CheckpointException>(() => resumed.Fit());
        Assert.That(ex!.Message, Does.Contain("resumes at batch 2").And.Contain("ep0-ba4-rank0.ckpt").And.Contain("--load-path").And.Contain("--save-overwrite true"));
        Assert.That(ex.Message, Does.Not.Contain("resume with autoresume"));
        Assert.That(File.Exists(Path.Combine(folder, "ep0-ba4-rank0.ckpt")), Is.True, "the later checkpoint is kept");
    }

    [Test]
    public void DefaultIntervalSavesEachEpochAndRefusesToOverwrite()
    {
        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveFolder = Path.Combine(folder, "{run_name}") };
        using (var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ep", checkpoint: options, runName: "r1"))
        {
            trainer.Fit();
        }

        Assert.That(Directory.GetFiles(Path.Combine(folder, "r1")).Select(Path.GetFileName),
            Is.EquivalentTo(new[] { "ep1-ba2-rank0.ckpt", "ep2-ba4-rank0.ckpt", "latest-rank0.ckpt" }));
        var batches = new List<long>();
        var recorder = new ActionCallback(Event.BatchEnd, s => batches.Add(s.Timestamp.Batch));
        using var again = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ep", checkpoint: options, runName: "r1", callbacks: new[] { recorder });
        var ex = Assert.Throws<CheckpointException>(() => again.Fit());
        // Refused at FitStart, before any training (Composer's check), naming the file and how to allow it.
        Assert.That(batches, Is.Empty, "no batch may run before the conflict is reported");
        Assert.That(ex!.Message, Does.Match("ep[12]-ba[24]-rank0.ckpt").And.Contain("would overwrite").And.Contain("save_overwrite").And.Contain("SaveOverwrite"));

        // Resuming from the last checkpoint is not a conflict: nothing past batch 4 would be written.
        var resume = options with { LoadPath = Path.Combine(folder, "r1", "latest-rank0.ckpt") };
        using var resumed = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "3ep", checkpoint: resume, runName: "r1");
        Assert.DoesNotThrow(() => resumed.Fit());
        Assert.That(File.Exists(Path.Combine(folder, "r1", "ep3-ba6-rank0.ckpt")), Is.True);
    }

    [Test]
    public void WeightsOnlyCheckpointsLoadOnlyWhenAskedAndStartAtZero()
    {
        string folder = TestData.TempFolder();
        using var source = TestData.Trainer(TestData.Model(initSeed: 1), TestData.Loader(16, 8), "2ba");
        source.Fit();
        string weights = source.SaveCheckpoint(Path.Combine(folder, "weights.ckpt"), weightsOnly: true);
        string full = source.SaveCheckpoint(Path.Combine(folder, "full.ckpt"));

        var refused = Assert.Throws<CheckpointException>(() => TestData.Trainer(TestData.Model(initSeed: 2), TestData.Loader(16, 8), "2ba",
            checkpoint: new CheckpointOptions { LoadPath = weights }));
        Assert.That(refused!.Message, Does.Contain("only model weights").And.Contain("LoadWeightsOnly"));

        foreach (string path in new[] { weights, full })
        {
            using var fine = TestData.Trainer(TestData.Model(initSeed: 2), TestData.Loader(16, 8), "2ba",
                checkpoint: new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true });
            TestData.AssertBitwiseEqual(fine.Model, source.Model, path);
            Assert.That(fine.State.Timestamp.Batch, Is.Zero, "weights-only loading starts a new run");
            fine.Fit();
            Assert.That(fine.State.Timestamp.Batch, Is.EqualTo(2));
        }
    }

    [Test]
    public void RequiredOnLoadAlgorithmIsAddedWithAWarningOrRefusedWithAMessage()
    {
        string folder = TestData.TempFolder();
        using var source = TestData.Trainer(TestData.Model(initSeed: 4), TestData.Loader(16, 8), "1ba", algorithms: new[] { new ScaleHeadSurgery(3f) });
        source.Fit();
        string path = source.SaveCheckpoint(Path.Combine(folder, "surgery.ckpt"));

        // Re-created from the description through the resolver, applied at Init before the weights load, with a warning.
        var logs = new CapturingLoggerFactory();
        var resolver = (AlgorithmDescription d) => d.Name == "scale_head_surgery"
            ? new ScaleHeadSurgery(float.Parse(d.Hyperparameters["scale"], System.Globalization.CultureInfo.InvariantCulture))
            : null;
        using (var added = TestData.Trainer(TestData.Model(initSeed: 5), TestData.Loader(16, 8), "1ba", loggerFactory: logs,
            checkpoint: new CheckpointOptions { LoadPath = path, AlgorithmResolver = resolver }))
        {
            Assert.That(added.State.Algorithms.Select(a => a.Name), Is.EqualTo(new[] { "scale_head_surgery" }));
            Assert.That(((TinyMlp)added.Model).Head, Is.InstanceOf<ScaledHead>());
            TestData.AssertBitwiseEqual(added.Model, source.Model);
            Assert.That(logs.Warnings, Has.Some.Contains("Automatically added required-on-load algorithm scale_head_surgery"));
        }

        // No way to re-create it, or the policy says refuse: a message naming the algorithm to pass.
        var missing = Assert.Throws<InvalidOperationException>(() => TestData.Trainer(TestData.Model(initSeed: 5), TestData.Loader(16, 8), "1ba",
            checkpoint: new CheckpointOptions { LoadPath = path }));
        Assert.That(missing!.Message, Does.Contain("'scale_head_surgery'").And.Contain("pass it in `algorithms`").And.Contain("scale=3"));
        var refused = Assert.Throws<InvalidOperationException>(() => TestData.Trainer(TestData.Model(initSeed: 5), TestData.Loader(16, 8), "1ba",
            checkpoint: new CheckpointOptions { LoadPath = path, AlgorithmResolver = resolver, MissingAlgorithmPolicy = MissingAlgorithmPolicy.Refuse }));
        Assert.That(refused!.Message, Does.Contain("scale_head_surgery").And.Contain("lacks"));

        // Present already: loads as is.
        using (var present = TestData.Trainer(TestData.Model(initSeed: 5), TestData.Loader(16, 8), "1ba", algorithms: new[] { new ScaleHeadSurgery(3f) },
            checkpoint: new CheckpointOptions { LoadPath = path }))
        {
            TestData.AssertBitwiseEqual(present.Model, source.Model);
        }

        // Excluded: strict loading names the mismatching weights; non-strict loads what matches.
        var strict = Assert.Throws<CheckpointException>(() => TestData.Trainer(TestData.Model(initSeed: 5), TestData.Loader(16, 8), "1ba",
            checkpoint: new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true, LoadExcludeAlgorithms = new[] { "scale_head_surgery" } }));
        Assert.That(strict!.Message, Does.Contain("_head.scale").And.Contain("does not match"));
        using var lenient = TestData.Trainer(TestData.Model(initSeed: 5), TestData.Loader(16, 8), "1ba",
            checkpoint: new CheckpointOptions { LoadPath = path, LoadWeightsOnly = true, LoadStrictModelWeights = false, LoadExcludeAlgorithms = new[] { "scale_head_surgery" } });
        Assert.That(lenient.State.Algorithms, Is.Empty);
        Assert.That(lenient.Model.state_dict()["_fc1.weight"].eq(source.Model.state_dict()["_fc1.weight"]).all().item<bool>(), Is.True);
    }

    [Test]
    public void AutoresumeNeedsARunNameAndASaveFolder()
    {
        var noName = Assert.Throws<InvalidOperationException>(() => new Trainer(TestData.Model(), new TrainerOptions
        {
            Device = "cpu", ProgressBar = false, Checkpoint = new CheckpointOptions { Autoresume = true, SaveFolder = TestData.TempFolder() },
        }));
        Assert.That(noName!.Message, Does.Contain("RunName"));
        var noFolder = Assert.Throws<InvalidOperationException>(() => new Trainer(TestData.Model(), new TrainerOptions
        {
            Device = "cpu", ProgressBar = false, RunName = "x", Checkpoint = new CheckpointOptions { Autoresume = true },
        }));
        Assert.That(noFolder!.Message, Does.Contain("save folder"));
    }

    [Test]
    public void FileNamePlaceholders()
    {
        var state = new State(TestData.Model(), runName: "abc") { Timestamp = new Timestamp { Epoch = 2, Batch = 17, Sample = 136, Token = 9 } };
        Assert.That(PathTemplate.Expand("{run_name}/ep{epoch}-ba{batch}-sp{sample}-tok{token}-rank{rank}.ckpt", state), Is.EqualTo("abc/ep2-ba17-sp136-tok9-rank0.ckpt"));
        var ex = Assert.Throws<FormatException>(() => PathTemplate.Expand("{step}.ckpt", state));
        Assert.That(ex!.Message, Does.Contain("{step}").And.Contain("{batch}"));
    }

    /// <summary>A stateful callback whose state cannot be produced when armed: a write that fails half way.</summary>
    private sealed class CrashingStatefulCallback : Callback, IStatefulCallback
    {
        public bool Armed { get; set; }

        public string StateKey => "test.crashing";

        public IReadOnlyDictionary<string, object?> StateDict() =>
            Armed ? throw new InvalidOperationException("simulated crash while writing") : new Dictionary<string, object?> { ["ok"] = true };

        public void LoadStateDict(IReadOnlyDictionary<string, object?> state)
        {
        }
    }
}
