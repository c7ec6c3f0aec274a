using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Tests.Training;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// SeqLengthWarmup: Composer's <c>set_batch_sequence_length</c> (truncate and reshape), the length schedule, and a
/// Trainer run: the reserve pass at max_seq_length before the first short batch, the lengths per batch, and the
/// timestamp's tokens (the tokens trained on). After Composer's tests/algorithms/test_seq_length_warmup.py.
/// </summary>
[TestFixture]
public class SeqLengthWarmupTests
{
    [Test]
    public void TruncatingKeepsTheFirstPositionsOfEveryTensor()
    {
        using var d = torch.NewDisposeScope();
        Tensor ids = torch.arange(30, dtype: ScalarType.Int64).view(3, 10);
        var batch = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids, ["labels"] = -ids, ["attention_mask"] = torch.ones_like(ids) });

        Batch cut = Functional.SetBatchSequenceLength(batch, 4, truncate: true);

        Assert.That(cut["input_ids"].shape, Is.EqualTo(new long[] { 3, 4 }));
        Assert.That(cut["input_ids"][2].data<long>().ToArray(), Is.EqualTo(new long[] { 20, 21, 22, 23 }));
        Assert.That(cut["labels"][1].data<long>().ToArray(), Is.EqualTo(new long[] { -10, -11, -12, -13 }));
        Assert.That((cut.NumSamples, cut.NumTokens), Is.EqualTo((3L, 12L)));
        Assert.That(Functional.SetBatchSequenceLength(batch, 10), Is.SameAs(batch), "no change at or above the batch's length");
    }

    [Test]
    public void ReshapingTurnsTheExtraTokensIntoNewSamples()
    {
        using var d = torch.NewDisposeScope();
        Tensor ids = torch.arange(30, dtype: ScalarType.Int64).view(3, 10);
        var batch = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids, ["labels"] = ids * 2 });

        Batch reshaped = Functional.SetBatchSequenceLength(batch, 4, truncate: false);

        Assert.That(reshaped["input_ids"].shape, Is.EqualTo(new long[] { 7, 4 }), "⌊30 / 4⌋ rows; the last 2 tokens are dropped");
        Assert.That(reshaped["input_ids"][2].data<long>().ToArray(), Is.EqualTo(new long[] { 8, 9, 10, 11 }), "rows run across the old samples");
        Assert.That(reshaped["labels"][6].data<long>().ToArray(), Is.EqualTo(new long[] { 48, 50, 52, 54 }));
        Assert.That(reshaped.NumTokens, Is.EqualTo(28));

        var bad = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids, ["labels"] = torch.zeros(3, dtype: ScalarType.Int64) });
        Assert.That(Assert.Throws<ArgumentException>(() => Functional.SetBatchSequenceLength(bad, 4))!.Message, Does.Contain("'labels' is [3]"));
    }

    [Test]
    public void TheLengthGrowsByStepEveryNBatchesAsComposerComputesIt()
    {
        // 100 batches, duration 0.3: W = 30 warmup batches, U = (64 − 8) / 8 = 7 updates, one every N = 30 / 7 = 4 batches.
        var warmup = new SeqLengthWarmup(duration: 0.3, minSeqLength: 8, maxSeqLength: 64, stepSize: 8);
        var expected = new Dictionary<long, int> { [0] = 8, [3] = 8, [4] = 16, [7] = 16, [8] = 24, [27] = 56, [28] = 64, [29] = 64, [99] = 64 };
        foreach ((long batch, int length) in expected)
        {
            Assert.That(warmup.SequenceLengthAt(batch, 100), Is.EqualTo(length), $"batch {batch}");
        }

        // More updates than warmup batches: Composer's N would be 0 (a division by zero); here min until the warmup ends, then max.
        var steep = new SeqLengthWarmup(duration: 0.1, minSeqLength: 8, maxSeqLength: 1024, stepSize: 8);
        Assert.That((steep.SequenceLengthAt(0, 20), steep.SequenceLengthAt(1, 20), steep.SequenceLengthAt(2, 20)), Is.EqualTo((8, 8, 1024)));
        Assert.That(new SeqLengthWarmup(duration: 0).SequenceLengthAt(0, 50), Is.EqualTo(1024), "duration 0: full length at once");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ATrainerRunReservesMemoryAtFullLengthThenWarmsUpAndCountsTheTokensTrainedOn()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(3);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 48, SequenceLength = 16, RegularVocabSize = 60, Seed = 1 });
        var loader = new DataLoader<long[]>(data, 4, new MlmCollator(data.Vocabulary), shuffle: false);
        var model = new LengthRecordingBert(ModelTestData.Tiny());
        var warmup = new SeqLengthWarmup(duration: 0.5, minSeqLength: 4, maxSeqLength: 16, stepSize: 4);
        var perBatch = new List<(long Length, long Tokens)>();
        var callback = new ActionCallback(Event.BatchEnd, s => perBatch.Add((warmup.CurrentSequenceLength!.Value, s.Timestamp.Token)));

        var options = new ComposerSharp.Training.TrainerOptions { MaxDuration = Time.Parse("12ba"), Device = "cpu", ProgressBar = false };
        using (var trainer = new ComposerSharp.Training.Trainer(model, options, loader, algorithms: new IAlgorithm[] { warmup }, callbacks: new ICallback[] { callback },
                   optimizerFactory: p => torch.optim.AdamW(p, 1e-3)))
        {
            trainer.Fit();
        }

        // W = 6, U = 3, N = 2: 4, 4, 8, 8, 12, 12, then 16.
        long[] lengths = { 4, 4, 8, 8, 12, 12, 16, 16, 16, 16, 16, 16 };
        Assert.That(perBatch.Select(p => p.Length), Is.EqualTo(lengths));
        Assert.That(model.TrainLengths, Is.EqualTo(new long[] { 16 }.Concat(lengths)), "one pass at max_seq_length before the first batch");
        long tokens = 0;
        Assert.That(perBatch.Select(p => p.Tokens), Is.EqualTo(lengths.Select(l => tokens += 4 * l)), "the timestamp counts B × the warmed-up length");
    }

    [Test]
    public void OptionsAreValidatedAndTheDescriptionRoundTrips()
    {
        var warmup = new SeqLengthWarmup(duration: 0.5, minSeqLength: 16, maxSeqLength: 128, stepSize: 16, truncate: false);
        var back = (SeqLengthWarmup)AlgorithmCatalog.Create(warmup.Describe());
        Assert.That((back.Duration, back.MinSeqLength, back.MaxSeqLength, back.StepSize, back.Truncate), Is.EqualTo((0.5, 16, 128, 16, false)));
        Assert.That(back.RequiredOnLoad, Is.False);
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SeqLengthWarmup(duration: 1.5))!.Message, Does.Contain("[0, 1]"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => _ = new SeqLengthWarmup(minSeqLength: 64, maxSeqLength: 32))!.Message, Does.Contain("min_seq_length (64)"));
    }

    /// <summary>A tiny BERT MLM that records the sequence length of each training forward.</summary>
    private sealed class LengthRecordingBert : ComposerModel
    {
#pragma warning disable IDE1006
        private readonly BertForMaskedLM inner;
#pragma warning restore IDE1006

        public LengthRecordingBert(TransformerConfig config)
            : base(nameof(LengthRecordingBert))
        {
            inner = new BertForMaskedLM(config);
            RegisterComponents();
        }

        public List<long> TrainLengths { get; } = new();

        public override Tensor forward(Batch batch)
        {
            if (training)
            {
                TrainLengths.Add(batch["input_ids"].shape[1]);
            }

            return inner.call(batch);
        }

        public override Tensor Loss(Tensor outputs, Batch batch) => inner.Loss(outputs, batch);
    }
}
