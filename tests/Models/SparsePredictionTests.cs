using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static ComposerSharp.Tests.Models.ModelTestData;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

/// <summary>
/// BertForMaskedLM's sparse prediction (the head only on positions whose label is not −100) against the dense head
/// with the same weights: outputs, loss, every parameter gradient and the metrics, on fresh random inputs.
/// </summary>
[TestFixture]
public class SparsePredictionTests
{
    private static (BertForMaskedLM Sparse, BertForMaskedLM Dense) Pair(int seed)
    {
        TransformerConfig config = Tiny() with { Dropout = 0.0, AttentionDropout = 0.0 };
        torch.manual_seed(seed);
        var sparse = new BertForMaskedLM(config);
        var dense = new BertForMaskedLM(config, new MaskedLMOptions { SparsePrediction = false });
        dense.load_state_dict(sparse.state_dict());
        return (sparse, dense);
    }

    /// <summary>Labels [b, t]: a random id at about <paramref name="rate"/> of the positions (none on padding), −100 elsewhere.</summary>
    private static Tensor RandomLabels(Batch batch, double rate)
    {
        Tensor ids = batch["input_ids"];
        Tensor selected = torch.rand(ids.shape).lt(rate).logical_and(batch["attention_mask"].ne(0));
        return torch.randint(0, 60, ids.shape, dtype: ScalarType.Int64).masked_fill(selected.logical_not(), Losses.IgnoreIndex);
    }

    [TestCase(5, 0.15)]
    [TestCase(6, 0.5)]
    [TestCase(7, 1.0)]
    [Category(TestCategories.Slow)]
    public void LossAndGradientsEqualTheDensePath(int seed, double rate)
    {
        using var d = torch.NewDisposeScope();
        (BertForMaskedLM sparse, BertForMaskedLM dense) = Pair(seed);
        Batch probe = RandomBatch(4, 19, padLast: 5);
        var tensors = probe.ToDictionary(kv => kv.Key, kv => kv.Value);
        tensors["labels"] = RandomLabels(probe, rate);
        var batch = new Batch(tensors);
        long selected = tensors["labels"].ne(Losses.IgnoreIndex).sum().item<long>();
        Assert.That(selected, Is.GreaterThan(0), "the random labels select no position; pick another seed");

        Tensor sparseOut = sparse.call(batch);
        Tensor denseOut = dense.call(batch);
        Assert.That(sparseOut.shape, Is.EqualTo(new long[] { selected, 64 }));
        Assert.That(denseOut.shape, Is.EqualTo(new long[] { 4, 19, 64 }));

        // The sparse rows are the dense logits at the selected positions, in row-major order.
        Tensor positions = tensors["labels"].reshape(-1).ne(Losses.IgnoreIndex);
        Tensor denseSelected = denseOut.reshape(-1, 64)[positions];
        Assert.That((sparseOut - denseSelected).abs().max().item<float>(), Is.LessThan(1e-5f), "logits at the selected positions");

        Tensor sparseLoss = sparse.Loss(sparseOut, batch);
        Tensor denseLoss = dense.Loss(denseOut, batch);
        Assert.That(sparseLoss.item<float>(), Is.EqualTo(denseLoss.item<float>()).Within(1e-5).Percent, "loss");
        sparseLoss.backward();
        denseLoss.backward();

        var denseGrads = dense.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!);
        foreach ((string name, TorchSharp.Modules.Parameter p) in sparse.named_parameters())
        {
            Tensor g = p.grad!, reference = denseGrads[name];
            double scale = Math.Max(reference.abs().max().item<float>(), 1e-12);
            double error = (g - reference).abs().max().item<float>() / scale;
            Assert.That(error, Is.LessThan(1e-5), $"gradient of {name}: max |sparse − dense| / max |dense|");
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void MetricsEqualTheDensePath()
    {
        using var d = torch.NewDisposeScope();
        (BertForMaskedLM sparse, BertForMaskedLM dense) = Pair(8);
        sparse.eval();
        dense.eval();
        IReadOnlyList<IMetric> sparseMetrics = sparse.GetMetrics(isTrain: false), denseMetrics = dense.GetMetrics(isTrain: false);
        for (int i = 0; i < 3; i++)
        {
            Batch probe = RandomBatch(3, 16, padLast: 4);
            var tensors = probe.ToDictionary(kv => kv.Key, kv => kv.Value);
            tensors["labels"] = RandomLabels(probe, 0.3);
            var batch = new Batch(tensors);
            Tensor s = sparse.EvalForward(batch), dn = dense.EvalForward(batch);
            for (int m = 0; m < sparseMetrics.Count; m++)
            {
                sparse.UpdateMetric(batch, s, sparseMetrics[m]);
                dense.UpdateMetric(batch, dn, denseMetrics[m]);
            }
        }

        for (int m = 0; m < sparseMetrics.Count; m++)
        {
            Assert.That(sparseMetrics[m].Name, Is.EqualTo(denseMetrics[m].Name));
            Assert.That(sparseMetrics[m].Compute(), Is.EqualTo(denseMetrics[m].Compute()).Within(1e-3).Percent, sparseMetrics[m].Name);
        }
    }

    [Test]
    public void WithoutLabelsTheOutputsAreDenseAndWithoutSelectedPositionsTheLossIsZero()
    {
        using var d = torch.NewDisposeScope();
        (BertForMaskedLM sparse, _) = Pair(9);
        Batch unlabelled = RandomBatch(2, 8);
        Assert.That(sparse.call(unlabelled).shape, Is.EqualTo(new long[] { 2, 8, 64 }));

        var tensors = unlabelled.ToDictionary(kv => kv.Key, kv => kv.Value);
        tensors["labels"] = torch.full(2, 8, Losses.IgnoreIndex, dtype: ScalarType.Int64);
        var none = new Batch(tensors);
        Tensor outputs = sparse.call(none);
        Assert.That(outputs.shape, Is.EqualTo(new long[] { 0, 64 }));
        Tensor loss = sparse.Loss(outputs, none);
        Assert.That(loss.item<float>(), Is.EqualTo(0f));
        loss.backward();
        Assert.That(sparse.parameters().All(p => p.grad is null || p.grad.isfinite().all().item<bool>()), Is.True, "gradients must stay finite");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void LabelsOfAnotherShapeNameTheProblem()
    {
        using var d = torch.NewDisposeScope();
        (BertForMaskedLM sparse, _) = Pair(10);
        var tensors = RandomBatch(2, 8).ToDictionary(kv => kv.Key, kv => kv.Value);
        tensors["labels"] = torch.zeros(2, 7, dtype: ScalarType.Int64);
        var batch = new Batch(tensors);
        Tensor outputs = sparse.call(batch);
        Assert.That(outputs.shape, Is.EqualTo(new long[] { 2, 8, 64 }), "labels that are not per token leave the head dense");
        var ex = Assert.Throws<ArgumentException>(() => sparse.Loss(outputs, batch))!;
        Assert.That(ex.Message, Does.Contain("logits [2, 8, 64] and labels [2, 7] do not match"));
    }
}
