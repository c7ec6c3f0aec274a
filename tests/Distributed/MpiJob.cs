using System.Diagnostics;
using System.Text;
using NUnit.Framework;

namespace ComposerSharp.Tests.Distributed;

/// <summary>The outcome of an mpirun job.</summary>
public sealed record MpiJobResult(int ExitCode, string Stdout, string Stderr, bool TimedOut, TimeSpan Elapsed, string Output)
{
    public string Describe() => $"exit {ExitCode}{(TimedOut ? " (killed at the timeout)" : "")} after {Elapsed.TotalSeconds:0.0} s\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}";
}

/// <summary>
/// Starts the test host (tests/DistributedHost) on N local ranks with <c>mpirun --allow-run-as-root --oversubscribe
/// --mca btl self,vader</c> (shared memory; the runtime's own channel is limited to loopback) and kills the job at a
/// timeout. Tests using it skip when mpirun is not installed (.ci/run installs openmpi-bin).
/// </summary>
public static class MpiJob
{
    public static string HostDll => Path.Combine(AppContext.BaseDirectory, "ComposerSharp.DistributedHost.dll");

    /// <summary>The mpirun on PATH, or an ignored test.</summary>
    public static string RequireMpirun()
    {
        string? found = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);
        if (found is null)
        {
            Assert.Ignore("mpirun is not installed, so the multi-process tests cannot run here; install Open MPI ('apt-get install openmpi-bin'), as .ci/run does.");
        }

        return found!;
    }

    /// <summary>Runs <c>host scenario output args…</c> on <paramref name="ranks"/> ranks.</summary>
    public static MpiJobResult RunHost(string scenario, int ranks = 2, TimeSpan? timeout = null, IReadOnlyDictionary<string, string>? env = null, params string[] args)
    {
        string output = Path.Combine(Path.GetTempPath(), $"composersharp-mpi-{scenario}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(output);
        var command = new List<string> { "dotnet", HostDll, scenario, output };
        command.AddRange(args);
        return Run(command, ranks, timeout ?? TimeSpan.FromSeconds(120), env, output);
    }

    /// <summary>Runs <paramref name="command"/> on <paramref name="ranks"/> ranks under mpirun.</summary>
    public static MpiJobResult Run(IReadOnlyList<string> command, int ranks, TimeSpan timeout, IReadOnlyDictionary<string, string>? env, string output)
    {
        string mpirun = RequireMpirun();
        var psi = new ProcessStartInfo(mpirun)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in MpirunArguments(ranks))
        {
            psi.ArgumentList.Add(a);
        }

        foreach (string a in command)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["OMP_NUM_THREADS"] = "1";
        foreach ((string k, string v) in env ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }

        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var clock = Stopwatch.StartNew();
        using Process p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (stdout) { stdout.AppendLine(e.Data); } } };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (stderr) { stderr.AppendLine(e.Data); } } };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        bool exited = p.WaitForExit(timeout);
        if (!exited)
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
        }

        p.WaitForExit();
        return new MpiJobResult(exited ? p.ExitCode : -1, stdout.ToString(), stderr.ToString(), !exited, clock.Elapsed, output);
    }

    /// <summary>mpirun's options: N local ranks, shared memory between them, loopback for the runtime.</summary>
    public static IEnumerable<string> MpirunArguments(int ranks) => new[]
    {
        "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture),
        "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo", "-x", "OMP_NUM_THREADS",
    };
}

/// <summary>Tests that run host scenarios under mpirun: <see cref="Host"/> runs one and its output folder is deleted after the test.</summary>
public abstract class MpiJobFixture
{
    private readonly List<string> _outputs = new();

    [TearDown]
    public void DeleteJobOutputs()
    {
        foreach (string folder in _outputs.Where(Directory.Exists))
        {
            Directory.Delete(folder, recursive: true);
        }

        _outputs.Clear();
    }

    /// <summary>Runs <paramref name="scenario"/> of the test host on <paramref name="ranks"/> ranks with the scenario's <paramref name="args"/> (see <see cref="MpiJob.RunHost"/>).</summary>
    protected MpiJobResult Host(string scenario, int ranks = 2, TimeSpan? timeout = null, IReadOnlyDictionary<string, string>? env = null, params string[] args)
    {
        MpiJobResult job = MpiJob.RunHost(scenario, ranks, timeout, env, args);
        _outputs.Add(job.Output);
        return job;
    }
}
