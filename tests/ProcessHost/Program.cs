using System.Runtime.InteropServices;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

// Commands run by the tests in a fresh process. Exit codes: 0 success, 3 the expected exception (its message on
// stdout), 2 unknown command.
switch (args.FirstOrDefault())
{
    case "late-deterministic-mode":
        // An MKL computation first, then a Trainer asking for deterministic mode: it must refuse clearly.
        using (var scope = torch.NewDisposeScope())
        {
            _ = torch.nn.functional.linear(torch.randn(8, 8), torch.randn(3, 8));
        }

        try
        {
            using var trainer = new Trainer(new Probe(), new TrainerOptions { Device = "cpu", ProgressBar = false, DeterministicMode = true });
            Console.WriteLine("no exception");
            return 0;
        }
        catch (InvalidOperationException ex)
        {
            Console.WriteLine(ex.Message);
            return 3;
        }

    case "sigterm-at-batch" when args.Length is 3 or 4:
    {
        // Trains with GracefulStop; at BatchEnd of batch N the process sends itself K real SIGTERMs (kill(2)).
        // Prints one JSON line after Fit returns and exits with GracefulStop's code.
        long at = long.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
        int count = int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture);
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-sigterm-" + Guid.NewGuid().ToString("N"));
        using var stop = new GracefulStop();
        int gap = args.Length == 4 ? int.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 1500;
        var signaller = new SignalAtBatch(at, count, gap);
        using var trainer = new Trainer(new Probe(),
            new TrainerOptions
            {
                MaxDuration = "16ba", Device = "cpu", ProgressBar = false, RunName = "sigterm",
                Checkpoint = new CheckpointOptions { SaveFolder = folder, SaveInterval = "100ba" },
            },
            new Batches(64, 4), callbacks: new ICallback[] { signaller });
        trainer.Fit(cancellationToken: stop.Token);
        string[] checkpoints = Directory.Exists(folder) ? Directory.GetFiles(folder, "*.ckpt").Select(f => Path.GetFileName(f)).ToArray() : Array.Empty<string>();
        Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(new { stopped_by_request = trainer.StoppedByRequest, batch = trainer.State.Timestamp.Batch, checkpoints, signal = stop.SignalName }));
        return stop.ExitCode;
    }

    case "rss" when args.Length == 2:
    {
        // Trains N batches with the CLI's loggers (metric history, metrics.jsonl, TensorBoard) and prints the
        // resident set size after a forced GC at 2,000 batches and at N, as one JSON line.
        long total = long.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-rss-" + Guid.NewGuid().ToString("N"));
        var history = new ComposerSharp.Cli.Reporting.MetricHistory();
        var samples = new List<(long Batch, long Rss, long Managed)>();
        var probe = new RssAt(new long[] { 2000, total / 2, total }, samples);
        using (var trainer = new Trainer(new Probe(),
                   new TrainerOptions { MaxDuration = Time.FromBatch(total), Device = "cpu", ProgressBar = false, RunFolder = folder, RunName = "rss", EvalInterval = 0 },
                   new Batches(4096, 4), loggers: new ILoggerDestination[] { history }, callbacks: new ICallback[] { probe }))
        {
            trainer.Fit();
        }

        Directory.Delete(folder, recursive: true);
        Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(new
        {
            batches = total,
            rss = samples.Select(s => new { batch = s.Batch, bytes = s.Rss, managed_bytes = s.Managed }).ToArray(),
            series_points = history.Series("loss/train/total").Count,
        }));
        return 0;
    }

    case "rss-lm" when args.Length == 5:
    {
        // Trains gpt-tiny with the GPT-2 vocabulary (50,304 rows: logits-sized tensors of B*T*50,304 floats) on random
        // ids with AdamW for N batches at the given precision, and prints the resident set size at every BatchEnd as
        // one JSON line: native memory that a training step frees but the process keeps shows up here as growth.
        Precision precision = PrecisionExtensions.Parse(args[1]);
        int batchSize = int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture);
        int sequence = int.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture);
        long total = long.Parse(args[4], System.Globalization.CultureInfo.InvariantCulture);
        torch.manual_seed(0);
        var config = TransformerConfig.Preset("gpt-tiny") with { MaxSequenceLength = sequence };
        var rss = new List<long>();
        using (var trainer = new Trainer(new GptForCausalLM(config),
                   new TrainerOptions { MaxDuration = Time.FromBatch(total), Device = "cpu", ProgressBar = false, EvalInterval = 0, Precision = precision },
                   new RandomIds(config.VocabSize, batchSize, sequence), callbacks: new ICallback[] { new RssEveryBatch(rss) },
                   optimizerFactory: p => torch.optim.AdamW(p, 1e-3)))
        {
            trainer.Fit();
        }

        Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(new { precision = args[1], batch_size = batchSize, sequence, rss_bytes = rss }));
        return 0;
    }

    default:
        Console.Error.WriteLine($"unknown command '{string.Join(' ', args)}'; expected: late-deterministic-mode | sigterm-at-batch N K [GAP_MS] | rss N | rss-lm PRECISION BATCH SEQUENCE N");
        return 2;
}

/// <summary>A one-parameter model, enough to construct a Trainer.</summary>
internal sealed class Probe : ComposerModel
{
    private readonly TorchSharp.Modules.Linear _linear = torch.nn.Linear(2, 1);

    public Probe()
        : base("probe") => RegisterComponents();

    public override Tensor forward(Batch batch) => _linear.call(batch["x"]);

    public override Tensor Loss(Tensor outputs, Batch batch) => outputs.mean();
}

/// <summary>Sends this process <c>count</c> SIGTERMs at BatchEnd of batch <c>at</c>, then waits briefly for the handler.</summary>
internal sealed class SignalAtBatch(long at, int count, int gap) : ICallback
{
    [DllImport("libc")]
    private static extern int kill(int pid, int signal);

    public void RunEvent(Event e, State state, Logger logger)
    {
        if (e != Event.BatchEnd || state.Timestamp.Batch != at)
        {
            return;
        }

        for (int i = 0; i < count; i++)
        {
            _ = kill(Environment.ProcessId, 15);
            // The handler runs on another thread; a second signal must find the first handled, and come after
            // GracefulStop's duplicate window (gap 1.5 s) or inside it (gap 0.05 s) as the test asks.
            Thread.Sleep(gap);
        }
    }

    public void Close(State state, Logger logger)
    {
    }
}

/// <summary>Fixed random batches of <c>x</c> [batchSize, 2].</summary>
internal sealed class Batches(int samples, int batchSize) : IDataLoader
{
    public long? BatchesPerEpoch => samples / batchSize;

    public long? SamplesPerEpoch => samples;

    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0)
    {
        for (long i = skipBatches; i < BatchesPerEpoch; i++)
        {
            var g = new torch.Generator((ulong)(epoch * 1000 + i));
            yield return new Batch(new Dictionary<string, Tensor> { ["x"] = torch.randn(new long[] { batchSize, 2 }, generator: g) });
        }
    }
}

/// <summary>Random ids <c>input_ids</c> Int64 [batchSize, sequence] in [0, vocab), a new draw per batch, endless epochs.</summary>
internal sealed class RandomIds(int vocab, int batchSize, int sequence) : IDataLoader
{
    public long? BatchesPerEpoch => 1000;

    public long? SamplesPerEpoch => 1000L * batchSize;

    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0)
    {
        for (long i = skipBatches; i < BatchesPerEpoch; i++)
        {
            using var g = new torch.Generator((ulong)(epoch * 1000 + i));
            yield return new Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.randint(vocab, new long[] { batchSize, sequence }, generator: g) });
        }
    }
}

/// <summary>Records the resident set size (VmRSS of /proc/self/status, bytes) at every BatchEnd.</summary>
internal sealed class RssEveryBatch(List<long> samples) : ICallback
{
    public void RunEvent(Event e, State state, Logger logger)
    {
        if (e == Event.BatchEnd)
        {
            samples.Add(ComposerSharp.Interop.ProcessMemory.ResidentBytes());
        }
    }

    public void Close(State state, Logger logger)
    {
    }
}

/// <summary>Records the resident set size (after a full GC) at BatchEnd of the given batches.</summary>
internal sealed class RssAt(long[] batches, List<(long Batch, long Rss, long Managed)> samples) : ICallback
{
    public void RunEvent(Event e, State state, Logger logger)
    {
        if (e != Event.BatchEnd || !batches.Contains(state.Timestamp.Batch))
        {
            return;
        }

        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        using var self = System.Diagnostics.Process.GetCurrentProcess();
        samples.Add((state.Timestamp.Batch, self.WorkingSet64, GC.GetTotalMemory(forceFullCollection: true)));
    }

    public void Close(State state, Logger logger)
    {
    }
}
