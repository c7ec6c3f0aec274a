using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ComposerSharp.Data.Streaming;

/// <summary>Options of <see cref="MdsPrepare.TextBlocks"/> (<c>composersharp data prepare</c>).</summary>
public sealed record MdsPrepareOptions
{
    /// <summary>Inputs: folders of <c>.txt</c> files (each file a document, natural order), <c>.txt</c> files, and <c>.jsonl</c> files (each row's text field a document).</summary>
    public required IReadOnlyList<string> Inputs { get; init; }

    /// <summary>The dataset folder to create (must not exist, or be empty).</summary>
    public required string Output { get; init; }

    /// <summary>Tokens per sample (the group-texts block size, llm-foundry's <c>concat_tokens</c>); default 2048.</summary>
    public int BlockSize { get; init; } = 2048;

    /// <summary>An end-of-text token after every document (the group-texts rule), default true.</summary>
    public bool AppendEndOfText { get; init; } = true;

    /// <summary>The JSONL field holding a document's text (default <c>text</c>).</summary>
    public string TextField { get; init; } = "text";

    /// <summary>Shard compression: null, <c>zstd</c> or <c>zstd:LEVEL</c>.</summary>
    public string? Compression { get; init; }

    /// <summary>Hashes written into index.json (sorted): md5, sha1, sha256, xxh64; default sha1 (what the reader verifies).</summary>
    public IReadOnlyList<string> Hashes { get; init; } = new[] { "sha1" };

    /// <summary>Shard size limit in bytes (Streaming's default 64 MiB).</summary>
    public long SizeLimit { get; init; } = MdsWriter.DefaultSizeLimit;

    /// <summary>Tokenizer threads (default: all cores).</summary>
    public int Workers { get; init; } = Environment.ProcessorCount;
}

/// <summary>Progress of a prepare run, reported after each window of documents.</summary>
/// <param name="BytesRead">Input bytes tokenized so far.</param>
/// <param name="TotalBytes">All inputs' bytes (for an ETA).</param>
/// <param name="Tokens">Tokens so far.</param>
/// <param name="Samples">Blocks written so far.</param>
public readonly record struct MdsPrepareProgress(long BytesRead, long TotalBytes, long Tokens, long Samples);

/// <summary>What a prepare run wrote.</summary>
/// <param name="Output">The dataset folder.</param>
/// <param name="Documents">Documents read.</param>
/// <param name="Tokens">Tokens produced (before the last partial block was dropped).</param>
/// <param name="Samples">Blocks written.</param>
/// <param name="Shards">Shard files written.</param>
/// <param name="InputBytes">Input bytes.</param>
/// <param name="Elapsed">Wall time.</param>
public sealed record MdsPrepareResult(string Output, long Documents, long Tokens, long Samples, int Shards, long InputBytes, TimeSpan Elapsed);

/// <summary>
/// Prepares text once into MDS shards of fixed token blocks (llm-foundry's <c>convert_dataset_*</c> with
/// <c>concat_tokens</c>, Streaming's <c>MDSWriter</c>): documents tokenized on all cores in windows (output order
/// independent of the thread count), an end-of-text token after each, concatenated and cut into blocks of
/// <see cref="MdsPrepareOptions.BlockSize"/> (the remainder dropped), each a sample <c>{tokens: ndarray:int32}</c>.
/// Written into a temporary folder beside the output and renamed at the end, so an interrupted or failed run leaves
/// nothing at the output; the same inputs give byte-identical files. A <c>composersharp.json</c> beside index.json
/// records the tokenizer's vocabulary size, the block size and the counts (Streaming ignores it).
/// </summary>
public static class MdsPrepare
{
    /// <summary>The sidecar file with the tokenizer and block size.</summary>
    public const string MetadataFileName = "composersharp.json";

    private const int Window = 256;

    /// <summary>Runs the preparation.</summary>
    /// <param name="options">Inputs, output and shard options.</param>
    /// <param name="tokenizer">The tokenizer (its vocabulary's end-of-text id ends documents).</param>
    /// <param name="progress">Receives progress after each window; may be null.</param>
    /// <param name="cancellationToken">Stops between windows (nothing is left at the output).</param>
    /// <returns>The counts.</returns>
    /// <exception cref="FileNotFoundException">An input does not exist.</exception>
    /// <exception cref="InvalidDataException">A JSONL line is not an object with the text field (file and line named), a text file is not UTF-8, or the inputs hold fewer tokens than one block.</exception>
    /// <exception cref="IOException">The output exists and is not empty, or cannot be written.</exception>
    public static MdsPrepareResult TextBlocks(MdsPrepareOptions options, ITextTokenizer tokenizer, IProgress<MdsPrepareProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.BlockSize, 1);
        if (options.Inputs is null || options.Inputs.Count == 0)
        {
            throw new ArgumentException("At least one --input is needed.", nameof(options));
        }

        string output = Path.GetFullPath(options.Output);
        if (File.Exists(output) || (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any()))
        {
            throw new IOException($"The output '{output}' exists and is not an empty folder; choose a new folder (nothing was written).");
        }

        List<string> files = options.Inputs.SelectMany(InputFiles).ToList();
        long totalBytes = files.Sum(f => new FileInfo(f).Length);
        string staging = output.TrimEnd(Path.DirectorySeparatorChar) + $".tmp-{Environment.ProcessId}";
        var watch = Stopwatch.StartNew();
        long documents = 0, tokens = 0, bytesRead = 0;
        try
        {
            using var writer = new MdsWriter(staging, new Dictionary<string, string> { ["tokens"] = "ndarray:int32" }, options.Compression, options.Hashes, options.SizeLimit);
            var buffer = new List<int>(options.BlockSize * 2);
            int end = tokenizer.Vocabulary.EndOfTextId;
            var parallel = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, options.Workers), CancellationToken = cancellationToken };
            foreach (List<(string Text, long Bytes)> window in Documents(files, options.TextField).Chunk(Window).Select(w => w.ToList()))
            {
                cancellationToken.ThrowIfCancellationRequested();
                var encoded = new int[window.Count][];
                Parallel.For(0, window.Count, parallel, i => encoded[i] = tokenizer.Encode(window[i].Text));
                for (int i = 0; i < window.Count; i++)
                {
                    buffer.AddRange(encoded[i]);
                    if (options.AppendEndOfText)
                    {
                        buffer.Add(end);
                    }

                    tokens += encoded[i].Length + (options.AppendEndOfText ? 1 : 0);
                    bytesRead += window[i].Bytes;
                    documents++;
                    int full = buffer.Count / options.BlockSize * options.BlockSize;
                    for (int start = 0; start < full; start += options.BlockSize)
                    {
                        writer.Write(new Dictionary<string, object> { ["tokens"] = buffer.GetRange(start, options.BlockSize).ToArray() });
                    }

                    buffer.RemoveRange(0, full);
                }

                progress?.Report(new MdsPrepareProgress(bytesRead, totalBytes, tokens, writer.SamplesWritten));
            }

            if (writer.SamplesWritten == 0)
            {
                throw new InvalidDataException($"The inputs hold {tokens} tokens in {documents} document(s), fewer than one block of {options.BlockSize}; nothing was written.");
            }

            long samples = writer.SamplesWritten;
            writer.Finish();
            int shards = MdsIndex.Read(staging).Count;
            var metadata = new JsonObject
            {
                ["tokenizer_vocab_size"] = tokenizer.Vocabulary.Size,
                ["tokenizer_regular_count"] = tokenizer.Vocabulary.RegularCount,
                ["end_of_text_id"] = end,
                ["block_size"] = options.BlockSize,
                ["documents"] = documents,
                ["tokens"] = tokens,
                ["samples"] = samples,
            };
            File.WriteAllText(Path.Combine(staging, MetadataFileName), metadata.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            if (Directory.Exists(output))
            {
                Directory.Delete(output); // empty, checked above
            }

            Directory.Move(staging, output);
            return new MdsPrepareResult(output, documents, tokens, samples, shards, totalBytes, watch.Elapsed);
        }
        finally
        {
            if (Directory.Exists(staging))
            {
                Directory.Delete(staging, recursive: true);
            }
        }
    }

    private static IEnumerable<string> InputFiles(string input)
    {
        if (Directory.Exists(input))
        {
            string[] found = Directory.EnumerateFiles(input, "*.txt", SearchOption.AllDirectories).Concat(Directory.EnumerateFiles(input, "*.jsonl", SearchOption.AllDirectories))
                .Select(Path.GetFullPath).Order(NaturalStringComparer.Instance).ToArray();
            return found.Length > 0 ? found : throw new InvalidDataException($"The input folder '{input}' has no .txt or .jsonl file.");
        }

        return File.Exists(input)
            ? new[] { Path.GetFullPath(input) }
            : throw new FileNotFoundException($"The input '{input}' (full path '{Path.GetFullPath(input)}') is neither a file nor a folder.", input);
    }

    private static IEnumerable<(string Text, long Bytes)> Documents(IEnumerable<string> files, string field)
    {
        foreach (string file in files)
        {
            if (!file.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase))
            {
                yield return (TextBlockDataset.ReadUtf8Text(file), new FileInfo(file).Length);
                continue;
            }

            int number = 0;
            foreach (string line in File.ReadLines(file))
            {
                number++;
                if (string.IsNullOrWhiteSpace(line))
                {
                    continue;
                }

                string? text;
                try
                {
                    text = JsonNode.Parse(line) is JsonObject o && o[field] is JsonValue v && v.TryGetValue(out string? s) ? s : null;
                }
                catch (JsonException ex)
                {
                    throw new InvalidDataException($"'{file}' line {number} is not valid JSON: {ex.Message}", ex);
                }

                yield return (text ?? throw new InvalidDataException($"'{file}' line {number} has no string field '{field}'."), System.Text.Encoding.UTF8.GetByteCount(line) + 1);
            }
        }
    }
}
