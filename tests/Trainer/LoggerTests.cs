using System.Text;
using System.Text.Json;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Loggers;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using Spectre.Console;

namespace ComposerSharp.Tests.Training;

/// <summary>The logger destinations and the run folder.</summary>
[TestFixture]
public class LoggerTests
{
    [Test]
    [Category(TestCategories.Slow)]
    public void RunFolderGathersJsonLinesTensorBoardAndCheckpoints()
    {
        string root = TestData.TempFolder();
        string runFolder = Path.Combine(root, "{run_name}");
        using (var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(24, 8), "2ep", eval: TestData.Loader(8, 8), runName: "folder-run", runFolder: runFolder))
        {
            trainer.Fit();
            Assert.That(trainer.RunFolder, Is.EqualTo(Path.Combine(root, "folder-run")));
        }

        string folder = Path.Combine(root, "folder-run");
        string[] lines = File.ReadAllLines(Path.Combine(folder, "metrics.jsonl"));
        var losses = new List<double>();
        double? accuracy = null;
        bool sawHyperparameters = false;
        foreach (string line in lines)
        {
            using JsonDocument doc = JsonDocument.Parse(line);
            if (doc.RootElement.TryGetProperty("hyperparameters", out JsonElement hp))
            {
                sawHyperparameters |= hp.GetProperty("run_name").GetString() == "folder-run";
                continue;
            }

            JsonElement metrics = doc.RootElement.GetProperty("metrics");
            if (metrics.TryGetProperty("loss/train/total", out JsonElement loss))
            {
                losses.Add(loss.GetDouble());
            }

            if (metrics.TryGetProperty("metrics/eval/Accuracy", out JsonElement acc))
            {
                accuracy = acc.GetDouble();
            }
        }

        Assert.That(sawHyperparameters, Is.True);
        Assert.That(losses, Has.Count.EqualTo(6).And.All.GreaterThan(0));
        Assert.That(accuracy, Is.InRange(0.0, 1.0));

        string[] events = Directory.GetFiles(Path.Combine(folder, "tensorboard"), "events.out.tfevents.*");
        Assert.That(events, Has.Length.EqualTo(1));
        string content = Encoding.Latin1.GetString(File.ReadAllBytes(events[0]));
        Assert.That(content, Does.Contain("loss/train/total").And.Contain("metrics/eval/Accuracy").And.Contain("hyperparameters"));

        Assert.That(File.Exists(Path.Combine(folder, "checkpoints", "ep2-ba6-rank0.ckpt")), Is.True, "checkpoints go into the run folder");
        Assert.That(File.Exists(Path.Combine(folder, "checkpoints", "latest-rank0.ckpt")), Is.True);
    }

    [Test]
    public void JsonLinesWritesNonFiniteValuesAsStrings()
    {
        string path = Path.Combine(TestData.TempFolder(), "m.jsonl");
        var logger = new JsonLinesLogger(path);
        logger.LogMetrics(new Dictionary<string, double> { ["a"] = double.NaN, ["b"] = 1.5 }, 3);
        logger.Close(new State(TestData.Model()), new Logger(new State(TestData.Model())));
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllLines(path).Single());
        Assert.That(doc.RootElement.GetProperty("step").GetInt64(), Is.EqualTo(3));
        Assert.That(doc.RootElement.GetProperty("metrics").GetProperty("a").GetString(), Is.EqualTo("NaN"));
        Assert.That(doc.RootElement.GetProperty("metrics").GetProperty("b").GetDouble(), Is.EqualTo(1.5));
    }

    [Test]
    public void JsonLinesWritesHyperparameterTextUnescaped()
    {
        string path = Path.Combine(TestData.TempFolder(), "m.jsonl");
        var logger = new JsonLinesLogger(path);
        logger.LogHyperparameters(new Dictionary<string, object?> { ["composersharp_version"] = "0.1.0+65abed2", ["run_name"] = "spam 'baseline' — été" });
        logger.Close(new State(TestData.Model()), new Logger(new State(TestData.Model())));
        string line = File.ReadAllLines(path).Single();
        Assert.That(line, Does.Contain("0.1.0+65abed2").And.Contain("spam 'baseline' — été"), line);
        using JsonDocument doc = JsonDocument.Parse(line);
        Assert.That(doc.RootElement.GetProperty("hyperparameters").GetProperty("composersharp_version").GetString(), Is.EqualTo("0.1.0+65abed2"));
    }

    [Test]
    public void ConsoleLoggerWritesMetricLinesThroughILoggerAtTheInterval()
    {
        var factory = new CapturingLoggerFactory();
        using (var trainer = new Trainer(TestData.Model(),
            new TrainerOptions { MaxDuration = "1ep", Device = "cpu", ProgressBar = false, LogToConsole = true, ConsoleLogInterval = "2ba" },
            TestData.Loader(32, 8), TestData.Loader(8, 8), loggerFactory: factory))
        {
            trainer.Fit();
        }

        string[] lines = factory.Entries.Select(l => l.Message).ToArray();
        string[] train = lines.Where(l => l.StartsWith("[train]", StringComparison.Ordinal) && l.Contains("loss/train/total", StringComparison.Ordinal)).ToArray();
        Assert.That(train, Has.Length.EqualTo(2), "batches 2 and 4 of 4");
        Assert.That(train[0], Does.Contain("[batch=2/4]"));
        Assert.That(lines.Count(l => l.StartsWith("[eval]", StringComparison.Ordinal) && l.Contains("metrics/eval/Accuracy", StringComparison.Ordinal)), Is.EqualTo(1));
        Assert.That(lines.Any(l => l.StartsWith("Hyperparameters:", StringComparison.Ordinal) && l.Contains("precision=fp32", StringComparison.Ordinal)), Is.True);
    }

    [Test]
    public void ProgressBarIsOffWhenStderrIsRedirectedAndDrawsOnAnInteractiveConsole()
    {
        Assert.That(new ProgressBarLogger().Enabled, Is.EqualTo(!Console.IsErrorRedirected));

        var writer = new StringWriter();
        IAnsiConsole console = InteractiveConsole(writer);
        console.Profile.Width = 200;
        var bar = new ProgressBarLogger(console);
        using (var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(24, 8), "2ep", loggers: new[] { bar }, eval: TestData.Loader(8, 8)))
        {
            trainer.Fit();
        }

        Assert.That(bar.Enabled, Is.True);
        Assert.That(bar.Value, Is.EqualTo(6), "6 of 6 batches");
        string output = writer.ToString();
        Assert.That(output, Does.Contain("train epoch 2/2 loss").And.Contain("eval/Accuracy").And.Contain("100%"));
    }

    [Test]
    public void WhenOutputIsAFilePlainProgressLinesShowTrainingAndEvaluation()
    {
        var log = new StringWriter();
        var bar = new ProgressBarLogger(enabled: false, plainOutput: log, plainInterval: TimeSpan.Zero);
        using (var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(24, 8), "2ep", loggers: new[] { bar }, eval: TestData.Loader(16, 8)))
        {
            trainer.Fit();
        }

        string[] lines = log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(bar.WritesPlainLines, Is.True);
        Assert.That(lines, Has.All.StartsWith("[progress] train epoch"));
        Assert.That(lines, Has.Some.Contains("| 3/6 (50.0%)"), "a line per batch at interval zero, with the bar's units");
        Assert.That(lines, Has.Some.Contains("eval batch 1/2"), "evaluation reports its own batches");
        Assert.That(lines.Count(l => l.Contains("| eval done", StringComparison.Ordinal)), Is.EqualTo(2), "one line at the end of each evaluation");
        Assert.That(lines[^1], Does.Contain("6/6 (100.0%)").And.Contain("training done"));
        Assert.That(lines.Any(l => l.Contains('\u001b')), Is.False, "no control sequences in a file");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void OnANarrowTerminalTheBarsDescriptionIsCutToOneLine()
    {
        var writer = new StringWriter();
        IAnsiConsole console = InteractiveConsole(writer);
        console.Profile.Width = 80;
        var bar = new ProgressBarLogger(console);
        using (var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(24, 8), "2ep", loggers: new[] { bar }, eval: TestData.Loader(8, 8)))
        {
            trainer.Fit();
        }

        Assert.That(writer.ToString(), Does.Contain("…"), "the long description (epoch, loss, eval metrics) was cut to the 28 columns left beside the bar");
    }

    /// <summary>An interactive, colourless console writing into <paramref name="writer"/>.</summary>
    private static IAnsiConsole InteractiveConsole(TextWriter writer) => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Ansi = AnsiSupport.Yes,
        ColorSystem = ColorSystemSupport.NoColors,
        Interactive = InteractionSupport.Yes,
        Out = new AnsiConsoleOutput(writer),
    });
}
