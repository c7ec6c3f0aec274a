using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Events;

/// <summary><see cref="State.StopTraining"/>, <see cref="State.ElapsedDuration"/> and the max duration, as in Composer's composer/core/state.py.</summary>
[TestFixture]
public class StateTests
{
    private State _state = null!;

    [SetUp]
    public void SetUp() => _state = new State(torch.nn.Linear(2, 2));

    [TearDown]
    public void TearDown() => _state.Model.Dispose();

    private void TrainBatches(int n, long samplesPerBatch = 4, long tokensPerBatch = 40)
    {
        for (int i = 0; i < n; i++)
        {
            _state.Timestamp = _state.Timestamp.ToNextBatch(samplesPerBatch, tokensPerBatch);
        }
    }

    [Test]
    public void ElapsedDurationIsTheFractionOfTheMaxDurationInItsUnit()
    {
        Assert.That(_state.ElapsedDuration, Is.Null, "no max duration");
        _state.MaxDuration = Time.Parse("10ba");
        Assert.That(_state.ElapsedDuration, Is.EqualTo(Time.FromDuration(0)));
        TrainBatches(4);
        Assert.That(_state.ElapsedDuration, Is.EqualTo(Time.FromDuration(0.4)));

        _state.MaxDuration = Time.Parse("64sp");
        Assert.That(_state.ElapsedDuration!.Value.Value, Is.EqualTo(16.0 / 64).Within(1e-12));

        _state.MaxDuration = Time.Parse("2ep");
        _state.Timestamp = _state.Timestamp.ToNextEpoch();
        Assert.That(_state.ElapsedDuration, Is.EqualTo(Time.FromDuration(0.5)));
    }

    [Test]
    public void StopTrainingShrinksTheMaxDurationToNowInItsUnit()
    {
        _state.MaxDuration = Time.Parse("1000tok");
        TrainBatches(3);
        _state.StopTraining();
        Assert.That(_state.MaxDuration, Is.EqualTo(Time.FromToken(120)));
        Assert.That(_state.ElapsedDuration, Is.EqualTo(Time.FromDuration(1)));
        Assert.That(_state.Timestamp < _state.MaxDuration!.Value, Is.False, "the loop condition now ends training");

        _state.MaxDuration = Time.Parse("100sp");
        _state.StopTraining();
        Assert.That(_state.MaxDuration, Is.EqualTo(Time.FromSample(12)));
    }

    [Test]
    public void StopTrainingInEpochsOrWithoutMaxDurationCountsBatches()
    {
        _state.MaxDuration = Time.Parse("5ep");
        TrainBatches(7);
        _state.StopTraining();
        Assert.That(_state.MaxDuration, Is.EqualTo(Time.FromBatch(7)), "epochs are too coarse: Composer stops at the current batch");

        _state.MaxDuration = null;
        TrainBatches(1);
        _state.StopTraining();
        Assert.That(_state.MaxDuration, Is.EqualTo(Time.FromBatch(8)));
    }

    [Test]
    public void StopTrainingBeforeTheFirstBatchMeansTheRunIsComplete()
    {
        _state.MaxDuration = Time.Parse("10ba");
        _state.StopTraining();
        Assert.That(_state.MaxDuration, Is.EqualTo(Time.FromBatch(0)));
        Assert.That(_state.ElapsedDuration, Is.EqualTo(Time.FromDuration(1)));
    }

    [Test]
    public void MaxDurationCannotBeAFractionOfItself()
    {
        var ex = Assert.Throws<ArgumentException>(() => _state.MaxDuration = Time.Parse("0.5dur"));
        Assert.That(ex!.Message, Does.Contain("0.5dur"));
        _state.MaxDuration = Time.Parse("1h");
        Assert.That(_state.MaxDuration, Is.EqualTo(Time.FromSecond(3600)));
    }

    [Test]
    public void DataloaderLengthComesFromTheCurrentDataloader()
    {
        Assert.That(_state.DataloaderLength, Is.Null);
        _state.Dataloader = new CountOnlyDataLoader();
        Assert.That(_state.DataloaderLength, Is.EqualTo(3));
    }

    [TestCase("fp32", Precision.Fp32)]
    [TestCase("amp_bf16", Precision.AmpBf16)]
    [TestCase("AMP_FP16", Precision.AmpFp16)]
    [TestCase("AmpBf16", Precision.AmpBf16)]
    [TestCase(" Fp32 ", Precision.Fp32)]
    public void PrecisionParsesComposerNames(string text, Precision expected)
    {
        Precision p = PrecisionExtensions.Parse(text);
        Assert.That(p, Is.EqualTo(expected));
        Assert.That(PrecisionExtensions.Parse(p.ToComposerName()), Is.EqualTo(p));
    }

    [TestCase("fp16", "is not a precision")]
    [TestCase("bf16", "is not a precision")]
    [TestCase("amp", "is not a precision")]
    [TestCase("amp__bf16", "is not a precision")]
    [TestCase("", "is not a precision")]
    [TestCase("amp_fp8", "not supported")]
    public void BadPrecisionsAreRejectedQuotingTheInput(string text, string reason)
    {
        var ex = Assert.Throws<FormatException>(() => PrecisionExtensions.Parse(text));
        Assert.That(ex!.Message, Does.StartWith($"'{text}'").And.Contain(reason).And.Contain("fp32, amp_bf16, amp_fp16"));
    }

    [Test]
    public void PrecisionNamesAndAutocastDtypes()
    {
        Assert.That(Enum.GetValues<Precision>().Select(p => p.ToComposerName()), Is.EqualTo(new[] { "fp32", "amp_bf16", "amp_fp16" }));
        Assert.That(Precision.Fp32.AutocastDtype(), Is.Null);
        Assert.That(Precision.AmpBf16.AutocastDtype(), Is.EqualTo(torch.ScalarType.BFloat16));
        Assert.That(Precision.AmpFp16.AutocastDtype(), Is.EqualTo(torch.ScalarType.Float16));
        Assert.That((Precision.Fp32.IsAutocast(), Precision.AmpBf16.IsAutocast(), Precision.AmpFp16.IsAutocast()), Is.EqualTo((false, true, true)));
    }
}
