using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.Json;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Data;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>
/// Saves and loads a run's checkpoint against its <see cref="State"/> alone (Composer's
/// <c>checkpoint.save_checkpoint(state, ...)</c> and <c>load_checkpoint(path, state, ...)</c>,
/// composer/utils/checkpoint.py): the model, optimizers, loss scaler (<see cref="State.Scaler"/>), timestamp, RNG
/// state, required-on-load algorithms and stateful callbacks all live on the state, so a callback such as
/// <see cref="Callbacks.CheckpointSaver"/> needs nothing else. With several processes
/// (<see cref="State.ProcessGroup"/>), saving gathers every rank's RNG state and rank 0 alone writes the file
/// (Composer's rank-zero checkpoint for DDP); loading gives each rank its own RNG state.
/// </summary>
public static class Checkpoint
{
    /// <summary>
    /// Writes a checkpoint of <paramref name="state"/> to <paramref name="path"/> (a <see cref="PathTemplate"/>),
    /// atomically: a temporary file in the same folder is renamed over the target only once complete, so an existing
    /// checkpoint at that path survives a failed write.
    /// </summary>
    /// <remarks>
    /// A full checkpoint holds the model's state dict, each optimizer's state, each parameter group's initial and
    /// current learning rate, the schedulers' descriptions, the loss scaler, the timestamp, the CPU generator's state
    /// and the data sampler's position, the algorithms with their descriptions, the state of every
    /// <see cref="IStatefulCallback"/> and <see cref="IStatefulAlgorithm"/>, the run name, seed and provenance (library versions, precision, device, time).
    /// With <paramref name="weightsOnly"/> only the model, algorithms and provenance are written.
    /// <para>
    /// With several ranks (<see cref="State.ProcessGroup"/>), every rank must call this together: a full checkpoint
    /// gathers each rank's generator state (a collective), then rank 0 writes the file, with rank r's state as
    /// <c>rng/rank{r}.bin</c> (rank 0's as the single-process entry) and <c>world_size</c> in the header's metadata;
    /// the other ranks write nothing. The model and optimizers are rank 0's, equal on every rank under data
    /// parallelism.
    /// </para>
    /// </remarks>
    /// <returns>The absolute path written (on ranks other than 0: the path rank 0 writes).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="state"/> or <paramref name="path"/> is null.</exception>
    /// <exception cref="CheckpointException">The write failed; the previous file, if any, is unchanged.</exception>
    /// <exception cref="NotSupportedException">An optimizer whose state TorchSharp cannot serialise (not an <c>OptimizerHelper</c>, e.g. LBFGS).</exception>
    /// <exception cref="InvalidOperationException">Two stateful callbacks share a state key.</exception>
    public static string Save(State state, string path, bool weightsOnly = false)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(path);
        string full = Path.GetFullPath(PathTemplate.Expand(path, state));
        var helpers = new List<OptimizerHelper>();
        if (!weightsOnly)
        {
            foreach (optim.Optimizer optimizer in state.Optimizers)
            {
                helpers.Add(Unwrap(optimizer) as OptimizerHelper
                    ?? throw new NotSupportedException($"Optimizer {optimizer.GetType().Name} keeps its state in native code, which TorchSharp cannot serialise; use SGD, Adam, AdamW or another managed optimizer, or save weights only."));
            }
        }

        // Every rank's generator state is gathered (a collective), then only rank 0 writes.
        IRankGroup group = state.ProcessGroup;
        byte[][] rngStates = weightsOnly ? Array.Empty<byte[]>() : group.AllGatherBytes(CurrentRngState());
        if (group.Rank != 0)
        {
            return full;
        }

        CheckpointFile.WriteAtomically(full, stream =>
        {
            using var writer = new CheckpointWriter(stream);
            writer.Write(CheckpointFile.ModelEntry, w => CheckpointFile.WriteTensors(w, state.Model.state_dict().ToList()));
            if (!weightsOnly)
            {
                for (int i = 0; i < helpers.Count; i++)
                {
                    OptimizerHelper helper = helpers[i];
                    writer.Write(OptimizerEntry(i), w => helper.save_state_dict(w));
                }

                for (int rank = 0; rank < rngStates.Length; rank++)
                {
                    byte[] rng = rngStates[rank];
                    writer.Write(RngEntry(rank), w =>
                    {
                        w.Write(rng.Length);
                        w.Write(rng);
                    });
                }
            }

            CheckpointHeader header = BuildHeader(state, weightsOnly);
            if (!weightsOnly)
            {
                AlgorithmStates.Write(state.Algorithms, writer, header);
            }

            writer.WriteHeader(header);
        });
        return full;
    }

    /// <summary>
    /// Loads the checkpoint at <paramref name="path"/> (a checkpoint or a latest pointer; a
    /// <see cref="PathTemplate"/>) into <paramref name="state"/>: required-on-load algorithms first (Composer's
    /// <c>_apply_required_algorithms</c>), then the model's weights, then, unless
    /// <see cref="CheckpointOptions.LoadWeightsOnly"/>, optimizers, learning rates, scaler, timestamp, seed, callback
    /// and algorithm state (<see cref="IStatefulAlgorithm"/>) and <see cref="State.PendingRngState"/> (restored when training starts).
    /// <para>
    /// With several ranks each reads its own generator state (<c>rng/rank{r}.bin</c>); a rank the checkpoint has
    /// none for (it was written by fewer ranks) keeps its seeded generator, with a warning. A checkpoint written by
    /// another number of ranks continues from the epoch's global sample count (see
    /// <see cref="ContinueFromSamples"/>), and the different-dataloader warning is given only for the same world
    /// size (another world size changes the batches per epoch by design).
    /// </para>
    /// </summary>
    /// <param name="state">The state to load into.</param>
    /// <param name="logger">The run's logger, given to a required-on-load algorithm re-created and applied at Init.</param>
    /// <param name="path">The checkpoint.</param>
    /// <param name="options">
    /// The load options used: <see cref="CheckpointOptions.LoadWeightsOnly"/>, <see cref="CheckpointOptions.LoadStrictModelWeights"/>,
    /// <see cref="CheckpointOptions.LoadExcludeAlgorithms"/>, <see cref="CheckpointOptions.AlgorithmResolver"/> and
    /// <see cref="CheckpointOptions.MissingAlgorithmPolicy"/>.
    /// </param>
    /// <exception cref="CheckpointException">The file is missing, truncated, damaged or foreign, or does not match the state; nothing is applied when the file itself is bad.</exception>
    /// <exception cref="InvalidOperationException">A required-on-load algorithm is missing and cannot (or may not) be re-created.</exception>
    /// <exception cref="NotSupportedException">An optimizer whose state TorchSharp cannot restore.</exception>
    public static void Load(State state, Logger logger, string path, CheckpointOptions options)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(logger);
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(options);
        ILogger log = state.LoggerFactory.CreateLogger(typeof(Checkpoint));
        using CheckpointReader reader = CheckpointFile.Open(PathTemplate.Expand(path, state), weightsOnly: options.LoadWeightsOnly);
        CheckpointHeader header = reader.Header;
        string file = reader.Path;
        if (header.WeightsOnly && !options.LoadWeightsOnly)
        {
            throw new CheckpointException(file, $"Checkpoint '{file}' holds only model weights; set CheckpointOptions.LoadWeightsOnly = true to load it.");
        }

        WarnOnOtherLibraryVersion(header, file, log);
        RequiredAlgorithms.Apply(state, logger, header, file, options, log);
        LoadModelWeights(state, reader, options.LoadStrictModelWeights, options.LoadIgnoreKeys, log);
        if (options.LoadWeightsOnly)
        {
            log.LogInformation("Loaded model weights from {Checkpoint} (run {Run}, saved {SavedAt:u} on {Device}).", file, header.RunName, header.SavedAt, header.Device);
            return;
        }

        AlgorithmStates.Read(state, reader, log); // before the optimizers: an algorithm may re-shape their parameter groups
        LoadOptimizers(state, reader, header);
        if (header.GradScaler is { } scaler && state.Scaler.Enabled)
        {
            state.Scaler.LoadStateDict(scaler);
        }
        else if (header.GradScaler is not null || state.Scaler.Enabled)
        {
            log.LogWarning("Checkpoint {Checkpoint} was written with precision {Saved}; this run uses {Current}, so the gradient scaler state is not restored.", file, header.Precision, state.Precision.ToComposerName());
        }

        Timestamp timestamp = header.Timestamp ?? throw new CheckpointException(file, $"Checkpoint '{file}' has no timestamp.");
        int savedWorldSize = SavedWorldSize(header);
        CheckSampler(state, header, timestamp, file, log, sameWorldSize: savedWorldSize == state.ProcessGroup.WorldSize);
        if (state.TrainDataloader is { } resumedLoader)
        {
            timestamp = ContinueFromSamples(timestamp, savedWorldSize, state.ProcessGroup.WorldSize, resumedLoader, file, log);
        }

        WarnOnOtherSchedulers(state, header, file, log);
        state.Timestamp = timestamp;
        state.PreviousTimestamp = null;
        state.Seed = header.Seed;
        foreach (IStatefulCallback callback in state.Callbacks.OfType<IStatefulCallback>())
        {
            if (header.Callbacks.TryGetValue(callback.StateKey, out JsonElement element))
            {
                callback.LoadStateDict(JsonValues.ToDictionary(element));
            }
        }

        // Each rank resumes its own generator; a rank the checkpoint does not know keeps its seed + rank.
        int myRank = state.ProcessGroup.Rank;
        string rngEntry = RngEntry(myRank);
        if (reader.HasEntry(rngEntry))
        {
            reader.Read(rngEntry, r =>
            {
                int length = r.ReadInt32();
                byte[] rng = r.ReadBytes(length);
                if (rng.Length != length)
                {
                    throw new EndOfStreamException($"the RNG state is {rng.Length} bytes instead of {length}");
                }

                state.PendingRngState = rng;
            });
        }
        else
        {
            log.LogWarning("Checkpoint {Checkpoint} has no generator state for rank {Rank} (it was written by fewer ranks); this rank keeps its seeded generator, so randomness differs from an uninterrupted run.", file, myRank);
            state.PendingRngState = null;
        }

        log.LogInformation(
            "Loaded training state from {Checkpoint} (run {Run}, saved {SavedAt:u} on {Device}) at {Timestamp}.",
            file, header.RunName, header.SavedAt, header.Device, state.Timestamp.Get(TimeUnit.Batch));
    }

    /// <summary>
    /// The latest-checkpoint pointer autoresume would load (Composer's autoresume): <paramref name="saveFolder"/>
    /// joined with <see cref="CheckpointOptions.SaveLatestFilename"/>, both expanded, or null when that file does not
    /// exist yet (a fresh run).
    /// </summary>
    /// <exception cref="InvalidOperationException">No save folder or no latest file name, so the pointer cannot be found.</exception>
    public static string? FindLatest(State state, CheckpointOptions options, string? saveFolder)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(options);
        var missing = new List<string>();
        if (saveFolder is null)
        {
            missing.Add("a save folder (CheckpointOptions.SaveFolder or a run folder)");
        }

        if (options.SaveLatestFilename is null)
        {
            missing.Add("CheckpointOptions.SaveLatestFilename");
        }

        if (missing.Count > 0)
        {
            throw new InvalidOperationException($"Autoresume needs {string.Join(" and ", missing)} to find the latest checkpoint.");
        }

        string pointer = Path.Combine(PathTemplate.Expand(saveFolder!, state), PathTemplate.Expand(options.SaveLatestFilename!, state));
        return File.Exists(pointer) ? pointer : null;
    }

    /// <summary>The informational version of <paramref name="assembly"/> (or its version), as logged and recorded in checkpoints.</summary>
    internal static string LibraryVersion(Assembly assembly) =>
        assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
        ?? assembly.GetName().Version?.ToString()
        ?? "unknown";

    private static string OptimizerEntry(int index) => $"optimizers/{index}.bin";

    /// <summary>The optimizer whose state is saved: the wrapped one of an <see cref="IClosureOptimizer"/> (SAM), else the optimizer itself.</summary>
    private static optim.Optimizer Unwrap(optim.Optimizer optimizer) => optimizer is IClosureOptimizer wrapper ? wrapper.BaseOptimizer : optimizer;

    /// <summary>The entry of rank <paramref name="rank"/>'s generator state: <see cref="CheckpointFile.RngEntry"/> for rank 0 (as for one process), <c>rng/rank{r}.bin</c> otherwise.</summary>
    private static string RngEntry(int rank) => rank == 0 ? CheckpointFile.RngEntry : $"rng/rank{rank.ToString(CultureInfo.InvariantCulture)}.bin";

    private static byte[] CurrentRngState()
    {
        using var scope = torch.NewDisposeScope();
        return torch.get_rng_state().data<byte>().ToArray();
    }

    /// <summary>The number of ranks that wrote the checkpoint (<c>world_size</c> in its metadata; 1 when absent, as in checkpoints written before it was recorded).</summary>
    private static int SavedWorldSize(CheckpointHeader header) =>
        header.Metadata.TryGetValue("world_size", out string? ws) && int.TryParse(ws, NumberStyles.Integer, CultureInfo.InvariantCulture, out int w) ? w : 1;

    /// <summary>
    /// The position to resume at when a checkpoint was written by <paramref name="savedWorldSize"/> ranks and this
    /// job has <paramref name="worldSize"/>: the epoch's global sample count is kept and the batch within the epoch
    /// becomes that count divided by the new global batch (per-rank batch size × world size). Because shards
    /// interleave (rank r takes positions r, r+W, …; ComposerSharp.Data's <c>DistributedSampler</c>), the samples
    /// consumed so far are the first ones of the epoch's order for any W, so the data continues where it stopped
    /// (exactly when the count is a multiple of the new global batch, else rounded down, with a warning). The same
    /// world size returns <paramref name="timestamp"/>.
    /// </summary>
    private static Timestamp ContinueFromSamples(Timestamp timestamp, int savedWorldSize, int worldSize, IDataLoader loader, string checkpoint, ILogger log)
    {
        if (savedWorldSize == worldSize)
        {
            return timestamp;
        }

        if (loader is not IShardableDataLoader shardable)
        {
            log.LogWarning("Checkpoint {Checkpoint} was written by {Saved} ranks and this job has {Current}; weights and optimizer state are loaded, but the dataloader {Type} cannot be repositioned by sample count, so the data order differs from an uninterrupted run.", checkpoint, savedWorldSize, worldSize, loader.GetType().Name);
            return timestamp;
        }

        if (loader is ISampleResumableDataLoader { CanResumeAtSample: true })
        {
            log.LogWarning(
                "Checkpoint {Checkpoint} was written by {Saved} ranks and this job has {Current}: weights and optimizer state are loaded and the elastic dataloader continues exactly at global sample {Samples} of epoch {Epoch} of the same global order.",
                checkpoint, savedWorldSize, worldSize, timestamp.SampleInEpoch, timestamp.Epoch);
            return timestamp with { BatchInEpoch = timestamp.SampleInEpoch / ((long)shardable.BatchSize * worldSize) };
        }

        long globalBatch = (long)shardable.BatchSize * worldSize;
        long batchInEpoch = timestamp.SampleInEpoch / globalBatch;
        long remainder = timestamp.SampleInEpoch % globalBatch;
        log.LogWarning(
            "Checkpoint {Checkpoint} was written by {Saved} ranks and this job has {Current}: weights and optimizer state are loaded and the data continues from global sample {Samples} of epoch {Epoch} (batch {Batch} of the new global batch of {GlobalBatch}){Remainder}.",
            checkpoint, savedWorldSize, worldSize, timestamp.SampleInEpoch, timestamp.Epoch, batchInEpoch, globalBatch,
            remainder == 0 ? "" : $"; {remainder} samples were consumed past that batch and are seen again");
        return timestamp with { BatchInEpoch = batchInEpoch };
    }

    private static CheckpointHeader BuildHeader(State state, bool weightsOnly)
    {
        var header = new CheckpointHeader
        {
            WeightsOnly = weightsOnly,
            RunName = state.RunName,
            Seed = state.Seed,
            Precision = state.Precision.ToComposerName(),
            Device = state.Device.ToString(),
            SavedAt = DateTimeOffset.UtcNow,
            Metadata = new Dictionary<string, string>
            {
                ["composersharp_version"] = LibraryVersion(typeof(Checkpoint).Assembly),
                ["torchsharp_version"] = LibraryVersion(typeof(torch).Assembly),
                ["dotnet_version"] = Environment.Version.ToString(),
                ["os"] = RuntimeInformation.OSDescription,
                ["model_type"] = state.Model.GetType().FullName ?? state.Model.GetType().Name,
                ["world_size"] = state.ProcessGroup.WorldSize.ToString(CultureInfo.InvariantCulture),
            },
            Algorithms = state.Algorithms.Select(a =>
            {
                AlgorithmDescription d = a.Describe();
                return new AlgorithmRecord { Name = d.Name, RequiredOnLoad = a.RequiredOnLoad, Hyperparameters = d.Hyperparameters.ToDictionary(kv => kv.Key, kv => kv.Value) };
            }).ToList(),
        };
        foreach ((string key, string value) in state.CheckpointMetadata ?? new Dictionary<string, string>())
        {
            header.Metadata.TryAdd(key, value);
        }

        if (weightsOnly)
        {
            return header;
        }

        header.Timestamp = state.Timestamp;
        IDataLoader? loader = state.TrainDataloader;
        header.Sampler = new SamplerPosition
        {
            Epoch = state.Timestamp.Epoch,
            BatchInEpoch = state.Timestamp.BatchInEpoch,
            SampleInEpoch = state.Timestamp.SampleInEpoch,
            BatchesPerEpoch = loader?.BatchesPerEpoch,
            SamplesPerEpoch = loader?.SamplesPerEpoch,
            DataloaderType = loader?.GetType().FullName ?? string.Empty,
            ShuffleSeed = (loader as ISampleResumableDataLoader)?.Seed,
            ShuffleAlgo = (loader as ISampleResumableDataLoader)?.ShuffleAlgo,
            NumCanonicalNodes = (loader as ISampleResumableDataLoader)?.NumCanonicalNodes,
        };
        header.Schedulers = SchedulerDescriptions(state);
        header.Optimizers = state.Optimizers.Select(o => new OptimizerRecord
        {
            Type = Unwrap(o).GetType().FullName ?? Unwrap(o).GetType().Name,
            InitialLearningRates = o.ParamGroups.Select(g => g.InitialLearningRate).ToList(),
            LearningRates = o.ParamGroups.Select(g => g.LearningRate).ToList(),
        }).ToList();
        header.GradScaler = state.Scaler.Enabled ? state.Scaler.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value) : null;
        foreach (IStatefulCallback callback in state.Callbacks.OfType<IStatefulCallback>())
        {
            if (header.Callbacks.ContainsKey(callback.StateKey))
            {
                throw new InvalidOperationException($"Two callbacks share the checkpoint state key '{callback.StateKey}'; give each a unique StateKey.");
            }

            header.Callbacks[callback.StateKey] = JsonSerializer.SerializeToElement(callback.StateDict(), CheckpointFile.Json);
        }

        return header;
    }

    private static List<string> SchedulerDescriptions(State state) =>
        state.Schedulers.Select(s => s.ToString() ?? s.GetType().Name).ToList();

    private static void LoadOptimizers(State state, CheckpointReader reader, CheckpointHeader header)
    {
        string file = reader.Path;
        if (header.Optimizers.Count != state.Optimizers.Count)
        {
            throw new CheckpointException(file, $"Checkpoint '{file}' holds {header.Optimizers.Count} optimizer(s), but this Trainer has {state.Optimizers.Count}.");
        }

        for (int i = 0; i < state.Optimizers.Count; i++)
        {
            OptimizerHelper helper = Unwrap(state.Optimizers[i]) as OptimizerHelper
                ?? throw new NotSupportedException($"Optimizer {Unwrap(state.Optimizers[i]).GetType().Name} keeps its state in native code, which TorchSharp cannot restore.");
            try
            {
                reader.Read(OptimizerEntry(i), r => helper.load_state_dict(r));
            }
            catch (Exception ex) when (ex is ArgumentException or InvalidDataException && ex is not CheckpointException)
            {
                throw new CheckpointException(file, $"Checkpoint '{file}': optimizer {i} ({header.Optimizers[i].Type}) does not match this Trainer's {Unwrap(state.Optimizers[i]).GetType().FullName}: {ex.Message}", ex);
            }

            List<optim.ILearningRateController> groups = state.Optimizers[i].ParamGroups.ToList();
            OptimizerRecord record = header.Optimizers[i];
            for (int g = 0; g < groups.Count && g < record.InitialLearningRates.Count; g++)
            {
                groups[g].InitialLearningRate = record.InitialLearningRates[g];
                groups[g].LearningRate = record.LearningRates[g];
            }
        }
    }

    /// <summary>
    /// The sampler position must agree with the timestamp (both are written from it; a disagreement means a damaged
    /// or hand-edited header), and a different training dataloader is worth a warning: resumption would not follow
    /// the original data order. That warning is given only when <paramref name="sameWorldSize"/>: with another
    /// number of ranks the batches per epoch differ by design and the position is recomputed from the sample count.
    /// </summary>
    private static void CheckSampler(State state, CheckpointHeader header, Timestamp timestamp, string file, ILogger log, bool sameWorldSize)
    {
        if (header.Sampler is not { } sampler)
        {
            return;
        }

        if (sampler.Epoch != timestamp.Epoch || sampler.BatchInEpoch != timestamp.BatchInEpoch || sampler.SampleInEpoch != timestamp.SampleInEpoch)
        {
            throw new CheckpointException(file,
                $"Checkpoint '{file}' is inconsistent: its sampler position (epoch {sampler.Epoch}, batch {sampler.BatchInEpoch}, sample {sampler.SampleInEpoch} in epoch) " +
                $"differs from its timestamp (epoch {timestamp.Epoch}, batch {timestamp.BatchInEpoch}, sample {timestamp.SampleInEpoch} in epoch).");
        }

        if (state.TrainDataloader is ISampleResumableDataLoader elastic && sampler.ShuffleAlgo is not null
            && (sampler.ShuffleAlgo != elastic.ShuffleAlgo || sampler.ShuffleSeed != elastic.Seed || sampler.NumCanonicalNodes != elastic.NumCanonicalNodes))
        {
            log.LogWarning(
                "Checkpoint {Checkpoint} was trained with shuffle_algo {SavedAlgo}, shuffle_seed {SavedSeed}, num_canonical_nodes {SavedNodes}, but the training dataloader now has {Algo}, {Seed}, {Nodes}; resumption will not follow the original data order.",
                file, sampler.ShuffleAlgo, sampler.ShuffleSeed, sampler.NumCanonicalNodes, elastic.ShuffleAlgo ?? "(classic)", elastic.Seed, elastic.NumCanonicalNodes);
        }

        if (!sameWorldSize || state.TrainDataloader is not { } loader)
        {
            return;
        }

        string loaderType = loader.GetType().FullName ?? string.Empty;
        if (sampler.BatchesPerEpoch != loader.BatchesPerEpoch || sampler.SamplesPerEpoch != loader.SamplesPerEpoch || sampler.DataloaderType != loaderType)
        {
            log.LogWarning(
                "Checkpoint {Checkpoint} was trained with {Saved} batches ({SavedSamples} samples) per epoch from a {SavedType}, but the training dataloader now has {Current} batches ({CurrentSamples} samples) from a {CurrentType}; resumption will not follow the original data order.",
                file, sampler.BatchesPerEpoch, sampler.SamplesPerEpoch, sampler.DataloaderType, loader.BatchesPerEpoch, loader.SamplesPerEpoch, loaderType);
        }
    }

    private static void WarnOnOtherSchedulers(State state, CheckpointHeader header, string file, ILogger log)
    {
        List<string> current = SchedulerDescriptions(state);
        if (!current.SequenceEqual(header.Schedulers))
        {
            log.LogWarning(
                "Checkpoint {Checkpoint} was trained with schedulers [{Saved}], but this run has [{Current}]; the learning rate will follow the new schedule from the restored timestamp.",
                file, string.Join(", ", header.Schedulers), string.Join(", ", current));
        }
    }

    private static void WarnOnOtherLibraryVersion(CheckpointHeader header, string file, ILogger log)
    {
        string current = LibraryVersion(typeof(torch).Assembly);
        if (header.Metadata.TryGetValue("torchsharp_version", out string? saved) && saved != current)
        {
            log.LogWarning(
                "Checkpoint {Checkpoint} was written with TorchSharp {Saved}; this process runs {Current}. Tensors and optimizer state are read in the older format, which TorchSharp may have changed.",
                file, saved, current);
        }
    }

    private static void LoadModelWeights(State state, CheckpointReader reader, bool strict, IReadOnlyList<string>? ignoreKeys, ILogger log)
    {
        string file = reader.Path;
        var ignore = new KeyGlob(ignoreKeys);
        Dictionary<string, Tensor> target = state.Model.state_dict();
        var seen = new HashSet<string>();
        var unexpected = new List<string>();
        var ignored = new List<string>();
        reader.Read(CheckpointFile.ModelEntry, r => CheckpointFile.ReadTensors(r, (name, loaded) =>
        {
            if (ignore.Matches(name))
            {
                ignored.Add(name);
                return;
            }

            if (!target.TryGetValue(name, out Tensor? t))
            {
                unexpected.Add(name);
                return;
            }

            CheckpointFile.CopyWeight(file, name, t, loaded);
            seen.Add(name);
        }));
        List<string> missing = target.Keys.Where(k => !seen.Contains(k)).ToList();
        List<string> missingNotIgnored = missing.Where(k => !ignore.Matches(k)).ToList();
        if (strict && (missingNotIgnored.Count > 0 || unexpected.Count > 0))
        {
            string detail = $"missing from the checkpoint: [{string.Join(", ", missingNotIgnored)}]; not in the model: [{string.Join(", ", unexpected)}]";
            string algorithms = reader.Header.Algorithms.Any(a => a.RequiredOnLoad)
                ? $" It was saved with the required-on-load algorithm(s) {string.Join(", ", reader.Header.Algorithms.Where(a => a.RequiredOnLoad).Select(a => a.Name))}; if they renamed weights, pass them too."
                : string.Empty;
            throw new CheckpointException(file,
                $"Checkpoint '{file}' does not match the model's weights ({detail}). To start a new head from it (fine-tuning), set load_strict_model_weights: false "
                + $"(CheckpointOptions.LoadStrictModelWeights = false), or list the keys in load_ignore_keys (glob patterns such as 'classifier.*').{algorithms}");
        }

        log.LogInformation("Loaded {Count} model tensors from {Checkpoint}.", seen.Count, file);
        ComposerSharp.Models.HuggingFace.WeightLoadReport.LogDifferences(log, file, missing, unexpected.Concat(ignored).ToList());
    }
}
