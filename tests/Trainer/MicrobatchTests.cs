using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>Gradient accumulation over microbatches equals the whole batch's gradient, with one optimizer step per batch.</summary>
[TestFixture]
public class MicrobatchTests
{
    /// <summary>
    /// The reference: the same network in float64 on the whole batch, mean cross-entropy, backward. Returns the
    /// gradients of (fc1.weight, fc1.bias, head.weight, head.bias) flattened.
    /// </summary>
    private static double[] Float64FullBatchGradient(TinyMlp model, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        Tensor[] p = model.parameters().Select(x => x.detach().to(ScalarType.Float64).requires_grad_(true)).ToArray();
        Tensor x = batch["x"].to(ScalarType.Float64);
        Tensor h = nn.functional.relu(x.matmul(p[0].t()) + p[1]);
        Tensor logits = h.matmul(p[2].t()) + p[3];
        Tensor loss = nn.functional.cross_entropy(logits, batch["y"]);
        loss.backward();
        return torch.cat(p.Select(t => t.grad!.flatten()).ToArray()).data<double>().ToArray();
    }

    [TestCase(7)]
    [TestCase(3)]
    [TestCase(2)]
    [TestCase(1)]
    public void AccumulatedGradientEqualsFullBatchGradientWithUnevenMicrobatches(int microbatch)
    {
        // One batch of 7 fresh random samples; microbatch 3 splits it 3 + 3 + 1, microbatch 2 into 2 + 2 + 2 + 1.
        TinyMlp model = TestData.Model(initSeed: 11);
        double[]? trainerGrad = null;
        double[]? reference = null;
        var capture = new ActionCallback(Event.AfterTrainBatch, s =>
        {
            trainerGrad = TestData.Gradients(s.Model);
            reference = Float64FullBatchGradient(model, s.Batch!);
        });
        var forwards = new EventRecorder();
        using var trainer = TestData.Trainer(model, TestData.Loader(7, 7, dataSeed: 29), "1ba", callbacks: new ICallback[] { capture, forwards }, microbatch: microbatch);
        trainer.Fit();

        Assert.That(forwards.Count(Event.BeforeForward), Is.EqualTo((7 + microbatch - 1) / microbatch));
        Assert.That(trainerGrad, Is.Not.Null);
        Assert.That(reference, Is.Not.Null);
        double scale = reference!.Max(Math.Abs);
        Assert.That(scale, Is.GreaterThan(1e-3), "the gradient is not trivially zero");
        for (int i = 0; i < reference!.Length; i++)
        {
            // Float32 accumulation against a float64 reference: 1e-5 of the largest component.
            Assert.That(trainerGrad![i], Is.EqualTo(reference[i]).Within(1e-5 * scale), $"gradient component {i}");
        }
    }

    [Test]
    public void ExactlyOneSgdStepPerBatch()
    {
        // With SGD(lr) and no momentum, one step moves the weights by exactly -lr × gradient.
        const double lr = 0.05;
        TinyMlp model = TestData.Model(initSeed: 5);
        double[]? before = null, grad = null, after = null;
        var callbacks = new ICallback[]
        {
            new ActionCallback(Event.BatchStart, _ => before = TestData.Weights(model)),
            new ActionCallback(Event.AfterTrainBatch, s => grad = TestData.Gradients(s.Model)),
            new ActionCallback(Event.BatchEnd, _ => after = TestData.Weights(model)),
        };
        using var trainer = TestData.Trainer(model, TestData.Loader(8, 8), "1ba", callbacks: callbacks, microbatch: 3,
            optimizerFactory: p => torch.optim.SGD(p, lr));
        trainer.Fit();
        for (int i = 0; i < before!.Length; i++)
        {
            Assert.That(after![i], Is.EqualTo(before[i] - lr * grad![i]).Within(1e-6), $"weight {i}");
        }
    }

    [Test]
    public void NonPositiveMicrobatchSizeIsRefused()
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => TestData.Trainer(TestData.Model(), TestData.Loader(8, 4), "1ep", microbatch: 0));
        Assert.That(ex!.Message, Does.Contain("microbatch"));
    }
}
