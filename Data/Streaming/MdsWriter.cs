using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace ComposerSharp.Data.Streaming;

/// <summary>
/// Writes an MDS dataset as MosaicML Streaming's <c>MDSWriter</c> does (streaming/base/format/mds/writer.py,
/// format/base/writer.py): samples are dictionaries of columns (names sorted, as Streaming sorts them); each shard file
/// <c>shard.NNNNN.mds</c> is <c>[num_samples: uint32][offsets: (num_samples + 1) × uint32][config JSON][samples]</c>,
/// a sample being its variable-size columns' uint32 sizes then every column's bytes; a shard is closed before it would
/// pass <c>size_limit</c> bytes; <c>compression</c> (<c>zstd</c> or <c>zstd:LEVEL</c>) writes <c>shard.NNNNN.mds.zstd</c>;
/// <c>hashes</c> (sha1, sha256, md5, xxh64) of the raw and compressed files go into <c>index.json</c> (version 2). The
/// same samples give byte-identical files. Files are written into the output folder under their final names; callers
/// that need all-or-nothing write into a temporary folder and rename it (see <see cref="MdsPrepare"/>).
/// </summary>
public sealed class MdsWriter : IDisposable
{
    /// <summary>Streaming's default shard size limit, 64 MiB (1 &lt;&lt; 26 bytes).</summary>
    public const long DefaultSizeLimit = 1L << 26;

    /// <summary>The index file's name.</summary>
    public const string IndexFileName = "index.json";

    private static readonly string[] KnownHashes = { "md5", "sha1", "sha256", "xxh64" };

    private readonly string _folder;
    private readonly string[] _names;
    private readonly MdsEncoding[] _encodings;
    private readonly string? _compression;
    private readonly string[] _hashes;
    private readonly long? _sizeLimit;
    private readonly byte[] _configData;
    private readonly List<byte[]> _samples = new();
    private readonly JsonArray _shards = new();
    private long _shardSize;
    private bool _finished;

    /// <summary>Starts a dataset in <paramref name="folder"/> (created).</summary>
    /// <param name="folder">The output folder.</param>
    /// <param name="columns">Column name → MDS encoding name (see <see cref="MdsEncoding"/>).</param>
    /// <param name="compression">null, <c>zstd</c> or <c>zstd:LEVEL</c> (1–22; <c>zstd</c> is level 3).</param>
    /// <param name="hashes">Hash algorithms by Streaming's names, sorted: md5, sha1, sha256, xxh64.</param>
    /// <param name="sizeLimit">The shard size limit in bytes (default 64 MiB), below 2³²; null for one shard.</param>
    /// <exception cref="ArgumentException">No columns, an unknown compression or hash, hashes not sorted, or a size limit outside (0, 2³²).</exception>
    /// <exception cref="NotSupportedException">An unsupported column encoding (named).</exception>
    public MdsWriter(string folder, IReadOnlyDictionary<string, string> columns, string? compression = null, IReadOnlyList<string>? hashes = null, long? sizeLimit = DefaultSizeLimit)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        ArgumentNullException.ThrowIfNull(columns);
        if (columns.Count == 0)
        {
            throw new ArgumentException("An MDS dataset needs at least one column.", nameof(columns));
        }

        if (compression is not null && compression != "zstd" && !(compression.StartsWith("zstd:", StringComparison.Ordinal) && int.TryParse(compression[5..], NumberStyles.None, CultureInfo.InvariantCulture, out int level) && level is >= 1 and <= 22))
        {
            throw new ArgumentException($"Compression '{compression}' is not supported; expected none, 'zstd' or 'zstd:LEVEL' with LEVEL in 1–22.", nameof(compression));
        }

        _hashes = (hashes ?? Array.Empty<string>()).ToArray();
        foreach (string h in _hashes.Where(h => !KnownHashes.Contains(h)))
        {
            throw new ArgumentException($"Hash '{h}' is not supported; expected some of {string.Join(", ", KnownHashes)}.", nameof(hashes));
        }

        if (!_hashes.SequenceEqual(_hashes.Order(StringComparer.Ordinal)))
        {
            throw new ArgumentException("Hashes must be given sorted, as Streaming requires.", nameof(hashes));
        }

        if (sizeLimit is not null && (sizeLimit <= 0 || sizeLimit >= 1L << 32))
        {
            throw new ArgumentException($"size_limit {sizeLimit} must be in (0, 2^32) bytes (sample offsets are uint32).", nameof(sizeLimit));
        }

        _folder = folder;
        _names = columns.Keys.Order(StringComparer.Ordinal).ToArray();
        _encodings = _names.Select(n => MdsEncoding.Parse(columns[n])).ToArray();
        _compression = compression;
        _sizeLimit = sizeLimit;
        _configData = Encoding.UTF8.GetBytes(PythonJson.Dumps(Config()));
        Directory.CreateDirectory(folder);
        Reset();
    }

    /// <summary>Samples written so far (including those not yet flushed to a shard).</summary>
    public long SamplesWritten { get; private set; }

    /// <summary>Adds one sample; may first close the current shard.</summary>
    /// <param name="sample">Column name → value (see <see cref="MdsEncoding.Encode"/>); every column must be present.</param>
    /// <exception cref="ArgumentException">A column is missing or a value does not fit its encoding.</exception>
    /// <exception cref="InvalidOperationException">The writer was finished.</exception>
    public void Write(IReadOnlyDictionary<string, object> sample)
    {
        ArgumentNullException.ThrowIfNull(sample);
        ObjectDisposedException.ThrowIf(_finished, this);
        var sizes = new List<byte>();
        var body = new List<byte[]>();
        for (int c = 0; c < _names.Length; c++)
        {
            if (!sample.TryGetValue(_names[c], out object? value))
            {
                throw new ArgumentException($"The sample has no column '{_names[c]}' (columns: {string.Join(", ", _names)}).", nameof(sample));
            }

            byte[] datum = _encodings[c].Encode(value);
            if (_encodings[c].Size is { } fixedSize)
            {
                if (datum.Length != fixedSize)
                {
                    throw new ArgumentException($"Column '{_names[c]}' ({_encodings[c].Name}) takes {fixedSize} bytes; the value encodes to {datum.Length}.", nameof(sample));
                }
            }
            else
            {
                byte[] size = new byte[4];
                BinaryPrimitives.WriteUInt32LittleEndian(size, checked((uint)datum.Length));
                sizes.AddRange(size);
            }

            body.Add(datum);
        }

        byte[] encoded = sizes.Concat(body.SelectMany(b => b)).ToArray();
        long added = encoded.Length + 4; // Streaming's extra_bytes_per_sample: its offset
        if (_sizeLimit is { } limit && _samples.Count > 0 && limit < _shardSize + added)
        {
            Flush();
        }

        _samples.Add(encoded);
        _shardSize += added;
        SamplesWritten++;
    }

    /// <summary>Closes the last shard and writes <c>index.json</c> (sorted keys, as Streaming writes it).</summary>
    /// <returns>The index file's path.</returns>
    public string Finish()
    {
        ObjectDisposedException.ThrowIf(_finished, this);
        if (_samples.Count > 0)
        {
            Flush();
        }

        _finished = true;
        var index = new JsonObject { ["shards"] = _shards.DeepClone(), ["version"] = 2 };
        string path = Path.Combine(_folder, IndexFileName);
        File.WriteAllText(path, PythonJson.Dumps(index));
        return path;
    }

    /// <summary>Releases nothing unmanaged; a writer not finished leaves its shards without an index (never read as a dataset).</summary>
    public void Dispose() => _finished = true;

    /// <summary>The hex digest of <paramref name="data"/> by a Streaming hash name (md5, sha1, sha256, xxh64).</summary>
    /// <param name="algorithm">The hash's name.</param>
    /// <param name="data">The bytes.</param>
    /// <returns>Lower-case hex, as Python's <c>hexdigest()</c>.</returns>
    /// <exception cref="NotSupportedException">Another algorithm.</exception>
#pragma warning disable CA5350, CA5351 // integrity checks of shard files, by the names Streaming writes into index.json; not security
    public static string Hash(string algorithm, ReadOnlySpan<byte> data) => algorithm switch
    {
        "md5" => Convert.ToHexStringLower(MD5.HashData(data)),
        "sha1" => Convert.ToHexStringLower(SHA1.HashData(data)),
        "sha256" => Convert.ToHexStringLower(SHA256.HashData(data)),
        "xxh64" => Convert.ToHexStringLower(System.IO.Hashing.XxHash64.Hash(data)),
        _ => throw new NotSupportedException($"Hash '{algorithm}' is not supported; expected {string.Join(", ", KnownHashes)}."),
    };
#pragma warning restore CA5350, CA5351

    /// <summary>Compresses with zstd at the level of <paramref name="compression"/> (<c>zstd</c> = 3).</summary>
    internal static byte[] Compress(string compression, byte[] data)
    {
        int level = compression == "zstd" ? 3 : int.Parse(compression[5..], CultureInfo.InvariantCulture);
        using var compressor = new ZstdSharp.Compressor(level);
        return compressor.Wrap(data).ToArray();
    }

    /// <summary>Decompresses a zstd frame.</summary>
    internal static byte[] Decompress(byte[] data)
    {
        using var decompressor = new ZstdSharp.Decompressor();
        return decompressor.Unwrap(data).ToArray();
    }

    private JsonObject Config()
    {
        var encodings = new JsonArray(_encodings.Select(e => (JsonNode?)JsonValue.Create(e.Name)).ToArray());
        var names = new JsonArray(_names.Select(n => (JsonNode?)JsonValue.Create(n)).ToArray());
        var sizes = new JsonArray(_encodings.Select(e => e.Size is { } s ? (JsonNode?)JsonValue.Create(s) : null).ToArray());
        return new JsonObject
        {
            ["column_encodings"] = encodings,
            ["column_names"] = names,
            ["column_sizes"] = sizes,
            ["compression"] = _compression,
            ["format"] = "mds",
            ["hashes"] = new JsonArray(_hashes.Select(h => (JsonNode?)JsonValue.Create(h)).ToArray()),
            ["size_limit"] = _sizeLimit,
            ["version"] = 2,
        };
    }

    private void Reset()
    {
        _samples.Clear();
        _shardSize = 4 + 4 + _configData.Length; // Streaming's extra_bytes_per_shard
    }

    private void Flush()
    {
        int n = _samples.Count;
        int headerSize = 4 + (4 * (n + 1)) + _configData.Length;
        long total = headerSize + _samples.Sum(s => (long)s.Length);
        if (total >= 1L << 32)
        {
            throw new InvalidOperationException($"A shard of {total} bytes exceeds the uint32 offsets of MDS; lower size_limit.");
        }

        byte[] raw = new byte[total];
        BinaryPrimitives.WriteUInt32LittleEndian(raw, (uint)n);
        uint offset = (uint)headerSize;
        for (int i = 0; i <= n; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(raw.AsSpan(4 + (4 * i)), offset);
            if (i < n)
            {
                offset += (uint)_samples[i].Length;
            }
        }

        _configData.CopyTo(raw, 4 + (4 * (n + 1)));
        int position = headerSize;
        foreach (byte[] sample in _samples)
        {
            sample.CopyTo(raw, position);
            position += sample.Length;
        }

        string rawName = $"shard.{_shards.Count:00000}.mds";
        JsonObject rawInfo = FileInfo(rawName, raw);
        JsonObject? zipInfo = null;
        byte[] data = raw;
        string name = rawName;
        if (_compression is not null)
        {
            data = Compress(_compression, raw);
            name = rawName + ".zstd";
            zipInfo = FileInfo(name, data);
        }

        File.WriteAllBytes(Path.Combine(_folder, name), data);
        JsonObject shard = Config();
        shard["raw_data"] = rawInfo;
        shard["samples"] = n;
        shard["zip_data"] = zipInfo;
        _shards.Add(shard);
        Reset();
    }

    private JsonObject FileInfo(string basename, byte[] data)
    {
        var hashes = new JsonObject();
        foreach (string h in _hashes)
        {
            hashes[h] = Hash(h, data);
        }

        return new JsonObject { ["basename"] = basename, ["bytes"] = data.Length, ["hashes"] = hashes };
    }
}

/// <summary>JSON text as Python's <c>json.dumps(obj, sort_keys=True)</c> writes it (", " and ": " separators, ASCII escapes), so shards and index.json match Streaming's bytes.</summary>
internal static class PythonJson
{
    public static string Dumps(JsonNode? node)
    {
        var sb = new StringBuilder();
        Write(sb, node);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, JsonNode? node)
    {
        switch (node)
        {
            case null:
                sb.Append("null");
                break;
            case JsonObject o:
                sb.Append('{');
                bool first = true;
                foreach ((string key, JsonNode? value) in o.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    sb.Append(first ? string.Empty : ", ");
                    first = false;
                    String(sb, key);
                    sb.Append(": ");
                    Write(sb, value);
                }

                sb.Append('}');
                break;
            case JsonArray a:
                sb.Append('[');
                for (int i = 0; i < a.Count; i++)
                {
                    sb.Append(i == 0 ? string.Empty : ", ");
                    Write(sb, a[i]);
                }

                sb.Append(']');
                break;
            case JsonValue v when v.TryGetValue(out string? s):
                String(sb, s);
                break;
            case JsonValue v when v.TryGetValue(out bool b):
                sb.Append(b ? "true" : "false");
                break;
            default:
                sb.Append(node.ToJsonString());
                break;
        }
    }

    private static void String(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || c > 0x7e)
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }

                    break;
            }
        }

        sb.Append('"');
    }
}
