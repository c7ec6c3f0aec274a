using System.Text;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// Everything the Trainer does differently when several processes train one model (Composer's DDP path in
/// composer/trainer/trainer.py and composer/utils/dist.py), behind calls that do nothing for world size 1:
/// <list type="bullet">
/// <item>after <c>Init</c>, a check that every rank holds the same parameter and buffer names, shapes and dtypes,
/// then a broadcast of rank 0's values;</item>
/// <item>loaders sharded by rank (<see cref="DistributedSampler"/>; padded for training, unpadded for evaluation);</item>
/// <item>per batch: the global sample and token counts (a SUM all-reduce), the gradients all-reduced in buckets and
/// weighted by each rank's share of the global batch, the gradient scaler's found-inf and the stop decision agreed
/// (any rank decides for all);</item>
/// <item>metric states summed over ranks before <c>Compute</c>; loggers only on rank 0; per-rank RNG states gathered
/// (as <see cref="State.ProcessGroup"/>, through which the checkpoint unit gathers them and rank 0 writes).</item>
/// </list>
/// </summary>
public sealed class DataParallel : IRankGroup, IDisposable
{
    private readonly bool _ownsGroup;
    private readonly ILogger _log;
    private readonly long _bucketBytes;
    private readonly HashSet<string> _warnedMetrics = new();
    private GradientBuckets? _buckets;
    private volatile bool _stopRequested;
    private bool _warnedUnsharded;

    /// <summary>Wraps <paramref name="group"/>.</summary>
    /// <param name="group">The ranks.</param>
    /// <param name="ownsGroup">Dispose the group with this object.</param>
    /// <param name="bucketBytes">Bytes per gradient bucket.</param>
    /// <param name="logger">Diagnostics.</param>
    public DataParallel(IProcessGroup group, bool ownsGroup = false, long bucketBytes = DistributedDefaults.BucketBytes, ILogger? logger = null)
    {
        Group = group ?? throw new ArgumentNullException(nameof(group));
        _ownsGroup = ownsGroup;
        _bucketBytes = bucketBytes;
        _log = logger ?? NullLogger.Instance;
    }

    /// <summary>
    /// The data-parallel context of a Trainer on <paramref name="device"/>: <see cref="DistributedOptions.ProcessGroup"/>
    /// when given (not owned), else a group created from the environment (owned; world size 1 without a launcher).
    /// </summary>
    public static DataParallel Create(Device device, DistributedOptions? options, ILoggerFactory loggerFactory)
    {
        options = (options ?? new DistributedOptions()).Validate();
        ILogger log = loggerFactory.CreateLogger<DataParallel>();
        if (options.ProcessGroup is { } given)
        {
            return new DataParallel(given, ownsGroup: false, options.BucketBytes, log);
        }

        return new DataParallel(ProcessGroupFactory.Create(device, options, logger: log), ownsGroup: true, options.BucketBytes, log);
    }

    /// <summary>The ranks.</summary>
    public IProcessGroup Group { get; }

    /// <summary>This process's rank.</summary>
    public int Rank => Group.Rank;

    /// <summary>The number of processes.</summary>
    public int WorldSize => Group.WorldSize;

    /// <summary>Whether this is rank 0 (the one that logs and writes checkpoints).</summary>
    public bool IsRankZero => Group.Rank == 0;

    /// <summary>Whether there is more than one process.</summary>
    public bool Enabled => Group.WorldSize > 1;

    /// <summary>Total seconds spent in the gradient all-reduce (for benchmarks).</summary>
    public double GradientReduceSeconds { get; private set; }

    /// <summary>
    /// Asks every rank to stop at the next step boundary. A stop request on the Fit token (the CLI's SIGINT/SIGTERM
    /// handling) is agreed the same way.
    /// </summary>
    public void RequestStop() => _stopRequested = true;

    /// <summary>
    /// Checks that every rank holds the same parameters and buffers (names, shapes, dtypes, in order), then copies
    /// rank 0's values into every rank (PyTorch DDP's construction-time broadcast).
    /// </summary>
    /// <exception cref="InvalidOperationException">The ranks' tensors differ; the message names the first differing one.</exception>
    public void SynchronizeModel(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!Enabled)
        {
            return;
        }

        var tensors = new List<(string Name, Tensor Tensor)>();
        tensors.AddRange(model.named_parameters().Select(p => ($"parameter {p.name}", (Tensor)p.parameter)));
        tensors.AddRange(model.named_buffers().Select(b => ($"buffer {b.name}", b.buffer)));
        string[] mine = tensors.Select(t => $"{t.Name} [{string.Join(", ", t.Tensor.shape)}] {t.Tensor.dtype}").ToArray();
        string[] rankZero = Encoding.UTF8.GetString(BroadcastBytes(Encoding.UTF8.GetBytes(string.Join('\n', mine)))).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        string? difference = null;
        for (int i = 0; i < Math.Max(mine.Length, rankZero.Length) && difference is null; i++)
        {
            string a = i < rankZero.Length ? rankZero[i] : "(nothing)";
            string b = i < mine.Length ? mine[i] : "(nothing)";
            if (a != b)
            {
                difference = $"tensor {i}: rank 0 has {a}, rank {Rank} has {b}";
            }
        }

        if (AnyRank(difference is not null))
        {
            throw new InvalidOperationException(difference is not null
                ? $"The ranks hold different models, so data-parallel training cannot start; first difference at {difference}. Build the same model (and algorithms) on every rank."
                : $"The ranks hold different models (another rank's tensors differ from rank 0's; see that rank's error).");
        }

        using var noGrad = torch.no_grad();
        foreach ((string _, Tensor t) in tensors)
        {
            Group.Broadcast(t, 0);
        }
    }

    /// <summary>The training loader of this rank: padded shards of a <see cref="IShardableDataLoader"/>; others as they are (with a warning).</summary>
    public IDataLoader ShardForTraining(IDataLoader loader) => Shard(loader, pad: true);

    /// <summary>An evaluation loader of this rank: unpadded shards, so every sample is evaluated exactly once over all ranks.</summary>
    public IDataLoader ShardForEvaluation(IDataLoader loader) => Shard(loader, pad: false);

    /// <summary>The batch's sample and token counts summed over all ranks.</summary>
    public (long Samples, long Tokens) GlobalCounts(long samples, long tokens)
    {
        if (!Enabled)
        {
            return (samples, tokens);
        }

        using var scope = torch.NewDisposeScope();
        Tensor counts = torch.tensor(new[] { samples, tokens });
        Group.AllReduce(counts, ReduceOp.Sum);
        long[] values = counts.data<long>().ToArray();
        return (values[0], values[1]);
    }

    /// <summary>
    /// Replaces each rank's gradients (of its local mean loss over <paramref name="localSamples"/> samples) by the
    /// gradient of the global mean loss: Σ_r n_r g_r / N with N = <paramref name="globalSamples"/>, which is the plain
    /// average when every rank holds the same number of samples.
    /// </summary>
    public void AllReduceGradients(IEnumerable<optim.Optimizer> optimizers, long localSamples, long globalSamples)
    {
        if (!Enabled)
        {
            return;
        }

        if (globalSamples <= 0)
        {
            throw new InvalidOperationException($"The global batch has {globalSamples} samples; every step needs at least one sample on some rank.");
        }

        Parameter[] parameters = optimizers.SelectMany(o => o.parameters()).Where(p => p.requires_grad).Distinct().ToArray();
        if (_buckets is null || !_buckets.Parameters.SequenceEqual(parameters))
        {
            _buckets?.Dispose();
            _buckets = GradientBuckets.Build(parameters, _bucketBytes);
            _log.LogInformation("Gradient all-reduce: {Parameters} parameters in {Buckets} buckets of up to {MiB:0.#} MiB.", parameters.Length, _buckets.BucketElements.Count, _bucketBytes / 1048576.0);
        }

        bool even = localSamples * WorldSize == globalSamples;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        _buckets.AllReduce(Group, even ? 1.0 : localSamples, even ? 1.0 / WorldSize : 1.0 / globalSamples);
        GradientReduceSeconds += clock.Elapsed.TotalSeconds;
    }

    /// <summary>True on every rank when <paramref name="flag"/> is true on any rank (a MAX all-reduce).</summary>
    public bool AnyRank(bool flag)
    {
        if (!Enabled)
        {
            return flag;
        }

        using var scope = torch.NewDisposeScope();
        Tensor t = torch.tensor(new[] { flag ? 1 : 0 });
        Group.AllReduce(t, ReduceOp.Max);
        return t.item<int>() != 0;
    }

    /// <summary>
    /// The stop decision at a step boundary: true on every rank when any rank wants to stop there (its max duration
    /// reached, a stopper fired, or <see cref="RequestStop"/> was called).
    /// </summary>
    public bool AgreeToStop(bool stopHere) => AnyRank(stopHere || _stopRequested);

    /// <summary>
    /// Sums the states of <paramref name="metrics"/> over all ranks (so <c>Compute</c> gives the value over every
    /// rank's data). Metrics that are not <see cref="IReducibleMetric"/> keep their local value, with a warning.
    /// </summary>
    public void ReduceMetrics(IEnumerable<IMetric> metrics)
    {
        if (!Enabled)
        {
            return;
        }

        var reducible = new List<IReducibleMetric>();
        foreach (IMetric metric in metrics)
        {
            if (metric is IReducibleMetric r)
            {
                reducible.Add(r);
            }
            else if (_warnedMetrics.Add(metric.Name))
            {
                _log.LogWarning("Metric {Metric} does not implement IReducibleMetric, so each rank reports its own shard's value (rank 0's is logged).", metric.Name);
            }
        }

        if (reducible.Count == 0)
        {
            return;
        }

        double[][] states = reducible.Select(m => m.GetState()).ToArray();
        using var scope = torch.NewDisposeScope();
        Tensor flat = torch.tensor(states.SelectMany(s => s).ToArray(), dtype: ScalarType.Float64);
        Group.AllReduce(flat, ReduceOp.Sum);
        double[] summed = flat.data<double>().ToArray();
        int offset = 0;
        for (int i = 0; i < reducible.Count; i++)
        {
            reducible[i].SetState(summed.AsSpan(offset, states[i].Length).ToArray());
            offset += states[i].Length;
        }
    }

    /// <summary>Every rank's <paramref name="local"/> bytes (all ranks must pass the same length), indexed by rank.</summary>
    public byte[][] AllGatherBytes(byte[] local)
    {
        ArgumentNullException.ThrowIfNull(local);
        if (!Enabled)
        {
            return new[] { local };
        }

        using var scope = torch.NewDisposeScope();
        Tensor gathered = Group.AllGather(torch.tensor(local, dtype: ScalarType.Byte));
        return Enumerable.Range(0, WorldSize).Select(r => gathered[r].data<byte>().ToArray()).ToArray();
    }

    /// <summary><paramref name="items"/> on rank 0, nothing on the other ranks (loggers and the progress bar run on rank 0).</summary>
    public List<T> OnRankZero<T>(List<T> items) => IsRankZero ? items : new List<T>();

    /// <summary>Frees the gradient buckets and, when owned, the process group.</summary>
    public void Dispose()
    {
        _buckets?.Dispose();
        _buckets = null;
        if (_ownsGroup)
        {
            Group.Dispose();
        }
    }

    private IDataLoader Shard(IDataLoader loader, bool pad)
    {
        ArgumentNullException.ThrowIfNull(loader);
        if (!Enabled)
        {
            return loader;
        }

        if (loader is IShardableDataLoader shardable)
        {
            return shardable.WithSampler(new DistributedSampler(WorldSize, Rank, DropLast: false, Pad: pad));
        }

        if (!_warnedUnsharded)
        {
            _warnedUnsharded = true;
            _log.LogWarning("The dataloader {Type} cannot be sharded by rank, so every rank reads the same batches; give it a DistributedSampler of its own or use DataLoader<T>.", loader.GetType().Name);
        }

        return loader;
    }

    private byte[] BroadcastBytes(byte[] data)
    {
        using var scope = torch.NewDisposeScope();
        Tensor length = torch.tensor(new long[] { data.LongLength });
        Group.Broadcast(length, 0);
        long n = length.item<long>();
        Tensor bytes = IsRankZero ? torch.tensor(data, dtype: ScalarType.Byte) : torch.zeros(n, dtype: ScalarType.Byte);
        if (n > 0)
        {
            Group.Broadcast(bytes, 0);
        }

        return n == 0 ? Array.Empty<byte>() : bytes.data<byte>().ToArray();
    }
}
