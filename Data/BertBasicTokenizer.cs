using System.Globalization;
using System.Text;

namespace ComposerSharp.Data;

/// <summary>
/// The text clean-up and word splitting of <c>transformers</c>' <c>BasicTokenizer</c> (tokenization_bert.py), which
/// BERT's WordPiece runs on; see <see cref="BertWordPieceTokenizer.BasicTokenize"/> for the steps. Characters are
/// Unicode code points (a surrogate pair is one character), as in Python.
/// </summary>
internal static class BertBasicTokenizer
{
    /// <summary>
    /// Lower-cases each code point on its own, with Unicode's full mapping (U+0130 'İ' becomes "i\u0307") and no
    /// context (a final capital sigma becomes 'σ'), as <c>PreTrainedTokenizer.tokenize</c> does before splitting.
    /// </summary>
    internal static string LowerEachCharacter(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (Rune r in Runes(text))
        {
            if (r.Value == 0x130)
            {
                sb.Append("i\u0307");
            }
            else
            {
                sb.Append(Rune.ToLowerInvariant(r).ToString());
            }
        }

        return sb.ToString();
    }

    /// <summary>The words of <paramref name="text"/>; see <see cref="BertWordPieceTokenizer.BasicTokenize"/>.</summary>
    internal static List<string> Tokenize(string text, bool lowerCase, bool stripAccents, bool tokenizeChineseChars)
    {
        var cleaned = new StringBuilder(text.Length + 8);
        foreach (Rune r in Runes(text))
        {
            UnicodeCategory category = Rune.GetUnicodeCategory(r);
            if (r.Value is '\t' or '\n' or '\r' || category == UnicodeCategory.SpaceSeparator)
            {
                cleaned.Append(' ');
            }
            else if (r.Value is 0 or 0xFFFD || IsOther(category))
            {
                continue;
            }
            else if (tokenizeChineseChars && IsCjkIdeograph(r.Value))
            {
                cleaned.Append(' ').Append(r.ToString()).Append(' ');
            }
            else
            {
                cleaned.Append(r.ToString());
            }
        }

        string composed = cleaned.ToString().Normalize(NormalizationForm.FormC);
        var words = new List<string>();
        foreach (string raw in composed.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries))
        {
            string word = raw;
            if (lowerCase)
            {
                word = LowerEachCharacter(word);
            }

            if (stripAccents)
            {
                word = StripAccents(word);
            }

            SplitOnPunctuation(word, words);
        }

        return words;
    }

    /// <summary>The code points of <paramref name="text"/>; a lone surrogate comes out as U+FFFD, which the clean-up drops as Python drops a surrogate (category Cs).</summary>
    private static IEnumerable<Rune> Runes(string text)
    {
        for (int i = 0; i < text.Length;)
        {
            Rune.DecodeFromUtf16(text.AsSpan(i), out Rune r, out int used);
            yield return r;
            i += used;
        }
    }

    private static bool IsOther(UnicodeCategory c) => c is UnicodeCategory.Control or UnicodeCategory.Format
        or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned;

    /// <summary>The CJK Unified Ideographs blocks and extensions A–E, and the compatibility ideographs (tokenization_bert.py's <c>_is_chinese_char</c>).</summary>
    private static bool IsCjkIdeograph(int cp) =>
        cp is (>= 0x4E00 and <= 0x9FFF) or (>= 0x3400 and <= 0x4DBF) or (>= 0x20000 and <= 0x2A6DF)
            or (>= 0x2A700 and <= 0x2B73F) or (>= 0x2B740 and <= 0x2B81F) or (>= 0x2B820 and <= 0x2CEAF)
            or (>= 0xF900 and <= 0xFAFF) or (>= 0x2F800 and <= 0x2FA1F);

    /// <summary>Unicode punctuation (P*) or an ASCII symbol that BERT treats as punctuation ($, +, &lt;, =, &gt;, ^, `, |, ~).</summary>
    private static bool IsPunctuation(Rune r) =>
        r.Value is (>= 33 and <= 47) or (>= 58 and <= 64) or (>= 91 and <= 96) or (>= 123 and <= 126)
        || Rune.GetUnicodeCategory(r) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;

    private static string StripAccents(string word)
    {
        string decomposed = word.Normalize(NormalizationForm.FormD);
        var sb = new StringBuilder(decomposed.Length);
        foreach (Rune r in Runes(decomposed))
        {
            if (Rune.GetUnicodeCategory(r) != UnicodeCategory.NonSpacingMark)
            {
                sb.Append(r.ToString());
            }
        }

        return sb.ToString();
    }

    private static void SplitOnPunctuation(string word, List<string> words)
    {
        int start = 0;
        for (int i = 0; i < word.Length;)
        {
            Rune.DecodeFromUtf16(word.AsSpan(i), out Rune r, out int used);
            if (IsPunctuation(r))
            {
                if (i > start)
                {
                    words.Add(word[start..i]);
                }

                words.Add(word.Substring(i, used));
                start = i + used;
            }

            i += used;
        }

        if (start < word.Length)
        {
            words.Add(word[start..]);
        }
    }
}
