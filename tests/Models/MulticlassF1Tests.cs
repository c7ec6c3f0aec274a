using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

public class MulticlassF1Tests
{
    private static Batch WithLabels(long[] labels) => new(new Dictionary<string, Tensor> { ["labels"] = torch.tensor(labels) });

    /// <summary>scikit-learn's macro F1 (zero_division=0, labels = those in truth ∪ predictions), written from its definition.</summary>
    private static (double Macro, Dictionary<long, (double P, double R, double F)> PerClass) Reference(long[] truth, long[] predicted)
    {
        var perClass = new Dictionary<long, (double, double, double)>();
        foreach (long k in truth.Concat(predicted).Distinct())
        {
            int tp = truth.Zip(predicted).Count(t => t.First == k && t.Second == k);
            int fp = truth.Zip(predicted).Count(t => t.First != k && t.Second == k);
            int fn = truth.Zip(predicted).Count(t => t.First == k && t.Second != k);
            double p = tp + fp == 0 ? 0 : (double)tp / (tp + fp);
            double r = tp + fn == 0 ? 0 : (double)tp / (tp + fn);
            double f = 2 * tp + fp + fn == 0 ? 0 : 2.0 * tp / (2 * tp + fp + fn);
            perClass[k] = (p, r, f);
        }

        return (perClass.Values.Average(v => v.Item3), perClass);
    }

    [Test]
    public void MacroF1AndPerClassScoresMatchTheDefinitionOnFreshRandomBatches()
    {
        int seed = Environment.TickCount;
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(seed);
        const int classes = 15; // as many as the Brown corpus' categories, where the binary F1 gave 0
        var metric = new MulticlassF1Score(classes);
        var truth = new List<long>();
        var predicted = new List<long>();
        for (int b = 0; b < 4; b++)
        {
            Tensor labels = torch.randint(0, classes, new long[] { 37 });
            Tensor logits = torch.randn(37, classes) + 3 * nn.functional.one_hot(labels, classes).to(ScalarType.Float32) * torch.rand(37, 1).gt(0.4);
            long[] l = labels.data<long>().ToArray();
            l[0] = Losses.IgnoreIndex; // ignored
            metric.Update(logits.to(ScalarType.BFloat16), WithLabels(l));
            long[] p = logits.to(ScalarType.BFloat16).argmax(-1).data<long>().ToArray();
            truth.AddRange(l.Skip(1));
            predicted.AddRange(p.Skip(1));
        }

        (double macro, var perClass) = Reference(truth.ToArray(), predicted.ToArray());
        Assert.That(metric.Compute(), Is.EqualTo(macro).Within(1e-12), $"seed {seed}");
        IReadOnlyDictionary<string, double> breakdown = metric.Breakdown();
        foreach ((long k, (double p, double r, double f)) in perClass)
        {
            Assert.That(breakdown[$"precision/{k}"], Is.EqualTo(p).Within(1e-12), $"seed {seed}, class {k}");
            Assert.That(breakdown[$"recall/{k}"], Is.EqualTo(r).Within(1e-12), $"seed {seed}, class {k}");
            Assert.That(breakdown[$"F1/{k}"], Is.EqualTo(f).Within(1e-12), $"seed {seed}, class {k}");
        }

        metric.Reset();
        Assert.That(metric.Compute(), Is.NaN);
        Assert.That(metric.Breakdown(), Is.Empty);
    }

    [Test]
    public void BadLabelsAndShapesAreClearErrors()
    {
        using var scope = torch.NewDisposeScope();
        var metric = new MulticlassF1Score(3, new[] { "a", "b", "c" });
        var ex = Assert.Throws<ArgumentException>(() => metric.Update(torch.randn(2, 3), WithLabels(new long[] { 0, 3 })));
        Assert.That(ex!.Message, Does.Contain("A label is 3").And.Contain("[0, 3)"));
        ex = Assert.Throws<ArgumentException>(() => metric.Update(torch.randn(2, 4), WithLabels(new long[] { 0, 1 })));
        Assert.That(ex!.Message, Does.Contain("4 classes"));
        Assert.Throws<ArgumentException>(() => _ = new MulticlassF1Score(3, new[] { "a" }));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new MulticlassF1Score(1));
        metric.Update(torch.tensor(new float[] { 0, 1, 0 }, new long[] { 1, 3 }), WithLabels(new long[] { 1 }));
        Assert.That(metric.Breakdown()["F1/b"], Is.EqualTo(1.0));
    }

    [Test]
    public void AClassifierWithMoreThanTwoLabelsReportsMacroF1()
    {
        var model = new BertForSequenceClassification(TransformerConfig.Preset("bert-tiny") with { VocabSize = 64, MaxSequenceLength = 16 }, new SequenceClassificationOptions { NumLabels = 5 });
        Assert.That(model.GetMetrics(isTrain: false).OfType<MulticlassF1Score>().Single().NumClasses, Is.EqualTo(5));
        var binary = new BertForSequenceClassification(TransformerConfig.Preset("bert-tiny") with { VocabSize = 64, MaxSequenceLength = 16 }, new SequenceClassificationOptions { NumLabels = 2 });
        Assert.That(binary.GetMetrics(isTrain: false).OfType<BinaryF1Score>(), Has.Exactly(1).Items);
    }
}
