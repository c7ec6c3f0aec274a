using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.DistributedHost;

/// <summary>A classifier 4 → 16 → LayerNorm → ReLU → dropout → 3 over batches {"x": [B, 4], "labels": [B]}.</summary>
public sealed class NormMlp : ComposerModel
{
    private readonly Linear _fc1;
    private nn.Module<Tensor, Tensor> _norm; // not readonly and of the base type, so LowPrecisionLayerNorm can swap it
    private readonly Dropout _dropout;
    private readonly Linear _fc2;

    public NormMlp(double dropout = 0.0)
        : base("norm_mlp")
    {
        _fc1 = nn.Linear(4, 16);
        _norm = nn.LayerNorm(16);
        _dropout = nn.Dropout(dropout);
        _fc2 = nn.Linear(16, 3);
        RegisterComponents();
    }

    public override Tensor forward(Batch batch) => _fc2.call(_dropout.call(nn.functional.relu(_norm.call(_fc1.call(batch["x"])))));

    public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.cross_entropy(outputs.to(ScalarType.Float32), batch["labels"]);

    public override IReadOnlyList<IMetric> GetMetrics(bool isTrain) => new IMetric[] { new ClassificationAccuracy(), new CrossEntropyMetric() };
}

/// <summary>The same layer names as <see cref="NormMlp"/> with fc1 of 4 → 17 (a model that differs from it).</summary>
public sealed class WideNormMlp : ComposerModel
{
    private readonly Linear _fc1;
    private readonly LayerNorm _norm;
    private readonly Linear _fc2;

    public WideNormMlp()
        : base("norm_mlp")
    {
        _fc1 = nn.Linear(4, 17);
        _norm = nn.LayerNorm(17);
        _fc2 = nn.Linear(17, 3);
        RegisterComponents();
    }

    public override Tensor forward(Batch batch) => _fc2.call(_norm.call(_fc1.call(batch["x"])));

    public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.cross_entropy(outputs, batch["labels"]);
}

/// <summary>One sample: features and a class that depends on them (so there is something to learn).</summary>
public sealed record HostSample(float[] X, long Label);

/// <summary>Data sets and loaders of the scenarios.</summary>
public static class HostData
{
    public static IReadOnlyList<HostSample> Samples(int count, ulong seed = 7)
    {
        using var scope = torch.NewDisposeScope();
        using var gen = new Generator(seed);
        Tensor x = torch.randn(new long[] { count, 4 }, generator: gen);
        Tensor y = (x[.., 0] + x[.., 1] * 0.5 > 0).to(ScalarType.Int64) + (x[.., 2] > 1).to(ScalarType.Int64);
        float[] xs = x.data<float>().ToArray();
        long[] ys = y.data<long>().ToArray();
        return Enumerable.Range(0, count).Select(i => new HostSample(xs.AsSpan(i * 4, 4).ToArray(), ys[i])).ToList();
    }

    public static Batch Collate(IReadOnlyList<HostSample> samples) => new(new Dictionary<string, Tensor>
    {
        ["x"] = torch.tensor(samples.SelectMany(s => s.X).ToArray(), new long[] { samples.Count, 4 }),
        ["labels"] = torch.tensor(samples.Select(s => s.Label).ToArray()),
    });

    public static DataLoader<HostSample> Loader(IReadOnlyList<HostSample> samples, int batchSize, bool shuffle) =>
        new(new ListDataset<HostSample>(samples), batchSize, Collate, shuffle, seed: 11);

    /// <summary>Every floating tensor of the model's state, as raw bytes in state-dict order.</summary>
    public static byte[] StateBytes(nn.Module model)
    {
        using var scope = torch.NewDisposeScope();
        var bytes = new List<byte>();
        foreach ((string _, Tensor t) in model.state_dict())
        {
            bytes.AddRange(t.to(ScalarType.Float32).contiguous().data<float>().ToArray().SelectMany(BitConverter.GetBytes));
        }

        return bytes.ToArray();
    }
}

/// <summary>A loader that is not shardable: yields one fixed batch (rank-dependent sizes in the uneven test).</summary>
public sealed class FixedBatchLoader(IReadOnlyList<HostSample> samples) : IDataLoader
{
    public long? BatchesPerEpoch => 1;

    public long? SamplesPerEpoch => samples.Count;

    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0)
    {
        if (skipBatches == 0)
        {
            yield return HostData.Collate(samples);
        }
    }
}

/// <summary>Runs an action at chosen events.</summary>
public sealed class HookCallback : Callback
{
    public Action<State>? OnAfterTrainBatch { get; init; }

    public Action<State>? OnBatchEnd { get; init; }

    public Action<State>? OnFitStart { get; init; }

    public Action<State>? OnAfterDataloader { get; init; }

    public override void FitStart(State state, Logger logger) => OnFitStart?.Invoke(state);

    public override void AfterDataloader(State state, Logger logger) => OnAfterDataloader?.Invoke(state);

    public override void AfterTrainBatch(State state, Logger logger) => OnAfterTrainBatch?.Invoke(state);

    public override void BatchEnd(State state, Logger logger) => OnBatchEnd?.Invoke(state);
}

/// <summary>Keeps every metric logged (a logger destination; the Trainer gives destinations to rank 0 only).</summary>
public sealed class RecordingLogger : ILoggerDestination
{
    public List<(string Name, double Value)> Metrics { get; } = new();

    public double Last(string name) => Metrics.Last(m => m.Name == name).Value;

    public void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        foreach ((string k, double v) in metrics)
        {
            Metrics.Add((k, v));
        }
    }

    public void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
    }

    public void RunEvent(Event e, State state, Logger logger)
    {
    }

    public void Close(State state, Logger logger)
    {
    }
}

/// <summary>
/// 4 → 16 → 3 plus a branch <c>extra</c> (4 → 3) added for the samples whose <c>mask</c> is 1, computed only when
/// some sample of the batch has it; and a layer <c>never</c> that no forward uses.
/// </summary>
public sealed class BranchMlp : ComposerModel
{
    private readonly Linear _fc1;
    private readonly Linear _fc2;
    private readonly Linear _extra;
    private readonly Linear _never;

    public BranchMlp()
        : base("branch_mlp")
    {
        _fc1 = nn.Linear(4, 16);
        _fc2 = nn.Linear(16, 3);
        _extra = nn.Linear(4, 3);
        _never = nn.Linear(4, 3);
        RegisterComponents();
    }

    public override Tensor forward(Batch batch)
    {
        Tensor x = batch["x"];
        Tensor main = _fc2.call(nn.functional.relu(_fc1.call(x)));
        Tensor mask = batch["mask"];
        return mask.sum().item<float>() > 0 ? main + _extra.call(x) * mask.unsqueeze(1) : main;
    }

    public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.cross_entropy(outputs, batch["labels"]);
}

/// <summary>4 → 64 → 64 → 64 → LayerNorm → 3 with ReLUs: with a small bucket cap, one bucket per parameter.</summary>
public sealed class DeepMlp : ComposerModel
{
    private readonly Sequential _net;

    public DeepMlp()
        : base("deep_mlp")
    {
        _net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 3));
        RegisterComponents();
    }

    public override Tensor forward(Batch batch) => _net.call(batch["x"]);

    public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.cross_entropy(outputs, batch["labels"]);
}

/// <summary>One fixed batch per epoch with a per-sample <c>mask</c> (see <see cref="BranchMlp"/>).</summary>
public sealed class MaskedBatchLoader(IReadOnlyList<HostSample> samples, float[] mask) : IDataLoader
{
    public long? BatchesPerEpoch => 1;

    public long? SamplesPerEpoch => samples.Count;

    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0)
    {
        if (skipBatches == 0)
        {
            Batch b = HostData.Collate(samples);
            yield return new Batch(new Dictionary<string, Tensor> { ["x"] = b["x"], ["labels"] = b["labels"], ["mask"] = torch.tensor(mask) });
        }
    }
}

/// <summary>
/// 4 → 64, then <c>shared</c>'s weight used twice: first functionally (no bias), then by calling <c>shared</c>, then
/// 64 → 3. <c>shared</c>'s backward (where the overlap sees its parameters ready) runs before the functional use's,
/// which adds the rest of the weight's gradient later.
/// </summary>
public sealed class TiedMlp : ComposerModel
{
    private readonly Linear _fc0;
    private readonly Linear _shared;
    private readonly Linear _head;

    public TiedMlp()
        : base("tied_mlp")
    {
        _fc0 = nn.Linear(4, 64);
        _shared = nn.Linear(64, 64);
        _head = nn.Linear(64, 3);
        RegisterComponents();
    }

    public override Tensor forward(Batch batch)
    {
        Tensor h = nn.functional.relu(_fc0.call(batch["x"]));
        h = nn.functional.relu(nn.functional.linear(h, _shared.weight!));
        h = nn.functional.relu(_shared.call(h));
        return _head.call(h);
    }

    public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.cross_entropy(outputs, batch["labels"]);
}

/// <summary>
/// A <see cref="BertForMaskedLM"/> whose loss is the SUM of the cross-entropies of the selected tokens divided by
/// (samples in the batch × <see cref="TokensPerSample"/>), a fixed number, instead of their mean. The Trainer weights
/// each rank's loss and gradients by its share of the global samples, which reproduces one process exactly only for
/// a loss that is a mean over samples; BERT's mean over masked tokens is not (the ranks hold different numbers of
/// masked tokens), so comparisons across world sizes use this loss to see only what the data pipeline does.
/// </summary>
public sealed class PerSampleMlm : ComposerModel
{
    private readonly BertForMaskedLM _bert;

    public PerSampleMlm(TransformerConfig config, double tokensPerSample)
        : base("per_sample_mlm")
    {
        _bert = new BertForMaskedLM(config);
        TokensPerSample = tokensPerSample;
        RegisterComponents();
    }

    /// <summary>The normaliser per sample (any positive constant; e.g. the expected masked tokens per sample).</summary>
    public double TokensPerSample { get; }

    /// <summary>Sparse MLM logits [N, V] of the N selected tokens (see <see cref="BertForMaskedLM.forward"/>).</summary>
    public override Tensor forward(Batch batch) => _bert.call(batch);

    /// <summary>Σ cross-entropy over the selected tokens / (B × <see cref="TokensPerSample"/>), Float32 scalar.</summary>
    public override Tensor Loss(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        Tensor targets = BertForMaskedLM.SelectedLabels(batch["labels"]);
        Tensor sum = nn.functional.cross_entropy(outputs.to(ScalarType.Float32), targets, reduction: nn.Reduction.Sum);
        return (sum / (batch["input_ids"].shape[0] * TokensPerSample)).MoveToOuterDisposeScope();
    }
}
