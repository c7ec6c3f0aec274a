using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;

namespace ComposerSharp.Tests.Events;

/// <summary>Composer's time strings and the arithmetic of <see cref="Time"/> (composer/core/time.py).</summary>
[TestFixture]
public class TimeTests
{
    [TestCase("1ep", 1d, TimeUnit.Epoch)]
    [TestCase("100ba", 100d, TimeUnit.Batch)]
    [TestCase("2048sp", 2048d, TimeUnit.Sample)]
    [TestCase("3e4tok", 30000d, TimeUnit.Token)]
    [TestCase("4_000tok", 4000d, TimeUnit.Token)]
    [TestCase("2EP", 2d, TimeUnit.Epoch)]
    [TestCase("0.5dur", 0.5d, TimeUnit.Duration)]
    [TestCase("1h20m40s", 4840d, TimeUnit.Second)]
    [TestCase("7iter", 7d, TimeUnit.Iteration)]
    [TestCase("30sec", 30d, TimeUnit.Second)]
    [TestCase("1.5e3sp", 1500d, TimeUnit.Sample)]
    [TestCase("20m", 1200d, TimeUnit.Second)]
    [TestCase(" 12 ba ", 12d, TimeUnit.Batch)]
    public void ParseReadsComposerTimeStrings(string text, double value, TimeUnit unit)
    {
        Time t = Time.Parse(text);
        Assert.That(t.Unit, Is.EqualTo(unit));
        Assert.That(t.Value, Is.EqualTo(value));
    }

    [TestCase("1.5ep", "only 'dur' takes fractions")]
    [TestCase("ep", "expected a number followed by a unit")]
    [TestCase("", "expected a number followed by a unit")]
    [TestCase("10", "expected a number followed by a unit")]
    [TestCase("5xyz", "'xyz' is not a time unit")]
    [TestCase("1epoch", "'epoch' is not a time unit")]
    [TestCase("4__000tok", "expected a number followed by a unit")]
    [TestCase("_4tok", "expected a number followed by a unit")]
    [TestCase("1d", "'d' is not a time unit")]
    public void ParseRejectsBadStringsQuotingThemAndSayingWhatIsAllowed(string text, string reason)
    {
        var ex = Assert.Throws<FormatException>(() => Time.Parse(text));
        Assert.That(ex!.Message, Does.StartWith($"'{text}' is not a time"));
        Assert.That(ex.Message, Does.Contain(reason));
        Assert.That(Time.TryParse(text, out _), Is.False);
    }

    [Test]
    public void ErrorsForMissingOrUnknownUnitsListTheUnits()
    {
        var ex = Assert.Throws<FormatException>(() => Time.Parse("10"));
        Assert.That(ex!.Message, Does.Contain("iter, ep, ba, sp, tok, dur, sec"));
        Assert.Throws<ArgumentNullException>(() => Time.Parse(null!));
    }

    [Test]
    public void ToStringRoundTripsThroughParse()
    {
        foreach (string s in new[] { "1ep", "100ba", "30000tok", "0.25dur", "4840sec", "3iter", "2048sp" })
        {
            Time t = Time.Parse(s);
            Assert.That(t.ToString(), Is.EqualTo(s));
            Assert.That(Time.Parse(t.ToString()), Is.EqualTo(t));
        }
    }

    [Test]
    public void ImplicitConversionsReadStringsAndIntegerEpochs()
    {
        Time fromString = "100ba";
        Time fromInt = 3;
        Assert.That(fromString, Is.EqualTo(Time.FromBatch(100)));
        Assert.That(fromInt, Is.EqualTo(Time.FromEpoch(3)));
        Assert.Throws<FormatException>(() => _ = (Time)"3 epochs");
    }

    [Test]
    public void ComparisonsWithinOneUnit()
    {
        Time a = Time.FromBatch(3), b = Time.FromBatch(5);
        Assert.That(a < b, Is.True);
        Assert.That(a <= b, Is.True);
        Assert.That(b > a, Is.True);
        Assert.That(b >= a, Is.True);
        Assert.That(a >= Time.FromBatch(3), Is.True);
        Assert.That(a, Is.EqualTo(Time.Parse("3ba")).Using<Time>((x, y) => x == y), "operator ==");
        Assert.That(a != b, Is.True, $"{a} != {b}");
        Assert.That(a.CompareTo(b), Is.LessThan(0));
        Assert.That(Time.Parse("0.25dur") < Time.Parse("0.5dur"), Is.True);
    }

    [Test]
    public void ArithmeticWithinOneUnitKeepsTheUnit()
    {
        Assert.That(Time.FromBatch(3) + Time.FromBatch(5), Is.EqualTo(Time.FromBatch(8)));
        Assert.That(Time.FromSample(9) - Time.FromSample(4), Is.EqualTo(Time.FromSample(5)));
        Assert.That(Time.FromToken(7) % Time.FromToken(3), Is.EqualTo(Time.FromToken(1)));
        Assert.That(Time.FromEpoch(3) * 4, Is.EqualTo(Time.FromEpoch(12)));
        Assert.That(2 * Time.FromEpoch(3), Is.EqualTo(Time.FromEpoch(6)));
        Assert.That((Time.FromDuration(0.5) * 3).Value, Is.EqualTo(1.5));
    }

    [Test]
    public void DifferencesMayBeNegativeAsInComposer()
    {
        Time d = Time.FromBatch(2) - Time.FromBatch(5);
        Assert.That(d.Value, Is.EqualTo(-3));
        Assert.That(d.Unit, Is.EqualTo(TimeUnit.Batch));
        Assert.That(-d, Is.EqualTo(Time.FromBatch(3)));
        Assert.That(Time.Parse("-0ba").ToString(), Is.EqualTo("0ba"));
    }

    [Test]
    public void ScalingACountTruncatesTowardZeroLikeComposer()
    {
        Assert.That(Time.FromEpoch(5) * 0.5, Is.EqualTo(Time.FromEpoch(2)));
        Assert.That(Time.FromEpoch(4) / 3, Is.EqualTo(Time.FromEpoch(1)));
        Assert.That(Time.FromEpoch(4) / 2, Is.EqualTo(Time.FromEpoch(2)));
        Assert.That(Time.FromDuration(1) / 4, Is.EqualTo(Time.FromDuration(0.25)));
        Assert.That(Time.Parse("10ep").Times(Time.Parse("0.35dur")), Is.EqualTo(Time.FromEpoch(3)));
        Assert.That(Time.Parse("0.5dur").Times(Time.Parse("100ba")), Is.EqualTo(Time.FromBatch(50)));
        Assert.Throws<InvalidOperationException>(() => Time.FromEpoch(2).Times(Time.FromBatch(3)));
        Assert.Throws<DivideByZeroException>(() => _ = Time.FromEpoch(2) / 0);
    }

    [Test]
    public void DividingTwoTimesOfOneUnitGivesDuration()
    {
        Time r = Time.FromBatch(5) / Time.FromBatch(20);
        Assert.That(r.Unit, Is.EqualTo(TimeUnit.Duration));
        Assert.That(r.Value, Is.EqualTo(0.25));
        Assert.That(Time.Parse("3e4tok") / Time.Parse("1e4tok"), Is.EqualTo(Time.FromDuration(3)));
        Assert.Throws<DivideByZeroException>(() => _ = Time.FromBatch(5) / Time.FromBatch(0));
    }

    [Test]
    public void MixingUnitsThrowsNamingBothTimes()
    {
        Time ep = Time.FromEpoch(1), ba = Time.FromBatch(1);
        var ex = Assert.Throws<InvalidOperationException>(() => _ = ep + ba);
        Assert.That(ex!.Message, Does.Contain("1ep").And.Contain("1ba"));
        Assert.Throws<InvalidOperationException>(() => _ = ep - ba);
        Assert.Throws<InvalidOperationException>(() => _ = ep / ba);
        Assert.Throws<InvalidOperationException>(() => _ = ep % ba);
        Assert.Throws<InvalidOperationException>(() => _ = ep < ba);
        Assert.Throws<InvalidOperationException>(() => _ = ep >= ba);
        Assert.Throws<InvalidOperationException>(() => _ = ep == ba);
        Assert.Throws<InvalidOperationException>(() => _ = ep != ba);
        Assert.Throws<InvalidOperationException>(() => ep.CompareTo(ba));
    }

    [Test]
    public void EqualsIsValueEqualityAndNeverThrows()
    {
        Assert.That(Time.FromEpoch(1), Is.Not.EqualTo(Time.FromBatch(1)));
        Assert.That(Time.FromEpoch(1), Is.EqualTo(Time.Parse("1ep")).Using<Time, object>((x, y) => x.Equals(y)), "Equals(object)");
        var set = new HashSet<Time> { Time.Parse("1ep"), Time.Parse("1ba"), Time.FromEpoch(1) };
        Assert.That(set, Has.Count.EqualTo(2));
    }

    [Test]
    public void CountUnitsRejectFractionsAndDurationHasNoCount()
    {
        var ex = Assert.Throws<ArgumentException>(() => new Time(1.5, TimeUnit.Batch));
        Assert.That(ex!.Message, Does.Contain("1.5ba"));
        Assert.Throws<ArgumentException>(() => new Time(double.NaN, TimeUnit.Duration));
        Assert.Throws<ArgumentException>(() => new Time(1e300, TimeUnit.Token));
        Assert.That(Time.FromToken(30000).Count, Is.EqualTo(30000L));
        Assert.Throws<InvalidOperationException>(() => _ = Time.FromDuration(0.5).Count);
    }

    [Test]
    public void UnitSuffixesParseCaseInsensitively()
    {
        Assert.That(TimeUnitExtensions.AllSuffixes, Is.EqualTo(new[] { "iter", "ep", "ba", "sp", "tok", "dur", "sec" }));
        Assert.That(TimeUnitExtensions.ParseSuffix("TOK"), Is.EqualTo(TimeUnit.Token));
        var ex = Assert.Throws<FormatException>(() => TimeUnitExtensions.ParseSuffix("epoch"));
        Assert.That(ex!.Message, Does.Contain("'epoch'"));
    }
}
