using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>Autocast placement, the fp16 loss scaler, device selection and seeding.</summary>
[TestFixture]
public class PrecisionDeviceTests
{
    [Test]
    public void AutocastWrapsForwardAndLossOnlyNeverBackwardOrTheStep()
    {
        TinyMlp model = TestData.Model();
        var outside = new List<(Event, ScalarType?)>();
        var events = new[] { Event.AfterForward, Event.BeforeLoss, Event.BeforeBackward, Event.AfterBackward, Event.AfterTrainBatch, Event.BatchEnd };
        var callbacks = events.Select(e => (ICallback)new ActionCallback(e, _ => outside.Add((e, Autocast.ActiveDtype(DeviceType.CPU))))).ToList();
        ScalarType? outputDtype = null;
        callbacks.Add(new ActionCallback(Event.AfterForward, s => outputDtype = s.Outputs!.dtype));
        using var trainer = TestData.Trainer(model, TestData.Loader(16, 8), "2ba", callbacks: callbacks, precision: Precision.AmpBf16, microbatch: 4);
        trainer.Fit();

        Assert.That(model.ForwardAutocast, Has.Count.EqualTo(4).And.All.EqualTo(ScalarType.BFloat16));
        Assert.That(model.LossAutocast, Has.Count.EqualTo(4).And.All.EqualTo(ScalarType.BFloat16));
        Assert.That(outside.Select(o => o.Item2), Has.All.Null, "autocast must be off at every event outside forward and loss");
        Assert.That(outputDtype, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(model.parameters().Select(p => p.dtype), Has.All.EqualTo(ScalarType.Float32), "parameters stay Float32");
    }

    [Test]
    public void Fp32RunsWithoutAutocastAndIsTheCpuDefault()
    {
        TinyMlp model = TestData.Model();
        using var trainer = TestData.Trainer(model, TestData.Loader(8, 8), "1ba");
        Assert.That(trainer.State.Precision, Is.EqualTo(Precision.Fp32));
        trainer.Fit();
        Assert.That(model.ForwardAutocast, Has.All.Null);
    }

    [Test]
    public void LoggingABFloat16LossNeverThrows()
    {
        // The model returns its loss in BFloat16 (no cast); the logged loss is a finite double.
        var logger = new MemoryLogger();
        TinyMlp model = TestData.Model(castLossToFloat: false);
        ScalarType? lossDtype = null;
        using var trainer = TestData.Trainer(model, TestData.Loader(16, 8), "2ba", loggers: new[] { logger }, precision: Precision.AmpBf16,
            callbacks: new[] { new ActionCallback(Event.AfterLoss, s => lossDtype = s.Loss!.dtype) });
        trainer.Fit();
        Assert.That(lossDtype, Is.EqualTo(ScalarType.BFloat16));
        double[] losses = logger.Values("loss/train/total").ToArray();
        Assert.That(losses, Has.Length.EqualTo(2));
        Assert.That(losses, Has.All.Matches<double>(double.IsFinite));
        Assert.That(losses[0], Is.InRange(0.3, 3.0), "a 3-class cross-entropy near ln 3 at the start");
    }

    [Test]
    public void Fp16ScalerSkipsTheStepAndBacksOffOnAnInjectedInfThenGrows()
    {
        // An algorithm puts +inf in one gradient after the backward of batch 2 (0-based 1).
        TinyMlp model = TestData.Model();
        var scales = new List<double>();
        double[]? beforeBadBatch = null, afterBadBatch = null;
        var injector = new InfGradientAtBatch(1);
        using var trainer = TestData.Trainer(model, TestData.Loader(48, 8), "6ba", precision: Precision.AmpFp16, algorithms: new[] { injector },
            gradScaler: new GradScaler(initScale: 1024, growthInterval: 2),
            callbacks: new ICallback[]
            {
                new ActionCallback(Event.BatchStart, s => { if (s.Timestamp.Batch == 1) beforeBadBatch = TestData.Weights(model); }),
                new ActionCallback(Event.BatchEnd, s => { if (s.Timestamp.Batch == 2) afterBadBatch = TestData.Weights(model); }),
            });
        trainer.Engine.KeepTraces = false;
        var recorder = new ActionCallback(Event.BatchEnd, _ => scales.Add(trainer.GradScaler.Scale));
        trainer.State.Callbacks.Add(recorder);
        trainer.Fit();

        Assert.That(injector.Injected, Is.True);
        Assert.That(afterBadBatch, Is.EqualTo(beforeBadBatch), "the step with inf gradients is skipped");
        // batch 0 good (tracker 1), batch 1 inf → ×0.5, batches 2–3 good → ×2 at the second, batches 4–5 → ×2 again.
        Assert.That(scales, Is.EqualTo(new[] { 1024.0, 512.0, 512.0, 1024.0, 1024.0, 2048.0 }));
        Assert.That(trainer.GradScaler.SkippedSteps, Is.EqualTo(1));
        Assert.That(model.ForwardAutocast, Has.All.EqualTo(ScalarType.Float16));
        Assert.That(TestData.Weights(model).All(double.IsFinite), Is.True);
    }

    [Test]
    public void Fp16LossIsScaledForBackwardAndGradientsAreUnscaledAtAfterTrainBatch()
    {
        // Gradients seen at AfterTrainBatch under amp_fp16 match those of the same batch under fp32 (unscaled),
        // to Float16 forward precision: 2e-2 of the largest component.
        double[] Grad(Precision precision)
        {
            double[]? g = null;
            var capture = new ActionCallback(Event.AfterTrainBatch, s => g = TestData.Gradients(s.Model));
            using var trainer = TestData.Trainer(TestData.Model(initSeed: 13), TestData.Loader(8, 8, dataSeed: 41), "1ba", callbacks: new[] { capture }, precision: precision);
            trainer.Fit();
            return g!;
        }

        double[] fp32 = Grad(Precision.Fp32);
        double[] fp16 = Grad(Precision.AmpFp16);
        double scale = fp32.Max(Math.Abs);
        for (int i = 0; i < fp32.Length; i++)
        {
            Assert.That(fp16[i], Is.EqualTo(fp32[i]).Within(2e-2 * scale), $"gradient {i}");
        }
    }

    [Test]
    public void GradScalerUnitBehaviourMatchesPyTorch()
    {
        using var scope = torch.NewDisposeScope();
        var p = nn.Parameter(torch.tensor(new float[] { 1f, 2f }));
        var opt = torch.optim.SGD(new[] { p }, 0.5);
        var scaler = new GradScaler(initScale: 8, growthFactor: 2, backoffFactor: 0.25, growthInterval: 1);
        Tensor loss = (p * p).sum();
        scaler.ScaleLoss(loss).backward();
        Assert.That(p.grad!.data<float>().ToArray(), Is.EqualTo(new[] { 16f, 32f }), "scaled gradient = 8 × 2p");
        Assert.That(scaler.Step(opt), Is.True);
        Assert.That(p.detach().data<float>().ToArray(), Is.EqualTo(new[] { 0f, 0f }), "unscaled step: p − 0.5 × 2p");
        scaler.Update();
        Assert.That(scaler.Scale, Is.EqualTo(16));
        opt.zero_grad();
        p.grad!.fill_(float.NaN);
        Assert.That(scaler.Step(opt), Is.False);
        scaler.Update();
        Assert.That(scaler.Scale, Is.EqualTo(4));
        IReadOnlyDictionary<string, string> saved = scaler.StateDict();
        var restored = new GradScaler();
        restored.LoadStateDict(saved);
        Assert.That((restored.Scale, restored.GrowthTracker, restored.SkippedSteps), Is.EqualTo((4.0, 0, 1L)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new GradScaler(backoffFactor: 1.5));
    }

    [Test]
    public void Fp16ConstructionFailsClearlyOnADeviceWithoutUsableKernels()
    {
        // The meta device has no autocast kernels: the check must fail with a message naming the precision and device.
        var ex = Assert.Throws<NotSupportedException>(() => Precision.AmpFp16.CheckSupported(torch.device("meta")));
        Assert.That(ex!.Message, Does.Contain("amp_fp16").And.Contain("meta").And.Contain("fp32"));
        Assert.DoesNotThrow(() => Precision.AmpFp16.CheckSupported(torch.CPU), "libtorch 2.10's CPU has Float16 kernels");
    }

    [Test]
    public void CudaRequestFailsClearlyWhenUnavailableAndAutoFallsBackToCpu()
    {
        if (torch.cuda.is_available())
        {
            Assert.Ignore("A CUDA device is present; this test covers the CPU-only case.");
        }

        var ex = Assert.Throws<InvalidOperationException>(() => new Trainer(TestData.Model(), new TrainerOptions { MaxDuration = "1ep", Device = "cuda", ProgressBar = false }, TestData.Loader(8, 4)));
        Assert.That(ex!.Message, Does.Contain("'cuda'").And.Contain("torch.cuda.is_available()"));
        Assert.That(TrainerDevice.Resolve("auto").type, Is.EqualTo(DeviceType.CPU));
        Assert.That(TrainerDevice.Resolve("CPU").type, Is.EqualTo(DeviceType.CPU));
        var bad = Assert.Throws<ArgumentException>(() => TrainerDevice.Resolve("tpu"));
        Assert.That(bad!.Message, Does.Contain("'tpu'"));
        using var auto = new Trainer(TestData.Model(), new TrainerOptions { ProgressBar = false });
        Assert.That(auto.State.Device.type, Is.EqualTo(DeviceType.CPU));
        Assert.That(auto.State.Precision, Is.EqualTo(Precision.Fp32));
    }

    [Test]
    public void SameSeedGivesSameLossesAndAnotherSeedDiffers()
    {
        // Dropout draws from libtorch's generator, so the seed decides the losses. Equal losses bit for bit are
        // promised only in deterministic mode (MKL may otherwise round by memory alignment, as on AMD EPYC).
        double[] Losses(int seed)
        {
            var logger = new MemoryLogger();
            using var trainer = TestData.Trainer(TestData.Model(initSeed: 7, dropout: 0.5), TestData.Loader(40, 8, shuffle: true, seed: 1), "1ep", loggers: new[] { logger }, seed: seed, deterministicMode: true);
            trainer.Fit();
            return logger.Values("loss/train/total").ToArray();
        }

        double[] a = Losses(123);
        double[] b = Losses(123);
        double[] c = Losses(456);
        Assert.That(b, Is.EqualTo(a));
        Assert.That(c, Is.Not.EqualTo(a));
    }

    /// <summary>Sets one gradient element to +inf after the backward of a chosen batch (to exercise the scaler).</summary>
    private sealed class InfGradientAtBatch(long batch) : Algorithm
    {
        public bool Injected { get; private set; }

        public override bool Match(Event e, State state) => e == Event.AfterBackward && state.Timestamp.Batch == batch;

        public override int? Apply(Event e, State state, Logger logger)
        {
            using var scope = torch.NewDisposeScope();
            Tensor grad = state.Model.parameters().First().grad!;
            grad.view(-1)[0] = torch.tensor(float.PositiveInfinity);
            Injected = true;
            return null;
        }
    }
}
