using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Tests.Training;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms.Training;

/// <summary>
/// The six training-time algorithms together on a tiny BERT masked LM: each runs at exactly its Composer events
/// (SelectiveBackprop first at after_dataloader), SAM's second pass repeats the loss events (so LabelSmoothing and
/// GradientClipping run twice per batch), and training ends with finite weights.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public class TrainingAlgorithmsTogetherTests
{
    [Test]
    public void AllSixTrainTogetherEachAtItsEvents()
    {
        torch.manual_seed(6);
        var model = new BertForMaskedLM(ModelTestData.Tiny());
        DataLoader<long> Loader(int count) => new(new ListDataset<long>(Enumerable.Range(0, count).Select(i => (long)i).ToList()), 4, s =>
        {
            Tensor labels = torch.randint(0, 60, new long[] { s.Count, 12 });
            labels.masked_fill_(torch.rand(s.Count, 12).gt(0.4), -100);
            return ModelTestData.RandomBatch(s.Count, 12, labels: labels);
        });
        IAlgorithm[] algorithms =
        {
            new EMA("2ba"), new GradientClipping(ClippingType.Norm, 0.5), new LabelSmoothing(0.1),
            new LayerFreezing(0.0, 0.5), new SAM(rho: 0.05), new SelectiveBackprop(0, 1, 0.5, 1, 2),
        };
        using Trainer trainer = TestData.Trainer(model, Loader(8), "2ep", eval: Loader(4), evalInterval: "1ep", algorithms: algorithms,
            optimizerFactory: p => torch.optim.AdamW(p, 1e-3));
        trainer.Engine.KeepTraces = true;

        trainer.Fit();

        var ran = trainer.Engine.Traces.Where(t => t.Run).ToList();
        var expected = new Dictionary<string, Event[]>
        {
            ["ema"] = new[] { Event.BatchStart, Event.BatchEnd, Event.EvalStart, Event.EvalEnd },
            ["gradient_clipping"] = new[] { Event.AfterTrainBatch },
            ["label_smoothing"] = new[] { Event.BeforeLoss, Event.AfterLoss },
            ["layer_freezing"] = new[] { Event.EpochEnd },
            ["selective_backprop"] = new[] { Event.AfterDataloader },
        };
        foreach ((string name, Event[] events) in expected)
        {
            Assert.That(ran.Where(t => t.Name == name).Select(t => t.Event).Distinct(), Is.EquivalentTo(events), name);
        }

        Assert.That(ran.Select(t => t.Name), Has.None.EqualTo("sam"), "SAM acts only at after_load (before the traces were kept)");
        Assert.That(ran.Where(t => t.Event == Event.AfterDataloader).Select(t => t.Order), Has.All.EqualTo(0), "selective_backprop runs first");
        Assert.That(ran.Count(t => t.Name == "selective_backprop"), Is.EqualTo(2), "on batch 0 of each epoch (interrupt 2)");
        Assert.That(ran.Count(t => t.Name == "label_smoothing" && t.Event == Event.BeforeLoss), Is.EqualTo(8), "4 batches × 2 SAM passes");
        Assert.That(ran.Count(t => t.Name == "gradient_clipping"), Is.EqualTo(8));
        Assert.That(trainer.State.Optimizers.Single(), Is.InstanceOf<SAMOptimizer>());
        Assert.That(((LayerFreezing)algorithms[3]).LayersFrozen, Is.GreaterThan(0));
        Assert.That(TestData.Weights(model).All(double.IsFinite), Is.True);
        Assert.That(trainer.State.Metrics["metrics/eval/CrossEntropy"], Is.GreaterThan(0).And.LessThan(10));
    }
}
