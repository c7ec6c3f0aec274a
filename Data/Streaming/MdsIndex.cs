using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ComposerSharp.Data.Streaming;

/// <summary>One shard's entry of <c>index.json</c> (version 2, format <c>mds</c>).</summary>
/// <param name="Index">The shard's position in the index.</param>
/// <param name="Samples">Its sample count.</param>
/// <param name="ColumnNames">Column names (sorted).</param>
/// <param name="Encodings">Column encodings, parallel to <paramref name="ColumnNames"/>.</param>
/// <param name="RawName">The uncompressed file's name.</param>
/// <param name="RawBytes">The uncompressed file's size in bytes.</param>
/// <param name="RawHashes">Hash name → hex digest of the uncompressed file (may be empty).</param>
/// <param name="ZipName">The compressed file's name, or null when uncompressed.</param>
/// <param name="ZipBytes">The compressed file's size in bytes (0 when uncompressed).</param>
/// <param name="ZipHashes">Hash name → hex digest of the compressed file (may be empty).</param>
public sealed record MdsShardInfo(
    int Index, long Samples, IReadOnlyList<string> ColumnNames, IReadOnlyList<MdsEncoding> Encodings,
    string RawName, long RawBytes, IReadOnlyDictionary<string, string> RawHashes,
    string? ZipName, long ZipBytes, IReadOnlyDictionary<string, string> ZipHashes)
{
    /// <summary>The bytes this shard occupies in a cache: the raw file, plus the compressed file while it is kept.</summary>
    public long CacheBytes => RawBytes + ZipBytes;
}

/// <summary>
/// Reads and validates an MDS <c>index.json</c> (MosaicML Streaming's format, version 2): every shard's sample count,
/// columns, file names, sizes and hashes. A missing or malformed index, another version or format, or an unknown column
/// encoding is an <see cref="InvalidDataException"/> naming the file and what was expected.
/// </summary>
public static class MdsIndex
{
    /// <summary>Reads <c>index.json</c> from <paramref name="path"/> (the file or its folder).</summary>
    /// <param name="path">The index file or the dataset folder.</param>
    /// <returns>The shards in order.</returns>
    /// <exception cref="FileNotFoundException">No index.json there.</exception>
    /// <exception cref="InvalidDataException">The index is malformed (named field and expected value).</exception>
    public static IReadOnlyList<MdsShardInfo> Read(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string file = Directory.Exists(path) ? Path.Combine(path, MdsWriter.IndexFileName) : path;
        if (!File.Exists(file))
        {
            throw new FileNotFoundException($"No MDS index '{file}' (full path '{Path.GetFullPath(file)}'); an MDS dataset folder holds index.json and its shard files (composersharp data prepare writes one).", file);
        }

        JsonNode? root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(file));
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"'{file}' is not valid JSON: {ex.Message}", ex);
        }

        if (root is not JsonObject obj || obj["version"]?.GetValueKind() != JsonValueKind.Number || obj["version"]!.GetValue<int>() != 2)
        {
            throw new InvalidDataException($"'{file}' is not an MDS index of version 2 (expected an object with \"version\": 2 and \"shards\").");
        }

        if (obj["shards"] is not JsonArray shards)
        {
            throw new InvalidDataException($"'{file}' has no \"shards\" array.");
        }

        var result = new List<MdsShardInfo>();
        for (int i = 0; i < shards.Count; i++)
        {
            result.Add(Shard(shards[i], i, file));
        }

        return result;
    }

    private static MdsShardInfo Shard(JsonNode? node, int i, string file)
    {
        string where = $"'{file}' shard {i}";
        try
        {
            if (node is not JsonObject s)
            {
                throw new InvalidDataException($"{where} is not an object.");
            }

            string format = s["format"]?.GetValue<string>() ?? "(missing)";
            if (format != "mds")
            {
                throw new InvalidDataException($"{where} has format '{format}'; only 'mds' is supported (not 'csv', 'jsonl' or 'xsv').");
            }

            string[] names = ((JsonArray?)s["column_names"] ?? throw new InvalidDataException($"{where} has no column_names.")).Select(n => n!.GetValue<string>()).ToArray();
            string[] encodings = ((JsonArray?)s["column_encodings"] ?? throw new InvalidDataException($"{where} has no column_encodings.")).Select(n => n!.GetValue<string>()).ToArray();
            if (names.Length != encodings.Length || names.Length == 0)
            {
                throw new InvalidDataException($"{where} has {names.Length} column names and {encodings.Length} encodings.");
            }

            MdsEncoding[] parsed;
            try
            {
                parsed = encodings.Select(MdsEncoding.Parse).ToArray();
            }
            catch (NotSupportedException ex)
            {
                throw new InvalidDataException($"{where}: {ex.Message}", ex);
            }

            JsonObject raw = (JsonObject?)s["raw_data"] ?? throw new InvalidDataException($"{where} has no raw_data.");
            var zip = s["zip_data"] as JsonObject;
            long samples = s["samples"]?.GetValue<long>() ?? throw new InvalidDataException($"{where} has no samples count.");
            if (samples < 0)
            {
                throw new InvalidDataException($"{where} has a negative samples count {samples}.");
            }

            return new MdsShardInfo(
                i, samples, names, parsed,
                SafeName(raw["basename"]?.GetValue<string>(), where), raw["bytes"]?.GetValue<long>() ?? -1, Hashes(raw),
                zip is null ? null : SafeName(zip["basename"]?.GetValue<string>(), where), zip?["bytes"]?.GetValue<long>() ?? 0, zip is null ? new Dictionary<string, string>() : Hashes(zip));
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException or InvalidCastException)
        {
            throw new InvalidDataException($"{where} is malformed: {ex.Message}", ex);
        }
    }

    private static Dictionary<string, string> Hashes(JsonObject o) =>
        (o["hashes"] as JsonObject)?.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<string>(), StringComparer.Ordinal) ?? new Dictionary<string, string>();

    private static string SafeName(string? name, string where) =>
        name is null || name.Length == 0 || name.Contains('/', StringComparison.Ordinal) || name.Contains('\\', StringComparison.Ordinal) || name.Contains("..", StringComparison.Ordinal)
            ? throw new InvalidDataException($"{where} names its file '{name ?? "(missing)"}'; expected a plain file name such as shard.00000.mds.")
            : name;
}

/// <summary>
/// An uncompressed MDS shard file mapped into memory: its header checked against the index (sample count, offsets
/// increasing, the last offset at the file's end) so a truncated or corrupt file is never read as valid; samples
/// read concurrently from any thread.
/// </summary>
internal sealed class MdsShardFile : IDisposable
{
    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly long _samples;

    public MdsShardFile(string path, MdsShardInfo info)
    {
        long length = new FileInfo(path).Length;
        if (length != info.RawBytes)
        {
            throw new InvalidDataException($"Shard file '{path}' has {length} bytes; index.json says {info.RawBytes} (truncated or replaced).");
        }

        if (length < 8)
        {
            throw new InvalidDataException($"Shard file '{path}' has {length} bytes, less than an MDS header.");
        }

        _file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        _samples = _view.ReadUInt32(0);
        if (_samples != info.Samples || length < 4 + (4 * (_samples + 1)))
        {
            Dispose();
            throw new InvalidDataException($"Shard file '{path}' holds {_samples} samples; index.json says {info.Samples}.");
        }

        uint previous = 0;
        for (long i = 0; i <= _samples; i++)
        {
            uint offset = _view.ReadUInt32(4 + (4 * i));
            if (offset < previous || offset > length)
            {
                Dispose();
                throw new InvalidDataException($"Shard file '{path}' has a corrupt offset table (sample {i} at {offset}, file of {length} bytes).");
            }

            previous = offset;
        }

        if (previous != length)
        {
            Dispose();
            throw new InvalidDataException($"Shard file '{path}' ends at byte {length} but its samples end at {previous} (truncated or corrupt).");
        }
    }

    public byte[] Sample(long i)
    {
        uint begin = _view.ReadUInt32(4 + (4 * i)), end = _view.ReadUInt32(8 + (4 * i));
        byte[] data = new byte[end - begin];
        _view.ReadArray(begin, data, 0, data.Length);
        return data;
    }

    public void Dispose()
    {
        _view.Dispose();
        _file.Dispose();
    }

    /// <summary>Splits a sample's bytes into its columns' bytes (variable-size columns' uint32 sizes first).</summary>
    public static ReadOnlyMemory<byte>[] Columns(byte[] sample, IReadOnlyList<MdsEncoding> encodings)
    {
        int index = 0;
        var sizes = new int[encodings.Count];
        for (int c = 0; c < encodings.Count; c++)
        {
            if (encodings[c].Size is { } size)
            {
                sizes[c] = size;
            }
            else
            {
                sizes[c] = checked((int)BinaryPrimitives.ReadUInt32LittleEndian(sample.AsSpan(index, 4)));
                index += 4;
            }
        }

        var columns = new ReadOnlyMemory<byte>[encodings.Count];
        for (int c = 0; c < encodings.Count; c++)
        {
            if (index + sizes[c] > sample.Length)
            {
                throw new InvalidDataException($"A sample of {sample.Length} bytes declares column sizes past its end.");
            }

            columns[c] = sample.AsMemory(index, sizes[c]);
            index += sizes[c];
        }

        return columns;
    }
}
