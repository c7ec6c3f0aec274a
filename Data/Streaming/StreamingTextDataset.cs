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
    /// Where the shards live: a folder path (or <c>file://</c> URL), or an object store URL (<c>s3://bucket/prefix</c>,
    /// <c>azure://container/prefix</c>) opened by <see cref="StreamingTextOptions.OpenRemote"/>.
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

    /// <summary>
    /// Opens a remote given as a URL (<c>s3://</c>, <c>azure://</c>, …): <c>ComposerSharp.Storage</c>'s
    /// <c>RemoteStores.Open</c> for the cloud SDKs. Folders need none; null refuses URLs with a clear error.
    /// </summary>
    public Func<string, IShardStore>? OpenRemote { get; init; }

    /// <summary>Attempts per file read from a remote before the error is reported (default 3, with 0.2 s, 0.4 s pauses).</summary>
    public int RemoteAttempts { get; init; } = 3;
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
            IShardStore? remote = OpenStore(stream.Remote, options);
            Directory.CreateDirectory(stream.Local);
            if (remote is not null)
            {
                byte[] index = ReadRemote(remote, MdsWriter.IndexFileName, options.RemoteAttempts);
                string copy = Path.Combine(stream.Local, MdsWriter.IndexFileName);
                WriteAtomically(copy, index);
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
            (ShardSlot slot, long local) = Find(index);
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
        (ShardSlot slot, long local) = Find(index);
        slot.Lock.EnterReadLock();
        try
        {
            byte[] sample = Ensure(slot).Sample(local);
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

    // The shard holding global sample index, and the sample's index within it (empty shards skipped).
    private (ShardSlot Slot, long Local) Find(long index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, Count);
        int shard = Array.BinarySearch(_firstSample, index);
        shard = shard >= 0 ? shard : ~shard - 1;
        while (_shards[shard].Info.Samples == 0)
        {
            shard++;
        }

        return (_shards[shard], index - _firstSample[shard]);
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
                ShardSlot slot = Find(order[(int)i]).Slot;
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
        string source = slot.Remote!.Locate(name);
        byte[] data = ReadRemote(slot.Remote, name, _options.RemoteAttempts);
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
    }

    // Bounded retries for a store that does not answer; a missing file is reported at once.
    private static byte[] ReadRemote(IShardStore store, string name, int attempts)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                return store.Read(name);
            }
            catch (FileNotFoundException ex)
            {
                throw new InvalidDataException($"'{store.Locate(name)}' does not exist in the remote '{store.Remote}'{(name == MdsWriter.IndexFileName ? string.Empty : " (index.json lists it)")}.", ex);
            }
            catch (IOException) when (attempt < Math.Max(1, attempts))
            {
                Thread.Sleep(200 * attempt);
            }
            catch (IOException ex)
            {
                throw new IOException($"Reading '{store.Locate(name)}' failed after {attempt} attempt(s): {ex.Message}", ex);
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

    private static IShardStore? OpenStore(string? remote, StreamingTextOptions options)
    {
        if (remote is null)
        {
            return null;
        }

        int scheme = remote.IndexOf("://", StringComparison.Ordinal);
        if (scheme <= 0 || remote.StartsWith("file://", StringComparison.Ordinal))
        {
            return new FolderShardStore(remote);
        }

        return options.OpenRemote is { } open
            ? open(remote)
            : throw new NotSupportedException(
                string.Create(CultureInfo.InvariantCulture, $"remote '{remote}': no object-store opener was given for {remote[..scheme]}:// (the CLI passes ComposerSharp.Storage's RemoteStores.Open; from C#, set StreamingTextOptions.OpenRemote)."));
    }

    private sealed class ShardSlot
    {
        public ShardSlot(MdsShardInfo info, string local, IShardStore? remote, int column)
        {
            Info = info;
            Local = local;
            Remote = remote;
            Column = column;
        }

        public MdsShardInfo Info { get; }

        public string Local { get; }

        public IShardStore? Remote { get; }

        public int Column { get; }

        public ReaderWriterLockSlim Lock { get; } = new(LockRecursionPolicy.SupportsRecursion);

        public volatile MdsShardFile? File;

        public bool Verified;

        public long LastUse;
    }
}
