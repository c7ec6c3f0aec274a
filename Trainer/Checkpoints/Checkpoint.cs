using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.Json;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using EventsLogger = ComposerSharp.Events.Logger;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>
/// Saves and loads a run's checkpoint against its <see cref="State"/> alone (Composer's
/// <c>checkpoint.save_checkpoint(state, ...)</c> and <c>load_checkpoint(path, state, ...)</c>,
/// composer/utils/checkpoint.py): the model, optimizers, loss scaler (<see cref="State.Scaler"/>), timestamp, RNG
/// state, required-on-load algorithms and stateful callbacks all live on the state, so a callback such as
/// <see cref="Callbacks.CheckpointSaver"/> needs nothing else.
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
    /// <see cref="IStatefulCallback"/>, the run name, seed and provenance (library versions, precision, device, time).
    /// With <paramref name="weightsOnly"/> only the model, algorithms and provenance are written.
    /// </remarks>
    /// <returns>The absolute path written.</returns>
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
                helpers.Add(optimizer as OptimizerHelper
                    ?? throw new NotSupportedException($"Optimizer {optimizer.GetType().Name} keeps its state in native code, which TorchSharp cannot serialise; use SGD, Adam, AdamW or another managed optimizer, or save weights only."));
            }
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

                writer.Write(CheckpointFile.RngEntry, w =>
                {
                    using var scope = torch.NewDisposeScope();
                    byte[] rng = torch.get_rng_state().data<byte>().ToArray();
                    w.Write(rng.Length);
                    w.Write(rng);
                });
            }

            writer.WriteHeader(BuildHeader(state, weightsOnly));
        });
        return full;
    }

    /// <summary>
    /// Loads the checkpoint at <paramref name="path"/> (a checkpoint or a latest pointer; a
    /// <see cref="PathTemplate"/>) into <paramref name="state"/>: required-on-load algorithms first (Composer's
    /// <c>_apply_required_algorithms</c>), then the model's weights, then, unless
    /// <see cref="CheckpointOptions.LoadWeightsOnly"/>, optimizers, learning rates, scaler, timestamp, seed, callback
    /// state and <see cref="State.PendingRngState"/> (restored when training starts).
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
    public static void Load(State state, EventsLogger logger, string path, CheckpointOptions options)
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
        LoadModelWeights(state, reader, options.LoadStrictModelWeights, log);
        if (options.LoadWeightsOnly)
        {
            log.LogInformation("Loaded model weights from {Checkpoint} (run {Run}, saved {SavedAt:u} on {Device}).", file, header.RunName, header.SavedAt, header.Device);
            return;
        }

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
        CheckSampler(state, header, timestamp, file, log);
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

        reader.Read(CheckpointFile.RngEntry, r =>
        {
            int length = r.ReadInt32();
            byte[] rng = r.ReadBytes(length);
            if (rng.Length != length)
            {
                throw new EndOfStreamException($"the RNG state is {rng.Length} bytes instead of {length}");
            }

            state.PendingRngState = rng;
        });
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
            },
            Algorithms = state.Algorithms.Select(a =>
            {
                AlgorithmDescription d = a.Describe();
                return new AlgorithmRecord { Name = d.Name, RequiredOnLoad = a.RequiredOnLoad, Hyperparameters = d.Hyperparameters.ToDictionary(kv => kv.Key, kv => kv.Value) };
            }).ToList(),
        };
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
        };
        header.Schedulers = SchedulerDescriptions(state);
        header.Optimizers = state.Optimizers.Select(o => new OptimizerRecord
        {
            Type = o.GetType().FullName ?? o.GetType().Name,
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
            OptimizerHelper helper = state.Optimizers[i] as OptimizerHelper
                ?? throw new NotSupportedException($"Optimizer {state.Optimizers[i].GetType().Name} keeps its state in native code, which TorchSharp cannot restore.");
            try
            {
                reader.Read(OptimizerEntry(i), r => helper.load_state_dict(r));
            }
            catch (Exception ex) when (ex is ArgumentException or InvalidDataException && ex is not CheckpointException)
            {
                throw new CheckpointException(file, $"Checkpoint '{file}': optimizer {i} ({header.Optimizers[i].Type}) does not match this Trainer's {state.Optimizers[i].GetType().FullName}: {ex.Message}", ex);
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
    /// the original data order.
    /// </summary>
    private static void CheckSampler(State state, CheckpointHeader header, Timestamp timestamp, string file, ILogger log)
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

        if (state.TrainDataloader is not { } loader)
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

    private static void LoadModelWeights(State state, CheckpointReader reader, bool strict, ILogger log)
    {
        string file = reader.Path;
        Dictionary<string, Tensor> target = state.Model.state_dict();
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

        log.LogWarning("Loading {Checkpoint} non-strictly: {Detail}.", file, detail);
    }
}
