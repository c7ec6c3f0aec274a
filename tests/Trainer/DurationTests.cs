using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using NUnit.Framework;

namespace ComposerSharp.Tests.Training;

/// <summary>Max durations stop where Composer stops; bad durations and empty loaders fail clearly.</summary>
[TestFixture]
public class DurationTests
{
    [Test]
    public void TwoEpochsOfFiveBatchesWithMicrobatchTwoGiveTenStepsTwoEpochEndsEightySamples()
    {
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "2ep", callbacks: new[] { recorder }, microbatch: 2);
        trainer.Fit();
        Assert.That(recorder.Count(Event.BatchEnd), Is.EqualTo(10));
        Assert.That(recorder.Count(Event.EpochEnd), Is.EqualTo(2));
        Assert.That(recorder.Count(Event.BeforeForward), Is.EqualTo(40));
        Assert.That(trainer.State.Timestamp.Sample, Is.EqualTo(80));
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(10));
        Assert.That(trainer.State.Timestamp.Epoch, Is.EqualTo(2));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void SevenBatchesGiveExactlySevenStepsAndTwentyEightForwards()
    {
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "7ba", callbacks: new[] { recorder }, microbatch: 2);
        trainer.Fit();
        Assert.That(recorder.Count(Event.AfterTrainBatch), Is.EqualTo(7));
        Assert.That(recorder.Count(Event.BeforeForward), Is.EqualTo(28));
        Assert.That(recorder.Count(Event.EpochEnd), Is.EqualTo(1), "only the first epoch was completed");
        Assert.That(trainer.State.Timestamp.Epoch, Is.EqualTo(1));
        Assert.That(trainer.State.Timestamp.BatchInEpoch, Is.EqualTo(2));
    }

    [Test]
    public void ABatchBudgetEndingOnAnEpochBoundaryStillEndsTheEpoch()
    {
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "5ba", callbacks: new[] { recorder });
        trainer.Fit();
        Assert.That(recorder.Count(Event.EpochEnd), Is.EqualTo(1));
        Assert.That(recorder.Count(Event.BeforeDataloader), Is.EqualTo(5), "no extra fetch: the budget ended the loop");
        Assert.That(trainer.State.Timestamp.Epoch, Is.EqualTo(1));
    }

    [Test]
    public void SampleBudgetStopsAfterTheBatchThatCrossesIt()
    {
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "20sp");
        trainer.Fit();
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(3));
        Assert.That(trainer.State.Timestamp.Sample, Is.EqualTo(24));
    }

    [Test]
    public void TokenBudgetStopsAfterTheBatchThatReachesIt()
    {
        // 8 samples × 5 tokens = 40 tokens per batch; 80 tokens are reached exactly after batch 2.
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8, tokensPerSample: 5), "80tok");
        trainer.Fit();
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(2));
        Assert.That(trainer.State.Timestamp.Token, Is.EqualTo(80));
    }

    [Test]
    public void TokenBudgetOnBatchesWithoutTokensFailsInsteadOfLoopingForever()
    {
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "80tok");
        var ex = Assert.Throws<InvalidOperationException>(() => trainer.Fit());
        Assert.That(ex!.Message, Does.Contain("tokens"));
    }

    [Test]
    public void AnIntegerMaxDurationMeansEpochs()
    {
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), 3);
        Assert.That(trainer.State.MaxDuration, Is.EqualTo(Time.FromEpoch(3)));
        trainer.Fit();
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(6));
    }

    [TestCase("30sec")]
    [TestCase("0.5dur")]
    [TestCase("2iter")]
    public void SecondsDurationAndIterationsAreRefusedAsMaxDuration(string text)
    {
        var ex = Assert.Throws<ArgumentException>(() => TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), text));
        Assert.That(ex!.Message, Does.Contain(text));
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "1ep");
        var fitEx = Assert.Throws<ArgumentException>(() => trainer.Fit(text));
        Assert.That(fitEx!.Message, Does.Contain("not allowed"));
    }

    [Test]
    public void EpochBudgetWithLoaderOfUnknownLengthIsRefusedButBatchesWork()
    {
        var stream = new StreamingLoader(TestData.Loader(40, 8));
        using var byEpoch = TestData.Trainer(TestData.Model(), stream, "1ep");
        var ex = Assert.Throws<InvalidOperationException>(() => byEpoch.Fit());
        Assert.That(ex!.Message, Does.Contain("epochs").And.Contain("unknown"));

        using var byBatch = TestData.Trainer(TestData.Model(), stream, "7ba");
        byBatch.Fit();
        Assert.That(byBatch.State.Timestamp.Batch, Is.EqualTo(7));
        Assert.That(byBatch.State.Timestamp.Epoch, Is.EqualTo(1), "the stream's end still ends an epoch");
    }

    [Test]
    public void EmptyLoaderFailsClearlyBeforeFitStart()
    {
        // 3 samples, batch size 4, drop_last: no batch at all.
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(3, 4, dropLast: true), "1ep", callbacks: new[] { recorder });
        var ex = Assert.Throws<InvalidOperationException>(() => trainer.Fit());
        Assert.That(ex!.Message, Does.Contain("no batches").And.Contain("drop_last"));
        Assert.That(recorder.Count(Event.FitStart), Is.Zero);
    }

    [Test]
    public void EmptyStreamFailsInsteadOfHanging()
    {
        var stream = new StreamingLoader(TestData.Loader(3, 4, dropLast: true));
        using var trainer = TestData.Trainer(TestData.Model(), stream, "5ba");
        var ex = Assert.Throws<InvalidOperationException>(() => trainer.Fit());
        Assert.That(ex!.Message, Does.Contain("no batches for epoch 0"));
    }

    [Test]
    public void FitWithDurationExtendsFromWhereTrainingIs()
    {
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "2ba");
        trainer.Fit();
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(2));
        trainer.Fit("3ba");
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(5));
        Assert.That(trainer.State.MaxDuration, Is.EqualTo(Time.FromBatch(5)));
        var ex = Assert.Throws<InvalidOperationException>(() => trainer.Fit());
        Assert.That(ex!.Message, Does.Contain("no training would occur"));
    }

    [Test]
    public void StopTrainingFromACallbackEndsAfterTheCurrentBatch()
    {
        var recorder = new EventRecorder();
        var stopper = new ActionCallback(Event.AfterTrainBatch, s =>
        {
            if (s.Timestamp.Batch == 2)
            {
                s.StopTraining();
            }
        });
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "3ep", callbacks: new ICallback[] { stopper, recorder });
        trainer.Fit();
        Assert.That(recorder.Count(Event.BatchEnd), Is.EqualTo(3), "the batch in progress (the third) completes");
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(3));
        Assert.That(recorder.Count(Event.FitEnd), Is.EqualTo(1));
    }

    [Test]
    public void FitWithoutLoaderOrDurationExplainsWhatIsMissing()
    {
        using var noLoader = TestData.Trainer(TestData.Model(), null, "1ep");
        Assert.That(Assert.Throws<InvalidOperationException>(() => noLoader.Fit())!.Message, Does.Contain("trainDataloader"));
        using var noDuration = TestData.Trainer(TestData.Model(), TestData.Loader(8, 4), null);
        Assert.That(Assert.Throws<InvalidOperationException>(() => noDuration.Fit())!.Message, Does.Contain("maxDuration"));
    }
}
