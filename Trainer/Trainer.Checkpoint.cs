using System.Runtime.InteropServices;
using System.Text.Json;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Trainer;

public sealed partial class Trainer
{
    /// <summary>
    /// Writes a checkpoint of the run to <paramref name="path"/> (placeholders allowed, see
    /// <see cref="CheckpointOptions"/>), atomically: a temporary file in the same folder is renamed over the target
    /// only once complete, so an existing checkpoint at that path survives a failed write.
    /// </summary>
    /// <remarks>
    /// A full checkpoint holds the model's state dict, each optimizer's state, the schedulers and each parameter
    /// group's initial and current learning rate, the gradient scaler, the timestamp, the CPU generator's state and
    /// the data sampler's position (epoch and batches consumed), the algorithms with their descriptions, the state of
    /// every <see cref="IStatefulCallback"/>, the run name, seed and metadata (library versions, precision, device).
    /// With <paramref name="weightsOnly"/> only the model, algorithms and metadata are written.
    /// </remarks>
    /// <returns>The absolute path written.</returns>
    /// <exception cref="CheckpointException">The write failed; the previous file, if any, is unchanged.</exception>
    /// <exception cref="NotSupportedException">An optimizer whose state TorchSharp cannot serialise (not an <c>OptimizerHelper</c>, e.g. LBFGS).</exception>
    public string SaveCheckpoint(string path, bool weightsOnly = false)
    {
        ThrowIfClosed();
        ArgumentNullException.ThrowIfNull(path);
        string full = Path.GetFullPath(CheckpointFile.Format(path, State));
        var helpers = new List<OptimizerHelper>();
        if (!weightsOnly)
        {
            foreach (optim.Optimizer optimizer in State.Optimizers)
            {
                helpers.Add(optimizer as OptimizerHelper
                    ?? throw new NotSupportedException($"Optimizer {optimizer.GetType().Name} keeps its state in native code, which TorchSharp cannot serialise; use SGD, Adam, AdamW or another managed optimizer, or save weights only."));
            }
        }

        // Distributed: every rank's generator state is gathered (a collective), then only rank 0 writes.
        byte[][] rngStates = weightsOnly ? Array.Empty<byte[]>() : _distributed.AllGatherBytes(CurrentRngState());
        if (!_distributed.IsRankZero)
        {
            return full;
        }

        CheckpointFile.WriteAtomically(full, stream =>
        {
            using var writer = new CheckpointWriter(stream);
            writer.Write(CheckpointFile.ModelEntry, w => CheckpointFile.WriteTensors(w, State.Model.state_dict().ToList()));
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
                    writer.Write(rank == 0 ? CheckpointFile.RngEntry : RankRngEntry(rank), w =>
                    {
                        w.Write(rng.Length);
                        w.Write(rng);
                    });
                }
            }

            writer.WriteHeader(BuildHeader(weightsOnly));
        });
        return full;
    }

    private static string OptimizerEntry(int index) => $"optimizers/{index}.bin";

    /// <summary>The entry of rank <paramref name="rank"/>'s generator state (rank 0's is <see cref="CheckpointFile.RngEntry"/>).</summary>
    private static string RankRngEntry(int rank) => $"rng/rank{rank}.bin";

    private static byte[] CurrentRngState()
    {
        using var scope = torch.NewDisposeScope();
        return torch.get_rng_state().data<byte>().ToArray();
    }

    private CheckpointHeader BuildHeader(bool weightsOnly)
    {
        var header = new CheckpointHeader
        {
            WeightsOnly = weightsOnly,
            RunName = State.RunName,
            Seed = State.Seed,
            Precision = State.Precision.ToComposerName(),
            Device = State.Device.ToString(),
            SavedAt = DateTimeOffset.UtcNow,
            Metadata = new Dictionary<string, string>
            {
                ["composersharp_version"] = LibraryVersion(typeof(Trainer).Assembly),
                ["torchsharp_version"] = LibraryVersion(typeof(torch).Assembly),
                ["dotnet_version"] = Environment.Version.ToString(),
                ["os"] = RuntimeInformation.OSDescription,
                ["model_type"] = _model.GetType().FullName ?? _model.GetType().Name,
                ["world_size"] = _distributed.WorldSize.ToString(System.Globalization.CultureInfo.InvariantCulture), // Distributed
            },
            Algorithms = State.Algorithms.Select(a =>
            {
                AlgorithmDescription d = a.Describe();
                return new AlgorithmRecord { Name = d.Name, RequiredOnLoad = a.RequiredOnLoad, Hyperparameters = d.Hyperparameters.ToDictionary(kv => kv.Key, kv => kv.Value) };
            }).ToList(),
        };
        if (weightsOnly)
        {
            return header;
        }

        header.Timestamp = State.Timestamp;
        IDataLoader? loader = State.TrainDataloader;
        header.Sampler = new SamplerPosition
        {
            Epoch = State.Timestamp.Epoch,
            BatchInEpoch = State.Timestamp.BatchInEpoch,
            SampleInEpoch = State.Timestamp.SampleInEpoch,
            BatchesPerEpoch = loader?.BatchesPerEpoch,
            SamplesPerEpoch = loader?.SamplesPerEpoch,
            DataloaderType = loader?.GetType().FullName ?? string.Empty,
        };
        header.Schedulers = State.Schedulers.Select(s => s.ToString() ?? s.GetType().Name).ToList();
        header.Optimizers = State.Optimizers.Select(o => new OptimizerRecord
        {
            Type = o.GetType().FullName ?? o.GetType().Name,
            InitialLearningRates = o.ParamGroups.Select(g => g.InitialLearningRate).ToList(),
            LearningRates = o.ParamGroups.Select(g => g.LearningRate).ToList(),
        }).ToList();
        header.GradScaler = GradScaler.Enabled ? GradScaler.StateDict().ToDictionary(kv => kv.Key, kv => kv.Value) : null;
        header.DeviceTrainMicrobatchSize = State.DeviceTrainMicrobatchSize;
        foreach (IStatefulCallback callback in State.Callbacks.OfType<IStatefulCallback>())
        {
            if (header.Callbacks.ContainsKey(callback.StateKey))
            {
                throw new InvalidOperationException($"Two callbacks share the checkpoint state key '{callback.StateKey}'; give each a unique StateKey.");
            }

            header.Callbacks[callback.StateKey] = JsonSerializer.SerializeToElement(callback.StateDict(), CheckpointFile.Json);
        }

        return header;
    }

    private string? FindAutoresumeCheckpoint(CheckpointOptions options, string? saveFolder)
    {
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

        string pointer = Path.Combine(CheckpointFile.Format(saveFolder!, State), CheckpointFile.Format(options.SaveLatestFilename!, State));
        return File.Exists(pointer) ? pointer : null;
    }

    /// <summary>
    /// Loads a checkpoint into this Trainer (Composer's <c>load_checkpoint</c>): required-on-load algorithms first,
    /// then the model's weights, then (unless <paramref name="weightsOnly"/>) optimizers, scaler, timestamp, seed,
    /// callback state and learning rates; the RNG state is restored when <see cref="Fit"/> starts.
    /// </summary>
    private void LoadCheckpoint(
        string path,
        bool weightsOnly,
        bool strict,
        IReadOnlyList<string>? exclude,
        Func<AlgorithmDescription, IAlgorithm?>? resolver,
        MissingAlgorithmPolicy policy)
    {
        using CheckpointReader reader = CheckpointFile.Open(path);
        CheckpointHeader header = reader.Header;
        string file = reader.Path;
        if (header.WeightsOnly && !weightsOnly)
        {
            throw new CheckpointException(file, $"Checkpoint '{file}' holds only model weights; set CheckpointOptions.LoadWeightsOnly = true to load it.");
        }

        ApplyRequiredAlgorithms(header, file, exclude, resolver, policy);
        LoadModelWeights(reader, strict);
        if (weightsOnly)
        {
            _log.LogInformation("Loaded model weights from {Checkpoint}.", file);
            return;
        }

        if (header.Optimizers.Count != State.Optimizers.Count)
        {
            throw new CheckpointException(file, $"Checkpoint '{file}' holds {header.Optimizers.Count} optimizer(s), but this Trainer has {State.Optimizers.Count}.");
        }

        for (int i = 0; i < State.Optimizers.Count; i++)
        {
            OptimizerHelper helper = State.Optimizers[i] as OptimizerHelper
                ?? throw new NotSupportedException($"Optimizer {State.Optimizers[i].GetType().Name} keeps its state in native code, which TorchSharp cannot restore.");
            try
            {
                reader.Read(OptimizerEntry(i), r => helper.load_state_dict(r));
            }
            catch (Exception ex) when (ex is ArgumentException or InvalidDataException && ex is not CheckpointException)
            {
                throw new CheckpointException(file, $"Checkpoint '{file}': optimizer {i} ({header.Optimizers[i].Type}) does not match this Trainer's {State.Optimizers[i].GetType().FullName}: {ex.Message}", ex);
            }

            List<optim.ILearningRateController> groups = State.Optimizers[i].ParamGroups.ToList();
            OptimizerRecord record = header.Optimizers[i];
            for (int g = 0; g < groups.Count && g < record.InitialLearningRates.Count; g++)
            {
                groups[g].InitialLearningRate = record.InitialLearningRates[g];
                groups[g].LearningRate = record.LearningRates[g];
            }
        }

        if (header.GradScaler is { } scaler && GradScaler.Enabled)
        {
            GradScaler.LoadStateDict(scaler);
        }
        else if (header.GradScaler is not null || GradScaler.Enabled)
        {
            _log.LogWarning("Checkpoint {Checkpoint} was written with precision {Saved}; this run uses {Current}, so the gradient scaler state is not restored.", file, header.Precision, State.Precision.ToComposerName());
        }

        State.Timestamp = header.Timestamp ?? throw new CheckpointException(file, $"Checkpoint '{file}' has no timestamp.");
        State.PreviousTimestamp = null;
        State.Seed = header.Seed;
        // Distributed: a checkpoint of another world size continues from the global sample count.
        int savedWorldSize = header.Metadata.TryGetValue("world_size", out string? ws) && int.TryParse(ws, System.Globalization.CultureInfo.InvariantCulture, out int w) ? w : 1;
        if (State.TrainDataloader is { } resumedLoader)
        {
            State.Timestamp = _distributed.ContinueFromSamples(State.Timestamp, savedWorldSize, resumedLoader, file);
        }

        if (savedWorldSize == _distributed.WorldSize && header.Sampler is { } sampler && State.TrainDataloader is { } loader && sampler.BatchesPerEpoch != loader.BatchesPerEpoch)
        {
            _log.LogWarning(
                "Checkpoint {Checkpoint} was trained with {Saved} batches per epoch but the training dataloader now has {Current}; resumption will not follow the original data order.",
                file, sampler.BatchesPerEpoch, loader.BatchesPerEpoch);
        }

        foreach (IStatefulCallback callback in State.Callbacks.OfType<IStatefulCallback>())
        {
            if (header.Callbacks.TryGetValue(callback.StateKey, out JsonElement element))
            {
                callback.LoadStateDict(JsonValues.ToDictionary(element));
            }
        }

        // Distributed: each rank resumes its own generator; a rank the checkpoint does not know keeps its seed + rank.
        string rngEntry = _distributed.Rank == 0 ? CheckpointFile.RngEntry : RankRngEntry(_distributed.Rank);
        if (!reader.HasEntry(rngEntry))
        {
            _log.LogWarning("Checkpoint {Checkpoint} has no generator state for rank {Rank} (it was written by fewer ranks); this rank keeps its seeded generator, so randomness differs from an uninterrupted run.", file, _distributed.Rank);
            rngEntry = "";
        }

        reader.Read(rngEntry.Length == 0 ? CheckpointFile.RngEntry : rngEntry, r =>
        {
            int length = r.ReadInt32();
            _pendingRngState = r.ReadBytes(length);
            if (_pendingRngState.Length != length)
            {
                throw new EndOfStreamException($"the RNG state is {_pendingRngState.Length} bytes instead of {length}");
            }
        });
        if (rngEntry.Length == 0)
        {
            _pendingRngState = null;
        }
        _log.LogInformation("Loaded training state from {Checkpoint} at {Timestamp}.", file, State.Timestamp.Get(TimeUnit.Batch));
    }

    private void LoadModelWeights(CheckpointReader reader, bool strict)
    {
        string file = reader.Path;
        Dictionary<string, Tensor> target = State.Model.state_dict();
        var seen = new HashSet<string>();
        var unexpected = new List<string>();
        reader.Read(CheckpointFile.ModelEntry, r => CheckpointFile.ReadTensors(r, (name, loaded) =>
        {
            if (!target.TryGetValue(name, out Tensor? t))
            {
                unexpected.Add(name);
                return;
            }

            if (t.dtype != loaded.dtype || !t.shape.SequenceEqual(loaded.shape))
            {
                throw new CheckpointException(file,
                    $"Checkpoint '{file}': tensor '{name}' is {loaded.dtype} [{string.Join(", ", loaded.shape)}] but the model's is {t.dtype} [{string.Join(", ", t.shape)}].");
            }

            using (torch.no_grad())
            {
                t.copy_(loaded);
            }

            seen.Add(name);
        }));
        List<string> missing = target.Keys.Where(k => !seen.Contains(k)).ToList();
        if (missing.Count == 0 && unexpected.Count == 0)
        {
            return;
        }

        string detail = $"missing from the checkpoint: [{string.Join(", ", missing)}]; not in the model: [{string.Join(", ", unexpected)}]";
        if (strict)
        {
            throw new CheckpointException(file,
                $"Checkpoint '{file}' does not match the model's weights ({detail}). Pass the same required-on-load algorithms as when it was saved, or set LoadStrictModelWeights = false.");
        }

        _log.LogWarning("Loading {Checkpoint} non-strictly: {Detail}.", file, detail);
    }

    /// <summary>The default resolver: the algorithms that ship with ComposerSharp (<see cref="ComposerSharp.Algorithms.AlgorithmCatalog"/>).</summary>
    private static IAlgorithm? ResolveBuiltInAlgorithm(AlgorithmDescription description) =>
        ComposerSharp.Algorithms.AlgorithmCatalog.Names.Contains(description.Name) ? ComposerSharp.Algorithms.AlgorithmCatalog.Create(description) : null;

    /// <summary>
    /// Handles the required-on-load algorithms a checkpoint records (Composer's <c>_apply_required_algorithms</c>):
    /// one the Trainer already has is kept (with a warning if its description differs); a missing one is
    /// re-created with <paramref name="resolver"/>, applied at Init and added with a warning, or refused.
    /// </summary>
    private void ApplyRequiredAlgorithms(
        CheckpointHeader header,
        string file,
        IReadOnlyList<string>? exclude,
        Func<AlgorithmDescription, IAlgorithm?>? resolver,
        MissingAlgorithmPolicy policy)
    {
        foreach (AlgorithmRecord record in header.Algorithms.Where(a => a.RequiredOnLoad))
        {
            if (exclude is not null && exclude.Contains(record.Name))
            {
                continue;
            }

            AlgorithmDescription recorded = record.ToDescription();
            IAlgorithm? present = State.Algorithms.FirstOrDefault(a => a.Name == record.Name);
            if (present is not null)
            {
                if (!present.Describe().Equals(recorded))
                {
                    _log.LogWarning(
                        "Checkpoint {Checkpoint} was trained with required-on-load algorithm {Recorded}, but this Trainer has {Current}; differing hyperparameters may stop weights from loading.",
                        file, Describe(recorded), Describe(present.Describe()));
                }

                continue;
            }

            string howToFix = $"pass it in `algorithms` (an algorithm named '{record.Name}' with {Describe(recorded)}), " +
                $"give CheckpointOptions.AlgorithmResolver a way to re-create it, or list '{record.Name}' in LoadExcludeAlgorithms to load without it";
            if (policy == MissingAlgorithmPolicy.Refuse)
            {
                throw new InvalidOperationException(
                    $"Checkpoint '{file}' was trained with required-on-load algorithm '{record.Name}', which this Trainer lacks: {howToFix}.");
            }

            IAlgorithm algorithm = (resolver ?? ResolveBuiltInAlgorithm)(recorded)
                ?? throw new InvalidOperationException(
                    $"Checkpoint '{file}' was trained with required-on-load algorithm '{record.Name}', which this Trainer lacks and cannot re-create: {howToFix}.");
            try
            {
                if (algorithm.Match(Event.Init, State))
                {
                    algorithm.Apply(Event.Init, State, Logger);
                }
            }
            catch (Exception ex)
            {
                throw new InvalidOperationException(
                    $"Checkpoint '{file}' needs required-on-load algorithm '{record.Name}'; re-creating and applying it at Init failed: {ex.Message}. You may {howToFix}.", ex);
            }

            State.Algorithms.Add(algorithm);
            _log.LogWarning(
                "Automatically added required-on-load algorithm {Algorithm} ({Hyperparameters}), which was enabled when checkpoint {Checkpoint} was trained. To load without it, list '{Name}' in LoadExcludeAlgorithms.",
                record.Name, Describe(recorded), file, record.Name);
        }
    }

    private static string Describe(AlgorithmDescription d) =>
        d.Hyperparameters.Count == 0 ? "no hyperparameters" : string.Join(", ", d.Hyperparameters.Select(kv => $"{kv.Key}={kv.Value}"));
}

/// <summary>Turns JSON into the plain values <see cref="IStatefulCallback.LoadStateDict"/> receives (double or long numbers, strings, bools, lists, dictionaries).</summary>
internal static class JsonValues
{
    internal static IReadOnlyDictionary<string, object?> ToDictionary(JsonElement element)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new ArgumentException($"Callback state must be a JSON object, found {element.ValueKind}.", nameof(element));
        }

        var result = new Dictionary<string, object?>();
        foreach (JsonProperty p in element.EnumerateObject())
        {
            result[p.Name] = ToValue(p.Value);
        }

        return result;
    }

    private static object? ToValue(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Null or JsonValueKind.Undefined => null,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.String => e.GetString() switch
        {
            "NaN" => double.NaN,
            "Infinity" => double.PositiveInfinity,
            "-Infinity" => double.NegativeInfinity,
            string s => s,
            null => null,
        },
        JsonValueKind.Number => e.TryGetInt64(out long l) ? l : e.GetDouble(),
        JsonValueKind.Array => e.EnumerateArray().Select(ToValue).ToList(),
        JsonValueKind.Object => ToDictionary(e),
        _ => throw new ArgumentException($"Unsupported JSON value {e.ValueKind}."),
    };
}
