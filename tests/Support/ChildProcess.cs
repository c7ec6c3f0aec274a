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
    internal static Result Run(string assembly, IEnumerable<string> args, TimeSpan timeout, params string[] unset)
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

        using Process process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start dotnet {path}");
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"dotnet {assembly} {string.Join(' ', args)} did not finish within {timeout.TotalSeconds} s");
        }

        process.WaitForExit();
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }
}
