using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Training;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms.Training;

/// <summary>
/// GradientClipping: AGC's coefficient on Composer's own cases (tests/algorithms/test_gradient_clipping.py), norm and
/// value clipping against a float64 reference on random gradients, and the Trainer ordering under amp_fp16 (clipping
/// sees unscaled gradients and runs before the optimizer step).
/// </summary>
[TestFixture]
public class GradientClippingTests
{
    private static Tensor T(float[] values, params long[] shape) => torch.tensor(values).reshape(shape);

    private static float[] Values(Tensor t) => t.contiguous().data<float>().ToArray();

    // Composer's test_get_clipped_gradients_{1D,2D,3D,4D}: the clipped gradient, exactly.
    [Test]
    public void TheAdaptiveCoefficientReproducesComposersCases()
    {
        using var scope = torch.NewDisposeScope();
        (Tensor W, Tensor G, double Threshold, float[] Expected)[] cases =
        {
            (T(new[] { 3f, 4f }, 2), T(new[] { 7f, 24f }, 2), 0.5, new[] { 0.7f, 2.4f }),
            (T(new[] { 3f, 4f, 9f, 40f }, 2, 2), T(new[] { 7f, 24f, 5f, 12f }, 2, 2), 0.5, new[] { 0.7f, 2.4f, 5f, 12f }),
            (T(new[] { 3f, 8f, 2f, 2f, 1f, 3f, 3f, 9f }, 2, 2, 2), T(new[] { 1f, 1f, 3f, 5f, 1f, 1f, 1f, 1f }, 2, 2, 2), 1 / 3.0,
                new[] { 0.5f, 0.5f, 1.5f, 2.5f, 1f, 1f, 1f, 1f }),
            (T(new[] { 3f, 8f, 2f, 2f, 1f, 3f, 3f, 9f }, 2, 2, 2, 1), T(new[] { 1f, 1f, 3f, 5f, 1f, 1f, 1f, 1f }, 2, 2, 2, 1), 1 / 3.0,
                new[] { 0.5f, 0.5f, 1.5f, 2.5f, 1f, 1f, 1f, 1f }),
            // test_get_clipped_gradients_1D_with_zeros: zero weights drop the gradient; zero gradients stay zero.
            (T(new[] { 0f, 0f }, 2), T(new[] { 1f, 1f }, 2), 1e-4, new[] { 0f, 0f }),
            (T(new[] { 1f, 1f }, 2), T(new[] { 0f, 0f }, 2), 1e-4, new[] { 0f, 0f }),
            (T(new[] { 0f, 0f }, 2), T(new[] { 0f, 0f }, 2), 1e-4, new[] { 0f, 0f }),
        };
        foreach ((Tensor w, Tensor g, double threshold, float[] expected) in cases)
        {
            Tensor clipped = g * GradientClipping.AdaptiveClippingCoefficient(w, g, threshold);
            Assert.That(Values(clipped), Is.EqualTo(expected).Within(1e-6), $"shape [{string.Join(", ", w.shape)}]");
        }
    }

    [TestCase(ClippingType.Norm, 0.3)]
    [TestCase(ClippingType.Norm, 1e3)]
    [TestCase(ClippingType.Value, 0.05)]
    [TestCase(ClippingType.Adaptive, 0.02)]
    public void TheFunctionalFormMatchesAFloat64Reference(ClippingType type, double threshold)
    {
        using var scope = torch.NewDisposeScope();
        var generator = new torch.Generator(1234);
        Parameter[] ps =
        {
            new(torch.randn(new long[] { 6, 5 }, generator: generator)),
            new(torch.randn(new long[] { 6 }, generator: generator)),
            new(torch.randn(new long[] { 3, 2, 4 }, generator: generator)),
        };
        foreach (Parameter p in ps)
        {
            p.grad = torch.randn(p.shape, generator: generator) * 0.3;
        }

        Tensor[] g64 = ps.Select(p => p.grad!.to(ScalarType.Float64)).ToArray();
        Tensor[] w64 = ps.Select(p => p.detach().to(ScalarType.Float64)).ToArray();
        Tensor[] expected = type switch
        {
            ClippingType.Norm => NormReference(g64, threshold),
            ClippingType.Value => g64.Select(g => g.clamp(-threshold, threshold)).ToArray(),
            _ => g64.Select((g, i) => AdaptiveReference(w64[i], g, threshold)).ToArray(),
        };

        GradientClipping.ApplyGradientClipping(ps, type, threshold);

        for (int i = 0; i < ps.Length; i++)
        {
            double err = (ps[i].grad!.to(ScalarType.Float64) - expected[i]).abs().max().item<double>();
            Assert.That(err, Is.LessThan(1e-6), $"parameter {i}: max |float32 − float64 reference|");
        }

        if (type == ClippingType.Norm && threshold < 1)
        {
            double norm = Math.Sqrt(ps.Sum(p => p.grad!.to(ScalarType.Float64).pow(2).sum().item<double>()));
            Assert.That(norm, Is.EqualTo(threshold).Within(1e-5), "the global norm is brought to the threshold");
        }
    }

    // Reference: ‖g‖ over all tensors; coefficient min(1, t / (‖g‖ + 1e-6)) as PyTorch's clip_grad_norm_.
    private static Tensor[] NormReference(Tensor[] g, double threshold)
    {
        double norm = Math.Sqrt(g.Sum(x => x.pow(2).sum().item<double>()));
        double coefficient = Math.Min(1.0, threshold / (norm + 1e-6));
        return g.Select(x => x * coefficient).ToArray();
    }

    // Reference, element by element: each output row (or the whole of a 1-d tensor) scaled by min(1, t‖w‖/‖g‖).
    private static Tensor AdaptiveReference(Tensor w, Tensor g, double threshold)
    {
        if (w.ndim == 1)
        {
            double c = Math.Min(1.0, threshold * w.norm().item<double>() / g.norm().item<double>());
            return g * c;
        }

        var rows = new List<Tensor>();
        for (long r = 0; r < w.shape[0]; r++)
        {
            double c = Math.Min(1.0, threshold * w[r].norm().item<double>() / g[r].norm().item<double>());
            rows.Add(g[r] * c);
        }

        return torch.stack(rows);
    }

    [Test]
    public void UnderAmpFp16ClippingSeesUnscaledGradientsAndRunsBeforeTheStep()
    {
        const double threshold = 0.01;
        var scaler = new GradScaler(initScale: 1024);
        var seen = new List<(double Norm, double[] Grad, double[] WeightsBefore)>();
        var afterStep = new List<double[]>();
        TinyMlp model = TestData.Model();
        var probe = new ActionCallback(Event.AfterTrainBatch, s => seen.Add((
            Math.Sqrt(TestData.Gradients(s.Model).Sum(x => x * x)), TestData.Gradients(s.Model), TestData.Weights(s.Model))));
        var stepped = new ActionCallback(Event.BatchEnd, s => afterStep.Add(TestData.Weights(s.Model)));
        using var trainer = TestData.Trainer(model, TestData.Loader(32, 8), "3ba", callbacks: new ICallback[] { probe, stepped },
            precision: Precision.AmpFp16, gradScaler: scaler, algorithms: new[] { new GradientClipping(ClippingType.Norm, threshold) });

        trainer.Fit();

        Assert.That(seen, Has.Count.EqualTo(3));
        foreach ((double norm, _, _) in seen)
        {
            // Clipping the still-scaled gradients would leave a norm of threshold / 1024 after unscaling.
            Assert.That(norm, Is.EqualTo(threshold).Within(threshold * 1e-3), "callbacks at after_train_batch run after the algorithm: the norm is the threshold");
        }

        // SGD(lr 0.05) stepped with exactly the clipped gradients: w' = w − 0.05 g.
        for (int b = 0; b < 3; b++)
        {
            double[] expected = seen[b].WeightsBefore.Zip(seen[b].Grad, (w, g) => w - (0.05 * g)).ToArray();
            Assert.That(afterStep[b], Is.EqualTo(expected).Within(1e-6), $"batch {b}");
        }
    }

    [Test]
    public void BadArgumentsAreRefusedWithTheValueAndWhatWasExpected()
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new GradientClipping(ClippingType.Norm, -1));
        Assert.That(ex!.Message, Does.Contain("clipping_threshold").And.Contain("> 0").And.Contain("-1"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GradientClipping((ClippingType)7, 1));
        var bad = new AlgorithmDescription("gradient_clipping", new Dictionary<string, string> { ["clipping_type"] = "sideways" });
        var ex2 = Assert.Throws<ArgumentException>(() => AlgorithmCatalog.Create(bad));
        Assert.That(ex2!.Message, Does.Contain("sideways").And.Contain("norm, value, adaptive"));
    }

    [Test]
    public void TheDescriptionRoundTripsThroughTheCatalog()
    {
        var gc = new GradientClipping(ClippingType.Adaptive, 0.123456789);
        var again = (GradientClipping)AlgorithmCatalog.Create(gc.Describe());
        Assert.That((again.ClippingType, again.ClippingThreshold), Is.EqualTo((ClippingType.Adaptive, 0.123456789)));
        Assert.That(gc.Describe().Hyperparameters["clipping_type"], Is.EqualTo("adaptive"));
    }
}
