using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace ComposerSharp.Interop;

/// <summary>
/// Reads this process's memory and CPU use from the operating system: resident set size (VmRSS), its peak (VmHWM),
/// and getrusage(2). Used by the memory tests and the benchmarks; changes nothing.
/// <para>
/// ComposerSharp leaves glibc's malloc at its defaults, as PyTorch eager does. An earlier version raised
/// <c>M_MMAP_THRESHOLD</c> and <c>M_TRIM_THRESHOLD</c> to 1 GiB so that logits-sized tensors came from the brk heap
/// instead of fresh zero-filled mappings. Together with small native objects that only a finalizer frees (see
/// <c>ComposerSharp.Core.StepScope</c>), that made fp32 training with a 50k vocabulary grow without bound
/// (gpt-tiny, batch 32 × 64: 0.6 GB to 19 GB in 20 batches): libtorch allocates with <c>posix_memalign(64, n)</c>,
/// and glibc 2.36's memalign asks the heap for n + 96 bytes, so a freed block of exactly n bytes hemmed in by a live
/// small allocation never serves the next request of the same size, and the heap grew by one such block at a time.
/// With the default thresholds (dynamic, at most 32 MiB) larger blocks are mappings of their own, unmapped on free.
/// </para>
/// </summary>
public static partial class ProcessMemory
{
    /// <summary>Current resident bytes (VmRSS of /proc/self/status; elsewhere the working set).</summary>
    public static long ResidentBytes() => ReadStatus("VmRSS:") ?? Process.GetCurrentProcess().WorkingSet64;

    /// <summary>Peak resident bytes (VmHWM) since the process started or since the last <see cref="ResetPeak"/>.</summary>
    public static long PeakResidentBytes() => ReadStatus("VmHWM:") ?? Process.GetCurrentProcess().PeakWorkingSet64;

    /// <summary>
    /// Resets the peak to the current resident size where Linux allows it (writing 5 to /proc/self/clear_refs), so a
    /// measurement gets a peak of its own; elsewhere the peak stays the process's. Returns the current resident bytes.
    /// </summary>
    public static long ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return ResidentBytes();
    }

    /// <summary>The process's minor page faults so far (getrusage(2), every thread), or −1 when unavailable.</summary>
    public static long MinorPageFaults() => Usage() is { } u ? u.MinorFaults : -1;

    /// <summary>
    /// User and system CPU seconds and minor page faults of the whole process so far (getrusage(2) <c>RUSAGE_SELF</c>),
    /// or null when not on Linux.
    /// </summary>
    public static (double UserSeconds, double SystemSeconds, long MinorFaults)? Usage()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        var usage = new RUsage();
        return GetRUsage(0, ref usage) == 0
            ? (usage.UserSeconds + (usage.UserMicroseconds / 1e6), usage.SystemSeconds + (usage.SystemMicroseconds / 1e6), usage.MinorFaults)
            : null;
    }

    private static long? ReadStatus(string key)
    {
        try
        {
            string? line = File.Exists("/proc/self/status") ? File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal)) : null;
            return line is null
                ? null
                : long.Parse(line[key.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries)[0], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    [LibraryImport("libc", EntryPoint = "getrusage")]
    private static partial int GetRUsage(int who, ref RUsage usage);

    /// <summary>Linux's <c>struct rusage</c> on 64-bit: two timevals, then 14 longs.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct RUsage
    {
        public long UserSeconds;
        public long UserMicroseconds;
        public long SystemSeconds;
        public long SystemMicroseconds;
        public long MaxRss;
        public long SharedRss;
        public long UnsharedData;
        public long UnsharedStack;
        public long MinorFaults;
        public long MajorFaults;
        public long Swaps;
        public long BlockIn;
        public long BlockOut;
        public long MessagesSent;
        public long MessagesReceived;
        public long Signals;
        public long VoluntarySwitches;
        public long InvoluntarySwitches;
    }
}
