using System.CommandLine;
using System.Globalization;
using ComposerSharp.Data;
using ComposerSharp.Data.Streaming;
using ComposerSharp.Inference;
using Spectre.Console;

namespace ComposerSharp.Cli;

/// <summary>
/// <c>composersharp data prepare</c>: text prepared once into MDS shards (MosaicML Streaming's format) that the
/// <c>streaming_text</c> dataset reads without tokenizing again (llm-foundry's <c>convert_dataset_*</c> scripts).
/// </summary>
internal static class DataCommands
{
    public static Command Build(TextWriter? output)
    {
        var inputs = new Option<string[]>("--input") { Description = "A folder of .txt/.jsonl files, a .txt file or a .jsonl file (each file, or each JSONL row's text, is one document); repeat for several.", Required = true, AllowMultipleArgumentsPerToken = true };
        var folder = new Option<string>("--output") { Description = "The MDS dataset folder to create (new or empty): index.json, shard.NNNNN.mds[.zstd], composersharp.json.", Required = true };
        var tokenizer = new Option<string>("--tokenizer") { Description = "gpt2 (default) or a WordPiece vocab.txt / a folder holding one: the tokenizer the model will train with.", DefaultValueFactory = _ => Tokenizers.Gpt2 };
        var blockSize = new Option<int>("--block-size") { Description = "Tokens per sample (documents joined with an end-of-text token, then cut into blocks); default 2048. Use the model's max_sequence_length or less.", DefaultValueFactory = _ => 2048 };
        var compression = new Option<string?>("--compression") { Description = "Shard compression: zstd or zstd:LEVEL (1-22); none by default." };
        var hashes = new Option<string[]>("--hashes") { Description = "Hashes of each shard in index.json (sorted): md5, sha1, sha256, xxh64; default sha1.", DefaultValueFactory = _ => new[] { "sha1" }, AllowMultipleArgumentsPerToken = true };
        var sizeLimit = new Option<string>("--size-limit") { Description = "Shard size limit: bytes, or with kb/mb/gb (Streaming's units, powers of 1024); default 64mb.", DefaultValueFactory = _ => "64mb" };
        var field = new Option<string>("--text-field") { Description = "The JSONL field holding a document's text (default text).", DefaultValueFactory = _ => "text" };
        var prepare = new Command("prepare", "Tokenize text once into MDS shards of fixed token blocks for the streaming_text dataset.") { inputs, folder, tokenizer, blockSize, compression, hashes, sizeLimit, field };
        prepare.SetAction(parse =>
        {
            TextWriter w = output ?? Console.Out;
            try
            {
                var options = new MdsPrepareOptions
                {
                    Inputs = parse.GetValue(inputs)!,
                    Output = parse.GetValue(folder)!,
                    BlockSize = parse.GetValue(blockSize),
                    Compression = parse.GetValue(compression),
                    Hashes = parse.GetValue(hashes)!,
                    SizeLimit = ParseBytes(parse.GetValue(sizeLimit)!, "--size-limit"),
                    TextField = parse.GetValue(field)!,
                };
                if (options.BlockSize < 1)
                {
                    throw new ArgumentException($"--block-size is {options.BlockSize}; expected at least 1 token.");
                }

                ITextTokenizer tok = Tokenizers.FromSpec(parse.GetValue(tokenizer)!);
                MdsPrepareResult result = RunWithProgress(options, tok, output is null);
                double seconds = Math.Max(result.Elapsed.TotalSeconds, 1e-9);
                w.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"data prepare: {result.Documents} documents, {result.Tokens:N0} tokens -> {result.Samples:N0} samples of {options.BlockSize} tokens in {result.Shards} shard(s) at {result.Output} ({result.InputBytes / 1e6 / seconds:F1} MB/s of text, {result.Tokens / seconds:N0} tokens/s, {Environment.ProcessorCount} threads, {result.Elapsed.TotalSeconds:F1} s)"));
                return 0;
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or ArgumentException or UnauthorizedAccessException or NotSupportedException)
            {
                Console.Error.WriteLine($"composersharp data prepare: {ex.Message}");
                return CliApp.ConfigErrorExitCode;
            }
        });
        return new Command("data", "Prepare datasets (MDS shards for streaming).") { prepare };
    }

    /// <summary>Bytes with Streaming's optional unit suffix (b, kb, mb, gb, tb: powers of 1024).</summary>
    /// <exception cref="ArgumentException">Not a positive size.</exception>
    internal static long ParseBytes(string text, string what)
    {
        string t = text.Trim().ToLowerInvariant();
        (string number, long unit) = t switch
        {
            _ when t.EndsWith("tb", StringComparison.Ordinal) => (t[..^2], 1L << 40),
            _ when t.EndsWith("gb", StringComparison.Ordinal) => (t[..^2], 1L << 30),
            _ when t.EndsWith("mb", StringComparison.Ordinal) => (t[..^2], 1L << 20),
            _ when t.EndsWith("kb", StringComparison.Ordinal) => (t[..^2], 1L << 10),
            _ when t.EndsWith('b') => (t[..^1], 1L),
            _ => (t, 1L),
        };
        return double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) && value > 0
            ? checked((long)(value * unit))
            : throw new ArgumentException($"{what} is '{text}'; expected a positive size such as 67108864, 64mb or 1.5gb.");
    }

    private static MdsPrepareResult RunWithProgress(MdsPrepareOptions options, ITextTokenizer tokenizer, bool console)
    {
        if (!console || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            return MdsPrepare.TextBlocks(options, tokenizer);
        }

        MdsPrepareResult? result = null;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                ProgressTask task = context.AddTask("tokenizing", maxValue: 1);
                result = MdsPrepare.TextBlocks(options, tokenizer, new InlineProgress(p =>
                {
                    task.MaxValue = Math.Max(1, p.TotalBytes);
                    task.Value = p.BytesRead;
                    task.Description = string.Create(CultureInfo.InvariantCulture, $"tokenizing: {p.Tokens:N0} tokens, {p.Samples:N0} samples");
                }));
                task.Value = task.MaxValue;
            });
        return result!;
    }

    /// <summary>Reports on the calling thread (Progress&lt;T&gt; would post to the thread pool and arrive late).</summary>
    private sealed class InlineProgress(Action<MdsPrepareProgress> report) : IProgress<MdsPrepareProgress>
    {
        public void Report(MdsPrepareProgress value) => report(value);
    }
}
