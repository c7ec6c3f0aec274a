using System.Diagnostics;

namespace ComposerSharp.Benchmarks.Harness;

/// <summary>
/// Runs this benchmark program again as a child process (a hidden subcommand) and returns the last line it printed:
/// for measurements that need a fresh process (peak memory, process-wide modes such as deterministic mode).
/// </summary>
internal static class ChildRun
{
    /// <summary>Starts the child with <paramref name="args"/>, without the variables in <paramref name="unset"/>, and returns its last stdout line.</summary>
    /// <param name="what">Names the measurement in errors.</param>
    /// <param name="args">The hidden subcommand and its arguments.</param>
    /// <param name="unset">Environment variables the child must not inherit.</param>
    /// <exception cref="InvalidOperationException">The executable's path is unknown, the child cannot start, fails, or prints nothing.</exception>
    public static string LastLine(string what, IEnumerable<string> args, params string[] unset)
    {
        string host = Environment.ProcessPath ?? throw new InvalidOperationException($"The path of the running executable is unknown, so the {what} cannot start a child process.");
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            psi.ArgumentList.Add(typeof(ChildRun).Assembly.Location);
        }

        foreach (string name in unset)
        {
            psi.Environment.Remove(name);
        }

        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        return LastLine(psi, what);
    }

    /// <summary>Runs the process <paramref name="psi"/> describes (stdout redirected) to its end and returns its last stdout line.</summary>
    /// <param name="psi">The process; <c>RedirectStandardOutput</c> must be true.</param>
    /// <param name="what">Names the measurement in errors.</param>
    /// <exception cref="InvalidOperationException">The process cannot start, exits with a non-zero code, or prints nothing.</exception>
    public static string LastLine(ProcessStartInfo psi, string what)
    {
        using Process p = Process.Start(psi) ?? throw new InvalidOperationException($"Could not start the {what} ({psi.FileName}).");
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string? last = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault();
        if (p.ExitCode != 0 || last is null)
        {
            throw new InvalidOperationException($"The {what} exited with code {p.ExitCode}: {output}");
        }

        return last;
    }
}
