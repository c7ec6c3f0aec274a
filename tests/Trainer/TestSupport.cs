using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>One labelled sample: 4 features, a class in 0..2 and its index in the dataset.</summary>
public sealed record Sample(float[] X, long Y, long Index);

/// <summary>Classification accuracy over argmax of logits [B, C] against labels "y" [B].</summary>
public sealed class Accuracy : IMetric
{
    private long _correct;
    private long _total;

    public string Name => "Accuracy";

    public void Update(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        _correct += outputs.argmax(1).eq(batch["y"]).sum().item<long>();
        _total += batch.NumSamples;
    }

    public double Compute() => _total == 0 ? double.NaN : (double)_correct / _total;

    public void Reset() => (_correct, _total) = (0, 0);
}

/// <summary>Mean cross-entropy over the samples seen.</summary>
public sealed class CrossEntropy : IMetric
{
    private double _sum;
    private long _count;

    public string Name => "CrossEntropy";

    public void Update(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        _sum += nn.functional.cross_entropy(outputs.to(ScalarType.Float32), batch["y"], reduction: nn.Reduction.Sum).item<float>();
        _count += batch.NumSamples;
    }

    public double Compute() => _count == 0 ? double.NaN : _sum / _count;

    public void Reset() => (_sum, _count) = (0, 0);
}

/// <summary>
/// A two-layer perceptron classifier, 4 → 8 → 3, with optional dropout. Records the autocast dtype seen inside
/// forward and loss, so tests can check where autocast is on.
/// </summary>
public sealed class TinyMlp : ComposerModel
{
    private readonly Linear _fc1;
    private readonly Dropout _dropout;
    private nn.Module<Tensor, Tensor> _head;

    public TinyMlp(double dropout = 0.0, bool castLossToFloat = true)
        : base("tiny_mlp")
    {
        _fc1 = nn.Linear(4, 8);
        _dropout = nn.Dropout(dropout);
        _head = nn.Linear(8, 3);
        CastLoss = castLossToFloat;
        RegisterComponents();
    }

    public bool CastLoss { get; }

    public List<ScalarType?> ForwardAutocast { get; } = new();

    public List<ScalarType?> LossAutocast { get; } = new();

    public nn.Module<Tensor, Tensor> Head => _head;

    /// <summary>Replaces the head (module surgery, as an algorithm would do).</summary>
    public void ReplaceHead(nn.Module<Tensor, Tensor> head)
    {
        _head = head;
        register_module("_head", null!);
        register_module("_head", head);
    }

    public override Tensor forward(Batch batch)
    {
        ForwardAutocast.Add(Autocast.ActiveDtype(DeviceType.CPU));
        return _head.call(_dropout.call(nn.functional.relu(_fc1.call(batch["x"]))));
    }

    public override Tensor Loss(Tensor outputs, Batch batch)
    {
        LossAutocast.Add(Autocast.ActiveDtype(DeviceType.CPU));
        if (!CastLoss)
        {
            // A loss returned in the outputs' low precision (autocast computes cross-entropy in Float32 itself).
            return nn.functional.cross_entropy(outputs, batch["y"]).to(outputs.dtype);
        }

        return nn.functional.cross_entropy(outputs.to(ScalarType.Float32), batch["y"]);
    }

    public override IReadOnlyList<IMetric> GetMetrics(bool isTrain) =>
        isTrain ? new IMetric[] { new Accuracy() } : new IMetric[] { new Accuracy(), new CrossEntropy() };
}

/// <summary>A head wrapped with a learned scale: changes the model's structure (new key "_head.scale").</summary>
public sealed class ScaledHead : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> inner;
    private readonly Parameter scale;

    public ScaledHead(nn.Module<Tensor, Tensor> inner, float initialScale)
        : base("scaled_head")
    {
        this.inner = inner;
        scale = nn.Parameter(torch.full(1, initialScale));
        RegisterComponents();
    }

    public override Tensor forward(Tensor input) => inner.call(input) * scale;
}

/// <summary>
/// A required-on-load algorithm that does module surgery at Init: wraps the TinyMlp head in a <see cref="ScaledHead"/>.
/// </summary>
public sealed class ScaleHeadSurgery : Algorithm
{
    public ScaleHeadSurgery(float scale = 2f) => Scale = scale;

    public float Scale { get; }

    public override string Name => "scale_head_surgery";

    public override bool RequiredOnLoad => true;

    public override bool Match(Event e, State state) => e == Event.Init;

    public override int? Apply(Event e, State state, Logger logger)
    {
        var model = (TinyMlp)state.Model;
        model.ReplaceHead(new ScaledHead(model.Head, Scale));
        return 0;
    }

    public override AlgorithmDescription Describe() =>
        new(Name, new Dictionary<string, string> { ["scale"] = Scale.ToString(System.Globalization.CultureInfo.InvariantCulture) });
}

/// <summary>Records every event with the timestamp, the batch size in State.Batch, and a parameter snapshot.</summary>
public sealed class EventRecorder : ICallback
{
    public List<Event> Events { get; } = new();

    public List<(Event Event, long Batch, long? BatchSamples)> Details { get; } = new();

    public int Count(Event e) => Events.Count(x => x == e);

    public void RunEvent(Event e, State state, Logger logger)
    {
        Events.Add(e);
        Details.Add((e, state.Timestamp.Batch, state.Batch?.NumSamples));
    }

    public void Close(State state, Logger logger)
    {
    }
}

/// <summary>Runs an action at one event (for tests that need to act at a precise point of the loop).</summary>
public sealed class ActionCallback : ICallback
{
    private readonly Event _event;
    private readonly Action<State> _action;

    public ActionCallback(Event e, Action<State> action) => (_event, _action) = (e, action);

    public void RunEvent(Event e, State state, Logger logger)
    {
        if (e == _event)
        {
            _action(state);
        }
    }

    public void Close(State state, Logger logger)
    {
    }
}

/// <summary>Keeps every metric logged, in order.</summary>
public sealed class MemoryLogger : ILoggerDestination
{
    public List<(string Name, double Value, long Step)> Metrics { get; } = new();

    public List<IReadOnlyDictionary<string, object?>> Hyperparameters { get; } = new();

    public IEnumerable<double> Values(string name) => Metrics.Where(m => m.Name == name).Select(m => m.Value);

    public void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        foreach ((string k, double v) in metrics)
        {
            Metrics.Add((k, v, step));
        }
    }

    public void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters) => Hyperparameters.Add(hyperparameters);

    public void RunEvent(Event e, State state, Logger logger)
    {
    }

    public void Close(State state, Logger logger)
    {
    }
}

/// <summary>A clock the test advances by hand.</summary>
public sealed class ManualClock : TimeProvider
{
    private long _ticks;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override long GetTimestamp() => _ticks;

    public void Advance(TimeSpan by) => _ticks += by.Ticks;
}

/// <summary>A dataloader of unknown length (a stream), for the duration rules.</summary>
public sealed class StreamingLoader(IDataLoader inner) : IDataLoader
{
    public long? BatchesPerEpoch => null;

    public long? SamplesPerEpoch => null;

    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0) => inner.GetEpoch(epoch, skipBatches);
}

/// <summary>Builders for data, models and trainers used across the Trainer tests.</summary>
public static class TestData
{
    /// <summary>
    /// <paramref name="count"/> samples of a 3-class problem: x ~ N(0, 1)^4 from a seeded .NET generator, label =
    /// argmax of a fixed linear map of x (learnable, not trivially constant).
    /// </summary>
    public static List<Sample> Samples(int count, int seed = 3)
    {
        var rng = new Random(seed);
        var samples = new List<Sample>(count);
        for (int i = 0; i < count; i++)
        {
            var x = new float[4];
            for (int j = 0; j < 4; j++)
            {
                double u1 = 1.0 - rng.NextDouble();
                double u2 = rng.NextDouble();
                x[j] = (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }

            double s0 = x[0] + x[1];
            double s1 = x[2] - x[0];
            double s2 = x[3] - x[1];
            long y = s0 >= s1 && s0 >= s2 ? 0 : s1 >= s2 ? 1 : 2;
            samples.Add(new Sample(x, y, i));
        }

        return samples;
    }

    /// <summary>Collates samples into x Float32 [B, 4], y Int64 [B], index Int64 [B] (and input_ids Int64 [B, tokens] when <paramref name="tokensPerSample"/> &gt; 0).</summary>
    public static Batch Collate(IReadOnlyList<Sample> samples, int tokensPerSample = 0)
    {
        var flat = new float[samples.Count * 4];
        for (int i = 0; i < samples.Count; i++)
        {
            Array.Copy(samples[i].X, 0, flat, i * 4, 4);
        }

        var tensors = new Dictionary<string, Tensor>
        {
            ["x"] = torch.tensor(flat).reshape(samples.Count, 4),
            ["y"] = torch.tensor(samples.Select(s => s.Y).ToArray()),
            ["index"] = torch.tensor(samples.Select(s => s.Index).ToArray()),
        };
        if (tokensPerSample > 0)
        {
            tensors["input_ids"] = torch.zeros(samples.Count, tokensPerSample, dtype: ScalarType.Int64);
        }

        return new Batch(tensors);
    }

    public static DataLoader<Sample> Loader(int count, int batchSize, bool shuffle = false, bool dropLast = false, long seed = 0, int dataSeed = 3, int tokensPerSample = 0) =>
        new(new ListDataset<Sample>(Samples(count, dataSeed)), batchSize, s => Collate(s, tokensPerSample), shuffle, dropLast, seed);

    /// <summary>A TinyMlp whose initial weights depend only on <paramref name="initSeed"/>.</summary>
    public static TinyMlp Model(int initSeed = 7, double dropout = 0.0, bool castLossToFloat = true)
    {
        torch.manual_seed(initSeed);
        return new TinyMlp(dropout, castLossToFloat);
    }

    /// <summary>All parameters, flattened and concatenated, as float64 values.</summary>
    public static double[] Weights(nn.Module model)
    {
        using var scope = torch.NewDisposeScope();
        return torch.cat(model.parameters().Select(p => p.detach().flatten().to(ScalarType.Float64)).ToArray()).data<double>().ToArray();
    }

    /// <summary>All parameters' gradients, flattened and concatenated, as float64 values.</summary>
    public static double[] Gradients(nn.Module model)
    {
        using var scope = torch.NewDisposeScope();
        return torch.cat(model.parameters().Select(p => p.grad!.flatten().to(ScalarType.Float64)).ToArray()).data<double>().ToArray();
    }

    /// <summary>Whether every parameter of <paramref name="a"/> equals the one of <paramref name="b"/> bit for bit.</summary>
    public static bool BitwiseEqual(nn.Module a, nn.Module b)
    {
        Parameter[] pa = a.parameters().ToArray();
        Parameter[] pb = b.parameters().ToArray();
        if (pa.Length != pb.Length)
        {
            return false;
        }

        for (int i = 0; i < pa.Length; i++)
        {
            byte[] x = pa[i].detach().cpu().bytes.ToArray();
            byte[] y = pb[i].detach().cpu().bytes.ToArray();
            if (!x.AsSpan().SequenceEqual(y))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// Asserts <see cref="BitwiseEqual(nn.Module, nn.Module)"/>; a failure names the first parameter that differs and
    /// its first differing values.
    /// </summary>
    public static void AssertBitwiseEqual(nn.Module actual, nn.Module expected, string? message = null)
    {
        if (BitwiseEqual(actual, expected))
        {
            return;
        }

        string prefix = $"{message}{(message is null ? "" : ": ")}not bitwise equal: ";
        (string Name, Parameter Value)[] pa = actual.named_parameters().ToArray();
        (string Name, Parameter Value)[] pb = expected.named_parameters().ToArray();
        if (pa.Length != pb.Length)
        {
            Assert.Fail($"{prefix}{pa.Length} parameters, expected {pb.Length}");
        }

        for (int i = 0; i < pa.Length; i++)
        {
            if (!pa[i].Value.detach().cpu().bytes.ToArray().AsSpan().SequenceEqual(pb[i].Value.detach().cpu().bytes.ToArray()))
            {
                Assert.Fail($"{prefix}parameter {pa[i].Name}: {TensorDifference.Describe(pa[i].Value, pb[i].Value)}");
            }
        }
    }

    /// <summary>A Trainer on CPU with no progress bar (its defaults otherwise).</summary>
    public static Trainer Trainer(
        ComposerModel model,
        IDataLoader? train,
        ComposerSharp.Core.Time? maxDuration,
        IEnumerable<ICallback>? callbacks = null,
        IEnumerable<ILoggerDestination>? loggers = null,
        IDataLoader? eval = null,
        ComposerSharp.Core.Time? evalInterval = null,
        int? microbatch = null,
        Precision? precision = null,
        IEnumerable<IAlgorithm>? algorithms = null,
        IEnumerable<IScheduler>? schedulers = null,
        CheckpointOptions? checkpoint = null,
        Func<IEnumerable<Parameter>, optim.Optimizer>? optimizerFactory = null,
        int seed = 17,
        string? runName = null,
        ILoggerFactory? loggerFactory = null,
        string? runFolder = null,
        GradScaler? gradScaler = null,
        bool deterministicMode = false) =>
        new(model,
            new TrainerOptions
            {
                MaxDuration = maxDuration, Precision = precision, Device = "cpu", Seed = seed, DeviceTrainMicrobatchSize = microbatch,
                EvalInterval = evalInterval, Checkpoint = checkpoint ?? new CheckpointOptions(), RunName = runName, RunFolder = runFolder,
                ProgressBar = false, DeterministicMode = deterministicMode,
            },
            train, eval, algorithms, callbacks, loggers, schedulers: schedulers, gradScaler: gradScaler, loggerFactory: loggerFactory,
            optimizerFactory: optimizerFactory ?? (p => torch.optim.SGD(p, 0.05)));

    /// <summary>A callback that stops training at <paramref name="e"/> once the epoch (at EpochEnd) or batch count (otherwise) reaches <paramref name="count"/>: an interrupted run to resume.</summary>
    public static ActionCallback StopAt(Event e, long count) => new(e, s =>
    {
        long now = e == Event.EpochEnd ? s.Timestamp.Epoch : s.Timestamp.Batch;
        if (now == count)
        {
            s.StopTraining();
        }
    });

    /// <summary>A fresh empty temporary folder under the test output.</summary>
    public static string TempFolder()
    {
        string path = Path.Combine(Path.GetTempPath(), "composersharp-trainer-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(path);
        return path;
    }
}
