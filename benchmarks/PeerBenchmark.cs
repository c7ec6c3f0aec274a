using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 4: the same training step in PyTorch eager (benchmarks/pytorch_peer.py) with the same thread count, model
/// shape and batch, in fp32 and under <c>torch.autocast('cpu', dtype=torch.bfloat16)</c>. The script runs as a
/// child process in serve mode, and its steps are interleaved round by round with the Trainer's, so both see the
/// same machine load. Skipped, with a message, when no python3 can import torch.
/// </summary>
internal static class PeerBenchmark
{
    /// <summary>Runs the comparison, or returns a skipped report.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("peer", "(4) Trainer.Fit step vs PyTorch eager (same model, batch and threads)");
        string script = FindScript();
        (string? python, string probe) = FindPython(settings.Python);
        if (python is null)
        {
            report.Skipped = $"no python3 that imports torch ({probe}). On Debian: apt-get install -y python3-torch (and libopenblas0-pthread, see benchmarks/README.md), or pass --python.";
            return report;
        }

        var shape = new TrainingShape();
        (int warmup, int steps, int rounds) = settings.Peer;
        using PeerProcess peer = PeerProcess.Start(python, script, shape, settings.Threads, settings.OmpWaitPolicy);
        report.Columns.AddRange(new[] { "precision", "ComposerSharp ms/step (sparse head)", "PyTorch ms/step, sparse head", "ratio ours / PyTorch sparse (median, P25–P75)", "PyTorch ms/step, dense head", "ratio ours / PyTorch dense" });
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        var precisions = new[] { Precision.Fp32, Precision.AmpBf16 };
        var trainers = precisions.ToDictionary(p => p, p => TrainingSetup.CreateTrainer(shape, data, p));
        try
        {
            var variants = new List<Variant>();
            foreach (Precision p in precisions)
            {
                variants.Add(new Variant("ours " + p.ToComposerName(), () => TrainingSetup.FitSteps(trainers[p], steps)));
                variants.Add(new Variant("pytorch " + p.ToComposerName(), () => peer.Run(p.ToComposerName(), steps, sparse: true)));
                variants.Add(new Variant("pytorch dense " + p.ToComposerName(), () => peer.Run(p.ToComposerName(), steps, sparse: false)));
            }

            Interleaved run = Interleaved.Run(variants, warmup, rounds);
            var rows = new List<PeerRow>();
            foreach (Precision p in precisions)
            {
                string name = p.ToComposerName();
                Stats ours = run.StatsOf("ours " + name), theirs = run.StatsOf("pytorch " + name);
                Stats ratio = run.Ratio("ours " + name, "pytorch " + name);
                Stats dense = run.StatsOf("pytorch dense " + name), denseRatio = run.Ratio("ours " + name, "pytorch dense " + name);
                report.Rows.Add(new[]
                {
                    name, Fmt.Ms(ours, 1), Fmt.Ms(theirs, 1), $"{Fmt.N(ratio.Median, 3)} ({Fmt.N(ratio.P25, 3)}–{Fmt.N(ratio.P75, 3)})",
                    Fmt.Ms(dense, 1), $"{Fmt.N(denseRatio.Median, 3)} ({Fmt.N(denseRatio.P25, 3)}–{Fmt.N(denseRatio.P75, 3)})",
                });
                rows.Add(new PeerRow(name, ours, theirs, ratio, dense, denseRatio));
                report.Targets.Add(TargetCheck.AtMost($"our step time ≤ 1.0 × PyTorch eager ({name})", ratio.Median, 1.0));
            }

            report.Data = new { python, peer = peer.Info, shape = shape.Describe(), steps_per_sample = steps, rows };
            report.Notes.Add($"PyTorch {peer.Info.GetProperty("torch_version").GetString()} (python {peer.Info.GetProperty("python").GetString()} at {python}{DebianPackageVersion()}), " +
                             $"threads {peer.Info.GetProperty("threads").GetInt32()}, BLAS {peer.Info.GetProperty("blas").GetString()}, fused SDPA: {peer.Info.GetProperty("sdpa").GetBoolean()}, " +
                             $"{peer.Info.GetProperty("parameters").GetInt64():N0} parameters.");
            report.Notes.Add($"Model: {shape.Describe()}. Both sides: AdamW, dropout on, data in memory; ours through Trainer.Fit. Ours computes the MLM head on the masked positions only (sparse prediction, the default); the like-for-like peer does the same (gather before the head), the dense peer column is the previous comparison's peer.");
        }
        finally
        {
            foreach (Trainer t in trainers.Values)
            {
                t.Dispose();
                t.Model.Dispose();
            }
        }

        report.Load = meter.Stop(peer.CpuSeconds());
        return report;
    }

    /// <summary>pytorch_peer.py beside the benchmark executable.</summary>
    internal static string FindScript()
    {
        string beside = Path.Combine(AppContext.BaseDirectory, "pytorch_peer.py");
        return File.Exists(beside)
            ? beside
            : throw new FileNotFoundException($"pytorch_peer.py was not copied next to the benchmark ({beside}); rebuild the benchmarks project.", beside);
    }

    /// <summary>The first interpreter that imports torch: the one given, else python3 on PATH, else /usr/bin/python3.</summary>
    internal static (string? Python, string Probe) FindPython(string? given)
    {
        var candidates = given is not null ? new[] { given } : new[] { "python3", "/usr/bin/python3" };
        var tried = new List<string>();
        foreach (string candidate in candidates.Distinct())
        {
            try
            {
                using var p = Process.Start(new ProcessStartInfo(candidate, new[] { "-c", "import torch; print(torch.__version__)" })
                {
                    RedirectStandardOutput = true,
                    RedirectStandardError = true,
                    UseShellExecute = false,
                })!;
                string stdout = p.StandardOutput.ReadToEnd();
                string stderr = p.StandardError.ReadToEnd();
                p.WaitForExit();
                if (p.ExitCode == 0)
                {
                    return (candidate, stdout.Trim());
                }

                tried.Add($"{candidate}: {stderr.Trim().Split('\n').LastOrDefault()}");
            }
            catch (System.ComponentModel.Win32Exception ex)
            {
                tried.Add($"{candidate}: {ex.Message}");
            }
        }

        return (null, "tried " + string.Join("; ", tried));
    }

    /// <summary>", Debian python3-torch VERSION" when dpkg knows the package, else empty.</summary>
    internal static string DebianPackageVersion()
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo("dpkg-query", new[] { "-W", "-f=${Version}", "python3-torch" })
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            })!;
            string v = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 && v.Length > 0 ? $", Debian python3-torch {v}" : string.Empty;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return string.Empty;
        }
    }

    /// <summary>
    /// How to start pytorch_peer.py for <paramref name="shape"/> (model kind, sizes, batch, learning rate) with
    /// <paramref name="threads"/> threads in every threading library and the OpenMP wait policy, plus
    /// <paramref name="extra"/> arguments (e.g. <c>--serve</c>); stdout redirected, stderr inherited.
    /// </summary>
    internal static ProcessStartInfo StartInfo(string python, string script, TrainingShape shape, int threads, string ompWaitPolicy, params string[] extra)
    {
        Models.TransformerConfig c = shape.Config;
        string t = threads.ToString(CultureInfo.InvariantCulture);
        var psi = new ProcessStartInfo(python, new[]
        {
            script, "--threads", t, "--model", shape.Causal ? "gpt" : "bert",
            "--layers", c.NumLayers.ToString(CultureInfo.InvariantCulture), "--hidden", c.HiddenSize.ToString(CultureInfo.InvariantCulture),
            "--heads", c.NumHeads.ToString(CultureInfo.InvariantCulture), "--intermediate", c.IntermediateSize.ToString(CultureInfo.InvariantCulture),
            "--vocab", c.VocabSize.ToString(CultureInfo.InvariantCulture), "--regular-vocab", shape.RegularVocab.ToString(CultureInfo.InvariantCulture),
            "--seq", shape.SequenceLength.ToString(CultureInfo.InvariantCulture), "--batch", shape.BatchSize.ToString(CultureInfo.InvariantCulture),
            "--lr", shape.LearningRate.ToString(CultureInfo.InvariantCulture),
        }.Concat(extra))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = false,
            UseShellExecute = false,
        };
        psi.Environment["OMP_NUM_THREADS"] = t;
        psi.Environment["OPENBLAS_NUM_THREADS"] = t;
        psi.Environment["MKL_NUM_THREADS"] = t;
        psi.Environment[OpenMp.WaitPolicyVariable] = ompWaitPolicy;
        return psi;
    }

    /// <summary>The peer script in serve mode: send "run precision n", read per-step milliseconds.</summary>
    internal sealed class PeerProcess : IDisposable
    {
        private readonly Process _process;

        private PeerProcess(Process process, JsonElement info)
        {
            _process = process;
            Info = info;
        }

        public JsonElement Info { get; }

        public static PeerProcess Start(string python, string script, TrainingShape shape, int threads, string ompWaitPolicy)
        {
            ProcessStartInfo psi = StartInfo(python, script, shape, threads, ompWaitPolicy, "--serve");
            psi.RedirectStandardInput = true;
            Process process = Process.Start(psi) ?? throw new InvalidOperationException($"Could not start {python} {script}.");
            string? ready = process.StandardOutput.ReadLine();
            if (ready is null)
            {
                process.WaitForExit();
                throw new InvalidOperationException($"{python} {script} --serve exited with code {process.ExitCode} before it was ready (its stderr is above).");
            }

            return new PeerProcess(process, JsonDocument.Parse(ready).RootElement.Clone());
        }

        /// <summary>Runs <paramref name="steps"/> PyTorch steps (the MLM head on every token, or only on the masked ones when <paramref name="sparse"/>) and returns their mean milliseconds per step.</summary>
        public double Run(string precision, int steps, bool sparse = false)
        {
            _process.StandardInput.WriteLine($"run {precision} {steps} {(sparse ? "sparse" : "dense")}");
            _process.StandardInput.Flush();
            string line = _process.StandardOutput.ReadLine() ?? throw new InvalidOperationException("The PyTorch peer exited during a run.");
            JsonElement reply = JsonDocument.Parse(line).RootElement;
            if (reply.TryGetProperty("error", out JsonElement error))
            {
                throw new InvalidOperationException("PyTorch peer: " + error.GetString());
            }

            return reply.GetProperty("ms").EnumerateArray().Average(e => e.GetDouble());
        }

        /// <summary>
        /// Runs one piece of the step <paramref name="iters"/> times in the peer (<c>module</c> command of
        /// pytorch_peer.py: forward only, or forward and backward with a fixed random output gradient) and returns
        /// its mean milliseconds per iteration, timed inside the peer.
        /// </summary>
        public double Module(string piece, string precision, bool backward, int iters)
        {
            _process.StandardInput.WriteLine($"module {piece} {precision} {(backward ? "fwdbwd" : "fwd")} {iters.ToString(CultureInfo.InvariantCulture)}");
            _process.StandardInput.Flush();
            string line = _process.StandardOutput.ReadLine() ?? throw new InvalidOperationException("The PyTorch peer exited during a module run.");
            JsonElement reply = JsonDocument.Parse(line).RootElement;
            return reply.TryGetProperty("error", out JsonElement error)
                ? throw new InvalidOperationException("PyTorch peer: " + error.GetString())
                : reply.GetProperty("ms").GetDouble();
        }

        /// <summary>CPU seconds the peer has used so far.</summary>
        public double CpuSeconds()
        {
            try
            {
                _process.Refresh();
                return _process.TotalProcessorTime.TotalSeconds;
            }
            catch (InvalidOperationException)
            {
                return 0;
            }
        }

        public void Dispose()
        {
            try
            {
                if (!_process.HasExited)
                {
                    _process.StandardInput.WriteLine("quit");
                    _process.StandardInput.Flush();
                    if (!_process.WaitForExit(10_000))
                    {
                        _process.Kill();
                    }
                }
            }
            catch (IOException)
            {
            }

            _process.Dispose();
        }
    }
}

/// <summary>One row of part 4.</summary>
/// <param name="Precision">fp32 or amp_bf16.</param>
/// <param name="Ours">Trainer.Fit step time statistics (ms).</param>
/// <param name="PyTorch">PyTorch eager step time statistics (ms), MLM head on the masked positions only (as ours).</param>
/// <param name="Ratio">Per-round ratio ours / PyTorch (sparse head).</param>
/// <param name="PyTorchDense">PyTorch eager step time with the MLM head on every token (ms).</param>
/// <param name="RatioDense">Per-round ratio ours / PyTorch (dense head).</param>
internal sealed record PeerRow(string Precision, Stats Ours, Stats PyTorch, Stats Ratio, Stats PyTorchDense, Stats RatioDense);
