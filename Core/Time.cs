using System.Globalization;
using System.Text.RegularExpressions;

namespace ComposerSharp.Core;

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
    // Composer's grammar (composer/core/time.py, Time.from_timestring): a number as Python's float() reads it
    // (optional sign, decimal point, exponent, single underscores between digits, spaces around it) followed by a
    // unit suffix, case ignored; or, tried first, a timedelta made of hours, minutes and seconds such as 1h20m40s.
    private static readonly Regex UnitPattern = new(
        @"^(?<num>[+-]?(?:[0-9](?:_?[0-9])*(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:e[+-]?[0-9](?:_?[0-9])*)?)\s*(?<unit>[a-z]+)$",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant | RegexOptions.Compiled);

    // Composer reads timedeltas with strptime("%Hh%Mm%Ss"), which also caps hours at 23 and minutes at 59; those
    // caps are an artefact of strptime, so here any whole number of hours, minutes and seconds is accepted.
    private static readonly Regex TimedeltaPattern = new(
        @"^(?:(?<h>[0-9]+)h)?(?:(?<m>[0-9]+)m)?(?:(?<s>[0-9]+)s)?$",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant | RegexOptions.Compiled);

    // Largest magnitude a count unit can hold exactly in a double and as a long (2^53).
    private const double MaxCount = 9007199254740992d;

    /// <summary>
    /// Creates a time. <paramref name="value"/> must be a whole number unless the unit is
    /// <see cref="TimeUnit.Duration"/>. Negative values are allowed, as in Composer, so that differences such as
    /// <c>elapsed - warmup</c> can be formed; a max duration is validated where it is set.
    /// </summary>
    /// <exception cref="ArgumentException">The value is not finite, is fractional in an integer unit, or is beyond ±2^53 in an integer unit.</exception>
    public Time(double value, TimeUnit unit)
    {
        if (!double.IsFinite(value))
        {
            throw new ArgumentException($"Time value {value.ToString(CultureInfo.InvariantCulture)} is not a finite number.", nameof(value));
        }

        if (unit != TimeUnit.Duration && Math.Abs(value) > MaxCount)
        {
            throw new ArgumentException(
                $"Time value {value.ToString(CultureInfo.InvariantCulture)}{unit.Suffix()} is too large; '{unit.Suffix()}' counts must lie within ±2^53.",
                nameof(value));
        }

        value += 0.0; // normalises -0 to 0 so that "-0ba" and "0ba" are equal and format alike

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
    /// timedelta of hours, minutes and seconds <c>"1h20m40s"</c> (= 4840 sec). Case is ignored; the number is read
    /// like Python's <c>float()</c> (sign, decimal point, exponent, single underscores between digits); units other
    /// than <c>dur</c> need a whole value (<c>"1.5ep"</c> is refused, <c>"1.5e3sp"</c> = 1500 sp is not).
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
        string s = (text ?? string.Empty).Trim();
        if (s.Length == 0)
        {
            error = $"'{shown}' is not a time: {Allowed}.";
            return false;
        }

        // Composer tries the timedelta form first.
        Match td = TimedeltaPattern.Match(s);
        if (td.Success && (td.Groups["h"].Success || td.Groups["m"].Success || td.Groups["s"].Success))
        {
            double seconds = 0;
            if (td.Groups["h"].Success) seconds += 3600d * double.Parse(td.Groups["h"].Value, CultureInfo.InvariantCulture);
            if (td.Groups["m"].Success) seconds += 60d * double.Parse(td.Groups["m"].Value, CultureInfo.InvariantCulture);
            if (td.Groups["s"].Success) seconds += double.Parse(td.Groups["s"].Value, CultureInfo.InvariantCulture);
            if (seconds > MaxCount)
            {
                error = $"'{shown}' is not a time: {seconds.ToString(CultureInfo.InvariantCulture)} seconds is out of range.";
                return false;
            }

            time = new Time(seconds, TimeUnit.Second);
            error = null;
            return true;
        }

        Match m = UnitPattern.Match(s);
        if (!m.Success)
        {
            error = $"'{shown}' is not a time: {Allowed}.";
            return false;
        }

        string suffix = m.Groups["unit"].Value;
        int index = Array.FindIndex(
            TimeUnitExtensions.AllSuffixes.ToArray(),
            u => string.Equals(u, suffix, StringComparison.OrdinalIgnoreCase));
        if (index < 0)
        {
            error = $"'{shown}' is not a time: '{suffix}' is not a time unit; {Allowed}.";
            return false;
        }

        var unit = (TimeUnit)index;
        string number = m.Groups["num"].Value;
        double value = double.Parse(number.Replace("_", string.Empty, StringComparison.Ordinal), NumberStyles.Float, CultureInfo.InvariantCulture);
        if (!double.IsFinite(value) || (unit != TimeUnit.Duration && Math.Abs(value) > MaxCount))
        {
            error = $"'{shown}' is not a time: the number {number} is out of range.";
            return false;
        }

        if (unit != TimeUnit.Duration && value != Math.Floor(value))
        {
            error = $"'{shown}' is not a time: '{unit.Suffix()}' counts whole units, so {number} is not allowed; only 'dur' takes fractions.";
            return false;
        }

        time = new Time(value, unit);
        error = null;
        return true;
    }

    /// <summary>Parses a time string, so that <c>maxDuration: "1ep"</c> reads as in Composer (see <see cref="Parse"/>).</summary>
    /// <exception cref="FormatException">The string is not a time.</exception>
    public static implicit operator Time(string text) => Parse(text);

    /// <summary>A whole number of epochs, as Composer reads an integer max duration.</summary>
    /// <exception cref="ArgumentException"><paramref name="epochs"/> is negative.</exception>
    public static implicit operator Time(int epochs) => FromEpoch(epochs);

    /// <summary>Formats as Composer does: <c>"10ba"</c>, <c>"0.5dur"</c>; <see cref="Parse"/> reads it back.</summary>
    public override string ToString() =>
        (Unit == TimeUnit.Duration ? Value.ToString("R", CultureInfo.InvariantCulture) : ((long)Value).ToString(CultureInfo.InvariantCulture)) + Unit.Suffix();

    private static void CheckUnits(Time a, Time b, string op)
    {
        if (a.Unit != b.Unit)
        {
            throw new InvalidOperationException($"Cannot {op} {a} and {b}: the units differ ({a.Unit.Suffix()} vs {b.Unit.Suffix()}).");
        }
    }

    /// <summary>
    /// Value equality: same unit and same value. Unlike <c>==</c>, never throws (times of different units are simply
    /// not equal), so times can be dictionary keys and set members.
    /// </summary>
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

    /// <summary>
    /// Equality of two times of the same unit. As in Composer, comparing times of different units is an error
    /// rather than <c>false</c>, so that <c>batches == Time.Parse("5ep")</c> cannot silently be false;
    /// <see cref="Equals(Time)"/> is the non-throwing form.
    /// </summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static bool operator ==(Time a, Time b)
    {
        CheckUnits(a, b, "compare");
        return a.Value == b.Value;
    }

    /// <summary>Inequality of two times of the same unit (see <see cref="op_Equality"/>).</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static bool operator !=(Time a, Time b) => !(a == b);

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

    /// <summary>Difference (same unit only); may be negative, as in Composer.</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    public static Time operator -(Time a, Time b)
    {
        CheckUnits(a, b, "subtract");
        return new Time(a.Value - b.Value, a.Unit);
    }

    /// <summary>Negation, keeping the unit.</summary>
    public static Time operator -(Time a) => new(-a.Value, a.Unit);

    /// <summary>Identity.</summary>
    public static Time operator +(Time a) => a;

    /// <summary>Remainder of two times of the same unit, keeping the unit: <c>7ba % 3ba = 1ba</c>.</summary>
    /// <exception cref="InvalidOperationException">The units differ.</exception>
    /// <exception cref="DivideByZeroException"><paramref name="b"/> is zero.</exception>
    public static Time operator %(Time a, Time b)
    {
        CheckUnits(a, b, "take the remainder of");
        if (b.Value == 0)
        {
            throw new DivideByZeroException($"Cannot take {a} modulo {b}.");
        }

        return new Time(a.Value % b.Value, a.Unit);
    }

    /// <summary>Scales by a whole number, keeping the unit.</summary>
    public static Time operator *(Time a, long k) => new(a.Value * k, a.Unit);

    /// <summary>Scales by a whole number, keeping the unit.</summary>
    public static Time operator *(long k, Time a) => a * k;

    /// <summary>
    /// Scales by <paramref name="factor"/>, keeping the unit; in a count unit the result is truncated toward zero,
    /// as Composer does (<c>5ep * 0.5 = 2ep</c>).
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="factor"/> is not finite.</exception>
    public static Time operator *(Time a, double factor) => Scaled(a, a.Value * factor);

    /// <summary>Scales by <paramref name="factor"/> (see <see cref="op_Multiply(Time, double)"/>).</summary>
    /// <exception cref="ArgumentException"><paramref name="factor"/> is not finite.</exception>
    public static Time operator *(double factor, Time a) => a * factor;

    /// <summary>
    /// Divides by a number, keeping the unit; in a count unit the result is truncated toward zero, as Composer does
    /// (<c>4ep / 3 = 1ep</c>).
    /// </summary>
    /// <exception cref="DivideByZeroException"><paramref name="divisor"/> is zero.</exception>
    public static Time operator /(Time a, double divisor)
    {
        if (divisor == 0)
        {
            throw new DivideByZeroException($"Cannot divide {a} by zero.");
        }

        return Scaled(a, a.Value / divisor);
    }

    /// <summary>Divides by a whole number (see <see cref="op_Division(Time, double)"/>); present so that <c>t / 2</c> is not read as <c>t / 2ep</c>.</summary>
    /// <exception cref="DivideByZeroException"><paramref name="divisor"/> is zero.</exception>
    public static Time operator /(Time a, int divisor) => a / (double)divisor;

    /// <summary>
    /// Scales this time by a fraction of the run, as Composer's <c>Time * Time</c> with one
    /// <c>dur</c> operand: <c>Time.Parse("10ep").Times(Time.Parse("0.5dur"))</c> = 5ep. The result has the unit of
    /// the non-<c>dur</c> operand (truncated toward zero in a count unit), or <c>dur</c> when both are <c>dur</c>.
    /// </summary>
    /// <exception cref="InvalidOperationException">Neither operand is in <c>dur</c>.</exception>
    public Time Times(Time fraction)
    {
        if (Unit != TimeUnit.Duration && fraction.Unit != TimeUnit.Duration)
        {
            throw new InvalidOperationException($"Cannot multiply {this} by {fraction}: one of them must be in 'dur'.");
        }

        TimeUnit unit = Unit == TimeUnit.Duration ? fraction.Unit : Unit;
        return Scaled(new Time(0, unit), Value * fraction.Value);
    }

    private static Time Scaled(Time like, double value) =>
        new(like.Unit == TimeUnit.Duration ? value : Math.Truncate(value), like.Unit);

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
