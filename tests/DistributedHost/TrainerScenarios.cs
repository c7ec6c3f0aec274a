using System.Globalization;
using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Distributed;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.DistributedHost;

/// <summary>Scenarios that train with the Trainer on every rank; references run alone on rank 0 (a <see cref="SingleProcessGroup"/>).</summary>
public static class TrainerScenarios
{
    /// <summary>The scenarios' common settings: CPU, no progress bar, deterministic mode, and <paramref name="maxDuration"/>.</summary>
    private static TrainerOptions Options(Time? maxDuration) =>
        new() { MaxDuration = maxDuration, Device = "cpu", ProgressBar = false, DeterministicMode = true };

    private static readonly DistributedOptions Alone = new() { ProcessGroup = new SingleProcessGroup() };

    /// <summary>The scenario called <paramref name="name"/>.</summary>
    public static Action<ScenarioContext> Find(string name) => name switch
    {
        "grads" => Gradients,
        "grads-uneven" => UnevenGradients,
        "replicas" => Replicas,
        "eval" => Evaluation,
        "resume" => Resume,
        "stop" => Stop,
        "trainer-throw" => TrainerThrow,
        "mismatch" => Mismatch,
        "resize" => Resize,
        "logged" => ReductionScenarios.Logged,
        "unused" => ReductionScenarios.Unused,
        "overlap" => ReductionScenarios.Overlap,
        "tied" => ReductionScenarios.Tied,
        "depth-freeze" => DepthAndFreezing,
        "mlm-world" => MlmAcrossWorldSizes,
        _ => throw new ArgumentException($"Unknown scenario '{name}'; expected collectives, throw, hang, grads, grads-uneven, replicas, eval, resume, stop, trainer-throw, mismatch, resize, logged, unused, overlap, tied, depth-freeze or mlm-world."),
    };

    private static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    private static NormMlp Model(double dropout = 0.0)
    {
        torch.manual_seed(42);
        return new NormMlp(dropout);
    }

    /// <summary>The gradients after the all-reduce of one step (captured at AfterTrainBatch, before the optimizer step).</summary>
    private static Tensor[] OneStepGradients(IDataLoader loader, DistributedOptions? distributed)
    {
        Tensor[]? grads = null;
        NormMlp model = Model();
        var hook = new HookCallback { OnAfterTrainBatch = s => grads = s.Model.parameters().Select(p => p.grad!.detach().clone().DetachFromDisposeScope()).ToArray() };
        using var trainer = new Trainer(model, Options("1ba") with { Distributed = distributed ?? new DistributedOptions() }, loader, callbacks: new[] { hook },
            optimizerFactory: ps => torch.optim.SGD(ps, 0.1));
        trainer.Fit();
        return grads ?? throw new CheckFailedException("no gradients were captured");
    }

    private static double MaxError(Tensor[] a, Tensor[] b) => a.Zip(b).Max(p => (p.First.to(ScalarType.Float64) - p.Second.to(ScalarType.Float64)).abs().max().item<double>());

    /// <summary>2 ranks × batch 4 (sharded loader of 8 samples) against 1 process × batch 8.</summary>
    public static void Gradients(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(8);
        Tensor[] distributed = OneStepGradients(HostData.Loader(data, 4, shuffle: false), null);
        if (c.Group.Rank == 0)
        {
            Tensor[] reference = OneStepGradients(HostData.Loader(data, 8, shuffle: false), Alone);
            File.WriteAllText(c.RankFile("graderr"), F(MaxError(distributed, reference)));
        }
    }

    /// <summary>Rank 0 holds 3 samples and rank 1 holds 5: the step must equal one over all 8 (weights 3/8 and 5/8, not 1/2).</summary>
    public static void UnevenGradients(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(8);
        IReadOnlyList<HostSample> mine = c.Group.Rank == 0 ? data.Take(3).ToList() : data.Skip(3).ToList();
        Tensor[] distributed = OneStepGradients(new FixedBatchLoader(mine), null);
        if (c.Group.Rank == 0)
        {
            Tensor[] reference = OneStepGradients(new FixedBatchLoader(data), Alone);
            File.WriteAllText(c.RankFile("graderr"), F(MaxError(distributed, reference)));
        }
    }

    /// <summary>3 epochs with shuffling, dropout, AdamW, amp_bf16 and LowPrecisionLayerNorm; each rank writes its final state and losses.</summary>
    public static void Replicas(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(64);
        NormMlp model = Model(dropout: 0.1);
        var losses = new List<double>();
        var hook = new HookCallback { OnBatchEnd = s => losses.Add(s.Metrics["loss/train/total"]) };
        using var trainer = new Trainer(model, Options("3ep") with { Precision = Precision.AmpBf16 }, HostData.Loader(data, 4, shuffle: true), callbacks: new[] { hook },
            algorithms: new IAlgorithm[] { new LowPrecisionLayerNorm() }, optimizerFactory: ps => torch.optim.AdamW(ps, 0.01));
        trainer.Fit();
        bool swapped = model.modules().Any(m => m is LPLayerNorm);
        File.WriteAllBytes(c.RankFile("state"), HostData.StateBytes(model));
        File.WriteAllText(c.RankFile("replicas"), string.Join("\n",
            $"lpln={swapped}",
            $"batches={trainer.State.Timestamp.Batch}",
            $"samples={trainer.State.Timestamp.Sample}",
            $"first={F(losses.Take(8).Average())}",
            $"last={F(losses.TakeLast(8).Average())}"));
    }

    /// <summary>
    /// A tiny BERT MLM with StochasticDepth (blocks dropped at random per step) and LayerFreezing (the earliest layers
    /// frozen from half-way), 2 epochs × 8 batches of 4 per rank, AdamW: each rank writes its final state, the blocks'
    /// drop rates and how many parameters were frozen at the end.
    /// </summary>
    public static void DepthAndFreezing(ScenarioContext c)
    {
        torch.manual_seed(7);
        var config = TransformerConfig.Preset("bert-tiny") with { HiddenSize = 32, NumHeads = 4, IntermediateSize = 64, MaxSequenceLength = 16, VocabSize = 64 };
        var model = new BertForMaskedLM(config);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 64, SequenceLength = 16, RegularVocabSize = 60, Seed = 4 });
        using var trainer = new Trainer(model, Options("2ep"), new DataLoader<long[]>(data, 4, new MlmCollator(data.Vocabulary), shuffle: true, seed: 2),
            algorithms: new IAlgorithm[] { new StochasticDepth(dropRate: 0.5), new LayerFreezing(freezeStart: 0.5, freezeLevel: 0.5) },
            optimizerFactory: ps => torch.optim.AdamW(ps, 1e-3));
        trainer.Fit();
        File.WriteAllBytes(c.RankFile("state"), HostData.StateBytes(model));
        File.WriteAllText(c.RankFile("depth-freeze"), string.Join("\n",
            $"batches={trainer.State.Timestamp.Batch}",
            $"drop_rates={string.Join(",", model.modules().OfType<TransformerBlock>().Select(b => F(LayerDrop.RateOf(b))))}",
            $"frozen={model.parameters().Count(p => !p.requires_grad)}",
            $"loss={F(trainer.State.Metrics["loss/train/total"])}"));
    }

    /// <summary>
    /// BERT MLM (bert-tiny with a 68-token vocabulary, fp32, dropout 0, AdamW) with a global batch of 12 split evenly
    /// over the job's ranks (1 × 12, 2 × 6 or 3 × 4), shuffled, for 6 steps over 2 epochs. Rank 0 writes the logged
    /// loss of every step (<c>rank0.mlm-world</c>, one value a line), to be compared across world sizes. The loss is
    /// normalised per sample (<see cref="PerSampleMlm"/>), so the Trainer's sample-weighted data-parallel average is
    /// exact and only the masks can make world sizes differ. The argument <c>mean</c> trains the stock
    /// <see cref="BertForMaskedLM"/> (mean over masked tokens) instead; the argument <c>tokens</c> switches on
    /// <see cref="TrainerOptions.AccumulateTrainBatchOnTokens"/>, and <c>microbatch=N</c> sets the microbatch size.
    /// </summary>
    public static void MlmAcrossWorldSizes(ScenarioContext c)
    {
        const int globalBatch = 12, length = 24;
        if (globalBatch % c.Group.WorldSize != 0)
        {
            throw new CheckFailedException($"world size {c.Group.WorldSize} does not divide the global batch {globalBatch}");
        }

        var config = TransformerConfig.Preset("bert-tiny") with { VocabSize = 68, MaxSequenceLength = length, Dropout = 0.0, AttentionDropout = 0.0 };
        torch.manual_seed(5);
        ComposerSharp.Models.ComposerModel model = c.Arguments.Contains("mean") ? new BertForMaskedLM(config) : new PerSampleMlm(config, tokensPerSample: 0.15 * length);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 36, SequenceLength = length, RegularVocabSize = 64, Seed = 8 });
        var loader = new DataLoader<long[]>(data, globalBatch / c.Group.WorldSize, new MlmCollator(data.Vocabulary, new MlmCollatorOptions { Seed = 1 }), shuffle: true, seed: 3);
        var losses = new List<double>();
        var hook = new HookCallback { OnBatchEnd = s => losses.Add(s.Metrics["loss/train/total"]) };
        int? microbatch = c.Arguments.Where(a => a.StartsWith("microbatch=", StringComparison.Ordinal)).Select(a => (int?)int.Parse(a["microbatch=".Length..], CultureInfo.InvariantCulture)).FirstOrDefault();
        TrainerOptions options = Options("6ba") with { AccumulateTrainBatchOnTokens = c.Arguments.Contains("tokens"), DeviceTrainMicrobatchSize = microbatch };
        using var trainer = new Trainer(model, options, loader, callbacks: new[] { hook }, optimizerFactory: ps => torch.optim.AdamW(ps, 1e-3));
        trainer.Fit();
        if (losses.Count != 6)
        {
            throw new CheckFailedException($"expected 6 logged losses, got {losses.Count}");
        }

        File.WriteAllText(c.RankFile("mlm-world"), string.Join("\n", losses.Select(F)));
    }

    /// <summary>Eval of 13 samples (uneven shards) on 2 ranks against the same eval alone on rank 0.</summary>
    public static void Evaluation(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(13, seed: 3);
        IReadOnlyDictionary<string, double> Run(DistributedOptions? d)
        {
            using var trainer = new Trainer(Model(), Options(null) with { Distributed = d ?? new DistributedOptions() });
            return trainer.Eval(HostData.Loader(data, 4, shuffle: false));
        }

        IReadOnlyDictionary<string, double> distributed = Run(null);
        if (c.Group.Rank == 0)
        {
            IReadOnlyDictionary<string, double> alone = Run(Alone);
            File.WriteAllText(c.RankFile("eval"), string.Join("\n", distributed.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={F(kv.Value)} {F(alone[kv.Key])}")));
        }
    }

    /// <summary>6 batches uninterrupted, against 3 batches, a checkpoint, a new Trainer that loads it and 3 more.</summary>
    public static void Resume(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(40);
        Trainer Make(string max, CheckpointOptions? checkpoint) => new(Model(dropout: 0.2), Options(max) with { Checkpoint = checkpoint ?? new CheckpointOptions() }, HostData.Loader(data, 4, shuffle: true),
            optimizerFactory: ps => torch.optim.AdamW(ps, 0.01));

        byte[] uninterrupted;
        using (Trainer t = Make("6ba", null))
        {
            t.Fit();
            uninterrupted = HostData.StateBytes(t.Model);
        }

        string folder = Path.Combine(c.Output, "checkpoints");
        using (Trainer t = Make("3ba", new CheckpointOptions { SaveFolder = folder, SaveInterval = "3ba" }))
        {
            t.Fit();
        }

        c.Group.Barrier();
        byte[] resumed;
        using (Trainer t = Make("6ba", new CheckpointOptions { LoadPath = Path.Combine(folder, "ep0-ba3-rank0.ckpt") }))
        {
            t.Fit();
            resumed = HostData.StateBytes(t.Model);
        }

        File.WriteAllText(c.RankFile("resume"), uninterrupted.AsSpan().SequenceEqual(resumed) ? "bitwise-equal" : "different");
    }

    /// <summary>Rank 1 alone asks to stop (as a preemption signal would) during batch 2; both ranks must stop after batch 2.</summary>
    public static void Stop(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(64);
        Trainer? trainer = null;
        var hook = new HookCallback { OnBatchEnd = s => { if (c.Group.Rank == 1 && s.Timestamp.Batch == 2) { trainer!.DataParallel.RequestStop(); } } };
        trainer = new Trainer(Model(), Options("10ba"), HostData.Loader(data, 4, shuffle: true), callbacks: new[] { hook });
        trainer.Fit();
        File.WriteAllText(c.RankFile("stop"), trainer.State.Timestamp.Batch.ToString(CultureInfo.InvariantCulture));
        trainer.Dispose();
    }

    /// <summary>Rank 1 builds a model without dropout but with a wider first layer: the Trainer must refuse, naming the tensor.</summary>
    public static void Mismatch(ScenarioContext c)
    {
        torch.manual_seed(42);
        ComposerSharp.Models.ComposerModel model = c.Group.Rank == 1 ? new WideNormMlp() : new NormMlp();
        try
        {
            using var trainer = new Trainer(model, Options(null));
        }
        catch (InvalidOperationException e)
        {
            File.WriteAllText(c.RankFile("mismatch"), e.Message);
            return;
        }

        throw new CheckFailedException("the Trainer accepted different models on the two ranks");
    }

    /// <summary>
    /// A checkpoint written by one process after 4 batches of 4 (16 samples) is resumed on 2 ranks: both continue at
    /// global position 16 of the epoch's order (rank r: positions 16 + r, 18 + r, …), from the same weights.
    /// </summary>
    public static void Resize(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(64);
        string folder = Path.Combine(c.Output, "checkpoints");
        if (c.Group.Rank == 0)
        {
            using var alone = new Trainer(Model(), Options("4ba") with { Checkpoint = new CheckpointOptions { SaveFolder = folder, SaveInterval = "4ba" }, Distributed = Alone },
                HostData.Loader(data, 4, shuffle: true), optimizerFactory: ps => torch.optim.AdamW(ps, 0.01));
            alone.Fit();
        }

        c.Group.Barrier();
        float[]? firstX = null;
        byte[]? loaded = null;
        Trainer? trainer = null;
        var hook = new HookCallback { OnFitStart = s => loaded = HostData.StateBytes(s.Model), OnAfterDataloader = s => firstX ??= s.Batch!["x"].data<float>().ToArray() };
        trainer = new Trainer(Model(dropout: 0.0), Options("6ba") with { Checkpoint = new CheckpointOptions { LoadPath = Path.Combine(folder, "ep0-ba4-rank0.ckpt") } },
            HostData.Loader(data, 4, shuffle: true), callbacks: new[] { hook }, optimizerFactory: ps => torch.optim.AdamW(ps, 0.01));
        trainer.Fit();
        long[] order = ComposerSharp.Data.EpochSampler.Order(64, 11, 0, shuffle: true);
        float[] expected = Enumerable.Range(0, 4).SelectMany(i => data[(int)order[16 + c.Group.Rank + 2 * i]].X).ToArray();
        Tensor loadedState = torch.tensor(loaded!.Select(b => (float)b).ToArray());
        Tensor allStates = c.Group.AllGather(loadedState);
        bool sameWeights = allStates[0].equal(allStates[1]).all().item<bool>();
        File.WriteAllText(c.RankFile("resize"), string.Join("\n",
            $"data={(firstX!.SequenceEqual(expected) ? "continues" : "differs")}",
            $"weights={(sameWeights ? "same" : "differ")}",
            $"batches={trainer.State.Timestamp.Batch}",
            $"samples={trainer.State.Timestamp.Sample}"));
        trainer.Dispose();
    }

    /// <summary>Rank 1's callback throws at batch 2.</summary>
    public static void TrainerThrow(ScenarioContext c)
    {
        IReadOnlyList<HostSample> data = HostData.Samples(64);
        var hook = new HookCallback { OnBatchEnd = s => { if (c.Group.Rank == 1 && s.Timestamp.Batch == 2) { throw new InvalidOperationException("rank 1's callback fails on purpose"); } } };
        using var trainer = new Trainer(Model(), Options("10ba"), HostData.Loader(data, 4, shuffle: true), callbacks: new[] { hook });
        trainer.Fit();
    }
}
