using System.Globalization;
using System.Text.RegularExpressions;

namespace ComposerSharp.Events;

/// <summary>
/// The units of training time, as in Composer's <c>composer.core.TimeUnit</c> (composer/core/time.py).
/// The string after each member is its suffix in a time string such as <c>"100ba"</c>.
/// </summary>
public enum TimeUnit
{
    /// <summary><c>iter</c>: iterations (groups of epochs).</summary>
    Iteration,
    /// <summary><c>ep</c>: epochs (passes over the training dataloader).</summary>
    Epoch,
    /// <summary><c>ba</c>: batches, i.e. optimizer steps.</summary>
    Batch,
    /// <summary><c>sp</c>: samples.</summary>
    Sample,
    /// <summary><c>tok</c>: tokens.</summary>
    Token,
    /// <summary><c>dur</c>: a fraction of the run's max duration (0.5 = half way); the only non-integer unit.</summary>
    Duration,
    /// <summary><c>sec</c>: wall-clock seconds.</summary>
    Second,
}

/// <summary>Suffixes of <see cref="TimeUnit"/> values.</summary>
public static class TimeUnitExtensions
{
    private static readonly string[] Suffixes = { "iter", "ep", "ba", "sp", "tok", "dur", "sec" };

    /// <summary>The unit's suffix in a time string: <c>iter ep ba sp tok dur sec</c>.</summary>
    public static string Suffix(this TimeUnit unit) => Suffixes[(int)unit];

    /// <summary>Parses a suffix (<c>ep</c>, <c>BA</c>, ...), case-insensitively.</summary>
    /// <exception cref="FormatException">The suffix is not one of <c>iter ep ba sp tok dur sec</c>.</exception>
    public static TimeUnit ParseSuffix(string suffix)
    {
        int i = Array.FindIndex(Suffixes, s => string.Equals(s, suffix, StringComparison.OrdinalIgnoreCase));
        if (i < 0)
        {
            throw new FormatException($"'{suffix}' is not a time unit; expected one of: {string.Join(", ", Suffixes)}.");
        }

        return (TimeUnit)i;
    }

    /// <summary>All suffixes, in <see cref="TimeUnit"/> order.</summary>
    public static IReadOnlyList<string> AllSuffixes => Suffixes;
}

/// <summary>
/// An amount of training time in one <see cref="TimeUnit"/>, like Composer's <c>composer.core.Time</c>:
/// <c>Time.Parse("1ep")</c>, <c>new Time(100, TimeUnit.Batch)</c>. Values are integers in every unit except
/// <see cref="TimeUnit.Duration"/>. Comparison and arithmetic are defined within one unit; mixing units throws
/// <see cref="InvalidOperationException"/>. Dividing two times of one unit gives a <see cref="TimeUnit.Duration"/>.
/// </summary>
public readonly struct Time : IEquatable<Time>, IComparable<Time>
{
    // Composer's grammar: a number (integer, decimal or with an exponent) followed by a unit suffix,
    // underscores allowed as digit separators and case ignored; or a timedelta such as 1h20m40s.
    private static readonly Regex UnitPattern = new(
        @"^(?<num>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)(?<unit>[a-z]+)$",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant | RegexOptions.Compiled);

    private static readonly Regex TimedeltaPattern = new(
        @"^(?:(?<d>[0-9]+)d)?(?:(?<h>[0-9]+)h)?(?:(?<m>[0-9]+)m)?(?:(?<s>[0-9]+)s)?$",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant | RegexOptions.Compiled);

    /// <summary>Creates a time. <paramref name="value"/> must be a whole, non-negative number unless the unit is <see cref="TimeUnit.Duration"/>.</summary>
    /// <exception cref="ArgumentException">The value is negative, not finite, or fractional in an integer unit.</exception>
    public Time(double value, TimeUnit unit)
    {
        if (!double.IsFinite(value) || value < 0)
        {
            throw new ArgumentException($"Time value {value.ToString(CultureInfo.InvariantCulture)} is not a finite, non-negative number.", nameof(value));
        }

        if (unit != TimeUnit.Duration && value != Math.Floor(value))
        {
            throw new ArgumentException(
                $"Time value {value.ToString(CultureInfo.InvariantCulture)}{unit.Suffix()} is fractional; only 'dur' takes fractions, '{unit.Suffix()}' needs a whole number.",
                nameof(value));
        }

        Value = value;
        Unit = unit;
    }

    /// <summary>The amount, in <see cref="Unit"/>s; a whole number unless the unit is <see cref="TimeUnit.Duration"/>.</summary>
    public double Value { get; }

    /// <summary>The unit.</summary>
    public TimeUnit Unit { get; }

    /// <summary>The amount as an integer count.</summary>
    /// <exception cref="InvalidOperationException">The unit is <see cref="TimeUnit.Duration"/>.</exception>
    public long Count => Unit == TimeUnit.Duration
        ? throw new InvalidOperationException($"{this} is a fraction of the run, not a count.")
        : (long)Value;

    /// <summary>Creates <paramref name="n"/> epochs.</summary>
    public static Time FromEpoch(long n) => new(n, TimeUnit.Epoch);

    /// <summary>Creates <paramref name="n"/> batches.</summary>
    public static Time FromBatch(long n) => new(n, TimeUnit.Batch);

    /// <summary>Creates <paramref name="n"/> samples.</summary>
    public static Time FromSample(long n) => new(n, TimeUnit.Sample);

    /// <summary>Creates <paramref name="n"/> tokens.</summary>
    public static Time FromToken(long n) => new(n, TimeUnit.Token);

    /// <summary>Creates <paramref name="n"/> iterations.</summary>
    public static Time FromIteration(long n) => new(n, TimeUnit.Iteration);

    /// <summary>Creates a fraction <paramref name="fraction"/> of the max duration.</summary>
    public static Time FromDuration(double fraction) => new(fraction, TimeUnit.Duration);

    /// <summary>Creates <paramref name="n"/> wall-clock seconds.</summary>
    public static Time FromSecond(long n) => new(n, TimeUnit.Second);

    /// <summary>
    /// Parses a Composer time string: a number and a unit suffix (<c>"1ep"</c>, <c>"100ba"</c>, <c>"2048sp"</c>,
    /// <c>"3e4tok"</c> = 30000 tokens, <c>"4_000tok"</c>, <c>"2EP"</c>, <c>"0.5dur"</c>, <c>"30sec"</c>), or a
    /// timedelta <c>"1h20m40s"</c> (= 4840 sec). Case is ignored and underscores are digit separators.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="text"/> is null.</exception>
    /// <exception cref="FormatException">The string is not a time; the message quotes it and lists what is allowed.</exception>
    public static Time Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (TryParse(text, out Time t, out string? error))
        {
            return t;
        }

        throw new FormatException(error);
    }

    /// <summary>Non-throwing form of <see cref="Parse"/>.</summary>
    public static bool TryParse(string? text, out Time time) => TryParse(text, out time, out _);

    private static bool TryParse(string? text, out Time time, out string? error)
    {
        time = default;
        const string Allowed = "expected a number followed by a unit (iter, ep, ba, sp, tok, dur, sec), e.g. \"1ep\", \"100ba\", \"2048sp\", \"1e6tok\", \"0.5dur\", or a timedelta such as \"1h20m40s\"";
        string shown = text ?? "<null>";
        string s = (text ?? string.Empty).Trim().Replace("_", string.Empty, StringComparison.Ordinal);
        if (s.Length == 0)
        {
            error = $"'{shown}' is not a time: {Allowed}.";
            return false;
        }

        Match m = UnitPattern.Match(s);
        if (m.Success)
        {
            string suffix = m.Groups["unit"].Value;
            int index = Array.FindIndex(
                TimeUnitExtensions.AllSuffixes.ToArray(),
                u => string.Equals(u, suffix, StringComparison.OrdinalIgnoreCase));
            if (index >= 0)
            {
                var unit = (TimeUnit)index;
                double value = double.Parse(m.Groups["num"].Value, NumberStyles.Float, CultureInfo.InvariantCulture);
                if (!double.IsFinite(value))
                {
                    error = $"'{shown}' is not a time: the number is out of range.";
                    return false;
                }

                if (unit != TimeUnit.Duration && value != Math.Floor(value))
                {
                    error = $"'{shown}' is not a time: '{unit.Suffix()}' counts whole units, so {m.Groups["num"].Value} is not allowed; only 'dur' takes fractions.";
                    return false;
                }

                time = new Time(value, unit);
                error = null;
                return true;
            }
        }

        Match td = TimedeltaPattern.Match(s);
        if (td.Success && (td.Groups["d"].Success || td.Groups["h"].Success || td.Groups["m"].Success || td.Groups["s"].Success))
        {
            long seconds = 0;
            if (td.Groups["d"].Success) seconds += 86400L * long.Parse(td.Groups["d"].Value, CultureInfo.InvariantCulture);
            if (td.Groups["h"].Success) seconds += 3600L * long.Parse(td.Groups["h"].Value, CultureInfo.InvariantCulture);
            if (td.Groups["m"].Success) seconds += 60L * long.Parse(td.Groups["m"].Value, CultureInfo.InvariantCulture);
            if (td.Groups["s"].Success) seconds += long.Parse(td.Groups["s"].Value, CultureInfo.InvariantCulture);
            time = new Time(seconds, TimeUnit.Second);
            error = null;
            return true;
        }

        error = $"'{shown}' is not a time: {Allowed}.";
        return false;
    }

    /// <summary>Parses a time string, so that <c>maxDuration: "1ep"</c> reads as in Composer (see <see cref="Parse"/>).</summary>
    /// <exception cref="FormatException">The string is not a time.</exception>
    public static implicit operator Time(string text) => Parse(text);

    /// <summary>A whole number of epochs, as Composer reads an integer max duration.</summary>
    /// <exception cref="ArgumentException"><paramref name="epochs"/> is negative.</exception>
    public static implicit operator Time(int epochs) => FromEpoch(epochs);

    /// <summary>Formats as Composer does: <c>"10ba"</c>, <c>"0.5dur"</c>.</summary>
    public override string ToString() => Value.ToString("R", CultureInfo.InvariantCulture) + Unit.Suffix();

    private static void CheckUnits(Time a, Time b, string op)
    {
        if (a.Unit != b.Unit)
        {
            throw new InvalidOperationException($"Cannot {op} {a} and {b}: the units differ ({a.Unit.Suffix()} vs {b.Unit.Suffix()}).");
        }
    }

    /// <inheritdoc/>
    public bool Equals(Time other) => Unit == other.Unit && Value == other.Value;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is Time t && Equals(t);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Value, Unit);

    /// <summary>Orders two times of the same unit.</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public int CompareTo(Time other)
    {
        CheckUnits(this, other, "compare");
        return Value.CompareTo(other.Value);
    }

    /// <summary>Equality: same unit and value.</summary>
    public static bool operator ==(Time a, Time b) => a.Equals(b);

    /// <summary>Inequality.</summary>
    public static bool operator !=(Time a, Time b) => !a.Equals(b);

    /// <summary>Less than (same unit only).</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static bool operator <(Time a, Time b) => a.CompareTo(b) < 0;

    /// <summary>Greater than (same unit only).</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static bool operator >(Time a, Time b) => a.CompareTo(b) > 0;

    /// <summary>Less or equal (same unit only).</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static bool operator <=(Time a, Time b) => a.CompareTo(b) <= 0;

    /// <summary>Greater or equal (same unit only).</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static bool operator >=(Time a, Time b) => a.CompareTo(b) >= 0;

    /// <summary>Sum (same unit only).</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static Time operator +(Time a, Time b)
    {
        CheckUnits(a, b, "add");
        return new Time(a.Value + b.Value, a.Unit);
    }

    /// <summary>Difference (same unit only).</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    /// <exception cref="ArgumentException">The result would be negative.</exception>
    public static Time operator -(Time a, Time b)
    {
        CheckUnits(a, b, "subtract");
        return new Time(a.Value - b.Value, a.Unit);
    }

    /// <summary>Scales by a whole number.</summary>
    public static Time operator *(Time a, long k) => new(a.Value * k, a.Unit);

    /// <summary>Ratio of two times of the same unit, as a <see cref="TimeUnit.Duration"/>: <c>5ba / 10ba = 0.5dur</c>.</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    /// <exception cref="DivideByZeroException"><paramref name="b"/> is zero.</exception>
    public static Time operator /(Time a, Time b)
    {
        CheckUnits(a, b, "divide");
        if (b.Value == 0)
        {
            throw new DivideByZeroException($"Cannot divide {a} by {b}.");
        }

        return new Time(a.Value / b.Value, TimeUnit.Duration);
    }
}
