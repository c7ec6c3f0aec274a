using System.CommandLine;
using ComposerSharp.Benchmarks;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;

// One command runs every part: dotnet run --project benchmarks -c Release -- all
// Each part is also a subcommand; --quick makes a smoke run. See benchmarks/README.md.
var quick = new Option<bool>("--quick")
{
    Description = "Smoke run: few repeats and steps, to check that every part works (numbers not meaningful).",
    Recursive = true,
};
var threads = new Option<int>("--threads")
{
    Description = "libtorch intra-op threads, also used by the PyTorch peer (default: all cores).",
    DefaultValueFactory = _ => Environment.ProcessorCount,
    Recursive = true,
};
var output = new Option<string>("--output")
{
    Description = "Folder for the JSON results (default: benchmarks/results next to this project).",
    DefaultValueFactory = _ => BenchmarkRunner.DefaultResultsFolder(),
    Recursive = true,
};
var waitPolicy = new Option<string>("--omp-wait-policy")
{
    Description = "OpenMP wait policy for libtorch and the PyTorch peer when OMP_WAIT_POLICY is not set: PASSIVE (default; robust on shared cores) or ACTIVE.",
    DefaultValueFactory = _ => "PASSIVE",
    Recursive = true,
};
waitPolicy.AcceptOnlyFromAmong("PASSIVE", "ACTIVE");
var python = new Option<string?>("--python")
{
    Description = "Python interpreter for the PyTorch peer (default: the first of python3 on PATH and /usr/bin/python3 that imports torch).",
    Recursive = true,
};

var pieces = new Option<string?>("--pieces")
{
    Description = "peer-modules only: comma-separated pieces to time (default: all; see benchmarks/README.md).",
    Recursive = true,
};

var root = new RootCommand("ComposerSharp benchmarks: LayerNorm kernel, training step, framework overhead, PyTorch peer.");
root.Options.Add(quick);
root.Options.Add(threads);
root.Options.Add(output);
root.Options.Add(python);
root.Options.Add(waitPolicy);
root.Options.Add(pieces);

foreach (BenchmarkPart part in BenchmarkRunner.Parts.Append(BenchmarkRunner.All))
{
    var command = new Command(part.Name, part.Description);
    command.SetAction(result =>
    {
        int t = result.GetValue(threads);
        if (t < 1)
        {
            Console.Error.WriteLine($"--threads must be at least 1; got {t}.");
            return 2;
        }

        // Before the first TorchSharp call: libgomp reads the policy when libtorch loads.
        string policy = OpenMp.ApplyWaitPolicy(result.GetValue(waitPolicy)!);
        var settings = new Settings(result.GetValue(quick), t, result.GetValue(output)!, result.GetValue(python), policy)
        {
            Pieces = result.GetValue(pieces)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
        };
        return BenchmarkRunner.Run(part, settings, string.Join(' ', args));
    });
    root.Subcommands.Add(command);
}

// Hidden: one configuration's peak memory in a fresh process (started by the step part).
var probePrecision = new Argument<string>("precision");
var probeVariant = new Argument<string>("variant");
var probeSteps = new Argument<int>("steps");
var probeShape = new Argument<string>("shape") { DefaultValueFactory = _ => "bert-mini" };
var probe = new Command(MemoryProbe.Command, "Internal: peak memory of one training configuration.") { Hidden = true };
probe.Arguments.Add(probePrecision);
probe.Arguments.Add(probeVariant);
probe.Arguments.Add(probeSteps);
probe.Arguments.Add(probeShape);
probe.SetAction(result =>
{
    OpenMp.ApplyWaitPolicy(result.GetValue(waitPolicy)!);
    return MemoryProbe.RunChild(
        ComposerSharp.Core.PrecisionExtensions.Parse(result.GetValue(probePrecision)!), result.GetValue(probeVariant) == "lp", result.GetValue(probeSteps), result.GetValue(threads), result.GetValue(probeShape)!);
});
root.Subcommands.Add(probe);

// Hidden: one activation-checkpointing configuration in a fresh process (started by the activation-checkpointing part).
var acMode = new Argument<string>("mode");
var acSteps = new Argument<int>("steps");
var acProbe = new Command(ActivationCheckpointingBenchmark.Command, "Internal: activation peak and step time with (on) or without (off) activation checkpointing.") { Hidden = true };
acProbe.Arguments.Add(acMode);
acProbe.Arguments.Add(acSteps);
acProbe.SetAction(result =>
{
    OpenMp.ApplyWaitPolicy(result.GetValue(waitPolicy)!);
    return ActivationCheckpointingBenchmark.RunChild(result.GetValue(acMode) == "on", result.GetValue(acSteps), result.GetValue(threads));
});
root.Subcommands.Add(acProbe);

// Hidden: resident memory every N batches of a long fp32 run in a fresh process (started by the memory part).
var flatShape = new Argument<string>("shape");
var flatBatches = new Argument<int>("batches");
var flatEvery = new Argument<int>("every");
var flatSeconds = new Argument<double>("max-seconds");
var flat = new Command(MemoryBenchmark.FlatCommand, "Internal: resident memory every N batches of a long fp32 run.") { Hidden = true };
foreach (Argument a in new Argument[] { flatShape, flatBatches, flatEvery, flatSeconds })
{
    flat.Arguments.Add(a);
}

flat.SetAction(result =>
{
    OpenMp.ApplyWaitPolicy(result.GetValue(waitPolicy)!);
    return MemoryProbe.RunFlatChild(result.GetValue(flatShape)!, result.GetValue(flatBatches), result.GetValue(flatEvery), result.GetValue(flatSeconds), result.GetValue(threads));
});
root.Subcommands.Add(flat);

// Hidden: the training step with or without deterministic mode in a fresh process (started by the determinism part).
var detPrecision = new Argument<string>("precision");
var detMode = new Argument<string>("mode");
var detWarmup = new Argument<int>("warmup");
var detSteps = new Argument<int>("steps");
var detRounds = new Argument<int>("rounds");
var determinism = new Command(DeterminismBenchmark.Command, "Internal: training step time with (on) or without (off) deterministic mode.") { Hidden = true };
foreach (Argument a in new Argument[] { detPrecision, detMode, detWarmup, detSteps, detRounds })
{
    determinism.Arguments.Add(a);
}

determinism.SetAction(result =>
{
    OpenMp.ApplyWaitPolicy(result.GetValue(waitPolicy)!);
    return DeterminismBenchmark.RunChild(
        ComposerSharp.Core.PrecisionExtensions.Parse(result.GetValue(detPrecision)!), result.GetValue(detMode) == "on",
        result.GetValue(detWarmup), result.GetValue(detSteps), result.GetValue(detRounds), result.GetValue(threads));
});
root.Subcommands.Add(determinism);

// Hidden: the GPT-2-vocabulary MLM step, dense or sparse head, glibc default or 1 GiB heap thresholds, in a fresh process (started by the vocab part).
var vocabHead = new Argument<string>("head");
var vocabMalloc = new Argument<string>("malloc");
var vocabSteps = new Argument<int>("steps");
var vocabProbe = new Command(VocabularyBenchmark.Command, "Internal: GPT-2-vocabulary MLM step with a dense or sparse head and glibc default or 1 GiB heap thresholds.") { Hidden = true };
vocabProbe.Arguments.Add(vocabHead);
vocabProbe.Arguments.Add(vocabMalloc);
vocabProbe.Arguments.Add(vocabSteps);
vocabProbe.SetAction(result =>
{
    OpenMp.ApplyWaitPolicy(result.GetValue(waitPolicy)!);
    return VocabularyBenchmark.RunChild(result.GetValue(vocabHead) == "sparse", result.GetValue(vocabMalloc) == "tuned", result.GetValue(vocabSteps), result.GetValue(threads));
});
root.Subcommands.Add(vocabProbe);

// Data-parallel benchmarks: not part of 'all', because they start mpirun.
var distributed = new Command("distributed", "All-reduce bandwidth against bare MPI_Allreduce, 2-rank scaling and communication time per step (needs mpirun).");
distributed.SetAction(result => DistributedBenchmark.Run(result.GetValue(quick), result.GetValue(output)!));
root.Subcommands.Add(distributed);
var distPart = new Argument<string>("part");
var distMode = new Argument<string>("mode");
var distFolder = new Argument<string>("folder");
var distRank = new Command(DistributedBenchmark.RankCommand, "Internal: one rank of a distributed benchmark part.") { Hidden = true };
distRank.Arguments.Add(distPart);
distRank.Arguments.Add(distMode);
distRank.Arguments.Add(distFolder);
distRank.SetAction(result => DistributedBenchmark.RunRank(result.GetValue(distPart)!, result.GetValue(distMode) == "quick", result.GetValue(distFolder)!));
root.Subcommands.Add(distRank);

// Time to quality: not part of 'all', because it trains two models for minutes each.
var ttqData = new Option<string>("--data") { Description = "Folder of .txt files.", DefaultValueFactory = _ => "../shared/data/moby-dick" };
var ttqBudget = new Option<string>("--max-duration") { Description = "Budget of both runs (Composer time string, e.g. 1ep or 32ba).", DefaultValueFactory = _ => "1ep" };
var ttqSubset = new Option<int>("--eval-subset-batches") { Description = "Batches (of 32 blocks) per evaluation; 0 = the whole eval split.", DefaultValueFactory = _ => 0 };
var ttqEvalEvery = new Option<int>("--eval-every") { Description = "Evaluation interval in batches.", DefaultValueFactory = _ => 16 };
var ttqTarget = new Option<double?>("--target-ce") { Description = "Eval cross-entropy to reach (default: the plain run's final value)." };
var ttqSeed = new Option<int>("--seed") { Description = "Seed of both runs.", DefaultValueFactory = _ => 17 };
var ttq = new Command("time-to-quality", "BERT MLM on a text folder, plain vs a recipe of algorithms: time and samples to an eval cross-entropy, one PNG.");
foreach (Option option in new Option[] { ttqData, ttqBudget, ttqEvalEvery, ttqSubset, ttqTarget, ttqSeed })
{
    ttq.Options.Add(option);
}

ttq.SetAction(result =>
{
    OpenMp.ApplyWaitPolicy(result.GetValue(waitPolicy)!);
    return TimeToQualityBenchmark.Run(new TimeToQualityOptions(
        Path.GetFullPath(result.GetValue(ttqData)!), result.GetValue(ttqBudget)!, result.GetValue(ttqEvalEvery), result.GetValue(ttqSubset), result.GetValue(ttqTarget),
        Path.GetFullPath(result.GetValue(output)!), result.GetValue(ttqSeed), result.GetValue(threads)));
});
root.Subcommands.Add(ttq);

root.SetAction(_ =>
{
    Console.Error.WriteLine("Name a part: all, layernorm, layernorm-profile, step, overhead, dispatch, peer or determinism (add --quick for a smoke run). See --help.");
    return 2;
});

return root.Parse(args).Invoke();
