using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Tokenizers;

namespace ComposerSharp.Data;

/// <summary>
/// The settings of a BERT WordPiece tokenizer, as <c>transformers</c>' <c>BertTokenizer</c> takes them from a model
/// folder's <c>tokenizer_config.json</c> (tokenization_bert.py: <c>do_lower_case</c>, <c>strip_accents</c>,
/// <c>tokenize_chinese_chars</c> and the five special tokens). The defaults are that class's.
/// </summary>
public sealed record BertWordPieceOptions
{
    /// <summary><c>do_lower_case</c>: lower-case the text before WordPiece (uncased models; default true).</summary>
    public bool LowerCase { get; init; } = true;

    /// <summary><c>strip_accents</c>: remove accents (Unicode non-spacing marks); null follows <see cref="LowerCase"/>, as in <c>transformers</c>.</summary>
    public bool? StripAccents { get; init; }

    /// <summary><c>tokenize_chinese_chars</c>: put spaces around each CJK ideograph (default true).</summary>
    public bool TokenizeChineseChars { get; init; } = true;

    /// <summary><c>unk_token</c>: the token of words WordPiece cannot split.</summary>
    public string UnknownToken { get; init; } = "[UNK]";

    /// <summary><c>cls_token</c>: prepended to classified texts.</summary>
    public string ClsToken { get; init; } = "[CLS]";

    /// <summary><c>sep_token</c>: ends a segment.</summary>
    public string SepToken { get; init; } = "[SEP]";

    /// <summary><c>pad_token</c>: padding.</summary>
    public string PadToken { get; init; } = "[PAD]";

    /// <summary><c>mask_token</c>: the MLM mask.</summary>
    public string MaskToken { get; init; } = "[MASK]";

    /// <summary>Whether accents are removed: <see cref="StripAccents"/>, or <see cref="LowerCase"/> when that is null.</summary>
    public bool RemovesAccents => StripAccents ?? LowerCase;

    /// <summary>Reads the fields of a <c>tokenizer_config.json</c> (absent fields keep their defaults).</summary>
    /// <param name="json">The file's text.</param>
    /// <param name="source">The file, for error messages.</param>
    /// <exception cref="InvalidDataException">Not a JSON object, a field of the wrong type, or a <c>tokenizer_class</c> that is not a BERT WordPiece tokenizer; the message names the file, field and value.</exception>
    public static BertWordPieceOptions FromTokenizerConfig(string json, string source)
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonObject o;
        try
        {
            o = JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"'{source}' is not a JSON object.");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"'{source}' is not valid JSON: {ex.Message}", ex);
        }

        if (Text(o, "tokenizer_class", source) is { } name
            && name is not ("BertTokenizer" or "BertTokenizerFast" or "DistilBertTokenizer" or "DistilBertTokenizerFast"))
        {
            throw new InvalidDataException($"'{source}': tokenizer_class is '{name}'; expected BertTokenizer or BertTokenizerFast (a WordPiece vocab.txt).");
        }

        var d = new BertWordPieceOptions();
        return new BertWordPieceOptions
        {
            LowerCase = Flag(o, "do_lower_case", source) ?? d.LowerCase,
            StripAccents = Flag(o, "strip_accents", source),
            TokenizeChineseChars = Flag(o, "tokenize_chinese_chars", source) ?? d.TokenizeChineseChars,
            UnknownToken = Text(o, "unk_token", source) ?? d.UnknownToken,
            ClsToken = Text(o, "cls_token", source) ?? d.ClsToken,
            SepToken = Text(o, "sep_token", source) ?? d.SepToken,
            PadToken = Text(o, "pad_token", source) ?? d.PadToken,
            MaskToken = Text(o, "mask_token", source) ?? d.MaskToken,
        };
    }

    /// <summary>The <c>tokenizer_config.json</c> of these settings (<c>tokenizer_class</c> BertTokenizer).</summary>
    /// <param name="modelMaxLength">The model's context length (<c>model_max_length</c>), or null to leave it out.</param>
    public JsonObject ToTokenizerConfig(int? modelMaxLength = null)
    {
        var o = new JsonObject
        {
            ["tokenizer_class"] = "BertTokenizer",
            ["do_lower_case"] = LowerCase,
            ["do_basic_tokenize"] = true,
            ["tokenize_chinese_chars"] = TokenizeChineseChars,
            ["strip_accents"] = StripAccents,
            ["unk_token"] = UnknownToken,
            ["sep_token"] = SepToken,
            ["pad_token"] = PadToken,
            ["cls_token"] = ClsToken,
            ["mask_token"] = MaskToken,
        };
        if (modelMaxLength is { } max)
        {
            o["model_max_length"] = max;
        }

        return o;
    }

    private static bool? Flag(JsonObject o, string field, string source) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out bool b) => b,
        JsonNode n => throw new InvalidDataException($"'{source}': {field} is {n.ToJsonString()}; expected true, false or null."),
    };

    /// <summary>A string field, or an AddedToken object's <c>content</c> (older files write special tokens so).</summary>
    private static string? Text(JsonObject o, string field, string source) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s,
        JsonObject added when added["content"] is JsonValue c && c.TryGetValue(out string? s) => s,
        JsonNode n => throw new InvalidDataException($"'{source}': {field} is {n.ToJsonString()}; expected a string or an object with a string \"content\"."),
    };
}

/// <summary>
/// BERT's WordPiece tokenizer (Devlin et al. 2019; Wu et al. 2016) over a published <c>vocab.txt</c> (one token per
/// line, the line number is the id), giving the ids of <c>transformers</c>' <c>BertTokenizer</c> (tokenization_bert.py):
/// the five special tokens are kept whole; with <c>do_lower_case</c> the rest is lower-cased one character at a time
/// (as <c>PreTrainedTokenizer.tokenize</c> does); then <c>BasicTokenizer</c>'s steps (<see cref="BasicTokenize"/>:
/// control and unassigned characters dropped, every whitespace character a space, CJK ideographs apart, NFC, optional
/// accent removal, every punctuation character or ASCII symbol a word of its own); then greedy longest-match-first
/// WordPiece with the <c>##</c> continuation prefix through Microsoft.ML.Tokenizers' <see cref="BertTokenizer"/>, and
/// <c>[UNK]</c> for words longer than 100 characters or that cannot be split. The ids are the vocabulary's own
/// (<see cref="TokenVocabulary.WithSpecialIds"/>): a model imported from Hugging Face sees the ids it was trained on.
/// Thread-safe.
/// </summary>
public sealed class BertWordPieceTokenizer : ITextTokenizer
{
    /// <summary>The name recorded in checkpoints for this tokenizer.</summary>
    public const string Name = "bert_wordpiece";

    /// <summary>The vocabulary file of a Hugging Face BERT folder.</summary>
    public const string VocabFileName = "vocab.txt";

    /// <summary>The tokenizer settings file of a Hugging Face folder.</summary>
    public const string ConfigFileName = "tokenizer_config.json";

    /// <summary>The special-token file of a Hugging Face folder (written on export).</summary>
    public const string SpecialTokensFileName = "special_tokens_map.json";

    /// <summary>Words longer than this many characters become one <c>[UNK]</c> (<c>transformers</c>' WordpieceTokenizer default).</summary>
    public const int MaxInputCharsPerWord = 100;

    private readonly BertTokenizer _tokenizer;
    private readonly string[] _tokens;
    private readonly int _unknownId;
    private readonly Dictionary<string, int> _specialIds;

    /// <summary>A tokenizer over the vocabulary <paramref name="vocabText"/> (the text of a vocab.txt).</summary>
    /// <param name="vocabText">One token per line; a final newline is optional.</param>
    /// <param name="options">Casing, accents and special tokens; null for <c>transformers</c>' defaults (uncased).</param>
    /// <param name="source">Where the vocabulary came from, for error messages (e.g. the file path).</param>
    /// <exception cref="InvalidDataException">The vocabulary is empty, repeats a token, or lacks one of the five special tokens; the message names the source and the token.</exception>
    public BertWordPieceTokenizer(string vocabText, BertWordPieceOptions? options = null, string source = VocabFileName)
    {
        ArgumentNullException.ThrowIfNull(vocabText);
        ArgumentNullException.ThrowIfNull(source);
        Options = options ?? new BertWordPieceOptions();
        List<string> lines = vocabText.Split('\n').ToList();
        if (lines.Count > 0 && lines[^1].Length == 0)
        {
            lines.RemoveAt(lines.Count - 1); // the newline that ends the last line
        }

        _tokens = lines.Select(l => l.EndsWith('\r') ? l[..^1] : l).ToArray();
        if (_tokens.Length == 0)
        {
            throw new InvalidDataException($"The WordPiece vocabulary '{source}' is empty; expected one token per line.");
        }

        var index = new Dictionary<string, int>(_tokens.Length, StringComparer.Ordinal);
        for (int i = 0; i < _tokens.Length; i++)
        {
            if (!index.TryAdd(_tokens[i], i))
            {
                throw new InvalidDataException($"The WordPiece vocabulary '{source}' has token '{_tokens[i]}' twice (lines {index[_tokens[i]] + 1} and {i + 1}).");
            }
        }

        int Id(string role, string token) => index.TryGetValue(token, out int id)
            ? id
            : throw new InvalidDataException($"The WordPiece vocabulary '{source}' has no {role} token '{token}'; expected it on a line of its own (or set {role}_token in {ConfigFileName}).");

        int unk = Id("unk", Options.UnknownToken);
        int cls = Id("cls", Options.ClsToken);
        int sep = Id("sep", Options.SepToken);
        int pad = Id("pad", Options.PadToken);
        int mask = Id("mask", Options.MaskToken);
        try
        {
            Vocabulary = TokenVocabulary.WithSpecialIds(_tokens.Length, pad, mask, cls, sep, new[] { unk });
        }
        catch (ArgumentException ex)
        {
            throw new InvalidDataException($"The WordPiece vocabulary '{source}': {ex.Message}", ex);
        }

        VocabText = string.Join('\n', _tokens) + "\n";
        VocabSha256 = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(VocabText)));
        var bert = new BertOptions
        {
            LowerCaseBeforeTokenization = Options.LowerCase,
            RemoveNonSpacingMarks = Options.RemovesAccents,
            IndividuallyTokenizeCjk = Options.TokenizeChineseChars,
            ApplyBasicTokenization = false,
            SplitOnSpecialTokens = false,
            UnknownToken = Options.UnknownToken,
            ClassificationToken = Options.ClsToken,
            SeparatorToken = Options.SepToken,
            PaddingToken = Options.PadToken,
            MaskingToken = Options.MaskToken,
            ContinuingSubwordPrefix = "##",
            // Words reach the library one at a time, already split; the 100-character limit is counted here in
            // code points (as Python counts them), so the library's UTF-16 limit only has to let such words through.
            MaxInputCharsPerWord = 2 * MaxInputCharsPerWord,
        };
        using var stream = new MemoryStream(Encoding.UTF8.GetBytes(VocabText));
        _tokenizer = BertTokenizer.Create(stream, bert);
        _unknownId = unk;
        _specialIds = new Dictionary<string, int>(StringComparer.Ordinal)
        {
            [Options.UnknownToken] = unk,
            [Options.ClsToken] = cls,
            [Options.SepToken] = sep,
            [Options.PadToken] = pad,
            [Options.MaskToken] = mask,
        };
    }

    /// <summary>Reads a Hugging Face BERT tokenizer: a folder with <c>vocab.txt</c> (and optionally <c>tokenizer_config.json</c>), or a vocab.txt file (default settings).</summary>
    /// <param name="path">The folder or file.</param>
    /// <exception cref="FileNotFoundException">No vocab.txt there; the message names the path.</exception>
    /// <exception cref="InvalidDataException">A bad vocabulary or tokenizer_config.json (see the constructor and <see cref="BertWordPieceOptions.FromTokenizerConfig"/>).</exception>
    public static BertWordPieceTokenizer Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        string vocab = Directory.Exists(path) ? Path.Combine(path, VocabFileName) : path;
        if (!File.Exists(vocab))
        {
            throw new FileNotFoundException($"'{Path.GetFullPath(path)}' is neither a WordPiece {VocabFileName} nor a folder holding one.", vocab);
        }

        string config = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(vocab))!, ConfigFileName);
        BertWordPieceOptions options = File.Exists(config) ? BertWordPieceOptions.FromTokenizerConfig(File.ReadAllText(config), config) : new BertWordPieceOptions();
        return new BertWordPieceTokenizer(File.ReadAllText(vocab, Encoding.UTF8), options, vocab);
    }

    /// <summary>True when <paramref name="folder"/> holds a WordPiece <c>vocab.txt</c>.</summary>
    public static bool IsBertFolder(string folder) => Directory.Exists(folder) && File.Exists(Path.Combine(folder, VocabFileName));

    /// <summary>Rebuilds the tokenizer from <see cref="Files"/> (as recorded in a checkpoint).</summary>
    /// <param name="files">File name → text; must hold vocab.txt, may hold tokenizer_config.json.</param>
    /// <param name="source">Where the files came from, for error messages.</param>
    /// <exception cref="InvalidDataException">No vocab.txt, or bad contents.</exception>
    public static BertWordPieceTokenizer FromFiles(IReadOnlyDictionary<string, string> files, string source)
    {
        ArgumentNullException.ThrowIfNull(files);
        if (!files.TryGetValue(VocabFileName, out string? vocab))
        {
            throw new InvalidDataException($"{source} records a {Name} tokenizer without its {VocabFileName} (files: [{string.Join(", ", files.Keys)}]).");
        }

        BertWordPieceOptions options = files.TryGetValue(ConfigFileName, out string? config)
            ? BertWordPieceOptions.FromTokenizerConfig(config, $"{source} {ConfigFileName}")
            : new BertWordPieceOptions();
        return new BertWordPieceTokenizer(vocab, options, $"{source} {VocabFileName}");
    }

    /// <summary>Casing, accents and special tokens.</summary>
    public BertWordPieceOptions Options { get; }

    /// <inheritdoc/>
    public TokenVocabulary Vocabulary { get; }

    /// <summary>The tokens in id order.</summary>
    public IReadOnlyList<string> Tokens => _tokens;

    /// <summary>The vocabulary as a vocab.txt text (one token per line, '\n' line ends).</summary>
    public string VocabText { get; }

    /// <summary>The vocabulary's identity: SHA-256 (lower-case hex) of <see cref="VocabText"/> in UTF-8.</summary>
    public string VocabSha256 { get; }

    /// <summary>What a checkpoint records to rebuild this tokenizer: vocab.txt and tokenizer_config.json (without model_max_length).</summary>
    public IReadOnlyDictionary<string, string> Files => new Dictionary<string, string>
    {
        [VocabFileName] = VocabText,
        [ConfigFileName] = Options.ToTokenizerConfig().ToJsonString(),
    };

    /// <summary>Writes the Hugging Face tokenizer files (vocab.txt, tokenizer_config.json, special_tokens_map.json) into <paramref name="folder"/>.</summary>
    /// <param name="folder">The model folder (created if needed).</param>
    /// <param name="modelMaxLength">The model's context length, written as <c>model_max_length</c>.</param>
    /// <returns>The paths written.</returns>
    public IReadOnlyList<string> WriteHuggingFaceFiles(string folder, int? modelMaxLength)
    {
        ArgumentNullException.ThrowIfNull(folder);
        Directory.CreateDirectory(folder);
        var indented = new JsonSerializerOptions { WriteIndented = true };
        var specials = new JsonObject
        {
            ["unk_token"] = Options.UnknownToken,
            ["sep_token"] = Options.SepToken,
            ["pad_token"] = Options.PadToken,
            ["cls_token"] = Options.ClsToken,
            ["mask_token"] = Options.MaskToken,
        };
        var written = new List<string>();
        foreach ((string name, string text) in new[]
        {
            (VocabFileName, VocabText),
            (ConfigFileName, Options.ToTokenizerConfig(modelMaxLength).ToJsonString(indented) + "\n"),
            (SpecialTokensFileName, specials.ToJsonString(indented) + "\n"),
        })
        {
            string path = Path.Combine(folder, name);
            File.WriteAllText(path, text, new UTF8Encoding(false));
            written.Add(path);
        }

        return written;
    }

    /// <inheritdoc/>
    public int[] Encode(string text, int? maxTokens = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (maxTokens is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, "The token limit must be at least 1.");
        }

        int limit = maxTokens ?? int.MaxValue;
        var ids = new List<int>();
        foreach ((string segment, bool special) in SplitOnSpecialTokens(text))
        {
            if (special)
            {
                ids.Add(_specialIds[segment]);
            }
            else
            {
                string lowered = Options.LowerCase ? BertBasicTokenizer.LowerEachCharacter(segment) : segment;
                foreach (string word in BasicTokenize(lowered))
                {
                    AddWordPieces(word, ids);
                    if (ids.Count >= limit)
                    {
                        break;
                    }
                }
            }

            if (ids.Count >= limit)
            {
                break; // Hugging Face's truncation cuts inside a word, so the last word's pieces are cut below
            }
        }

        return ids.Count > limit ? ids.GetRange(0, limit).ToArray() : ids.ToArray();
    }

    /// <summary>
    /// <c>transformers</c>' <c>BasicTokenizer</c> (tokenization_bert.py) with these options: drops U+0000, U+FFFD and
    /// characters of the Unicode categories C* (control, format, surrogate, private use, unassigned) except tab, line
    /// feed and carriage return; turns those three and every space separator (Zs) into a space; puts spaces around CJK
    /// ideographs (<see cref="BertWordPieceOptions.TokenizeChineseChars"/>); composes (NFC); splits on whitespace;
    /// lower-cases each word (<see cref="BertWordPieceOptions.LowerCase"/>) and removes its accents, i.e. the
    /// non-spacing marks (Mn) of its NFD form (<see cref="BertWordPieceOptions.RemovesAccents"/>); and makes every
    /// punctuation character (categories P*, or ASCII 33–47, 58–64, 91–96, 123–126) a word of its own.
    /// The text is not split on special tokens here (<see cref="Encode"/> does that first).
    /// </summary>
    /// <param name="text">Any text; lone surrogates are dropped like other C* characters.</param>
    /// <returns>The words, in order, none empty.</returns>
    public IReadOnlyList<string> BasicTokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return BertBasicTokenizer.Tokenize(text, Options.LowerCase, Options.RemovesAccents, Options.TokenizeChineseChars);
    }

    /// <summary>Splits <paramref name="text"/> at each occurrence of one of the five special tokens, left to right; each special token is a segment of its own.</summary>
    private IEnumerable<(string Segment, bool Special)> SplitOnSpecialTokens(string text)
    {
        int start = 0;
        for (int i = 0; i < text.Length; i++)
        {
            string? match = null;
            foreach (string special in _specialIds.Keys)
            {
                if (special.Length > 0 && string.CompareOrdinal(text, i, special, 0, special.Length) == 0 && (match is null || special.Length > match.Length))
                {
                    match = special;
                }
            }

            if (match is not null)
            {
                yield return (text[start..i], false);
                yield return (match, true);
                i += match.Length - 1;
                start = i + 1;
            }
        }

        yield return (text[start..], false);
    }

    /// <summary>Appends the WordPiece ids of one basic-tokenized word: <c>[UNK]</c> alone when it has more than <see cref="MaxInputCharsPerWord"/> code points or cannot be split.</summary>
    private void AddWordPieces(string word, List<int> ids)
    {
        int codePoints = 0;
        foreach (Rune _ in word.EnumerateRunes())
        {
            codePoints++;
        }

        if (codePoints > MaxInputCharsPerWord)
        {
            ids.Add(_unknownId);
            return;
        }

        ids.AddRange(_tokenizer.EncodeToIds(word, addSpecialTokens: false, considerPreTokenization: false, considerNormalization: false));
    }

    /// <inheritdoc/>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        int[] array = ids as int[] ?? ids.ToArray();
        foreach (int id in array)
        {
            if (id < 0 || id >= _tokens.Length)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), id, string.Create(CultureInfo.InvariantCulture, $"Token id {id} is outside the WordPiece vocabulary [0, {_tokens.Length})."));
            }
        }

        return _tokenizer.Decode(array, skipSpecialTokens: false) ?? string.Empty;
    }
}
