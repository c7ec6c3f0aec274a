using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Data;

/// <summary>Which part of a corpus a <see cref="TextBlockDataset"/> holds.</summary>
public enum CorpusSplit
{
    /// <summary>Every block.</summary>
    All,
    /// <summary>All blocks but the held-out tail (<see cref="TextCorpusOptions.EvalFraction"/>).</summary>
    Train,
    /// <summary>The held-out tail of the blocks.</summary>
    Eval,
}

/// <summary>Options of <see cref="TextBlockDataset"/>.</summary>
public sealed record TextCorpusOptions
{
    /// <summary>A UTF-8 <c>.txt</c> file, or a folder whose <c>.txt</c> files (recursively) form the corpus in natural name order (chapter_2 before chapter_10).</summary>
    public required string Path { get; init; }

    /// <summary>Tokens per sample (the sequence length T).</summary>
    public int BlockSize { get; init; } = 128;

    /// <summary>Which blocks to keep.</summary>
    public CorpusSplit Split { get; init; } = CorpusSplit.All;

    /// <summary>Fraction of the blocks (the last ones, at least one) held out as <see cref="CorpusSplit.Eval"/>; ignored for <see cref="CorpusSplit.All"/>.</summary>
    public double EvalFraction { get; init; } = 0.1;

    /// <summary>Append the end-of-text id after each file, as GPT-2's training data separates documents.</summary>
    public bool AppendEndOfText { get; init; } = true;
}

/// <summary>
/// A plain-text corpus cut into token blocks of fixed length, the way GPT-2 and BERT pre-training data is packed
/// (Hugging Face's <c>group_texts</c>): every file is tokenized, the ids are concatenated (with an end-of-text id
/// after each file), and the stream is split into non-overlapping blocks of <see cref="BlockSize"/> tokens; the
/// incomplete tail is dropped. A sample is a <c>long[]</c> of exactly <see cref="BlockSize"/> ids. The ids are held
/// as one <c>int</c> array (4 bytes per token).
/// </summary>
public sealed class TextBlockDataset : IDataset<long[]>
{
    private readonly int[] _tokens;
    private readonly long _firstBlock;

    private TextBlockDataset(int[] tokens, int blockSize, long firstBlock, long count, TokenVocabulary vocabulary, IReadOnlyList<string> files)
    {
        _tokens = tokens;
        BlockSize = blockSize;
        _firstBlock = firstBlock;
        Count = count;
        Vocabulary = vocabulary;
        Files = files;
    }

    /// <inheritdoc/>
    public long Count { get; }

    /// <summary>Tokens per sample.</summary>
    public int BlockSize { get; }

    /// <summary>Tokens in this dataset's blocks: <see cref="Count"/> × <see cref="BlockSize"/>.</summary>
    public long TokenCount => Count * BlockSize;

    /// <summary>The id layout of the tokenizer that produced the ids.</summary>
    public TokenVocabulary Vocabulary { get; }

    /// <summary>The files read, in corpus order (full paths).</summary>
    public IReadOnlyList<string> Files { get; }

    /// <inheritdoc/>
    public long[] this[long index]
    {
        get
        {
            if (index < 0 || index >= Count)
            {
                throw new ArgumentOutOfRangeException(nameof(index), index, $"Index must be in [0, {Count}).");
            }

            long start = (_firstBlock + index) * BlockSize;
            var block = new long[BlockSize];
            for (int t = 0; t < BlockSize; t++)
            {
                block[t] = _tokens[start + t];
            }

            return block;
        }
    }

    /// <summary>Reads and tokenizes the corpus at <see cref="TextCorpusOptions.Path"/>.</summary>
    /// <param name="options">Path, block size and split.</param>
    /// <param name="tokenizer">The tokenizer (e.g. <see cref="Gpt2Tokenizer"/>).</param>
    /// <param name="logger">Receives one information line with the file, token and block counts.</param>
    /// <exception cref="FileNotFoundException">The path is neither a file nor a folder.</exception>
    /// <exception cref="InvalidDataException">
    /// The folder has no <c>.txt</c> file, the corpus has fewer tokens than one block, or the chosen split would be empty;
    /// the message names the path and the counts.
    /// </exception>
    /// <exception cref="ArgumentOutOfRangeException">BlockSize is not positive or EvalFraction is outside [0, 1).</exception>
    public static TextBlockDataset Load(TextCorpusOptions options, ITextTokenizer tokenizer, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (options.BlockSize <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.BlockSize, "BlockSize must be at least 1 token.");
        }

        if (!(options.EvalFraction >= 0.0 && options.EvalFraction < 1.0))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.EvalFraction, "EvalFraction must be in [0, 1).");
        }

        string[] files = ListTextFiles(options.Path);
        var tokens = new List<int>();
        foreach (string file in files)
        {
            tokens.AddRange(tokenizer.Encode(ReadUtf8Text(file)));
            if (options.AppendEndOfText)
            {
                tokens.Add(tokenizer.Vocabulary.EndOfTextId);
            }
        }

        long blocks = tokens.Count / options.BlockSize;
        if (blocks == 0)
        {
            throw new InvalidDataException(
                $"The corpus '{options.Path}' has {tokens.Count} tokens in {files.Length} file(s), fewer than one block of {options.BlockSize} tokens.");
        }

        long evalBlocks = options.Split == CorpusSplit.All || options.EvalFraction == 0.0
            ? 0
            : Math.Max(1, (long)Math.Round(blocks * options.EvalFraction));
        (long first, long count) = options.Split switch
        {
            CorpusSplit.Train => (0L, blocks - evalBlocks),
            CorpusSplit.Eval => (blocks - evalBlocks, evalBlocks),
            _ => (0L, blocks),
        };
        if (count == 0)
        {
            throw new InvalidDataException(
                $"The {options.Split} split of '{options.Path}' is empty: the corpus has {blocks} block(s) of {options.BlockSize} tokens and EvalFraction is {options.EvalFraction}.");
        }

        logger?.LogInformation(
            "Corpus {Path}: {Files} file(s), {Tokens} tokens, {Split} split of {Count} blocks of {BlockSize} tokens.",
            options.Path, files.Length, tokens.Count, options.Split, count, options.BlockSize);
        return new TextBlockDataset(tokens.ToArray(), options.BlockSize, first, count, tokenizer.Vocabulary, files);
    }

    /// <summary>
    /// The file's text, refusing what is not text: bytes that are not valid UTF-8, or NUL characters (binary data
    /// named <c>.txt</c> would otherwise be tokenized as replacement characters and trained on silently).
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not UTF-8 text; the message names it and the offset.</exception>
    internal static string ReadUtf8Text(string file)
    {
        byte[] bytes = File.ReadAllBytes(file);
        string text;
        try
        {
            text = new System.Text.UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (System.Text.DecoderFallbackException ex)
        {
            throw new InvalidDataException($"The corpus file '{file}' is not UTF-8 text (an invalid byte sequence at byte {ex.Index}); a text corpus must be UTF-8 .txt files.", ex);
        }

        int nul = text.IndexOf('\0', StringComparison.Ordinal);
        if (nul >= 0)
        {
            throw new InvalidDataException($"The corpus file '{file}' contains a NUL character (at character {nul}): it looks like binary data, not text.");
        }

        return text.Length > 0 && text[0] == '\uFEFF' ? text[1..] : text;
    }

    private static string[] ListTextFiles(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (File.Exists(path))
        {
            return new[] { System.IO.Path.GetFullPath(path) };
        }

        if (!Directory.Exists(path))
        {
            throw new FileNotFoundException($"The text corpus path '{path}' (full path '{System.IO.Path.GetFullPath(path)}') is neither a file nor a folder.", path);
        }

        string[] files = Directory.EnumerateFiles(path, "*.txt", SearchOption.AllDirectories)
            .Select(System.IO.Path.GetFullPath)
            .Order(NaturalStringComparer.Instance)
            .ToArray();
        if (files.Length == 0)
        {
            throw new InvalidDataException($"The text corpus folder '{path}' has no .txt file.");
        }

        return files;
    }
}

/// <summary>Options of <see cref="JsonlClassificationDataset"/>.</summary>
public sealed record JsonlClassificationOptions
{
    /// <summary>A JSON-lines file: one object per line with a text and a label field; blank lines are skipped.</summary>
    public required string Path { get; init; }

    /// <summary>Maximum tokens per sample, including the cls id; longer texts keep their first tokens.</summary>
    public int MaxLength { get; init; } = 128;

    /// <summary>
    /// The label map: label <c>Labels[i]</c> is class i. Labels are matched as strings (a JSON number or boolean
    /// label is matched by its JSON text, e.g. <c>1</c> or <c>true</c>). When null, the distinct labels of the file in
    /// ordinal order (give the training set's <see cref="JsonlClassificationDataset.Labels"/> to its test set).
    /// </summary>
    public IReadOnlyList<string>? Labels { get; init; }

    /// <summary>Name of the text field.</summary>
    public string TextField { get; init; } = "text";

    /// <summary>Name of the label field.</summary>
    public string LabelField { get; init; } = "label";

    /// <summary>Start every sample with the vocabulary's cls id (BERT's <c>[CLS]</c>), which the classification head pools, and end it with the separator when the vocabulary has one (BERT's <c>[SEP]</c>; see <see cref="TokenVocabulary.ClassificationInput"/>).</summary>
    public bool PrependCls { get; init; } = true;
}

/// <summary>
/// A JSON-lines text-classification dataset (the <c>{"text": ..., "label": ...}</c> rows of Hugging Face's JSON
/// loader): each row is tokenized, prefixed with the cls id, and truncated to <see cref="JsonlClassificationOptions.MaxLength"/>
/// tokens; padding and the attention mask are the <see cref="ClassificationCollator"/>'s job.
/// </summary>
public sealed class JsonlClassificationDataset : IDataset<TextClassificationSample>
{
    private readonly TextClassificationSample[] _samples;

    private JsonlClassificationDataset(TextClassificationSample[] samples, IReadOnlyList<string> labels, TokenVocabulary vocabulary, int maxLength)
    {
        _samples = samples;
        Labels = labels;
        Vocabulary = vocabulary;
        MaxLength = maxLength;
    }

    /// <inheritdoc/>
    public long Count => _samples.Length;

    /// <summary>The label map: class i is <c>Labels[i]</c>.</summary>
    public IReadOnlyList<string> Labels { get; }

    /// <summary>The id layout of the tokenizer that produced the ids.</summary>
    public TokenVocabulary Vocabulary { get; }

    /// <summary>Maximum tokens per sample.</summary>
    public int MaxLength { get; }

    /// <inheritdoc/>
    public TextClassificationSample this[long index] => index >= 0 && index < _samples.Length
        ? _samples[index]
        : throw new ArgumentOutOfRangeException(nameof(index), index, $"Index must be in [0, {_samples.Length}).");

    /// <summary>Number of samples of each class, indexed like <see cref="Labels"/>.</summary>
    public long[] ClassCounts()
    {
        var counts = new long[Labels.Count];
        foreach (TextClassificationSample s in _samples)
        {
            counts[s.Label]++;
        }

        return counts;
    }

    /// <summary>Reads and tokenizes the file at <see cref="JsonlClassificationOptions.Path"/>.</summary>
    /// <param name="options">Path, label map, fields and maximum length.</param>
    /// <param name="tokenizer">The tokenizer (e.g. <see cref="Gpt2Tokenizer"/>).</param>
    /// <param name="logger">Receives one information line with the sample and class counts.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">
    /// A line is not a JSON object, lacks the text or label field, has a text that is not a string, or has a label
    /// outside the label map (message: <c>path:line: …</c>); or the file has no rows.
    /// </exception>
    /// <exception cref="ArgumentException">MaxLength is too small, or the label map is empty or has duplicates.</exception>
    public static JsonlClassificationDataset Load(JsonlClassificationOptions options, ITextTokenizer tokenizer, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(tokenizer);
        int reserved = options.PrependCls ? tokenizer.Vocabulary.ClassificationReserved : 0;
        if (options.MaxLength <= reserved)
        {
            throw new ArgumentException($"MaxLength {options.MaxLength} leaves no room for text tokens; it must be at least {reserved + 1}.", nameof(options));
        }

        if (Directory.Exists(options.Path))
        {
            throw new FileNotFoundException($"The JSON-lines path '{options.Path}' (full path '{Path.GetFullPath(options.Path)}') is a folder; expected a .jsonl file of {{\"text\", \"label\"}} rows.", options.Path);
        }

        if (!File.Exists(options.Path))
        {
            throw new FileNotFoundException($"The JSON-lines file '{options.Path}' (full path '{Path.GetFullPath(options.Path)}') does not exist.", options.Path);
        }

        var rows = new List<(string Text, string Label, int Line)>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(options.Path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            rows.Add(ParseRow(line, options, lineNumber));
        }

        if (rows.Count == 0)
        {
            throw new InvalidDataException($"The JSON-lines file '{options.Path}' has no rows.");
        }

        IReadOnlyList<string> labels = options.Labels ?? rows.Select(r => r.Label).Distinct().Order(StringComparer.Ordinal).ToArray();
        Dictionary<string, int> labelIndex = BuildLabelIndex(labels);
        var samples = new TextClassificationSample[rows.Count];
        for (int i = 0; i < rows.Count; i++)
        {
            (string text, string label, int line) = rows[i];
            if (!labelIndex.TryGetValue(label, out int cls))
            {
                throw new InvalidDataException(
                    $"{options.Path}:{line}: label '{label}' is not in the label map; expected one of: {string.Join(", ", labels)}.");
            }

            int[] ids = tokenizer.Encode(text, options.MaxLength - reserved);
            long[] input = options.PrependCls ? tokenizer.Vocabulary.ClassificationInput(ids, options.MaxLength) : ids.Select(id => (long)id).ToArray();
            if (input.Length == 0)
            {
                throw new InvalidDataException($"{options.Path}:{line}: the text has no tokens and no cls id is prepended, so the sample would be empty.");
            }

            samples[i] = new TextClassificationSample(input, cls);
        }

        var dataset = new JsonlClassificationDataset(samples, labels, tokenizer.Vocabulary, options.MaxLength);
        logger?.LogInformation(
            "JSON-lines {Path}: {Count} samples, classes {Classes}.",
            options.Path, samples.Length, string.Join(", ", labels.Zip(dataset.ClassCounts(), (l, c) => $"{l}={c}")));
        return dataset;
    }

    private static (string Text, string Label, int Line) ParseRow(string line, JsonlClassificationOptions options, int lineNumber)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(line);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{options.Path}:{lineNumber}: malformed JSON ({e.Message}).", e);
        }

        using (doc)
        {
            JsonElement root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new InvalidDataException($"{options.Path}:{lineNumber}: expected a JSON object with fields '{options.TextField}' and '{options.LabelField}', found a {root.ValueKind}.");
            }

            if (!root.TryGetProperty(options.TextField, out JsonElement text) || text.ValueKind != JsonValueKind.String)
            {
                throw new InvalidDataException($"{options.Path}:{lineNumber}: missing string field '{options.TextField}'.");
            }

            if (!root.TryGetProperty(options.LabelField, out JsonElement label))
            {
                throw new InvalidDataException($"{options.Path}:{lineNumber}: missing field '{options.LabelField}'.");
            }

            string labelText = label.ValueKind switch
            {
                JsonValueKind.String => label.GetString()!,
                JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => label.GetRawText(),
                _ => throw new InvalidDataException($"{options.Path}:{lineNumber}: field '{options.LabelField}' is a {label.ValueKind}; expected a string, number or boolean."),
            };
            return (text.GetString()!, labelText, lineNumber);
        }
    }

    private static Dictionary<string, int> BuildLabelIndex(IReadOnlyList<string> labels)
    {
        if (labels.Count == 0)
        {
            throw new ArgumentException("The label map is empty; give at least one label.", nameof(labels));
        }

        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < labels.Count; i++)
        {
            if (!index.TryAdd(labels[i], i))
            {
                throw new ArgumentException($"The label map lists '{labels[i]}' twice.", nameof(labels));
            }
        }

        return index;
    }
}

/// <summary>Orders strings with digit runs compared as numbers ("chapter_2" before "chapter_10"), otherwise ordinally.</summary>
internal sealed class NaturalStringComparer : IComparer<string>
{
    internal static readonly NaturalStringComparer Instance = new();

    public int Compare(string? x, string? y)
    {
        if (x is null || y is null)
        {
            return x is null ? (y is null ? 0 : -1) : 1;
        }

        int i = 0, j = 0;
        while (i < x.Length && j < y.Length)
        {
            if (char.IsAsciiDigit(x[i]) && char.IsAsciiDigit(y[j]))
            {
                int si = i, sj = j;
                while (i < x.Length && char.IsAsciiDigit(x[i])) i++;
                while (j < y.Length && char.IsAsciiDigit(y[j])) j++;
                ReadOnlySpan<char> a = x.AsSpan(si, i - si).TrimStart('0');
                ReadOnlySpan<char> b = y.AsSpan(sj, j - sj).TrimStart('0');
                int c = a.Length != b.Length ? a.Length.CompareTo(b.Length) : a.SequenceCompareTo(b);
                if (c != 0)
                {
                    return c;
                }
            }
            else
            {
                int c = x[i].CompareTo(y[j]);
                if (c != 0)
                {
                    return c;
                }

                i++;
                j++;
            }
        }

        int rest = (x.Length - i).CompareTo(y.Length - j);
        return rest != 0 ? rest : string.CompareOrdinal(x, y);
    }
}
