using System.Text;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
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
/// weighted by each rank's share of the global batch (started during the last microbatch's backward when
/// <see cref="DistributedOptions.OverlapGradientReduce"/> is on; a parameter without a gradient on some ranks counts
/// as zeros there), the logged loss averaged the same way, the gradient scaler's found-inf and the stop decision
/// agreed (any rank decides for all);</item>
/// <item>metric states summed over ranks for <c>Compute</c> and restored afterwards (torchmetrics' sync and unsync);
/// loggers only on rank 0; per-rank RNG states gathered
/// (through <see cref="State.ProcessGroup"/>, the same object as <see cref="ProcessGroup"/>, with which the checkpoint
/// unit gathers them and rank 0 writes).</item>
/// </list>
/// </summary>
public sealed class DataParallel : IDisposable
{
    private readonly bool _ownsGroup;
    private readonly ILogger _log;
    private readonly long _bucketBytes;
    private readonly HashSet<string> _warnedMetrics = new();
    private readonly bool _overlapRequested;
    private GradientBuckets? _buckets;
    private OverlappedGradientReduce? _overlap;
    private bool _overlapOff;
    private volatile bool _stopRequested;
    private bool _warnedUnsharded;

    /// <summary>Wraps <paramref name="group"/>.</summary>
    /// <param name="group">The ranks.</param>
    /// <param name="ownsGroup">Dispose the group with this object.</param>
    /// <param name="bucketBytes">Bytes per gradient bucket.</param>
    /// <param name="logger">Diagnostics.</param>
    /// <param name="overlapGradientReduce">Start the bucket all-reduces during backward (see <see cref="PrepareGradientReduce"/>).</param>
    public DataParallel(IProcessGroup group, bool ownsGroup = false, long bucketBytes = DistributedDefaults.BucketBytes, ILogger? logger = null, bool overlapGradientReduce = false)
    {
        ProcessGroup = group ?? throw new ArgumentNullException(nameof(group));
        _ownsGroup = ownsGroup;
        _bucketBytes = bucketBytes;
        _log = logger ?? NullLogger.Instance;
        _overlapRequested = overlapGradientReduce;
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
            return new DataParallel(given, ownsGroup: false, options.BucketBytes, log, options.OverlapGradientReduce);
        }

        return new DataParallel(ProcessGroupFactory.Create(device, options, logger: log), ownsGroup: true, options.BucketBytes, log, options.OverlapGradientReduce);
    }

    /// <summary>The process group whose ranks train together (the Trainer puts the same object in <see cref="State.ProcessGroup"/>).</summary>
    public IProcessGroup ProcessGroup { get; }

    /// <summary>This process's rank.</summary>
    public int Rank => ProcessGroup.Rank;

    /// <summary>The number of processes.</summary>
    public int WorldSize => ProcessGroup.WorldSize;

    /// <summary>Whether this is rank 0 (the one that logs and writes checkpoints).</summary>
    public bool IsRankZero => ProcessGroup.Rank == 0;

    /// <summary>Whether there is more than one process.</summary>
    public bool Enabled => ProcessGroup.WorldSize > 1;

    /// <summary>
    /// Total seconds spent in the gradient all-reduce after backward (for benchmarks): with overlap, the time from the
    /// end of backward to the reduced gradients (starting the remaining buckets and waiting), not the copies and
    /// starts made during backward.
    /// </summary>
    public double GradientReduceSeconds { get; private set; }

    /// <summary>Whether the gradient all-reduce is overlapped with backward (requested and not switched off by the first-step check).</summary>
    public bool OverlapActive => _overlapRequested && !_overlapOff;

    /// <summary>The number of buckets whose all-reduce started during the last backward (0 without overlap).</summary>
    public int LastEarlyBuckets => _overlap?.LastEarlyBuckets ?? 0;

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
            ProcessGroup.Broadcast(t, 0);
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
        ProcessGroup.AllReduce(counts, ReduceOp.Sum);
        long[] values = counts.data<long>().ToArray();
        return (values[0], values[1]);
    }

    /// <summary>
    /// Before the forward of a step's last microbatch: plans the buckets for the optimizers' parameters and, with
    /// overlap on, arms the hooks on <paramref name="model"/> so that each bucket's all-reduce starts during that
    /// microbatch's backward as soon as its gradients are complete. <see cref="AllReduceGradients"/> finishes it.
    /// </summary>
    /// <param name="model">The model whose modules are watched (hooked once, at the first call).</param>
    /// <param name="optimizers">The optimizers whose parameters with <c>requires_grad</c> are reduced.</param>
    /// <param name="localSamples">Samples of this rank's batch.</param>
    /// <param name="globalSamples">Samples of the global batch.</param>
    public void PrepareGradientReduce(nn.Module model, IEnumerable<optim.Optimizer> optimizers, long localSamples, long globalSamples)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!Enabled || !OverlapActive)
        {
            return;
        }

        (double pre, double post) = Scales(localSamples, globalSamples);
        if (EnsureBuckets(optimizers) || _overlap is null)
        {
            _overlap?.Dispose();
            _overlap = new OverlappedGradientReduce(model, _buckets!, ProcessGroup, _log);
            _log.LogInformation("Gradient all-reduce overlapped with backward: {Modules} modules hooked.", _overlap.HookedModules);
        }

        _overlap.Arm(pre, post);
    }

    /// <summary>
    /// Replaces each rank's gradients (of its local mean loss over <paramref name="localSamples"/> samples) by the
    /// gradient of the global mean loss: Σ_r n_r g_r / N with N = <paramref name="globalSamples"/>, which is the plain
    /// average when every rank holds the same number of samples. A parameter with a gradient on some ranks only is
    /// treated as zeros on the others, which then receive the reduced gradient too; one with a gradient on no rank is
    /// left without. Finishes the overlapped reduce armed by <see cref="PrepareGradientReduce"/>, else reduces now.
    /// The counts may be loss-generating tokens instead of samples (the Trainer's
    /// <c>accumulate_train_batch_on_tokens</c>): the weighting is the same, by each rank's count over the global one.
    /// </summary>
    /// <exception cref="InvalidOperationException">The global batch holds no sample.</exception>
    public void AllReduceGradients(IEnumerable<optim.Optimizer> optimizers, long localSamples, long globalSamples)
    {
        if (!Enabled)
        {
            return;
        }

        (double pre, double post) = Scales(localSamples, globalSamples);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        if (_overlap is { Armed: true } overlap)
        {
            overlap.Finish(GloballyUsed, AnyRank);
            if (!overlap.Active)
            {
                _overlapOff = true;
                _overlap = null;
            }
        }
        else
        {
            EnsureBuckets(optimizers);
            _buckets!.AllReduce(ProcessGroup, pre, post, GloballyUsed(_buckets.LocalUsed()));
        }

        GradientReduceSeconds += clock.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// The loss of the global batch from each rank's mean loss over its <paramref name="localSamples"/>:
    /// Σ_r n_r·loss_r / N (Composer all-reduces the sample-weighted loss and divides by the world size), which is the
    /// mean of the ranks' losses when they hold the same number of samples. One SUM all-reduce (Float64). The counts
    /// may be loss-generating tokens instead of samples, weighting the ranks as their gradients are.
    /// </summary>
    public double GlobalLoss(double localLoss, long localSamples, long globalSamples)
    {
        if (!Enabled)
        {
            return localLoss;
        }

        bool even = localSamples * WorldSize == globalSamples;
        using var scope = torch.NewDisposeScope();
        Tensor t = torch.tensor(new[] { even ? localLoss : localLoss * localSamples });
        ProcessGroup.AllReduce(t, ReduceOp.Sum);
        double sum = t.item<double>();
        return even ? sum / WorldSize : sum / globalSamples;
    }

    /// <summary>
    /// The sum of the ranks' <paramref name="value"/>s on every rank (a SUM all-reduce of an Int64; every rank must
    /// call it); <paramref name="value"/> itself for world size 1. The Trainer uses it for the global count of
    /// loss-generating tokens of a step (Composer's trainer.py all-reduces that count in <c>_train_microbatches</c>).
    /// </summary>
    public long SumOverRanks(long value) => AllReduce(value, ReduceOp.Sum);

    /// <summary>The largest of the ranks' <paramref name="value"/>s on every rank (a MAX all-reduce; every rank must call it).</summary>
    public long MaxOverRanks(long value) => AllReduce(value, ReduceOp.Max);

    private long AllReduce(long value, ReduceOp op)
    {
        if (!Enabled)
        {
            return value;
        }

        using var scope = torch.NewDisposeScope();
        Tensor t = torch.tensor(new[] { value });
        ProcessGroup.AllReduce(t, op);
        return t.item<long>();
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
        ProcessGroup.AllReduce(t, ReduceOp.Max);
        return t.item<int>() != 0;
    }

    /// <summary>
    /// The stop decision at a step boundary: true on every rank when any rank wants to stop there (its max duration
    /// reached, a stopper fired, or <see cref="RequestStop"/> was called).
    /// </summary>
    public bool AgreeToStop(bool stopHere) => AnyRank(stopHere || _stopRequested);

    /// <summary>
    /// Sums the states of <paramref name="metrics"/> over all ranks (so <c>Compute</c> gives the value over every
    /// rank's data) until the returned scope is disposed, which puts each rank's local state back (torchmetrics'
    /// <c>sync_context</c> with unsync), so a later synchronisation of the same metrics does not count twice.
    /// Metrics that are not <see cref="IReducibleMetric"/> keep their local value, with a warning.
    /// </summary>
    public IDisposable SynchronizeMetrics(IEnumerable<IMetric> metrics)
    {
        ArgumentNullException.ThrowIfNull(metrics);
        if (!Enabled)
        {
            return new LocalStates(Array.Empty<(IReducibleMetric, double[])>());
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

        double[][] states = reducible.Select(m => m.GetState()).ToArray();
        var local = new LocalStates(reducible.Zip(states).ToArray());
        if (reducible.Count == 0)
        {
            return local;
        }

        using var scope = torch.NewDisposeScope();
        Tensor flat = torch.tensor(states.SelectMany(s => s).ToArray(), dtype: ScalarType.Float64);
        ProcessGroup.AllReduce(flat, ReduceOp.Sum);
        double[] summed = flat.data<double>().ToArray();
        int offset = 0;
        for (int i = 0; i < reducible.Count; i++)
        {
            reducible[i].SetState(summed.AsSpan(offset, states[i].Length).ToArray());
            offset += states[i].Length;
        }

        return local;
    }

    /// <summary>Every rank's <paramref name="local"/> bytes (all ranks must pass the same length), indexed by rank (<see cref="IRankGroup.AllGatherBytes"/> of <see cref="ProcessGroup"/>).</summary>
    public byte[][] AllGatherBytes(byte[] local) => ProcessGroup.AllGatherBytes(local);

    /// <summary><paramref name="items"/> on rank 0, nothing on the other ranks (loggers and the progress bar run on rank 0).</summary>
    public List<T> OnRankZero<T>(List<T> items) => IsRankZero ? items : new List<T>();

    /// <summary>Frees the gradient buckets, removes the overlap hooks and, when owned, disposes the process group.</summary>
    public void Dispose()
    {
        _overlap?.Dispose();
        _overlap = null;
        _buckets?.Dispose();
        _buckets = null;
        if (_ownsGroup)
        {
            ProcessGroup.Dispose();
        }
    }

    /// <summary>This rank's weight and the normaliser of the sum: (1, 1/W) for equal shares, else (n_r, 1/N).</summary>
    private (double Pre, double Post) Scales(long localSamples, long globalSamples)
    {
        if (globalSamples <= 0)
        {
            throw new InvalidOperationException($"The global batch has {globalSamples} samples; every step needs at least one sample on some rank.");
        }

        bool even = localSamples * WorldSize == globalSamples;
        return even ? (1.0, 1.0 / WorldSize) : (localSamples, 1.0 / globalSamples);
    }

    /// <summary>Plans the buckets when the optimizers' parameters changed; true when it did.</summary>
    private bool EnsureBuckets(IEnumerable<optim.Optimizer> optimizers)
    {
        Parameter[] parameters = optimizers.SelectMany(o => o.parameters()).Where(p => p.requires_grad).Distinct().ToArray();
        if (_buckets is not null && _buckets.Parameters.SequenceEqual(parameters))
        {
            return false;
        }

        _buckets?.Dispose();
        _buckets = GradientBuckets.Build(parameters, _bucketBytes);
        _log.LogInformation("Gradient all-reduce: {Parameters} parameters in {Buckets} buckets of up to {MiB:0.#} MiB.", parameters.Length, _buckets.BucketElements.Count, _bucketBytes / 1048576.0);
        return true;
    }

    /// <summary>Per parameter, whether any rank has a gradient for it (a MAX all-reduce of the ranks' flags).</summary>
    private bool[] GloballyUsed(bool[] local)
    {
        using var scope = torch.NewDisposeScope();
        Tensor flags = torch.tensor(local.Select(u => u ? 1 : 0).ToArray());
        ProcessGroup.AllReduce(flags, ReduceOp.Max);
        return flags.data<int>().ToArray().Select(f => f != 0).ToArray();
    }

    /// <summary>Puts the metrics' local states back when disposed.</summary>
    private sealed class LocalStates((IReducibleMetric Metric, double[] State)[] states) : IDisposable
    {
        public void Dispose()
        {
            foreach ((IReducibleMetric metric, double[] state) in states)
            {
                metric.SetState(state);
            }
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
        ProcessGroup.Broadcast(length, 0);
        long n = length.item<long>();
        Tensor bytes = IsRankZero ? torch.tensor(data, dtype: ScalarType.Byte) : torch.zeros(n, dtype: ScalarType.Byte);
        if (n > 0)
        {
            ProcessGroup.Broadcast(bytes, 0);
        }

        return n == 0 ? Array.Empty<byte>() : bytes.data<byte>().ToArray();
    }
}
