using System.CommandLine;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;

namespace ComposerSharp.Cli;

/// <summary>
/// <c>composersharp env</c>: prints what a run's numbers depend on — CPU model and vector features, cores and
/// libtorch threads, library versions, CUDA, MKL's reproducibility branch — in the spirit of Composer's
/// <c>composer_collect_env</c> (composer/utils/collect_env.py). With <c>--determinism-probe</c> it also measures
/// whether this CPU gives bitwise-different matrix products for different memory alignments
/// (<see cref="Reproducibility.AlignmentProbe"/>), after switching deterministic mode on when
/// <c>--deterministic-mode</c> is given.
/// </summary>
public static class EnvCommand
{
    private static readonly string[] InterestingFlags = { "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile" };

    /// <summary>The line prefix of the probe's result: <c>alignment probe: N of M alignments differ</c>.</summary>
    public const string ProbePrefix = "alignment probe: ";

    /// <summary>Builds the <c>env</c> command; it writes to <paramref name="output"/> (stdout when null).</summary>
    public static Command Build(TextWriter? output)
    {
        var probe = new Option<bool>("--determinism-probe") { Description = "Also check whether matrix products on this CPU depend on memory alignment." };
        var deterministic = new Option<bool>("--deterministic-mode") { Description = "Switch deterministic mode on first (as the deterministic_mode key does)." };
        var command = new Command("env", "Print the environment that results depend on (CPU, threads, versions, MKL reproducibility).") { probe, deterministic };
        command.SetAction(parse =>
        {
            TextWriter o = output ?? Console.Out;
            try
            {
                if (parse.GetValue(deterministic))
                {
                    Reproducibility.ConfigureDeterministicMode();
                }

                Write(o, parse.GetValue(probe));
                return 0;
            }
            catch (InvalidOperationException ex)
            {
                Console.Error.WriteLine($"composersharp env: {ex.Message}");
                return 1;
            }
        });
        return command;
    }

    private static void Write(TextWriter o, bool probe)
    {
        (string cpu, string[] flags) = Cpu();
        o.WriteLine($"cpu: {cpu}");
        o.WriteLine($"cpu features: {(flags.Length == 0 ? "(none of " + string.Join(", ", InterestingFlags) + ")" : string.Join(' ', flags))}");
        o.WriteLine($"logical cores: {Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture)}");
        o.WriteLine($"libtorch threads: {torch.get_num_threads().ToString(CultureInfo.InvariantCulture)}");
        o.WriteLine($"libtorch: {torch.__version__}");
        o.WriteLine($"TorchSharp: {Version(typeof(torch).Assembly)}");
        o.WriteLine($"ComposerSharp: {Version(typeof(Reproducibility).Assembly)}");
        o.WriteLine($".NET: {RuntimeInformation.FrameworkDescription}");
        o.WriteLine($"os: {RuntimeInformation.OSDescription}");
        o.WriteLine($"cuda available: {(torch.cuda.is_available() ? "yes, " + torch.cuda.device_count().ToString(CultureInfo.InvariantCulture) + " device(s)" : "no")}");
        o.WriteLine($"MKL CNR branch: {Reproducibility.MklCnrBranch ?? "no MKL"}");
        o.WriteLine($"deterministic mode: {(Reproducibility.IsDeterministicModeOn ? "on" : "off")}");
        if (probe)
        {
            const int alignments = 16;
            int differing = Reproducibility.AlignmentProbe(alignments);
            o.WriteLine($"{ProbePrefix}{differing.ToString(CultureInfo.InvariantCulture)} of {(alignments - 1).ToString(CultureInfo.InvariantCulture)} alignments differ");
        }
    }

    private static (string Model, string[] Flags) Cpu()
    {
        const string cpuinfo = "/proc/cpuinfo";
        if (!File.Exists(cpuinfo))
        {
            return (RuntimeInformation.ProcessArchitecture.ToString(), Array.Empty<string>());
        }

        string[] lines = File.ReadAllLines(cpuinfo);
        string Field(string name) => lines.FirstOrDefault(l => l.StartsWith(name, StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "";
        string[] all = Field("flags").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return (Field("model name") is { Length: > 0 } model ? model : RuntimeInformation.ProcessArchitecture.ToString(), InterestingFlags.Where(all.Contains).ToArray());
    }

    private static string Version(Assembly assembly) =>
        assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion?.Split('+')[0]
        ?? assembly.GetName().Version?.ToString() ?? "unknown";
}
