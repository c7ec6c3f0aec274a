using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

[TestFixture]
public class MetricTests
{
    private static Batch WithLabels(long[] labels, long[] shape) =>
        new(new Dictionary<string, Tensor> { ["labels"] = torch.tensor(labels, shape) });

    /// <summary>−log softmax(row)[label], computed in double from the row's values.</summary>
    private static double Nll(float[] row, long label)
    {
        double max = row.Max();
        double logSum = Math.Log(row.Sum(v => Math.Exp(v - max))) + max;
        return logSum - row[label];
    }

    [Test]
    public void CrossEntropyAndPerplexityMatchHandComputedValues()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(1);
        Tensor logits1 = torch.randn(2, 3, 5) * 3; // token logits [B, T, V]
        long[] labels1 = { 4, -100, 0, 2, 2, -100 };
        Tensor logits2 = torch.randn(1, 3, 5) * 3;
        long[] labels2 = { 1, 3, -100 };

        double sum = 0;
        int count = 0;
        foreach ((Tensor logits, long[] labels) in new[] { (logits1, labels1), (logits2, labels2) })
        {
            float[] flat = logits.data<float>().ToArray();
            for (int i = 0; i < labels.Length; i++)
            {
                if (labels[i] != -100)
                {
                    sum += Nll(flat[(i * 5)..(i * 5 + 5)], labels[i]);
                    count++;
                }
            }
        }

        var ce = new CrossEntropyMetric();
        var ppl = new PerplexityMetric();
        Assert.That(ce.Compute(), Is.NaN, "nothing added yet");
        foreach (IMetric m in new IMetric[] { ce, ppl })
        {
            m.Update(logits1, WithLabels(labels1, new long[] { 2, 3 }));
            m.Update(logits2, WithLabels(labels2, new long[] { 1, 3 }));
        }

        Assert.That(ce.Compute(), Is.EqualTo(sum / count).Within(1e-5));
        Assert.That(ppl.Compute(), Is.EqualTo(Math.Exp(sum / count)).Within(1e-4 * Math.Exp(sum / count)));
        Assert.That(Losses.CrossEntropy(logits1, torch.tensor(labels1, new long[] { 2, 3 })).item<float>(), Is.EqualTo(BatchMean(logits1, labels1)).Within(1e-5));
        ce.Reset();
        Assert.That(ce.Compute(), Is.NaN);
    }

    private static double BatchMean(Tensor logits, long[] labels)
    {
        float[] flat = logits.data<float>().ToArray();
        var losses = labels.Select((l, i) => (l, i)).Where(p => p.l != -100).Select(p => Nll(flat[(p.i * 5)..(p.i * 5 + 5)], p.l)).ToArray();
        return losses.Average();
    }

    [Test]
    public void LossOfBFloat16LogitsIsFloat32AndMatchesTheRoundedLogits()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(2);
        Tensor logits = torch.randn(4, 6, 9).to(ScalarType.BFloat16);
        Tensor labels = torch.randint(0, 9, new long[] { 4, 6 }, dtype: ScalarType.Int64);
        Tensor loss = Losses.CrossEntropy(logits, labels);
        Assert.That(loss.dtype, Is.EqualTo(ScalarType.Float32));
        float reference = Losses.CrossEntropy(logits.to(ScalarType.Float32), labels).item<float>();
        Assert.That(loss.item<float>(), Is.EqualTo(reference).Within(1e-6));

        var acc = new MaskedAccuracy();
        acc.Update(logits, new Batch(new Dictionary<string, Tensor> { ["labels"] = labels }));
        double expected = logits.to(ScalarType.Float32).argmax(-1).eq(labels).to(ScalarType.Float64).mean().item<double>();
        Assert.That(acc.Compute(), Is.EqualTo(expected).Within(1e-12));
    }

    [Test]
    public void LossIsZeroNotNaNWhenEveryLabelIsIgnored()
    {
        using var d = torch.NewDisposeScope();
        Tensor logits = torch.randn(2, 3, 4, requires_grad: true);
        Tensor loss = Losses.CrossEntropy(logits, torch.full(2, 3, -100L, dtype: ScalarType.Int64));
        Assert.That(loss.item<float>(), Is.EqualTo(0f));
        loss.backward();
        Assert.That(logits.grad!.abs().sum().item<float>(), Is.EqualTo(0f));
    }

    [Test]
    public void MaskedAccuracyCountsOnlySelectedPositions()
    {
        using var d = torch.NewDisposeScope();
        // Arg-max per position: 2, 0, 1, 1.
        Tensor logits = torch.tensor(new float[] { 0, 1, 5, 9, 0, 0, 0, 3, 1, 2, 8, 0 }, new long[] { 1, 4, 3 });
        var acc = new MaskedAccuracy();
        acc.Update(logits, WithLabels(new long[] { 2, -100, 0, 1 }, new long[] { 1, 4 })); // right, ignored, wrong, right
        Assert.That(acc.Name, Is.EqualTo("MaskedAccuracy"));
        Assert.That(acc.Compute(), Is.EqualTo(2.0 / 3.0).Within(1e-12));
    }

    [Test]
    public void AccuracyAndF1MatchAHandCountedConfusionMatrix()
    {
        using var d = torch.NewDisposeScope();
        // Predictions 1, 1, 0, 0, 1 against labels 1, 0, 0, 1, 1 (split over two batches).
        Tensor logitsA = torch.tensor(new float[] { 0, 2, -1, 1, 3, 0 }, new long[] { 3, 2 });
        Tensor logitsB = torch.tensor(new float[] { 5, 4, 0.5f, 0.7f }, new long[] { 2, 2 });
        Batch a = WithLabels(new long[] { 1, 0, 0 }, new long[] { 3 });
        Batch b = WithLabels(new long[] { 1, 1 }, new long[] { 2 });
        var acc = new ClassificationAccuracy();
        var f1Pos1 = new BinaryF1Score();
        var f1Pos0 = new BinaryF1Score(positiveClass: 0);
        foreach (IMetric m in new IMetric[] { acc, f1Pos1, f1Pos0 })
        {
            m.Update(logitsA, a);
            m.Update(logitsB, b);
        }

        Assert.That(acc.Compute(), Is.EqualTo(3.0 / 5.0).Within(1e-12));
        Assert.That(f1Pos1.Compute(), Is.EqualTo(2.0 * 2 / (2 * 2 + 1 + 1)).Within(1e-12), "class 1: TP 2, FP 1, FN 1");
        Assert.That(f1Pos0.Compute(), Is.EqualTo(2.0 * 1 / (2 * 1 + 1 + 1)).Within(1e-12), "class 0: TP 1, FP 1, FN 1");

        var none = new BinaryF1Score();
        none.Update(torch.tensor(new float[] { 1, 0 }, new long[] { 1, 2 }), WithLabels(new long[] { 0 }, new long[] { 1 }));
        Assert.That(none.Compute(), Is.EqualTo(0.0), "no positives predicted or present");
        Assert.Throws<ArgumentException>(() => new BinaryF1Score(2).Update(logitsA, a));
    }

    [Test]
    public void MismatchedShapesAreRejected()
    {
        using var d = torch.NewDisposeScope();
        var e = Assert.Throws<ArgumentException>(() => new CrossEntropyMetric().Update(torch.randn(2, 3, 4), WithLabels(new long[] { 1, 2 }, new long[] { 2 })))!;
        Assert.That(e.Message, Does.Contain("[2, 3, 4]").And.Contain("[2]"));
    }

    [Test]
    public void GptScoresEachPositionAgainstTheNextLabel()
    {
        using var d = torch.NewDisposeScope();
        var batch = new Batch(new Dictionary<string, Tensor>
        {
            ["input_ids"] = torch.tensor(new long[] { 5, 6, 7, 9, 9 }, new long[] { 1, 5 }),
            ["attention_mask"] = torch.tensor(new long[] { 1, 1, 1, 0, 0 }, new long[] { 1, 5 }),
        });
        Assert.That(GptForCausalLM.Targets(batch).data<long>().ToArray(), Is.EqualTo(new long[] { 6, 7, -100, -100, -100 }));
        var labelled = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = batch["input_ids"], ["labels"] = torch.tensor(new long[] { 1, 2, 3, 4, 5 }, new long[] { 1, 5 }) });
        Assert.That(GptForCausalLM.Targets(labelled).data<long>().ToArray(), Is.EqualTo(new long[] { 2, 3, 4, 5, -100 }));
    }
}
