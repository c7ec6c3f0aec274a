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

namespace ComposerSharp.Tests.Algorithms.Training;

/// <summary>
/// LabelSmoothing: the smoothed targets of Composer's tests (tests/algorithms/test_label_smoothing.py), the loss against
/// them (PyTorch's label-smoothing formula in float64, −100 positions ignored), and the before_loss/after_loss swap in
/// training for the BERT masked LM and classifier, with microbatches.
/// </summary>
[TestFixture]
public class LabelSmoothingTests
{
    [Test]
    public void SmoothedTargetsAreComposersReferenceForIdsAndOneHot([Values(0.0, 0.1, 0.5, 0.9, 1.0)] double smoothing, [Values(2, 10)] int classes)
    {
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator(5);
        Tensor logits = torch.randn(new long[] { 64, classes }, generator: generator);
        Tensor ids = torch.randint(0, classes, new long[] { 64 }, generator: generator);
        Tensor oneHot = nn.functional.one_hot(ids, classes).to(ScalarType.Float32);
        Tensor reference = (oneHot * (1 - smoothing)) + (smoothing / classes);

        Tensor fromIds = LabelSmoothing.SmoothLabels(logits, ids, smoothing);
        Tensor fromOneHot = LabelSmoothing.SmoothLabels(logits, oneHot, smoothing);

        Assert.That((fromIds - reference).abs().max().item<float>(), Is.LessThan(1e-7f));
        Assert.That((fromOneHot - reference).abs().max().item<float>(), Is.LessThan(1e-7f));
        Assert.That((fromIds.sum(1) - 1).abs().max().item<float>(), Is.LessThan(1e-6f), "each row is a distribution");
    }

    [TestCase(0.1)]
    [TestCase(0.7)]
    public void TheLossAgainstSmoothedTargetsIsTorchsLabelSmoothedCrossEntropyWithIgnoredPositions(double smoothing)
    {
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator(9);
        Tensor logits = torch.randn(new long[] { 3, 5, 7 }, generator: generator) * 3;
        Tensor labels = torch.randint(0, 7, new long[] { 3, 5 }, generator: generator);
        labels[0, 1] = -100;
        labels[2, TensorIndex.Slice(2)] = -100;

        Tensor smoothed = LabelSmoothing.SmoothLabels(logits, labels, smoothing);
        double loss = Losses.CrossEntropy(logits, smoothed).item<float>();

        // float64: mean over kept positions of (1 − α)·(−log p_y) + α · mean_c(−log p_c).
        Tensor logp = nn.functional.log_softmax(logits.to(ScalarType.Float64), -1);
        double sum = 0;
        int kept = 0;
        for (int b = 0; b < 3; b++)
        {
            for (int t = 0; t < 5; t++)
            {
                long y = labels[b, t].item<long>();
                if (y == -100)
                {
                    Assert.That(smoothed[b, t].abs().sum().item<float>(), Is.EqualTo(0f), "an ignored position has no target mass");
                    continue;
                }

                sum += ((1 - smoothing) * -logp[b, t, y].item<double>()) + (smoothing * -logp[b, t].mean().item<double>());
                kept++;
            }
        }

        Assert.That(kept, Is.EqualTo(11));
        Assert.That(loss, Is.EqualTo(sum / kept).Within(1e-5));
        Assert.That(Losses.CrossEntropy(logits, LabelSmoothing.SmoothLabels(logits, labels, 0)).item<float>(),
            Is.EqualTo(Losses.CrossEntropy(logits, labels).item<float>()).Within(1e-5), "α = 0 is the hard cross-entropy");
    }

    [TestCase(true, TestName = "TheLossSeesSmoothedTargetsAndEverythingElseTheLabels(masked LM)")]
    [TestCase(false, TestName = "TheLossSeesSmoothedTargetsAndEverythingElseTheLabels(classifier)")]
    [Category(TestCategories.Slow)]
    public void TheLossSeesSmoothedTargetsAndEverythingElseTheLabels(bool maskedLm)
    {
        const double alpha = 0.2;
        torch.manual_seed(3);
        TransformerConfig config = ModelTestData.Tiny();
        ComposerModel model = maskedLm ? new BertForMaskedLM(config) : new BertForSequenceClassification(config, new SequenceClassificationOptions { NumLabels = 3 });
        if (model is BertForMaskedLM mlm)
        {
            // Fresh logits are nearly uniform, where the smoothed and the hard loss are both about ln V (they differed by
            // 1e-5 with some dropout draws); the tied decoder's weight scaled up spreads the logits so the two separate.
            using var noGrad = torch.no_grad();
            mlm.Backbone.TokenEmbedding.weight!.mul_(50);
        }

        var checks = new List<string>();
        var before = new ActionCallback(Event.BeforeLoss, s =>
        {
            Assert.That(s.Batch!["labels"].dtype, Is.EqualTo(ScalarType.Float32), "before_loss: smoothed targets in the batch");
            Assert.That(s.Batch!["labels"].shape, Is.EqualTo(s.Outputs!.shape));
        });
        var after = new ActionCallback(Event.AfterLoss, s =>
        {
            using var scope = torch.NewDisposeScope();
            Tensor labels = s.Batch!["labels"];
            Assert.That(labels.dtype, Is.EqualTo(ScalarType.Int64), "after_loss: the labels are back");
            Tensor expected = Losses.CrossEntropy(s.Outputs!.detach(), LabelSmoothing.SmoothLabels(s.Outputs!, labels, alpha));
            Assert.That(s.Loss!.item<float>(), Is.EqualTo(expected.item<float>()).Within(1e-5));
            if (maskedLm)
            {
                // (The 3-class classifier's fresh logits are nearly uniform, where both losses are ln 3.)
                Assert.That(s.Loss!.item<float>(), Is.Not.EqualTo(Losses.CrossEntropy(s.Outputs!.detach(), labels).item<float>()).Within(1e-4), "and differs from the hard loss");
            }
            checks.Add("checked");
        });
        var loader = new DataLoader<long>(new ListDataset<long>(Enumerable.Range(0, 16).Select(i => (long)i).ToList()), 8,
            samples => MakeBatch(samples.Count, maskedLm));
        using var trainer = TestData.Trainer(model, loader, "2ba", callbacks: new ICallback[] { before, after }, microbatch: 4,
            algorithms: new[] { new LabelSmoothing(alpha) });

        trainer.Fit();

        Assert.That(checks, Has.Count.EqualTo(4), "two batches of two microbatches");
    }

    private static Batch MakeBatch(int b, bool maskedLm)
    {
        Tensor labels;
        if (maskedLm)
        {
            labels = torch.randint(0, 60, new long[] { b, 12 });
            labels.masked_fill_(torch.rand(b, 12).gt(0.3), -100); // ~30 % of positions carry a target
            labels[0, 0] = 5;
        }
        else
        {
            labels = torch.randint(0, 3, new long[] { b });
        }

        return ModelTestData.RandomBatch(b, 12, labels: labels);
    }

    [Test]
    public void ABatchWithoutTheTargetKeyIsAClearError()
    {
        torch.manual_seed(3);
        var gpt = new GptForCausalLM(ModelTestData.Tiny("gpt-tiny"));
        var loader = new DataLoader<long>(new ListDataset<long>(new long[] { 0, 1, 2, 3 }), 4, s => ModelTestData.RandomBatch(s.Count, 8));
        using var trainer = TestData.Trainer(gpt, loader, "1ba", algorithms: new[] { new LabelSmoothing() });
        var ex = Assert.Throws<AlgorithmException>(() => trainer.Fit());
        Assert.That(ex!.Message, Does.Contain("target_key 'labels'").And.Contain("input_ids").And.Contain("GPT"));
    }

    [Test]
    public void BadArgumentsAndTheDescription()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new LabelSmoothing(1.5));
        var ex = Assert.Throws<ArgumentException>(() => LabelSmoothing.SmoothLabels(torch.zeros(2, 3), torch.tensor(new long[] { 0, 3 }), 0.1));
        Assert.That(ex!.Message, Does.Contain("[0, 3)").And.Contain("[0, 3]"));
        var ls = new LabelSmoothing(0.25, "y");
        Assert.That(AlgorithmCatalog.Create(ls.Describe()).Describe(), Is.EqualTo(ls.Describe()));
    }
}
