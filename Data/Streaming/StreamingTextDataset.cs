using System.Globalization;

namespace ComposerSharp.Data.Streaming;

/// <summary>
/// One MDS stream (MosaicML Streaming's <c>Stream</c>): <see cref="Local"/> is where its shards are read; with a
/// <see cref="Remote"/>, shards are copied from there into <see cref="Local"/> on first use (and may be evicted).
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1711:Identifiers should not have incorrect suffix", Justification = "MosaicML Streaming's name for one source of shards is Stream.")]
public sealed record MdsStream
{
    /// <summary>The local folder (the dataset itself when <see cref="Remote"/> is null, else the shard cache).</summary>
    public required string Local { get; init; }

    /// <summary>
    /// Where the shards live: a folder path (or <c>file://</c> URL). Object stores (<c>s3://</c>, <c>azure://</c>,
    /// <c>gs://</c>) are refused with a clear error: not supported yet.
    /// </summary>
    public string? Remote { get; init; }
}

/// <summary>Options of <see cref="StreamingTextDataset"/> (llm-foundry's <c>StreamingTextDataset</c> and Streaming's keys).</summary>
public sealed record StreamingTextOptions
{
    /// <summary>The streams, read one after another in global index order (their samples concatenated).</summary>
    public required IReadOnlyList<MdsStream> Streams { get; init; }

    /// <summary>Streaming's <c>cache_limit</c>: the most bytes of shards kept in the local caches of remote streams (null: no limit).</summary>
    public long? CacheLimit { get; init; }

    /// <summary>Streaming's <c>predownload</c>: samples ahead of the reads whose shards are fetched in the background (default 64).</summary>
    public int Predownload { get; init; } = 64;

    /// <summary>The column of token ids (llm-foundry: <c>tokens</c>).</summary>
    public string TokenColumn { get; init; } = "tokens";

    /// <summary>The integer dtype of a <c>bytes</c> token column (llm-foundry's older shards: <c>int64</c>); ndarray columns carry their own.</summary>
    public string BytesDtype { get; init; } = "int64";

    /// <summary>llm-foundry's <c>max_seq_len</c>: longer samples are truncated; null keeps them whole.</summary>
    public int? MaxSeqLen { get; init; }

    /// <summary>The model's vocabulary size: an id outside [0, VocabSize) is an error naming the shard and sample; 0 does not check.</summary>
    public int VocabSize { get; init; }
}

/// <summary>
/// Token blocks read from MDS shards (the layout <c>composersharp data prepare</c>, llm-foundry's
/// <c>convert_dataset_*</c> and Streaming's <c>MDSWriter</c> write): a map-style dataset of <c>long[]</c> samples over
/// one or more streams, without loading the dataset: shards are memory-mapped when first read, copied from a remote
/// folder into a local cache bounded by <see cref="StreamingTextOptions.CacheLimit"/> (least-recently-used shards
/// evicted), fetched ahead of the loader's read order (<see cref="SetReadOrder"/>, <c>predownload</c>), and checked
/// against index.json (sizes, sample counts, offsets, hashes where the index has them) before any sample is read.
/// Reads are thread-safe. Idea: MosaicML Streaming's <c>StreamingDataset</c> (streaming/base/dataset.py) and
/// llm-foundry's <c>StreamingTextDataset</c> (llmfoundry/data/text_data.py).
/// </summary>
public sealed class StreamingTextDataset : IDataset<long[]>, IShardedDataset, IDisposable
{
    private readonly StreamingTextOptions _options;
    private readonly ShardSlot[] _shards;
    private readonly long[] _firstSample;
    private readonly object _cacheLock = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly SemaphoreSlim _progress = new(0);
    private IReadOnlyList<long> _order = Array.Empty<long>();
    private long _reads;
    private long _clock;
    private Task? _prefetch;

    /// <summary>Opens the streams' indexes (shards are read or fetched lazily).</summary>
    /// <param name="options">Streams and cache.</param>
    /// <exception cref="FileNotFoundException">A stream has no index.json (in its remote, else its local folder).</exception>
    /// <exception cref="InvalidDataException">An index is malformed, a shard lacks the token column, or the cache limit is smaller than a shard.</exception>
    /// <exception cref="NotSupportedException">A remote is an object-store URL.</exception>
    public StreamingTextDataset(StreamingTextOptions options)
    {
        _options = options ?? throw new ArgumentNullException(nameof(options));
        if (options.Streams is null || options.Streams.Count == 0)
        {
            throw new ArgumentException("A streaming dataset needs at least one stream (local, and optionally remote).", nameof(options));
        }

        var slots = new List<ShardSlot>();
        foreach (MdsStream stream in options.Streams)
        {
            string? remote = RemoteFolder(stream.Remote);
            Directory.CreateDirectory(stream.Local);
            if (remote is not null)
            {
                string source = Path.Combine(remote, MdsWriter.IndexFileName);
                string copy = Path.Combine(stream.Local, MdsWriter.IndexFileName);
                if (!File.Exists(source))
                {
                    throw new FileNotFoundException($"The remote '{stream.Remote}' has no {MdsWriter.IndexFileName}.", source);
                }

                File.Copy(source, copy + ".tmp", overwrite: true);
                File.Move(copy + ".tmp", copy, overwrite: true);
            }

            foreach (MdsShardInfo info in MdsIndex.Read(stream.Local))
            {
                int column = info.ColumnNames.ToList().IndexOf(options.TokenColumn);
                if (column < 0)
                {
                    throw new InvalidDataException($"Shard {info.RawName} of '{stream.Local}' has no column '{options.TokenColumn}' (columns: {string.Join(", ", info.ColumnNames)}).");
                }

                MdsEncoding encoding = info.Encodings[column];
                if (encoding.Kind is not ("ndarray" or "bytes"))
                {
                    throw new InvalidDataException($"Shard {info.RawName} of '{stream.Local}': column '{options.TokenColumn}' is '{encoding.Name}'; token ids need 'ndarray:<int dtype>' or 'bytes'.");
                }

                if (options.CacheLimit is { } limit && remote is not null && info.CacheBytes > limit)
                {
                    throw new InvalidDataException(
                        $"cache_limit is {limit} bytes, smaller than shard {info.ZipName ?? info.RawName} of '{stream.Remote}' ({info.CacheBytes} bytes with its compressed copy); raise cache_limit to at least one shard.");
                }

                slots.Add(new ShardSlot(info, stream.Local, remote, column));
            }
        }

        _shards = slots.ToArray();
        _firstSample = new long[_shards.Length + 1];
        for (int i = 0; i < _shards.Length; i++)
        {
            _firstSample[i + 1] = _firstSample[i] + _shards[i].Info.Samples;
        }

        Count = _firstSample[^1];
        ShardSampleCounts = _shards.Select(s => s.Info.Samples).ToArray();
    }

    /// <inheritdoc/>
    public long Count { get; }

    /// <inheritdoc/>
    public IReadOnlyList<long> ShardSampleCounts { get; }

    /// <summary>Shards copied from remotes so far (downloads), and evicted from the caches, for tests and benchmarks.</summary>
    public (long Downloads, long Evictions) CacheTraffic => (Interlocked.Read(ref _downloads), Interlocked.Read(ref _evictions));

    private long _downloads;
    private long _evictions;

    /// <summary>Token ids Int64 of sample <paramref name="index"/> (truncated to max_seq_len).</summary>
    /// <param name="index">0 ≤ index &lt; Count.</param>
    /// <exception cref="ArgumentOutOfRangeException">The index is out of range.</exception>
    /// <exception cref="InvalidDataException">The shard is corrupt, or an id is outside the vocabulary (names shard and sample).</exception>
    public long[] this[long index]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfNegative(index);
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, Count);
            int shard = Array.BinarySearch(_firstSample, index);
            shard = shard >= 0 ? shard : ~shard - 1;
            while (_shards[shard].Info.Samples == 0)
            {
                shard++;
            }

            ShardSlot slot = _shards[shard];
            long local = index - _firstSample[shard];
            long[] tokens;
            slot.Lock.EnterReadLock();
            try
            {
                MdsShardFile file = Ensure(slot);
                byte[] sample = file.Sample(local);
                ReadOnlyMemory<byte> column = MdsShardFile.Columns(sample, slot.Info.Encodings)[slot.Column];
                MdsEncoding encoding = slot.Info.Encodings[slot.Column];
                tokens = encoding.Kind == "bytes" ? MdsEncoding.DecodeIntegers(column.Span, _options.BytesDtype) : encoding.DecodeIntegers(column.Span).Values;
            }
            finally
            {
                slot.Lock.ExitReadLock();
            }

            if (_options.MaxSeqLen is { } max && tokens.Length > max)
            {
                tokens = tokens[..max];
            }

            if (_options.VocabSize > 0)
            {
                foreach (long id in tokens)
                {
                    if (id < 0 || id >= _options.VocabSize)
                    {
                        throw new InvalidDataException($"Shard {slot.Info.RawName} of '{slot.Local}', sample {local}: token id {id} is outside the model's vocabulary [0, {_options.VocabSize}); the data was prepared with another tokenizer.");
                    }
                }
            }

            Interlocked.Increment(ref _reads);
            _progress.Release();
            return tokens;
        }
    }

    /// <summary>
    /// Every column of sample <paramref name="index"/>, decoded: <c>str</c>/<c>json</c> as string, <c>int</c> and
    /// integer scalars as long, integer ndarrays as long[] (flat), <c>bytes</c> as byte[].
    /// </summary>
    /// <param name="index">0 ≤ index &lt; Count.</param>
    /// <returns>Column name → value.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The index is out of range.</exception>
    /// <exception cref="InvalidDataException">The shard is corrupt or a column's encoding cannot be decoded here (float arrays).</exception>
    public IReadOnlyDictionary<string, object> Columns(long index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, Count);
        int shard = Array.BinarySearch(_firstSample, index);
        shard = shard >= 0 ? shard : ~shard - 1;
        while (_shards[shard].Info.Samples == 0)
        {
            shard++;
        }

        ShardSlot slot = _shards[shard];
        slot.Lock.EnterReadLock();
        try
        {
            byte[] sample = Ensure(slot).Sample(index - _firstSample[shard]);
            ReadOnlyMemory<byte>[] columns = MdsShardFile.Columns(sample, slot.Info.Encodings);
            var result = new Dictionary<string, object>(StringComparer.Ordinal);
            for (int c = 0; c < columns.Length; c++)
            {
                MdsEncoding encoding = slot.Info.Encodings[c];
                result[slot.Info.ColumnNames[c]] = encoding.Kind switch
                {
                    "bytes" => columns[c].ToArray(),
                    "ndarray" => encoding.DecodeIntegers(columns[c].Span).Values,
                    _ => encoding.DecodeScalarOrString(columns[c].Span),
                };
            }

            return result;
        }
        finally
        {
            slot.Lock.ExitReadLock();
        }
    }

    /// <inheritdoc/>
    public void SetReadOrder(IReadOnlyList<long> order)
    {
        ArgumentNullException.ThrowIfNull(order);
        _order = order;
        Interlocked.Exchange(ref _reads, 0);
        if (_options.Predownload > 0 && _shards.Any(s => s.Remote is not null))
        {
            _prefetch ??= Task.Run(PrefetchLoop);
            _progress.Release();
        }
    }

    /// <summary>Stops the background fetching and unmaps the shards (local files stay).</summary>
    public void Dispose()
    {
        _stop.Cancel();
        _progress.Release();
        try
        {
            _prefetch?.Wait(TimeSpan.FromSeconds(10));
        }
        catch (AggregateException)
        {
            // a failed prefetch surfaces on the read that needs the shard
        }

        foreach (ShardSlot slot in _shards)
        {
            slot.File?.Dispose();
            slot.File = null;
        }

        _stop.Dispose();
        _progress.Dispose();
    }

    private void PrefetchLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            _progress.Wait(_stop.Token);
            IReadOnlyList<long> order = _order;
            long from = Interlocked.Read(ref _reads);
            long to = Math.Min(order.Count, from + _options.Predownload);
            for (long i = from; i < to && !_stop.IsCancellationRequested; i++)
            {
                long index = order[(int)i];
                int shard = Array.BinarySearch(_firstSample, index);
                shard = shard >= 0 ? shard : ~shard - 1;
                ShardSlot slot = _shards[Math.Min(shard, _shards.Length - 1)];
                if (slot.File is null)
                {
                    slot.Lock.EnterReadLock();
                    try
                    {
                        Ensure(slot);
                    }
                    catch (Exception ex) when (ex is IOException or InvalidDataException)
                    {
                        // the read that needs this shard fetches it again and reports the error
                    }
                    finally
                    {
                        slot.Lock.ExitReadLock();
                    }
                }
            }
        }
    }

    // Under the slot's read lock: opens (fetching first when needed) the shard's file.
    private MdsShardFile Ensure(ShardSlot slot)
    {
        slot.LastUse = Interlocked.Increment(ref _clock);
        if (slot.File is { } open)
        {
            return open;
        }

        lock (slot)
        {
            if (slot.File is { } opened)
            {
                return opened;
            }

            string raw = Path.Combine(slot.Local, slot.Info.RawName);
            if (slot.Remote is not null && !(File.Exists(raw) && new FileInfo(raw).Length == slot.Info.RawBytes))
            {
                MakeRoom(slot);
                Fetch(slot, raw);
            }
            else if (!File.Exists(raw))
            {
                string? zip = slot.Info.ZipName is null ? null : Path.Combine(slot.Local, slot.Info.ZipName);
                if (zip is null || !File.Exists(zip))
                {
                    throw new InvalidDataException($"Shard {slot.Info.ZipName ?? slot.Info.RawName} of '{slot.Local}' is missing (index.json lists it).");
                }

                Decompress(slot, File.ReadAllBytes(zip), raw, zip);
            }
            else if (!slot.Verified)
            {
                Verify(slot.Info.RawHashes, File.ReadAllBytes(raw), raw);
            }

            slot.Verified = true;
            slot.File = new MdsShardFile(raw, slot.Info);
            return slot.File;
        }
    }

    private void Fetch(ShardSlot slot, string raw)
    {
        string name = slot.Info.ZipName ?? slot.Info.RawName;
        string source = Path.Combine(slot.Remote!, name);
        const int Attempts = 3;
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                byte[] data = File.ReadAllBytes(source);
                long expected = slot.Info.ZipName is null ? slot.Info.RawBytes : slot.Info.ZipBytes;
                if (data.Length != expected)
                {
                    throw new InvalidDataException($"Shard '{source}' has {data.Length} bytes; index.json says {expected} (truncated or replaced).");
                }

                if (slot.Info.ZipName is null)
                {
                    Verify(slot.Info.RawHashes, data, source);
                    WriteAtomically(raw, data);
                }
                else
                {
                    Verify(slot.Info.ZipHashes, data, source);
                    Decompress(slot, data, raw, source);
                }

                Interlocked.Increment(ref _downloads);
                return;
            }
            catch (IOException ex) when (attempt < Attempts && ex is not FileNotFoundException)
            {
                Thread.Sleep(100 * attempt);
            }
            catch (FileNotFoundException ex)
            {
                throw new InvalidDataException($"Shard '{source}' is missing from the remote '{slot.Remote}' (index.json lists it).", ex);
            }
        }
    }

    private static void Decompress(ShardSlot slot, byte[] zip, string raw, string source)
    {
        byte[] data;
        try
        {
            data = MdsWriter.Decompress(zip);
        }
        catch (Exception ex) when (ex is ZstdSharp.ZstdException or InvalidOperationException)
        {
            throw new InvalidDataException($"Shard '{source}' is not a valid zstd frame (truncated or corrupt): {ex.Message}", ex);
        }

        if (data.Length != slot.Info.RawBytes)
        {
            throw new InvalidDataException($"Shard '{source}' decompresses to {data.Length} bytes; index.json says {slot.Info.RawBytes}.");
        }

        Verify(slot.Info.RawHashes, data, source + " (decompressed)");
        WriteAtomically(raw, data);
    }

    private static void Verify(IReadOnlyDictionary<string, string> hashes, byte[] data, string what)
    {
        foreach ((string algorithm, string expected) in hashes)
        {
            string actual;
            try
            {
                actual = MdsWriter.Hash(algorithm, data);
            }
            catch (NotSupportedException)
            {
                continue; // a hash this reader does not compute (e.g. xxh3_128): the sizes and offsets still guard the file
            }

            if (!string.Equals(actual, expected, StringComparison.OrdinalIgnoreCase))
            {
                throw new InvalidDataException($"Shard '{what}' fails its {algorithm} check: {actual}, index.json says {expected} (corrupt or replaced).");
            }
        }
    }

    private static void WriteAtomically(string path, byte[] data)
    {
        string temporary = path + $".tmp-{Environment.ProcessId}-{Environment.CurrentManagedThreadId}";
        File.WriteAllBytes(temporary, data);
        File.Move(temporary, path, overwrite: true);
    }

    // Evicts least-recently-used shards of remote streams until the new shard fits cache_limit.
    private void MakeRoom(ShardSlot needed)
    {
        if (_options.CacheLimit is not { } limit)
        {
            return;
        }

        lock (_cacheLock)
        {
            long used = _shards.Where(s => s.Remote is not null && s != needed && File.Exists(Path.Combine(s.Local, s.Info.RawName))).Sum(s => s.Info.RawBytes);
            foreach (ShardSlot victim in _shards.Where(s => s.Remote is not null && s != needed && File.Exists(Path.Combine(s.Local, s.Info.RawName))).OrderBy(s => s.LastUse).ToArray())
            {
                if (used + needed.Info.CacheBytes <= limit)
                {
                    break;
                }

                if (!victim.Lock.TryEnterWriteLock(0))
                {
                    continue; // being read now
                }

                try
                {
                    victim.File?.Dispose();
                    victim.File = null;
                    File.Delete(Path.Combine(victim.Local, victim.Info.RawName));
                    used -= victim.Info.RawBytes;
                    Interlocked.Increment(ref _evictions);
                }
                finally
                {
                    victim.Lock.ExitWriteLock();
                }
            }
        }
    }

    private static string? RemoteFolder(string? remote)
    {
        if (remote is null)
        {
            return null;
        }

        if (remote.StartsWith("file://", StringComparison.Ordinal))
        {
            return new Uri(remote).LocalPath;
        }

        int scheme = remote.IndexOf("://", StringComparison.Ordinal);
        if (scheme > 0)
        {
            throw new NotSupportedException(
                string.Create(CultureInfo.InvariantCulture, $"remote '{remote}': object stores ({remote[..scheme]}://) are not supported yet; give a folder path (a mounted or synced copy) as remote, or download the shards and use local only."));
        }

        if (!Directory.Exists(remote))
        {
            throw new FileNotFoundException($"The remote folder '{remote}' (full path '{Path.GetFullPath(remote)}') does not exist.", remote);
        }

        return remote;
    }

    private sealed class ShardSlot
    {
        public ShardSlot(MdsShardInfo info, string local, string? remote, int column)
        {
            Info = info;
            Local = local;
            Remote = remote;
            Column = column;
        }

        public MdsShardInfo Info { get; }

        public string Local { get; }

        public string? Remote { get; }

        public int Column { get; }

        public ReaderWriterLockSlim Lock { get; } = new(LockRecursionPolicy.SupportsRecursion);

        public volatile MdsShardFile? File;

        public bool Verified;

        public long LastUse;
    }
}
