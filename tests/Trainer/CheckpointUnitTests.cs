using System.IO.Compression;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Callbacks;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// The checkpoint unit works from <see cref="State"/> alone: a <see cref="CheckpointSaver"/> driven by a bare
/// <see cref="Engine"/> (no Trainer) writes a checkpoint that <see cref="Checkpoint.Load"/> restores into another state.
/// </summary>
[TestFixture]
public class CheckpointUnitTests
{
    private static (State State, Engine Engine, Logger Logger) BareRun(int initSeed, double initScale, CheckpointSaver? saver = null)
    {
        var model = TestData.Model(initSeed: initSeed);
        var state = new State(model, torch.CPU, Precision.AmpFp16, "bare")
        {
            Optimizers = new List<torch.optim.Optimizer> { torch.optim.AdamW(model.parameters(), 0.01) },
            Callbacks = saver is null ? new List<ICallback>() : new List<ICallback> { saver },
            Scaler = new GradScaler(initScale),
        };
        var logger = new Logger(state);
        return (state, new Engine(state, logger), logger);
    }

    [Test]
    public void ACheckpointSaverSavesFromTheStateWithoutATrainer()
    {
        string folder = TestData.TempFolder();
        var saver = new CheckpointSaver(folder, "ba{batch}.ckpt", saveInterval: "1ba");
        (State state, Engine engine, _) = BareRun(initSeed: 3, initScale: 256, saver);
        engine.RunEvent(Event.Init);
        state.TrainDataloader = state.Dataloader = TestData.Loader(16, 8);
        state.DataloaderLabel = "train";
        state.MaxDuration = Time.FromBatch(2);
        state.PreviousTimestamp = state.Timestamp;
        state.Timestamp = state.Timestamp.ToNextBatch(8, 0, TimeSpan.FromMilliseconds(1));
        engine.RunEvent(Event.BatchCheckpoint);

        string written = saver.SavedCheckpoints.Single();
        Assert.That(Path.GetFileName(written), Is.EqualTo("ba1.ckpt"));
        (State restored, _, Logger restoredLogger) = BareRun(initSeed: 9, initScale: 512);
        Assert.That(TestData.BitwiseEqual(restored.Model, state.Model), Is.False, "different initial weights");
        Checkpoint.Load(restored, restoredLogger, written, new CheckpointOptions());
        TestData.AssertBitwiseEqual(restored.Model, state.Model);
        Assert.That((restored.Timestamp.Batch, restored.Timestamp.Sample), Is.EqualTo((1L, 8L)));
        Assert.That(restored.Scaler.Scale, Is.EqualTo(256.0), "the scaler lives on the state and is restored there");
        Assert.That(restored.PendingRngState, Is.Not.Null.And.Not.Empty, "the RNG state waits on the state for FitStart");
    }

    [Test]
    public void TheCheckpointSaverHasNoReferenceToTheTrainer()
    {
        const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
        Type saver = typeof(CheckpointSaver);
        IEnumerable<Type> used = saver.GetFields(all).Select(f => f.FieldType)
            .Concat(saver.GetProperties(all).Select(p => p.PropertyType))
            .Concat(saver.GetMethods(all).SelectMany(m => m.GetParameters().Select(p => p.ParameterType).Append(m.ReturnType)))
            .Concat(saver.GetConstructors(all).SelectMany(c => c.GetParameters().Select(p => p.ParameterType)));
        Assert.That(used, Has.None.EqualTo(typeof(Trainer)));
    }

    [Test]
    public void ASamplerPositionThatDisagreesWithTheTimestampIsRefused()
    {
        string folder = TestData.TempFolder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "3ba");
        trainer.Fit();
        string path = trainer.SaveCheckpoint(Path.Combine(folder, "edited.ckpt"));
        using (ZipArchive zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            ZipArchiveEntry entry = zip.GetEntry("checkpoint.json")!;
            JsonNode header;
            using (Stream s = entry.Open())
            {
                header = JsonNode.Parse(s)!;
            }

            header["sampler"]!["batch_in_epoch"] = 1;
            entry.Delete();
            using Stream w = zip.CreateEntry("checkpoint.json").Open();
            JsonSerializer.Serialize(w, header);
        }

        var ex = Assert.Throws<CheckpointException>(() => TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "3ba", checkpoint: new CheckpointOptions { LoadPath = path }));
        Assert.That(ex!.Message, Does.Contain("edited.ckpt").And.Contain("inconsistent").And.Contain("batch 1"));
    }

    [Test]
    public void ResumingWithOtherSchedulersWarns()
    {
        string folder = TestData.TempFolder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "3ba", schedulers: new[] { new ComposerSharp.Training.Optim.LinearWithWarmupScheduler("2ba") });
        trainer.Fit();
        string path = trainer.SaveCheckpoint(Path.Combine(folder, "scheduled.ckpt"));
        var logs = new CapturingLoggerFactory();
        using var resumed = TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "3ba", checkpoint: new CheckpointOptions { LoadPath = path }, loggerFactory: logs);
        Assert.That(logs.Warnings, Has.Some.Contains("LinearWithWarmupScheduler"));
    }
}
