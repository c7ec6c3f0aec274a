using System.Text.Json;
using ComposerSharp.Cli.Reporting;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;

namespace ComposerSharp.Tests.Training;

/// <summary>A resumed run continues metrics.jsonl without repeating steps, and the CLI's history covers the whole run.</summary>
public class ResumeLogTests
{
    [Test]
    public void AfterACrashAndAResumeEveryStepIsLoggedOnceAndTheHistoryCoversTheWholeRun()
    {
        string folder = TestData.TempFolder();
        var options = new CheckpointOptions { SaveInterval = "2ba", Autoresume = true };
        var crash = new ActionCallback(Event.BatchEnd, s =>
        {
            if (s.Timestamp.Batch == 5)
            {
                throw new IOException("simulated crash after batch 5 (last checkpoint: batch 4)");
            }
        });
        using (var first = TestData.Trainer(TestData.Model(), TestData.Loader(40, 4), "8ba", checkpoint: options, runName: "crash", runFolder: folder, callbacks: new[] { crash }))
        {
            Assert.Throws<IOException>(() => first.Fit());
        }

        string metrics = Path.Combine(folder, "metrics.jsonl");
        Assert.That(LossSteps(metrics), Does.Contain(4L), "the lost 5th batch (step 4) was logged before the crash");
        using (var resumed = TestData.Trainer(TestData.Model(), TestData.Loader(40, 4), "8ba", checkpoint: options, runName: "crash", runFolder: folder))
        {
            Assert.That(resumed.State.Timestamp.Batch, Is.EqualTo(4));
            resumed.Fit();
        }

        long[] steps = LossSteps(metrics);
        Assert.That(steps, Is.EqualTo(new long[] { 0, 1, 2, 3, 4, 5, 6, 7 }), "each step once, in order (batch k's loss is logged at step k)");

        var history = new MetricHistory();
        history.LoadEarlier(metrics, resumedBatch: 4);
        Assert.That(history.Series("loss/train/total").Select(p => p.Step), Is.EqualTo(new long[] { 0, 1, 2, 3 }));
        history.LoadEarlier(Path.Combine(folder, "missing.jsonl"), 4);
    }

    private static long[] LossSteps(string path) => File.ReadLines(path)
        .Select(l => JsonDocument.Parse(l).RootElement)
        .Where(e => e.TryGetProperty("metrics", out JsonElement m) && m.TryGetProperty("loss/train/total", out _))
        .Select(e => e.GetProperty("step").GetInt64())
        .ToArray();
}
