using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// Composer's <c>accumulate_train_batch_on_tokens</c>: a loss that is a mean over tokens (BERT MLM) gives the whole
/// batch's gradient and loss for any microbatch split when microbatches are weighted by their loss-generating tokens,
/// and a split-dependent one when they are weighted by samples.
/// </summary>
[TestFixture]
public class TokenAccumulationTests
{
    private const int Batch = 12, Length = 24;

    /// <summary>One step of bert-tiny MLM (fp32, dropout 0) on a batch of 12: the gradients and the logged loss.</summary>
    private static (double[] Gradients, double Loss, long MaskedTokens) OneStep(int? microbatch, bool onTokens)
    {
        var config = TransformerConfig.Preset("bert-tiny") with { VocabSize = 68, MaxSequenceLength = Length, Dropout = 0.0, AttentionDropout = 0.0 };
        torch.manual_seed(5);
        var model = new BertForMaskedLM(config);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = Batch, SequenceLength = Length, RegularVocabSize = 64, Seed = 8 });
        var loader = new DataLoader<long[]>(data, Batch, new MlmCollator(data.Vocabulary, new MlmCollatorOptions { Seed = 1 }));
        double[]? gradients = null;
        long masked = 0;
        var capture = new ActionCallback(Event.AfterTrainBatch, s =>
        {
            using var scope = torch.NewDisposeScope();
            gradients = torch.cat(s.Model.parameters().Select(p => (p.grad ?? torch.zeros_like(p)).flatten().to(ScalarType.Float64)).ToArray()).data<double>().ToArray();
            masked = model.LossGeneratingTokens(s.Batch!);
        });
        var options = new TrainerOptions
        {
            MaxDuration = "1ba", Device = "cpu", ProgressBar = false, DeviceTrainMicrobatchSize = microbatch, AccumulateTrainBatchOnTokens = onTokens,
        };
        using var trainer = new Trainer(model, options, loader, callbacks: new ICallback[] { capture }, optimizerFactory: ps => torch.optim.SGD(ps, 0.1));
        trainer.Fit();
        return (gradients!, trainer.State.Metrics["loss/train/total"], masked);
    }

    /// <summary>max |a − b| / max |b|.</summary>
    private static double Relative(double[] a, double[] b) => a.Zip(b).Max(p => Math.Abs(p.First - p.Second)) / b.Max(Math.Abs);

    [TestCase(5)]
    [TestCase(4)]
    [TestCase(1)]
    [Category(TestCategories.Slow)]
    public void MicrobatchesWeightedByTokensGiveTheWholeBatchGradient(int microbatch)
    {
        (double[] whole, double wholeLoss, long masked) = OneStep(null, onTokens: true);
        (double[] split, double splitLoss, _) = OneStep(microbatch, onTokens: true);
        (double[] bySamples, double bySamplesLoss, _) = OneStep(microbatch, onTokens: false);
        (double[] wholeOff, double wholeOffLoss, _) = OneStep(null, onTokens: false);

        double tokens = Relative(split, whole);
        double samples = Relative(bySamples, whole);
        TestContext.Out.WriteLine(
            $"{masked} masked tokens; microbatch {microbatch}: gradient vs whole batch, by tokens {tokens:E2}, by samples {samples:E2}; " +
            $"loss whole {wholeLoss:R}, by tokens {splitLoss:R}, by samples {bySamplesLoss:R}");

        Assert.That(whole.Max(Math.Abs), Is.GreaterThan(1e-3), "the gradient is not trivially zero");
        Assert.That(wholeOff, Is.EqualTo(whole), "a whole batch is one microbatch: the option changes nothing");
        Assert.That(wholeOffLoss, Is.EqualTo(wholeLoss));
        Assert.That(tokens, Is.LessThanOrEqualTo(1e-6), "token weighting: the split gives the whole batch's gradient");
        Assert.That(Math.Abs(splitLoss - wholeLoss) / wholeLoss, Is.LessThanOrEqualTo(1e-6), "and its loss");
        Assert.That(samples, Is.GreaterThan(1e-4), "sample weighting of a token-mean loss depends on the split (else this test proves nothing)");
    }

    [Test]
    public void ModelsCountLossGeneratingTokens()
    {
        using var scope = torch.NewDisposeScope();
        var labels = torch.tensor(new long[] { -100, 3, -100, 5, 6, -100 }).reshape(2, 3);
        var ids = torch.ones(2, 3, dtype: ScalarType.Int64);
        var config = TransformerConfig.Preset("bert-tiny") with { VocabSize = 68, MaxSequenceLength = 8 };
        var mlm = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids, ["labels"] = labels });
        Assert.That(new BertForMaskedLM(config).LossGeneratingTokens(mlm), Is.EqualTo(3), "BERT: labels that are not -100");

        // GPT predicts label t+1 at t: the targets are [3, -100, -100] and [6, -100, -100].
        Assert.That(new GptForCausalLM(TransformerConfig.Preset("gpt-tiny") with { VocabSize = 68, MaxSequenceLength = 8 }).LossGeneratingTokens(mlm), Is.EqualTo(2), "GPT: next-token targets that are not -100");
        var noLabels = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids });
        Assert.That(new BertForMaskedLM(config).LossGeneratingTokens(noLabels), Is.EqualTo(2), "without token labels: samples");
    }
}
