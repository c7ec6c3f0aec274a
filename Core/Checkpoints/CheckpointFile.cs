using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Core.Checkpoints;

/// <summary>A checkpoint file could not be read or written; the message names the file and what is wrong.</summary>
public sealed class CheckpointException : IOException
{
    /// <summary>Creates the exception for <paramref name="path"/>.</summary>
    public CheckpointException(string path, string message, Exception? inner = null)
        : base(message, inner)
    {
        FilePath = path;
    }

    /// <summary>The checkpoint file concerned.</summary>
    public string FilePath { get; }
}

/// <summary>
/// The ComposerSharp checkpoint container: a ZIP archive (entries stored uncompressed) holding
/// <c>model.bin</c> (the model's state dict as TorchSharp tensors), <c>optimizers/&lt;i&gt;.bin</c> (TorchSharp
/// optimizer state), <c>rng/cpu.bin</c> (the CPU generator state, a Byte tensor) and <c>checkpoint.json</c>
/// (format marker, timestamp, run name, seed, schedulers, gradient scaler, algorithms, callback state, metadata,
/// and a SHA-256 of every other entry, verified before anything is applied). Files are written to a temporary file
/// in the same folder and renamed over the target, so a failed or interrupted write never damages an existing
/// checkpoint (the design of Composer's composer/utils/checkpoint.py, with an atomic rename instead of a direct
/// <c>torch.save</c>).
/// </summary>
public static class CheckpointFile
{
    /// <summary>The format marker stored in <c>checkpoint.json</c>.</summary>
    public const string FormatName = "composersharp-checkpoint";

    /// <summary>The format version this library writes and reads.</summary>
    public const int FormatVersion = 1;

    /// <summary>First line of a "latest" pointer file.</summary>
    public const string LatestPointerMarker = "composersharp-latest-checkpoint";

    internal const string HeaderEntry = "checkpoint.json";
    internal const string ModelEntry = "model.bin";
    internal const string RngEntry = "rng/cpu.bin";

    internal static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>
    /// The checkpoint a path designates: the path itself, or, when it is a "latest" pointer file, the checkpoint it
    /// points to (resolved relative to the pointer's folder).
    /// </summary>
    /// <exception cref="CheckpointException">The path does not exist, or the pointer is empty or points to a missing file.</exception>
    public static string Resolve(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new CheckpointException(path, $"Checkpoint '{path}' does not exist.");
        }

        string? target = TryReadPointer(path);
        if (target is null)
        {
            return path;
        }

        string resolved = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, target));
        if (!File.Exists(resolved))
        {
            throw new CheckpointException(path, $"Latest-checkpoint pointer '{path}' points to '{resolved}', which does not exist.");
        }

        return resolved;
    }

    /// <summary>Writes (atomically) a pointer file at <paramref name="pointerPath"/> that designates <paramref name="checkpointPath"/>.</summary>
    public static void WriteLatestPointer(string pointerPath, string checkpointPath)
    {
        string folder = Path.GetDirectoryName(Path.GetFullPath(pointerPath))!;
        string relative = Path.GetRelativePath(folder, Path.GetFullPath(checkpointPath));
        WriteAtomically(pointerPath, stream =>
        {
            byte[] bytes = Encoding.UTF8.GetBytes($"{LatestPointerMarker}\n{relative}\n");
            stream.Write(bytes);
        });
    }

    /// <summary>
    /// Writes a file through a temporary file in the same folder that is flushed to disk and renamed over
    /// <paramref name="path"/>; if <paramref name="write"/> throws, the temporary file is deleted and an existing
    /// file at <paramref name="path"/> is left as it was.
    /// </summary>
    /// <exception cref="CheckpointException">Writing failed; the inner exception says why.</exception>
    internal static void WriteAtomically(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        string folder = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(folder);
        string temp = Path.Combine(folder, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }

            File.Move(temp, full, overwrite: true);
        }
        catch (Exception ex)
        {
            TryDelete(temp);
            throw new CheckpointException(path, $"Writing '{path}' failed ({ex.GetType().Name}: {ex.Message}); any previous file at that path is unchanged.", ex);
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
            // The temporary file may already be gone; nothing else to do.
        }
        catch (UnauthorizedAccessException)
        {
            // Leave it: a stray temporary file does not affect any checkpoint.
        }
    }

    private static string? TryReadPointer(string path)
    {
        using var stream = File.OpenRead(path);
        var head = new byte[LatestPointerMarker.Length];
        int read = stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (read < head.Length || Encoding.ASCII.GetString(head) != LatestPointerMarker)
        {
            return null;
        }

        stream.Position = 0;
        using var reader = new StreamReader(stream, Encoding.UTF8);
        reader.ReadLine();
        string? target = reader.ReadLine()?.Trim();
        if (string.IsNullOrEmpty(target))
        {
            throw new CheckpointException(path, $"Latest-checkpoint pointer '{path}' is empty: it names no checkpoint.");
        }

        return target;
    }

    /// <summary>Writes a state dict: entry count, then (name, tensor in TorchSharp's format) pairs.</summary>
    internal static void WriteTensors(BinaryWriter writer, IReadOnlyList<KeyValuePair<string, Tensor>> tensors)
    {
        writer.Write(tensors.Count);
        foreach ((string name, Tensor t) in tensors)
        {
            writer.Write(name);
            using var scope = torch.NewDisposeScope();
            Tensor cpu = t.detach();
            if (cpu.device_type != DeviceType.CPU)
            {
                cpu = cpu.cpu();
            }

            if (!cpu.is_contiguous())
            {
                cpu = cpu.contiguous();
            }

            cpu.Save(writer);
        }
    }

    /// <summary>Reads what <see cref="WriteTensors"/> wrote, one tensor at a time, into <paramref name="consume"/> (tensors are CPU and disposed after the call).</summary>
    internal static void ReadTensors(BinaryReader reader, Action<string, Tensor> consume)
    {
        int count = reader.ReadInt32();
        if (count < 0)
        {
            throw new InvalidDataException($"Negative tensor count {count}.");
        }

        for (int i = 0; i < count; i++)
        {
            string name = reader.ReadString();
            using var scope = torch.NewDisposeScope();
            Tensor t = torch.Tensor.Load(reader);
            consume(name, t);
        }
    }

    /// <summary>
    /// Opens a checkpoint for reading after checking that it is a complete ComposerSharp checkpoint whose entries
    /// match their recorded hashes. With <paramref name="weightsOnly"/> only the model weights (and the header) are
    /// checked: a reader that needs nothing else (evaluation, fine-tuning) is not refused for damage elsewhere.
    /// </summary>
    /// <exception cref="CheckpointException">Missing, truncated, damaged or foreign file; the message names it and the fault.</exception>
    internal static CheckpointReader Open(string path, bool weightsOnly = false) => CheckpointReader.Open(path, weightsOnly);

    /// <summary>
    /// The string metadata of the checkpoint at <paramref name="path"/> (a checkpoint or latest pointer): library
    /// versions, <c>model_type</c>, and whatever the writer added (the Trainer: <c>CheckpointOptions.Metadata</c>) (e.g. the model's description).
    /// </summary>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint.</exception>
    /// <remarks>Only the header and the model weights are checked (as for a weights-only load): damage in the optimizer or other state does not stop a reader that needs the model alone.</remarks>
    public static IReadOnlyDictionary<string, string> ReadMetadata(string path)
    {
        using ModelCheckpoint checkpoint = ModelCheckpoint.Open(path);
        return new Dictionary<string, string>(checkpoint.Metadata);
    }

    /// <summary>
    /// The precision the checkpoint at <paramref name="path"/> (a checkpoint or latest pointer) was trained and
    /// evaluated under, as its header records it: <c>fp32</c>, <c>amp_bf16</c> or <c>amp_fp16</c> (a header without the
    /// field reads as <c>fp32</c>). Inference uses it to compute as the run's evaluation did (Composer's
    /// <c>export_for_inference</c> keeps the precision the model was trained with the same way).
    /// </summary>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint, or its precision is not one of the three names; the message names the file and the value.</exception>
    public static Precision ReadPrecision(string path)
    {
        using ModelCheckpoint checkpoint = ModelCheckpoint.Open(path);
        return checkpoint.Precision;
    }

    /// <summary>The model state dict (name → CPU tensor, as saved) of the checkpoint at <paramref name="path"/>; the caller owns the tensors.</summary>
    /// <exception cref="CheckpointException">The file is missing, not a ComposerSharp checkpoint, or damaged.</exception>
    /// <remarks>Only the header and the model weights are checked (the rest of the checkpoint is not read).</remarks>
    public static Dictionary<string, Tensor> ReadModelState(string path)
    {
        using CheckpointReader reader = Open(path, weightsOnly: true);
        var tensors = new Dictionary<string, Tensor>();
        reader.Read(ModelEntry, r => ReadTensors(r, (name, t) => tensors[name] = t.DetachFromDisposeScope()));
        return tensors;
    }

    /// <summary>
    /// The required-on-load algorithms the checkpoint at <paramref name="path"/> records (those whose surgery changes
    /// the model's weights or their names, e.g. LowPrecisionLayerNorm, ALiBi, gated linear units), in the order they were
    /// applied; empty when none. A reader re-creates and applies them at Init before loading the weights, as Composer's
    /// <c>_apply_required_algorithms</c> does on load.
    /// </summary>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint.</exception>
    public static IReadOnlyList<AlgorithmDescription> ReadRequiredAlgorithms(string path)
    {
        using ModelCheckpoint checkpoint = ModelCheckpoint.Open(path);
        return checkpoint.RequiredAlgorithms;
    }

    /// <summary>
    /// Copies the checkpoint's model weights into <paramref name="model"/>'s tensors of the same names, strictly: every
    /// weight of the model must be in the checkpoint and every weight of the checkpoint in the model, with the same
    /// dtype and shape (PyTorch's <c>load_state_dict(strict=True)</c>).
    /// </summary>
    /// <param name="path">A checkpoint or latest pointer; only its header and model weights are read.</param>
    /// <param name="model">The module to fill (any device; values are copied under no_grad).</param>
    /// <exception cref="CheckpointException">The file is missing, not a checkpoint, or damaged; or a weight's dtype or shape differs, or names are missing or unexpected (the message lists them).</exception>
    public static void LoadModelWeights(string path, nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        using ModelCheckpoint checkpoint = ModelCheckpoint.Open(path);
        checkpoint.LoadWeights(model);
    }

    /// <summary>Copies <paramref name="loaded"/> into <paramref name="target"/> after checking dtype and shape; the message names the file and the tensor.</summary>
    /// <exception cref="CheckpointException">The dtype or shape differs.</exception>
    internal static void CopyWeight(string file, string name, Tensor target, Tensor loaded)
    {
        if (target.dtype != loaded.dtype || !target.shape.SequenceEqual(loaded.shape))
        {
            throw new CheckpointException(file,
                $"Checkpoint '{file}': tensor '{name}' is {loaded.dtype} [{string.Join(", ", loaded.shape)}] but the model's is {target.dtype} [{string.Join(", ", target.shape)}].");
        }

        using (torch.no_grad())
        {
            target.copy_(loaded);
        }
    }

    /// <summary>A write-only stream that hashes what passes through it.</summary>
    internal sealed class HashingStream : Stream
    {
        private readonly Stream _inner;
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        internal HashingStream(Stream inner) => _inner = inner;

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        internal string HexDigest() => Convert.ToHexString(_hash.GetHashAndReset()).ToLowerInvariant();

        public override void Write(byte[] buffer, int offset, int count)
        {
            _hash.AppendData(buffer, offset, count);
            _inner.Write(buffer, offset, count);
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            _hash.AppendData(buffer);
            _inner.Write(buffer);
        }

        public override void Flush() => _inner.Flush();

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _hash.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}

/// <summary>An open, verified checkpoint: its header and access to its binary entries.</summary>
internal sealed class CheckpointReader : IDisposable
{
    private readonly ZipArchive _zip;

    private CheckpointReader(string path, ZipArchive zip, CheckpointHeader header)
    {
        Path = path;
        _zip = zip;
        Header = header;
    }

    internal string Path { get; }

    internal CheckpointHeader Header { get; }

    internal static CheckpointReader Open(string path, bool weightsOnly = false)
    {
        string resolved = CheckpointFile.Resolve(path);
        FileStream stream = File.OpenRead(resolved);
        ZipArchive zip;
        try
        {
            var magic = new byte[4];
            int read = stream.ReadAtLeast(magic, 4, throwOnEndOfStream: false);
            if (read < 4 || magic[0] != 0x50 || magic[1] != 0x4B || magic[2] != 0x03 || magic[3] != 0x04)
            {
                string shown = read == 0 ? "it is empty" : $"its first bytes are {Convert.ToHexString(magic, 0, read)}";
                throw new CheckpointException(resolved, $"'{resolved}' is not a ComposerSharp checkpoint: {shown}, not the ZIP signature 504B0304 that every ComposerSharp checkpoint starts with (PyTorch .pt files and other formats cannot be loaded).");
            }

            stream.Position = 0;
            zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false);
        }
        catch (InvalidDataException ex)
        {
            stream.Dispose();
            throw new CheckpointException(resolved, $"Checkpoint '{resolved}' is truncated or damaged ({ex.Message}); it starts like a checkpoint but its ZIP directory is missing or corrupt — the write that produced it did not complete.", ex);
        }
        catch
        {
            stream.Dispose();
            throw;
        }

        try
        {
            ZipArchiveEntry headerEntry = zip.GetEntry(CheckpointFile.HeaderEntry)
                ?? throw new CheckpointException(resolved, $"'{resolved}' is a ZIP archive but not a ComposerSharp checkpoint: it has no '{CheckpointFile.HeaderEntry}' entry.");
            CheckpointHeader header;
            using (Stream hs = headerEntry.Open())
            {
                header = JsonSerializer.Deserialize<CheckpointHeader>(hs, CheckpointFile.Json)
                    ?? throw new CheckpointException(resolved, $"Checkpoint '{resolved}' has an empty header.");
            }

            if (header.Format != CheckpointFile.FormatName)
            {
                throw new CheckpointException(resolved, $"'{resolved}' is not a ComposerSharp checkpoint: its header's format is '{header.Format}', expected '{CheckpointFile.FormatName}'.");
            }

            if (header.FormatVersion > CheckpointFile.FormatVersion)
            {
                throw new CheckpointException(resolved, $"Checkpoint '{resolved}' has format version {header.FormatVersion}; this library reads up to version {CheckpointFile.FormatVersion}. Upgrade ComposerSharp to load it.");
            }

            foreach ((string entryName, string expected) in header.EntryHashes.Where(e => !weightsOnly || e.Key == CheckpointFile.ModelEntry))
            {
                ZipArchiveEntry entry = zip.GetEntry(entryName)
                    ?? throw new CheckpointException(resolved, $"Checkpoint '{resolved}' is damaged: its header lists entry '{entryName}', which is missing.");
                using Stream es = entry.Open();
                string actual = Convert.ToHexString(SHA256.HashData(es)).ToLowerInvariant();
                if (actual != expected)
                {
                    throw new CheckpointException(resolved, $"Checkpoint '{resolved}' is damaged: entry '{entryName}' has SHA-256 {actual}, but the header recorded {expected}.");
                }
            }

            return new CheckpointReader(resolved, zip, header);
        }
        catch (Exception ex) when (ex is InvalidDataException or JsonException or IOException && ex is not CheckpointException)
        {
            zip.Dispose();
            throw new CheckpointException(resolved, $"Checkpoint '{resolved}' is damaged or truncated: {ex.Message}", ex);
        }
        catch
        {
            zip.Dispose();
            throw;
        }
    }

    /// <summary>Whether the archive holds an entry named <paramref name="name"/> (e.g. a rank's RNG state that a checkpoint of fewer ranks lacks).</summary>
    internal bool HasEntry(string name) => _zip.GetEntry(name) is not null;

    /// <summary>Runs <paramref name="read"/> over an entry, turning format errors into a <see cref="CheckpointException"/> naming the file and entry.</summary>
    internal void Read(string entryName, Action<BinaryReader> read)
    {
        ZipArchiveEntry entry = _zip.GetEntry(entryName)
            ?? throw new CheckpointException(Path, $"Checkpoint '{Path}' has no entry '{entryName}'.");
        using Stream stream = entry.Open();
        using var reader = new BinaryReader(stream, Encoding.UTF8, leaveOpen: true);
        try
        {
            read(reader);
        }
        catch (Exception ex) when (ex is EndOfStreamException or InvalidDataException)
        {
            throw new CheckpointException(Path, $"Checkpoint '{Path}': entry '{entryName}' could not be read: {ex.Message}", ex);
        }
    }

    public void Dispose() => _zip.Dispose();
}

/// <summary>Writes the entries of a checkpoint into a ZIP stream, hashing each one.</summary>
internal sealed class CheckpointWriter : IDisposable
{
    private readonly ZipArchive _zip;
    private readonly Dictionary<string, string> _hashes = new();

    internal CheckpointWriter(Stream stream) => _zip = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true);

    internal void Write(string entryName, Action<BinaryWriter> write)
    {
        ZipArchiveEntry entry = _zip.CreateEntry(entryName, CompressionLevel.NoCompression);
        using Stream es = entry.Open();
        using var hashing = new CheckpointFile.HashingStream(es);
        using (var writer = new BinaryWriter(hashing, Encoding.UTF8, leaveOpen: true))
        {
            write(writer);
            writer.Flush();
        }

        _hashes[entryName] = hashing.HexDigest();
    }

    /// <summary>Writes the header last, with the hashes of every entry written before it.</summary>
    internal void WriteHeader(CheckpointHeader header)
    {
        header.EntryHashes = new Dictionary<string, string>(_hashes);
        ZipArchiveEntry entry = _zip.CreateEntry(CheckpointFile.HeaderEntry, CompressionLevel.NoCompression);
        using Stream es = entry.Open();
        JsonSerializer.Serialize(es, header, CheckpointFile.Json);
    }

    public void Dispose() => _zip.Dispose();
}

/// <summary>The JSON header of a checkpoint.</summary>
internal sealed class CheckpointHeader
{
    public string Format { get; set; } = CheckpointFile.FormatName;

    public int FormatVersion { get; set; } = CheckpointFile.FormatVersion;

    public bool WeightsOnly { get; set; }

    public string RunName { get; set; } = string.Empty;

    public int Seed { get; set; }

    public string Precision { get; set; } = "fp32";

    public string Device { get; set; } = "cpu";

    public DateTimeOffset SavedAt { get; set; }

    public Dictionary<string, string> Metadata { get; set; } = new();

    public Timestamp? Timestamp { get; set; }

    public SamplerPosition? Sampler { get; set; }

    public List<AlgorithmRecord> Algorithms { get; set; } = new();

    public List<string> Schedulers { get; set; } = new();

    public List<OptimizerRecord> Optimizers { get; set; } = new();

    public Dictionary<string, string>? GradScaler { get; set; }

    public Dictionary<string, JsonElement> Callbacks { get; set; } = new();

    public Dictionary<string, JsonElement> AlgorithmStates { get; set; } = new();

    public Dictionary<string, string> EntryHashes { get; set; } = new();
}

/// <summary>Where the training data sampler stands: the epoch being iterated and the batches already consumed in it.</summary>
internal sealed class SamplerPosition
{
    public long Epoch { get; set; }

    public long BatchInEpoch { get; set; }

    public long SampleInEpoch { get; set; }

    public long? BatchesPerEpoch { get; set; }

    public long? SamplesPerEpoch { get; set; }

    public string DataloaderType { get; set; } = string.Empty;

    // The elastic loader's position keys (MosaicML Streaming's state_dict names); null in checkpoints written before
    // they were recorded and for loaders without them.
    public long? ShuffleSeed { get; set; }

    public string? ShuffleAlgo { get; set; }

    public int? NumCanonicalNodes { get; set; }
}

/// <summary>An algorithm as a checkpoint records it.</summary>
internal sealed class AlgorithmRecord
{
    public string Name { get; set; } = string.Empty;

    public bool RequiredOnLoad { get; set; }

    public Dictionary<string, string> Hyperparameters { get; set; } = new();

    internal AlgorithmDescription ToDescription() => new(Name, Hyperparameters);
}

/// <summary>An optimizer as a checkpoint records it: its type and each parameter group's base (initial) learning rate.</summary>
internal sealed class OptimizerRecord
{
    public string Type { get; set; } = string.Empty;

    public List<double> InitialLearningRates { get; set; } = new();

    public List<double> LearningRates { get; set; } = new();
}
