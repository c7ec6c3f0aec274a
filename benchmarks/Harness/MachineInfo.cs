using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;

namespace ComposerSharp.Benchmarks.Harness;

/// <summary>What the numbers were measured on: CPU, cores, torch threads, library versions, date and starting load.</summary>
/// <param name="CpuModel">"model name" from /proc/cpuinfo (or the processor architecture elsewhere).</param>
/// <param name="CpuFlags">The CPU's vector/matrix features relevant to bf16/fp16 kernels (avx2, avx512f, avx512_bf16, avx512_fp16, amx_*).</param>
/// <param name="LogicalCores">Cores available to this process.</param>
/// <param name="TorchThreads">libtorch intra-op threads used by the benchmark.</param>
/// <param name="LibtorchVersion">libtorch version reported by TorchSharp's <c>torch.__version__</c>.</param>
/// <param name="TorchSharpVersion">TorchSharp assembly version.</param>
/// <param name="Runtime">.NET runtime.</param>
/// <param name="Os">Operating system.</param>
/// <param name="MemoryBytes">Physical memory (MemTotal).</param>
/// <param name="DateUtc">When the run started (ISO 8601, UTC).</param>
/// <param name="LoadAverageAtStart">1/5/15-minute load averages when the run started.</param>
/// <param name="OmpWaitPolicy">OMP_WAIT_POLICY in force for libtorch and the peer.</param>
internal sealed record MachineInfo(
    string CpuModel,
    string[] CpuFlags,
    int LogicalCores,
    int TorchThreads,
    string LibtorchVersion,
    string TorchSharpVersion,
    string Runtime,
    string Os,
    long? MemoryBytes,
    string DateUtc,
    double[]? LoadAverageAtStart,
    string OmpWaitPolicy)
{
    private static readonly string[] InterestingFlags = { "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_tile" };

    /// <summary>Collects the description; call after setting the torch thread count.</summary>
    public static MachineInfo Collect(string ompWaitPolicy)
    {
        string cpu = RuntimeInformation.ProcessArchitecture.ToString();
        string[] flags = Array.Empty<string>();
        long? memory = null;
        try
        {
            string[] lines = File.ReadAllLines("/proc/cpuinfo");
            cpu = lines.FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? cpu;
            string[] all = lines.FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal))?.Split(':', 2)[1]
                .Split(' ', StringSplitOptions.RemoveEmptyEntries) ?? Array.Empty<string>();
            flags = InterestingFlags.Where(all.Contains).ToArray();
            string? mem = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            if (mem is not null)
            {
                memory = long.Parse(mem.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
            }
        }
        catch (IOException)
        {
        }

        return new MachineInfo(
            cpu,
            flags,
            Environment.ProcessorCount,
            torch.get_num_threads(),
            torch.__version__,
            typeof(torch).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion?.Split('+')[0]
                ?? typeof(torch).Assembly.GetName().Version?.ToString() ?? "unknown",
            RuntimeInformation.FrameworkDescription,
            RuntimeInformation.OSDescription,
            memory,
            DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
            LoadMeter.ReadLoadAverage(),
            ompWaitPolicy);
    }
}
