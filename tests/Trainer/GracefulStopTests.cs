using System.Diagnostics;
using System.Text.Json;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// A graceful stop: a cancelled Fit token (what <see cref="GracefulStop"/> makes of SIGINT/SIGTERM) finishes the
/// batch in progress, cuts an evaluation short, saves the end-of-training checkpoint at that batch and returns; the
/// saved run resumes exactly. The signal tests send real signals to real child processes.
/// </summary>
public class GracefulStopTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(180);

    /// <summary>True once <paramref name="delay"/> has passed since the first call (a few batches into training).</summary>
    private static bool ReadyAfter(ref Stopwatch? since, TimeSpan delay)
    {
        since ??= Stopwatch.StartNew();
        return since.Elapsed >= delay;
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ACancelledTokenStopsAfterTheBatchInProgressWithACheckpointAndTheRunResumesExactly()
    {
        string folder = TestData.TempFolder();
        using var cts = new CancellationTokenSource();
        var options = new CheckpointOptions { SaveFolder = folder, SaveInterval = "100ba", Autoresume = true };
        var events = new EventRecorder();
        var cancelAtBatch3 = new ActionCallback(Event.AfterTrainBatch, s =>
        {
            if (s.Timestamp.Batch == 2)
            {
                cts.Cancel(); // during the 3rd batch (timestamp advances after AfterTrainBatch)
            }
        });
        long stoppedAt;
        using (Trainer interrupted = TestData.Trainer(TestData.Model(dropout: 0.2), TestData.Loader(48, 8, shuffle: true), "2ep",
                   callbacks: new ICallback[] { cancelAtBatch3, events }, checkpoint: options, runName: "graceful", deterministicMode: true))
        {
            interrupted.Fit(cancellationToken: cts.Token);
            Assert.That(interrupted.StoppedByRequest, Is.True);
            stoppedAt = interrupted.State.Timestamp.Batch;
        }

        Assert.That(stoppedAt, Is.EqualTo(3), "the batch in progress finished, no further batch started");
        Assert.That(events.Count(Event.FitEnd), Is.EqualTo(1));
        Assert.That(Directory.GetFiles(folder, "*.ckpt"), Has.Some.Contains("ba3"), "the end-of-training save ran at the stopping batch");

        using Trainer resumed = TestData.Trainer(TestData.Model(dropout: 0.2), TestData.Loader(48, 8, shuffle: true), "2ep", checkpoint: options, runName: "graceful", deterministicMode: true);
        Assert.That(resumed.State.Timestamp.Batch, Is.EqualTo(3));
        resumed.Fit();
        Assert.That(resumed.StoppedByRequest, Is.False);
        using Trainer uninterrupted = TestData.Trainer(TestData.Model(dropout: 0.2), TestData.Loader(48, 8, shuffle: true), "2ep", runName: "graceful-ref", deterministicMode: true);
        uninterrupted.Fit();
        TestData.AssertBitwiseEqual(resumed.Model, uninterrupted.Model, "stopped + resumed = uninterrupted, bit for bit (deterministic mode)");
    }

    [Test]
    public void AStopRequestDuringEvaluationCutsItShortWithoutMetricsAndStopsTraining()
    {
        using var cts = new CancellationTokenSource();
        var logger = new MemoryLogger();
        long evalBatches = 0;
        var countEval = new ActionCallback(Event.EvalBatchEnd, s =>
        {
            evalBatches++;
            if (evalBatches == 2)
            {
                cts.Cancel();
            }
        });
        using Trainer trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "3ep", eval: TestData.Loader(80, 4), evalInterval: "2ba",
            callbacks: new ICallback[] { countEval }, loggers: new[] { logger });
        trainer.Fit(cancellationToken: cts.Token);

        Assert.That(evalBatches, Is.EqualTo(2), "the evaluation stopped at its next batch (20 batches would have run)");
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(2), "training stopped at the batch whose evaluation was interrupted");
        Assert.That(logger.Metrics.Select(m => m.Name), Has.None.StartsWith("metrics/eval/"), "a partial evaluation logs no metrics, and the final evaluation is skipped");
        Assert.That(trainer.StoppedByRequest, Is.True);
    }

    [Test]
    public void ATokenCancelledAfterFitReturnedChangesNothingAndTheNextFitTrainsAgain()
    {
        using var cts = new CancellationTokenSource();
        using Trainer trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ba");
        trainer.Fit(cancellationToken: cts.Token);
        cts.Cancel();
        Assert.That(trainer.StoppedByRequest, Is.False);
        trainer.Fit("1ba");
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(3));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void TheFirstRealSigtermStopsGracefullyWithExitCode143AndASecondOneAborts()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Ignore("POSIX signals are sent with kill(2); this test runs on Linux.");
        }

        ChildProcess.Result once = ChildProcess.Run("ComposerSharp.Tests.ProcessHost.dll", new[] { "sigterm-at-batch", "3", "1" }, Timeout);
        Assert.That(once.ExitCode, Is.EqualTo(143), once.ToString());
        JsonElement report = JsonDocument.Parse(once.Stdout.Trim().Split('\n').Last()).RootElement;
        Assert.That(report.GetProperty("stopped_by_request").GetBoolean(), Is.True, once.ToString());
        Assert.That(report.GetProperty("batch").GetInt64(), Is.EqualTo(3), once.ToString());
        Assert.That(report.GetProperty("checkpoints").EnumerateArray().Select(c => c.GetString()), Has.Some.Contains("ba3"), once.ToString());

        ChildProcess.Result twice = ChildProcess.Run("ComposerSharp.Tests.ProcessHost.dll", new[] { "sigterm-at-batch", "3", "2", "1500" }, Timeout);
        Assert.That(twice.ExitCode, Is.Not.Zero, twice.ToString());
        Assert.That(twice.Stdout, Does.Not.Contain("stopped_by_request"), "the second signal (1.5 s later) ended the process before Fit returned");

        // What `timeout` around `dotnet run` does: the same request delivered twice within milliseconds.
        ChildProcess.Result duplicated = ChildProcess.Run("ComposerSharp.Tests.ProcessHost.dll", new[] { "sigterm-at-batch", "3", "2", "50" }, Timeout);
        Assert.That(duplicated.ExitCode, Is.EqualTo(143), duplicated.ToString());
        Assert.That(JsonDocument.Parse(duplicated.Stdout.Trim().Split('\n').Last()).RootElement.GetProperty("stopped_by_request").GetBoolean(), Is.True, "a duplicate within the window is the same graceful stop");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void TheCliStopsOnARealSigtermWithACheckpointAndAResumeHintAndAutoresumeFinishesTheRun()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Ignore("POSIX signals are sent with kill(2); this test runs on Linux.");
        }

        string folder = TestData.TempFolder();
        string[] common =
        {
            "train", "--run-folder", folder, "--run-name", "sigterm", "--max-duration", "60ba", "--progress-bar", "false", "--eval-interval", "0",
            "--save-interval", "1000ba", "--set", "train_loader.dataset.num_samples=4096", "--set", "train_loader.batch_size=4",
            "--set", "eval_loader.dataset.num_samples=8", "--set", "model.max_sequence_length=64",
        };
        Stopwatch? trainingSeen = null;
        // SIGTERM, not SIGINT: a child started from a background job inherits SIGINT as ignored (POSIX), which .NET keeps.
        ChildProcess.Result stopped = ChildProcess.RunAndSignal("composersharp.dll", common, Timeout, Signals.SIGTERM,
            until: output => output.Contains("Training sigterm with precision", StringComparison.Ordinal) && ReadyAfter(ref trainingSeen, TimeSpan.FromSeconds(1)));
        Assert.That(stopped.ExitCode, Is.EqualTo(143), stopped.ToString());
        Assert.That(stopped.Stdout, Does.Contain("Stopped by SIGTERM after batch").And.Contain("--autoresume true"), stopped.ToString());
        Assert.That(stopped.Stdout, Does.Contain("Run summary"));
        Assert.That(Directory.GetFiles(Path.Combine(folder, "checkpoints"), "*.ckpt"), Is.Not.Empty, "a checkpoint at the stopping batch");
        Assert.That(File.Exists(Path.Combine(folder, "loss.png")), Is.True, "the plot is written on a graceful stop");

        ChildProcess.Result resumed = ChildProcess.Run("composersharp.dll", common.Append("--autoresume").Append("true"), Timeout);
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        Assert.That(resumed.Stdout, Does.Match(@"batches\s*[│|]?\s*60\b"), resumed.ToString());
    }
}
