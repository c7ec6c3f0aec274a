using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ComposerSharp.Core;
using ComposerSharp.Distributed;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Data-parallel benchmarks, in one run: (1) our all-reduce of a 100 MiB float32 buffer next to a bare
/// <c>MPI_Allreduce</c> of the same buffer, alternating, 2 local ranks over shared memory; (2) training steps of
/// the same global batch on 2 ranks × 1 thread against 1 rank × 1 thread (scaling), on 2 ranks both with the
/// gradient all-reduce overlapped with backward and without; (3) the gradient all-reduce time per step after
/// backward, with and without overlap. The ranks run under <c>mpirun -np 2 --mca btl self,vader</c> (loopback only).
/// Run: <c>dotnet run --project benchmarks -c Release -- distributed</c>.
/// </summary>
public static class DistributedBenchmark
{
    /// <summary>The hidden per-rank command.</summary>
    public const string RankCommand = "distributed-rank";

    /// <summary>Starts the parts and prints the table; returns the exit code.</summary>
    public static int Run(bool quick, string outputFolder)
    {
        string self = Environment.ProcessPath!;
        string? entry = System.Reflection.Assembly.GetEntryAssembly()?.Location;
        var prefix = Path.GetFileNameWithoutExtension(self) == "dotnet" && entry is not null ? new[] { self, entry } : new[] { self };
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-distbench-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        string q = quick ? "quick" : "full";
        double load = MachineLoad();
        if (Spawn(true, prefix, "allreduce", q, folder) != 0 || Spawn(true, prefix, "train", q, folder) != 0 || Spawn(true, prefix, "train-blocking", q, folder) != 0
            || Spawn(false, prefix, "train", q, folder) != 0)
        {
            Console.Error.WriteLine("A distributed benchmark part failed (see above).");
            return 1;
        }

        JsonElement ar = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "allreduce-2.json"))).RootElement;
        JsonElement t2 = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "train-2.json"))).RootElement;
        JsonElement t1 = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "train-1.json"))).RootElement;
        JsonElement t2b = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "train-blocking-2.json"))).RootElement;
        double step2b = t2b.GetProperty("step_ms").GetDouble();
        double loadEnd = MachineLoad();
        double ours = ar.GetProperty("ours_gbps").GetDouble();
        double raw = ar.GetProperty("raw_gbps").GetDouble();
        double step1 = t1.GetProperty("step_ms").GetDouble();
        double step2 = t2.GetProperty("step_ms").GetDouble();
        string cpu = MachineInfo();
        string report = string.Join('\n',
            $"Distributed benchmarks ({(quick ? "QUICK, numbers not meaningful" : "full")}), {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {cpu}, load average (1 min) at start {load:0.00}, at end {loadEnd:0.00}",
            $"all-reduce of {ar.GetProperty("mib").GetDouble():0} MiB float32, 2 local ranks (shared memory), median of {ar.GetProperty("repeats").GetInt32()} alternating repeats:",
            $"  ours (MpiProcessGroup.AllReduce): {ours:0.000} GB/s   bare MPI_Allreduce: {raw:0.000} GB/s   ratio {ours / raw:P1} (target >= 90%)",
            $"training step, MLP {t1.GetProperty("model").GetString()}, fp32, global batch {t1.GetProperty("global_batch").GetInt32()}, 1 libtorch thread per rank, median of {t1.GetProperty("steps").GetInt32()} steps:",
            $"  1 rank: {step1:0.0} ms/step   2 ranks, overlapped: {step2:0.0} ms/step (speed-up {step1 / step2:0.00}x, target >= 1.8x)   2 ranks, blocking: {step2b:0.0} ms/step ({step1 / step2b:0.00}x)",
            $"  gradient all-reduce after backward on 2 ranks ({t2.GetProperty("grad_mib").GetDouble():0.0} MiB of gradients, {t2.GetProperty("buckets").GetInt32()} buckets): " +
            $"overlapped {t2.GetProperty("comm_ms").GetDouble():0.0} ms/step ({t2.GetProperty("early").GetInt32()} bucket(s) started during backward), blocking {t2b.GetProperty("comm_ms").GetDouble():0.0} ms/step");
        Console.WriteLine(report);
        Directory.CreateDirectory(outputFolder);
        string path = Path.Combine(outputFolder, $"distributed-{DateTime.UtcNow:yyyyMMdd-HHmmss}{(quick ? "-quick" : "")}.txt");
        File.WriteAllText(path, report + "\n");
        Console.WriteLine($"Written to {path}");
        return 0;
    }

    private static int Spawn(bool distributed, string[] prefix, string part, string quick, string folder)
    {
        var psi = new ProcessStartInfo(distributed ? "mpirun" : prefix[0]) { UseShellExecute = false };
        var args = new List<string>();
        if (distributed)
        {
            args.AddRange(new[] { "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2", "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo", "-x", "OMP_NUM_THREADS=1" });
            args.AddRange(prefix);
        }
        else
        {
            args.AddRange(prefix.Skip(1));
        }

        args.AddRange(new[] { RankCommand, part, quick, folder });
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["OMP_NUM_THREADS"] = "1";
        using Process p = Process.Start(psi)!;
        if (!p.WaitForExit(TimeSpan.FromMinutes(15)))
        {
            p.Kill(entireProcessTree: true);
            return -1;
        }

        return p.ExitCode;
    }

    /// <summary>One rank's part: <c>allreduce</c> or <c>train</c>; writes <c>&lt;part&gt;-&lt;world size&gt;.json</c> from rank 0.</summary>
    public static int RunRank(string part, bool quick, string folder)
    {
        torch.set_num_threads(1);
        using IProcessGroup group = ProcessGroupFactory.Create(torch.CPU);
        Dictionary<string, object> result = part switch
        {
            "allreduce" => AllReduce(group, quick),
            "train" => Train(group, quick, overlap: true),
            "train-blocking" => Train(group, quick, overlap: false),
            _ => throw new ArgumentException($"Unknown part '{part}'; expected allreduce, train or train-blocking."),
        };
        if (group.Rank == 0)
        {
            File.WriteAllText(Path.Combine(folder, $"{part}-{group.WorldSize}.json"), JsonSerializer.Serialize(result));
        }

        group.Barrier();
        return 0;
    }

    private static Dictionary<string, object> AllReduce(IProcessGroup group, bool quick)
    {
        var mpi = group as MpiProcessGroup ?? throw new InvalidOperationException("The all-reduce part runs under mpirun (MPI backend).");
        long elements = quick ? 1L << 20 : 100L * 1024 * 1024 / 4;
        int repeats = quick ? 3 : 11;
        using Tensor buffer = torch.zeros(elements, dtype: ScalarType.Float32);
        IntPtr address = TensorMemory.DataPointer(buffer);
        double Time(Action a)
        {
            group.Barrier();
            var clock = Stopwatch.StartNew();
            a();
            return clock.Elapsed.TotalSeconds;
        }

        var ours = new List<double>();
        var raw = new List<double>();
        Time(() => group.AllReduce(buffer));
        Time(() => mpi.RawAllreduceFloatSum(address, (int)elements));
        for (int i = 0; i < repeats; i++)
        {
            ours.Add(Time(() => group.AllReduce(buffer)));
            raw.Add(Time(() => mpi.RawAllreduceFloatSum(address, (int)elements)));
        }

        double bytes = elements * 4.0;
        return new Dictionary<string, object>
        {
            ["mib"] = bytes / 1048576,
            ["repeats"] = repeats,
            ["ours_gbps"] = bytes / Median(ours) / 1e9,
            ["raw_gbps"] = bytes / Median(raw) / 1e9,
        };
    }

    private static Dictionary<string, object> Train(IProcessGroup group, bool quick, bool overlap)
    {
        const int globalBatch = 128;
        int perRank = globalBatch / group.WorldSize;
        int warmup = quick ? 2 : 5;
        int steps = quick ? 3 : 30;
        torch.manual_seed(1);
        var model = new WideMlp();
        using var gen = new Generator(3);
        Tensor x = torch.randn(new long[] { perRank, WideMlp.In }, generator: gen).DetachFromDisposeScope();
        Tensor y = torch.randint(0, WideMlp.Out, new long[] { perRank }, generator: gen).DetachFromDisposeScope();
        var loader = new RepeatLoader(new Batch(new Dictionary<string, Tensor> { ["x"] = x, ["labels"] = y }));
        var times = new List<double>();
        var timer = new StepTimer(times);
        using var trainer = new Trainer(model, new TrainerOptions
        {
            MaxDuration = Time.FromBatch(warmup), Device = "cpu", ProgressBar = false, ComputeTrainingMetrics = false,
            Distributed = new DistributedOptions { OverlapGradientReduce = overlap },
        },
            loader, optimizerFactory: ps => torch.optim.SGD(ps, 0.01), callbacks: new[] { timer });
        trainer.Fit();
        times.Clear();
        double commBefore = trainer.DataParallel.GradientReduceSeconds;
        trainer.Fit(Time.FromBatch(steps));
        double comm = (trainer.DataParallel.GradientReduceSeconds - commBefore) / steps;
        double gradMiB = model.parameters().Sum(p => p.numel()) * 4.0 / 1048576;
        int early = trainer.DataParallel.LastEarlyBuckets;
        return new Dictionary<string, object>
        {
            ["model"] = $"{WideMlp.In}-{WideMlp.Hidden}-{WideMlp.Hidden}-{WideMlp.Hidden}-{WideMlp.Out}",
            ["global_batch"] = globalBatch,
            ["steps"] = steps,
            ["step_ms"] = Median(times) * 1000,
            ["comm_ms"] = comm * 1000,
            ["grad_mib"] = gradMiB,
            ["buckets"] = WideMlp.Buckets,
            ["early"] = early,
        };
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted[sorted.Count / 2];
    }

    private static double MachineLoad()
    {
        try
        {
            return double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return double.NaN;
        }
    }

    private static string MachineInfo()
    {
        string? model = File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() : null;
        return $"{model ?? "unknown CPU"}, {Environment.ProcessorCount} logical cores";
    }

    /// <summary>
    /// An MLP big enough that a step is mostly compute: 512 → 2048 → 2048 → 2048 → 10 (9.4 M parameters, 36 MiB of fp32
    /// gradients). With DDP's bucket caps (1 MiB first, then 25 MiB) the gradients fall into 3 buckets: {fc4, fc3's
    /// bias}, {fc3's weight, fc2's bias} (16 MiB, ready after fc2's backward, so it can overlap fc1's) and
    /// {fc2's weight, fc1} (ready only at the end: fc1's input needs no gradient, so its backward is not observed).
    /// </summary>
    private sealed class WideMlp : ComposerModel
    {
        public const int In = 512;
        public const int Hidden = 2048;
        public const int Out = 10;
        public const int Buckets = 3;
        private readonly Sequential _net;

        public WideMlp()
            : base("wide_mlp")
        {
            _net = nn.Sequential(nn.Linear(In, Hidden), nn.ReLU(), nn.Linear(Hidden, Hidden), nn.ReLU(), nn.Linear(Hidden, Hidden), nn.ReLU(), nn.Linear(Hidden, Out));
            RegisterComponents();
        }

        public override Tensor forward(Batch batch) => _net.call(batch["x"]);

        public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.cross_entropy(outputs, batch["labels"]);
    }

    /// <summary>The same batch for ever (its tensors are reused, not copied).</summary>
    private sealed class RepeatLoader(Batch batch) : IDataLoader
    {
        public long? BatchesPerEpoch => null;

        public long? SamplesPerEpoch => null;

        public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0)
        {
            while (true)
            {
                yield return batch;
            }
        }
    }

    /// <summary>Wall time from BatchStart to BatchEnd.</summary>
    private sealed class StepTimer(List<double> times) : Callback
    {
        private long _start;

        public override void BatchStart(State state, Logger logger) => _start = Stopwatch.GetTimestamp();

        public override void BatchEnd(State state, Logger logger) => times.Add(Stopwatch.GetElapsedTime(_start).TotalSeconds);
    }
}
