using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Tests.Training;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms.Training;

/// <summary>A float64 linear regressor x [B, 3] → [B, 2] with the mean squared error against "t".</summary>
public sealed class Float64Regressor : ComposerModel
{
    private readonly Linear _fc;

    public Float64Regressor()
        : base("float64_regressor")
    {
        _fc = nn.Linear(3, 2, dtype: ScalarType.Float64);
        RegisterComponents();
    }

    public Linear Fc => _fc;

    public override Tensor forward(Batch batch) => _fc.call(batch["x"]);

    public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.mse_loss(outputs, batch["t"]);
}

/// <summary>
/// SAM: a Trainer step against a SAM step computed by hand in float64 (gradient at w, climb to w + ρg/(‖g‖+ε),
/// gradient there, SGD step from w; Foret et al. 2021, Composer's SAMOptimizer), the interval (one or two
/// forward/backward passes per batch), amp_fp16 refused, and a bitwise-exact resume.
/// </summary>
[TestFixture]
public class SAMTests
{
    private static Batch Regression(IReadOnlyList<long> indices)
    {
        var x = new double[indices.Count * 3];
        var t = new double[indices.Count * 2];
        for (int i = 0; i < indices.Count; i++)
        {
            var rng = new Random((int)indices[i] + 100);
            for (int j = 0; j < 3; j++)
            {
                x[(i * 3) + j] = (rng.NextDouble() * 2) - 1;
            }

            t[i * 2] = (2 * x[i * 3]) - x[(i * 3) + 2] + 0.5;
            t[(i * 2) + 1] = rng.NextDouble();
        }

        return new Batch(new Dictionary<string, Tensor>
        {
            ["x"] = torch.tensor(x, dtype: ScalarType.Float64).reshape(indices.Count, 3),
            ["t"] = torch.tensor(t, dtype: ScalarType.Float64).reshape(indices.Count, 2),
        });
    }

    private static DataLoader<long> RegressionLoader() =>
        new(new ListDataset<long>(Enumerable.Range(0, 8).Select(i => (long)i).ToList()), 4, Regression);

    /// <summary>The gradient of the batch's MSE at (w, b), by autograd on fresh float64 leaves.</summary>
    private static (Tensor W, Tensor B) Gradient(Tensor w, Tensor b, Batch batch)
    {
        Tensor wl = w.detach().clone().requires_grad_(true);
        Tensor bl = b.detach().clone().requires_grad_(true);
        Tensor loss = (batch["x"].matmul(wl.t()) + bl - batch["t"]).pow(2).mean();
        loss.backward();
        return (wl.grad!.clone(), bl.grad!.clone());
    }

    [TestCase(1, TestName = "EveryStepIsTheHandComputedSamStep")]
    [TestCase(2, TestName = "WithInterval2EverySecondStepIsASamStepAndTheOthersPlainSgd")]
    public void TrainerStepsMatchAHandComputedSamStep(int interval)
    {
        const double rho = 0.3;
        const double eps = 1e-12;
        const double lr = 0.1;
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(8);
        var model = new Float64Regressor();
        Tensor w = model.Fc.weight!.detach().clone();
        Tensor b = model.Fc.bias!.detach().clone();
        var after = new List<(Tensor W, Tensor B)>();
        var record = new ActionCallback(Event.BatchEnd, s => after.Add((model.Fc.weight!.detach().clone().DetachFromDisposeScope(), model.Fc.bias!.detach().clone().DetachFromDisposeScope())));
        using Trainer trainer = TestData.Trainer(model, RegressionLoader(), "4ba", callbacks: new[] { record },
            algorithms: new[] { new SAM(rho, eps, interval) }, optimizerFactory: p => torch.optim.SGD(p, lr));

        trainer.Fit();

        Assert.That(trainer.State.Optimizers.Single(), Is.InstanceOf<SAMOptimizer>());
        for (int step = 0; step < 4; step++)
        {
            Batch batch = Regression(Enumerable.Range((step % 2) * 4, 4).Select(i => (long)i).ToList());
            (Tensor gw, Tensor gb) = Gradient(w, b, batch);
            if ((step + 1) % interval == 0)
            {
                double norm = Math.Sqrt(gw.pow(2).sum().item<double>() + gb.pow(2).sum().item<double>());
                double scale = rho / (norm + eps);
                (gw, gb) = Gradient(w + (gw * scale), b + (gb * scale), batch);
            }

            w = w - (lr * gw);
            b = b - (lr * gb);
            double err = Math.Max((after[step].W - w).abs().max().item<double>(), (after[step].B - b).abs().max().item<double>());
            Assert.That(err, Is.LessThan(1e-12), $"step {step + 1}: max |trainer − hand-computed| in float64");
        }
    }

    [Test]
    public void ASamStepRunsTheForwardAndBackwardTwiceWithTheirEventsAndLogsTheFirstLoss()
    {
        var events = new EventRecorder();
        var memory = new MemoryLogger();
        var firstLosses = new List<double>();
        int forwardsInBatch = 0;
        var callbacks = new ICallback[]
        {
            events,
            new ActionCallback(Event.BatchStart, _ => forwardsInBatch = 0),
            new ActionCallback(Event.AfterLoss, s =>
            {
                if (forwardsInBatch++ == 0)
                {
                    firstLosses.Add(s.Loss!.item<float>());
                }
            }),
        };
        using Trainer trainer = TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "4ba", callbacks: callbacks, loggers: new[] { memory },
            algorithms: new[] { new SAM(rho: 0.05, interval: 2) });

        trainer.Fit();

        Assert.That(events.Count(Event.BeforeForward), Is.EqualTo(6), "1 + 2 + 1 + 2 passes");
        Assert.That(events.Count(Event.AfterTrainBatch), Is.EqualTo(6));
        Assert.That(events.Count(Event.BeforeTrainBatch), Is.EqualTo(4));
        Assert.That(memory.Values("loss/train/total"), Is.EqualTo(firstLosses).Within(1e-6), "the logged loss is the unperturbed one");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ResumeWithSamIsBitwiseExact()
    {
        Trainer Run(CheckpointOptions? options, params ICallback[] callbacks) =>
            TestData.Trainer(TestData.Model(), TestData.Loader(48, 8, shuffle: true, seed: 2), "6ba", callbacks: callbacks, checkpoint: options, runName: "sam-resume",
                algorithms: new[] { new SAM(rho: 0.1, interval: 2) }, optimizerFactory: p => torch.optim.Adam(p, 0.01));

        using Trainer uninterrupted = Run(null);
        uninterrupted.Fit();
        var options = new CheckpointOptions { SaveFolder = TestData.TempFolder(), SaveInterval = "1ba", Autoresume = true };
        using (Trainer interrupted = Run(options, TestData.StopAt(Event.BatchEnd, 3)))
        {
            interrupted.Fit();
        }

        using Trainer resumed = Run(options);
        Assert.That(((SAMOptimizer)resumed.State.Optimizers[0]).GlobalStep, Is.EqualTo(3), "the interval keeps its phase");
        resumed.Fit();

        TestData.AssertBitwiseEqual(resumed.Model, uninterrupted.Model);
    }

    [Test]
    public void AmpFp16AndBadArgumentsAreRefused()
    {
        var ex = Assert.Throws<AlgorithmException>(() => TestData.Trainer(TestData.Model(), TestData.Loader(8, 8), "1ba", precision: Precision.AmpFp16, algorithms: new[] { new SAM() }));
        Assert.That(ex!.Message, Does.Contain("amp_fp16").And.Contain("amp_bf16 or fp32"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new SAM(rho: -1))!.Message, Does.Contain("rho").And.Contain("-1"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SAM(interval: 0));
        var sam = new SAM(0.2, 1e-9, 3);
        Assert.That(AlgorithmCatalog.Create(sam.Describe()).Describe(), Is.EqualTo(sam.Describe()));
    }
}
