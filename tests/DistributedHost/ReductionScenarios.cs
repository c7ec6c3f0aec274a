using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Distributed;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.DistributedHost;

/// <summary>
/// Scenarios of what is reduced over ranks besides the gradients (logged loss, metrics), of parameters with gradients
/// on some ranks only, and of the all-reduce overlapped with backward. Each rank holds different data.
/// </summary>
public static class ReductionScenarios
{
    private static readonly DistributedOptions Alone = new() { ProcessGroup = new SingleProcessGroup() };

    private static TrainerOptions Options(Time? maxDuration, DistributedOptions? distributed = null) =>
        new() { MaxDuration = maxDuration, Device = "cpu", ProgressBar = false, DeterministicMode = true, Distributed = distributed ?? new DistributedOptions() };

    private static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    private static NormMlp Model()
    {
        torch.manual_seed(42);
        return new NormMlp();
    }

    /// <summary>The loss logged after one step (rank 0's logger), or the State's value when no logger is given.</summary>
    private static double OneStepLoss(IDataLoader loader, DistributedOptions? distributed, RecordingLogger? logger)
    {
        using var trainer = new Trainer(Model(), Options("1ba", distributed), loader, loggers: logger is null ? null : new[] { logger },
            optimizerFactory: ps => torch.optim.SGD(ps, 0.1));
        trainer.Fit();
        return trainer.State.Metrics["loss/train/total"];
    }

    /// <summary>
    /// Rank r trains one step on its own 4 samples (then 3 and 5): the loss logged on rank 0 and kept in the State must
    /// be the mean of the per-rank losses (the sample-weighted mean for 3 and 5); the train and eval accuracies the
    /// global ones (eval: 5 and 9 samples that are not sharded, so each rank evaluates only its own).
    /// </summary>
    public static void Logged(ScenarioContext c)
    {
        int r = c.Group.Rank;
        IReadOnlyList<HostSample> train = HostData.Samples(8, seed: 21);
        IReadOnlyList<HostSample> mine = train.Skip(4 * r).Take(4).ToList();
        var logger = new RecordingLogger();
        double distributed = OneStepLoss(new FixedBatchLoader(mine), null, logger);
        double alone = OneStepLoss(new FixedBatchLoader(mine), Alone, null);
        Tensor both = c.Group.AllGather(torch.tensor(new[] { alone }));
        double mean = (both[0].item<double>() + both[1].item<double>()) / 2;

        IReadOnlyList<HostSample> uneven = r == 0 ? train.Take(3).ToList() : train.Skip(3).ToList();
        double distributedUneven = OneStepLoss(new FixedBatchLoader(uneven), null, null);
        double aloneAll = OneStepLoss(new FixedBatchLoader(train), Alone, null);

        IReadOnlyList<HostSample> eval = HostData.Samples(14, seed: 5);
        IReadOnlyList<HostSample> myEval = r == 0 ? eval.Take(5).ToList() : eval.Skip(5).ToList();
        var evalLogger = new RecordingLogger();
        IReadOnlyDictionary<string, double> evalDistributed;
        using (var trainer = new Trainer(Model(), Options(null), loggers: new[] { evalLogger }))
        {
            evalDistributed = trainer.Eval(new FixedBatchLoader(myEval));
        }

        IReadOnlyDictionary<string, double> Alone1(IReadOnlyList<HostSample> samples)
        {
            using var trainer = new Trainer(Model(), Options(null, Alone));
            return trainer.Eval(new FixedBatchLoader(samples));
        }

        const string accuracy = "metrics/eval/Accuracy";
        double evalGlobal = Alone1(eval)[accuracy];
        double evalLocal = Alone1(myEval)[accuracy];

        // Synchronising twice counts once, and the local state comes back afterwards (torchmetrics' unsync).
        using var dp = new DataParallel(c.Group);
        var metric = new ClassificationAccuracy();
        metric.SetState(r == 0 ? new double[] { 1, 4 } : new double[] { 3, 4 });
        double first, second;
        using (dp.SynchronizeMetrics(new[] { metric }))
        {
            first = metric.Compute();
        }

        using (dp.SynchronizeMetrics(new[] { metric }))
        {
            second = metric.Compute();
        }

        string restored = string.Join(",", metric.GetState());
        if (r == 0)
        {
            File.WriteAllText(c.RankFile("logged"), string.Join("\n",
                $"logged={F(logger.Last("loss/train/total"))}",
                $"state={F(distributed)}",
                $"mean={F(mean)}",
                $"rank0={F(both[0].item<double>())}",
                $"uneven={F(distributedUneven)}",
                $"all={F(aloneAll)}",
                $"eval_logged={F(evalLogger.Last(accuracy))}",
                $"eval_returned={F(evalDistributed[accuracy])}",
                $"eval_global={F(evalGlobal)}",
                $"eval_rank0={F(evalLocal)}",
                $"sync={F(first)} {F(second)}",
                $"restored={restored}"));
        }
        else if (logger.Metrics.Count != 0)
        {
            throw new CheckFailedException("rank 1's logger received metrics; loggers run on rank 0 only");
        }
    }

    /// <summary>One step's gradients (after the all-reduce) and the weights after three steps of AdamW.</summary>
    private static (Tensor?[] Grads, byte[] State) BranchRun(IDataLoader loader, DistributedOptions? distributed, long steps)
    {
        torch.manual_seed(42);
        var model = new BranchMlp();
        Tensor?[]? grads = null;
        var hook = new HookCallback { OnAfterTrainBatch = s => grads ??= s.Model.parameters().Select(p => p.grad?.detach().clone().DetachFromDisposeScope()).ToArray() };
        using var trainer = new Trainer(model, Options(Time.FromBatch(steps), distributed), loader, callbacks: new[] { hook },
            optimizerFactory: ps => torch.optim.AdamW(ps, 0.01));
        trainer.Fit();
        return (grads!, HostData.StateBytes(model));
    }

    /// <summary>
    /// The branch <c>extra</c> runs on rank 1 only; <c>never</c> runs nowhere. With and without overlap: the reduced
    /// gradients equal one process's on all 8 samples (extra's on rank 0 included, never's absent everywhere) and
    /// the replicas stay bitwise identical over three AdamW steps (which update a parameter only when it has a gradient).
    /// </summary>
    public static void Unused(ScenarioContext c)
    {
        int r = c.Group.Rank;
        IReadOnlyList<HostSample> data = HostData.Samples(8, seed: 9);
        float[] maskAll = Enumerable.Range(0, 8).Select(i => i < 4 ? 0f : 1f).ToArray();
        var mine = new MaskedBatchLoader(data.Skip(4 * r).Take(4).ToList(), maskAll.Skip(4 * r).Take(4).ToArray());
        Tensor?[] referenceGrads = r == 0 ? BranchRun(new MaskedBatchLoader(data, maskAll), Alone, 1).Grads : Array.Empty<Tensor?>();
        var lines = new List<string>();
        foreach (bool overlap in new[] { true, false })
        {
            var options = new DistributedOptions { OverlapGradientReduce = overlap };
            (Tensor?[] grads, byte[] _) = BranchRun(mine, options, 1);
            (Tensor?[] _, byte[] state) = BranchRun(mine, options, 3);
            Tensor gathered = c.Group.AllGather(torch.tensor(state));
            bool identical = gathered[0].equal(gathered[1]).all().item<bool>();
            string missing = string.Join(",", grads.Select((g, i) => (g, i)).Where(p => p.g is null).Select(p => p.i));
            if (r == 0)
            {
                double error = grads.Zip(referenceGrads).Where(p => p.First is not null && p.Second is not null)
                    .Max(p => (p.First!.to(ScalarType.Float64) - p.Second!.to(ScalarType.Float64)).abs().max().item<double>());
                string referenceMissing = string.Join(",", referenceGrads.Select((g, i) => (g, i)).Where(p => p.g is null).Select(p => p.i));
                lines.Add($"overlap={overlap} graderr={F(error)} missing={missing} reference_missing={referenceMissing} replicas={(identical ? "identical" : "differ")}");
            }
        }

        if (r == 0)
        {
            File.WriteAllText(c.RankFile("unused"), string.Join("\n", lines));
        }
    }

    /// <summary>
    /// A weight also used by a module whose backward runs after the one that owns it: the first-step check must find
    /// the bucket copied too early, every rank must redo that step without overlap and keep it off, and the weights
    /// must equal the blocking run's bit for bit.
    /// </summary>
    public static void Tied(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(32, seed: 17);
        (byte[] State, bool Active) Run(bool overlap)
        {
            torch.manual_seed(42);
            var model = new TiedMlp();
            using var trainer = new Trainer(model, Options("3ba", new DistributedOptions { OverlapGradientReduce = overlap, BucketBytes = 1024 }), HostData.Loader(data, 4, shuffle: true),
                optimizerFactory: ps => torch.optim.AdamW(ps, 0.01));
            trainer.Fit();
            return (HostData.StateBytes(model), trainer.DataParallel.OverlapActive);
        }

        (byte[] overlapped, bool active) = Run(true);
        (byte[] blocking, bool _) = Run(false);
        File.WriteAllText(c.RankFile("tied"), string.Join("\n", $"equal={overlapped.AsSpan().SequenceEqual(blocking)}", $"active={active}"));
    }

    /// <summary>Final weights after 4 steps (microbatches of 2 out of 4 per rank, AdamW), and the buckets started during the last backward.</summary>
    private static (byte[] State, int Early, bool Active) DeepRun(IReadOnlyList<HostSample> data, bool overlap)
    {
        torch.manual_seed(42);
        var model = new DeepMlp();
        using var trainer = new Trainer(model, Options("4ba", new DistributedOptions { OverlapGradientReduce = overlap, BucketBytes = 1024 }) with { DeviceTrainMicrobatchSize = 2 },
            HostData.Loader(data, 4, shuffle: true), optimizerFactory: ps => torch.optim.AdamW(ps, 0.01));
        trainer.Fit();
        return (HostData.StateBytes(model), trainer.DataParallel.LastEarlyBuckets, trainer.DataParallel.OverlapActive);
    }

    /// <summary>The overlapped all-reduce gives the same weights, bit for bit, as the blocking one.</summary>
    public static void Overlap(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(32, seed: 13);
        (byte[] overlapped, int early, bool active) = DeepRun(data, overlap: true);
        (byte[] blocking, int earlyOff, bool _) = DeepRun(data, overlap: false);
        File.WriteAllText(c.RankFile("overlap"), string.Join("\n",
            $"equal={overlapped.AsSpan().SequenceEqual(blocking)}",
            $"bytes={overlapped.Length}",
            $"early={early}",
            $"early_off={earlyOff}",
            $"active={active}"));
    }
}
