namespace ComposerSharp.Benchmarks.Harness;

/// <summary>One variant of a side-by-side comparison: a name and an action that runs once and returns its own time in milliseconds.</summary>
/// <param name="Name">Label in the table and the JSON.</param>
/// <param name="Run">Runs the work once and returns the time of the timed part, in milliseconds per operation.</param>
internal sealed record Variant(string Name, Func<double> Run);

/// <summary>Summary of repeated timings (milliseconds): median, quartiles, minimum and the number of samples.</summary>
internal sealed record Stats(double Median, double P25, double P75, double Min, int N)
{
    /// <summary>Summarises <paramref name="values"/> (at least one).</summary>
    public static Stats Of(IReadOnlyCollection<double> values)
    {
        if (values.Count == 0)
        {
            throw new ArgumentException("No samples to summarise.", nameof(values));
        }

        double[] sorted = values.OrderBy(v => v).ToArray();
        return new Stats(Quantile(sorted, 0.5), Quantile(sorted, 0.25), Quantile(sorted, 0.75), sorted[0], sorted.Length);
    }

    /// <summary>Relative spread (P75 − P25) / median, a noise indicator.</summary>
    public double RelativeIqr => Median > 0 ? (P75 - P25) / Median : double.NaN;

    private static double Quantile(double[] sorted, double q)
    {
        double pos = q * (sorted.Length - 1);
        int lo = (int)Math.Floor(pos);
        int hi = (int)Math.Ceiling(pos);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    }
}

/// <summary>
/// Runs variants side by side: every variant is warmed up, then each round runs every variant once, with the
/// order rotated from round to round, so that slow drifts of machine load hit all variants alike. Ratios are
/// taken per round (paired) and summarised by their median.
/// </summary>
internal sealed class Interleaved
{
    private readonly Dictionary<string, List<double>> _samples;

    private Interleaved(IReadOnlyList<Variant> variants)
    {
        Variants = variants;
        _samples = variants.ToDictionary(v => v.Name, _ => new List<double>());
    }

    /// <summary>The variants, in the given order.</summary>
    public IReadOnlyList<Variant> Variants { get; }

    /// <summary>Warms up every variant <paramref name="warmup"/> times, then runs <paramref name="rounds"/> rotated rounds.</summary>
    public static Interleaved Run(IReadOnlyList<Variant> variants, int warmup, int rounds, Action<int>? afterRound = null)
    {
        var result = new Interleaved(variants);
        foreach (Variant v in variants)
        {
            for (int i = 0; i < warmup; i++)
            {
                v.Run();
            }
        }

        GC.Collect();
        GC.WaitForPendingFinalizers();
        for (int r = 0; r < rounds; r++)
        {
            for (int k = 0; k < variants.Count; k++)
            {
                Variant v = variants[(r + k) % variants.Count];
                result._samples[v.Name].Add(v.Run());
            }

            afterRound?.Invoke(r);
        }

        return result;
    }

    /// <summary>The raw samples of <paramref name="name"/> (ms), in round order.</summary>
    public IReadOnlyList<double> Samples(string name) => _samples[name];

    /// <summary>Summary of <paramref name="name"/>'s samples.</summary>
    public Stats StatsOf(string name) => Stats.Of(_samples[name]);

    /// <summary>Per-round ratios <paramref name="numerator"/> / <paramref name="denominator"/>, summarised (median and quartiles).</summary>
    public Stats Ratio(string numerator, string denominator)
    {
        List<double> a = _samples[numerator], b = _samples[denominator];
        return Stats.Of(a.Zip(b, (x, y) => x / y).ToArray());
    }
}
