using System.Text.RegularExpressions;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>
/// A set of glob patterns over state-dict keys (<c>*</c> matches any run of characters, dots included; <c>?</c> one
/// character; everything else literally), as Composer's <c>load_ignore_keys</c>. Matching is case-sensitive and whole-key.
/// </summary>
public sealed class KeyGlob
{
    private readonly Regex[] _patterns;

    /// <summary>Compiles <paramref name="patterns"/>; null or empty matches nothing.</summary>
    /// <exception cref="ArgumentException">A pattern is empty or blank.</exception>
    public KeyGlob(IEnumerable<string>? patterns)
    {
        _patterns = (patterns ?? Array.Empty<string>()).Select(p =>
        {
            if (string.IsNullOrWhiteSpace(p))
            {
                throw new ArgumentException("A load_ignore_keys pattern is empty; expected a glob such as 'classifier.*'.", nameof(patterns));
            }

            string regex = "^" + Regex.Escape(p).Replace(@"\*", ".*", StringComparison.Ordinal).Replace(@"\?", ".", StringComparison.Ordinal) + "$";
            return new Regex(regex, RegexOptions.CultureInvariant);
        }).ToArray();
    }

    /// <summary>Whether <paramref name="key"/> matches any pattern.</summary>
    public bool Matches(string key) => _patterns.Any(p => p.IsMatch(key));
}
