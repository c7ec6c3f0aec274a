using System.Diagnostics;
using NUnit.Framework;

namespace ComposerSharp.Tests.Support;

/// <summary>
/// Runs a .NET program built beside the tests (the CLI <c>composersharp.dll</c> or the test process host
/// <c>ComposerSharp.Tests.ProcessHost.dll</c>) as a child process, for behaviour that needs a fresh process.
/// The child gets the test's environment minus the variables named to <see cref="Run"/> (so that, for example,
/// an <c>MKL_CBWR</c> set by hand cannot decide a test).
/// </summary>
internal static class ChildProcess
{
    /// <summary>The result of a finished child: exit code and everything it wrote.</summary>
    internal sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public override string ToString() => $"exit {ExitCode}\nstdout:\n{Stdout}\nstderr:\n{Stderr}";
    }

    /// <summary>Runs <c>dotnet <paramref name="assembly"/> <paramref name="args"/></c> and waits at most <paramref name="timeout"/>.</summary>
    internal static Result Run(string assembly, IEnumerable<string> args, TimeSpan timeout, params string[] unset) =>
        RunAndSignal(assembly, args, timeout, signal: null, until: null, unset);

    /// <summary>
    /// Like <see cref="Run"/>, and sends <paramref name="signal"/> to the child (kill(2)) as soon as
    /// <paramref name="until"/> holds for what the child has written so far (stdout then stderr; polled every 100 ms).
    /// </summary>
    internal static Result RunAndSignal(string assembly, IEnumerable<string> args, TimeSpan timeout, int? signal, Func<string, bool>? until, params string[] unset)
    {
        string path = Path.Combine(TestContext.CurrentContext.TestDirectory, assembly);
        Assert.That(File.Exists(path), Is.True, $"{path} should be built beside the tests");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(path);
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        foreach (string name in unset)
        {
            psi.Environment.Remove(name);
        }

        var stdout = new System.Text.StringBuilder();
        var stderr = new System.Text.StringBuilder();
        using Process process = new() { StartInfo = psi };
        process.OutputDataReceived += (_, e) => { lock (stdout) { stdout.AppendLine(e.Data); } };
        process.ErrorDataReceived += (_, e) => { lock (stderr) { stderr.AppendLine(e.Data); } };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        string Out() { lock (stdout) { return stdout.ToString(); } }
        string Err() { lock (stderr) { return stderr.ToString(); } }
        if (signal is { } sig && until is not null)
        {
            var clock = Stopwatch.StartNew();
            while (!until(Out() + Err()) && !process.HasExited && clock.Elapsed < timeout)
            {
                Thread.Sleep(100);
            }

            Assert.That(process.HasExited, Is.False, $"the child ended before the signal could be sent:\n{Out()}\n{Err()}");
            Assert.That(Signals.kill(process.Id, sig), Is.Zero, $"kill({process.Id}, {sig})");
        }

        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"dotnet {assembly} {string.Join(' ', args)} did not finish within {timeout.TotalSeconds} s:\n{Out()}\n{Err()}");
        }

        process.WaitForExit(); // drains the asynchronous readers
        return new Result(process.ExitCode, Out(), Err());
    }
}

/// <summary>POSIX signal numbers (Linux x86-64) and <c>kill(2)</c>.</summary>
internal static class Signals
{
    internal const int SIGINT = 2;
    internal const int SIGTERM = 15;

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    internal static extern int kill(int pid, int signal);
}
