using System.Runtime.InteropServices;

namespace ComposerSharp.Interop;

/// <summary>What <see cref="NativeAllocator.Tune"/> did.</summary>
/// <param name="Applied">True when glibc accepted both settings; false on other C libraries and operating systems, or when glibc refused one.</param>
/// <param name="MmapThresholdBytes">The <c>M_MMAP_THRESHOLD</c> requested: blocks below it come from the heap, not from a fresh mmap.</param>
/// <param name="TrimThresholdBytes">The <c>M_TRIM_THRESHOLD</c> requested: free memory at the top of the heap is returned to the kernel only above it.</param>
/// <param name="Reason">Why nothing was applied, or null.</param>
public sealed record NativeAllocatorTuning(bool Applied, long MmapThresholdBytes, long TrimThresholdBytes, string? Reason);

/// <summary>
/// Tunes glibc's malloc, which libtorch's CPU allocator (<c>c10::alloc_cpu</c>, <c>posix_memalign</c>) uses for every
/// tensor, so large tensors reuse heap memory instead of being mapped and faulted in anew on every call.
/// <para>
/// glibc serves a block above its mmap threshold with a fresh <c>mmap</c> and unmaps it on free; the threshold adapts
/// upwards only to 32 MiB (<c>DEFAULT_MMAP_THRESHOLD_MAX</c>). A training step with a 50,304-word vocabulary allocates
/// several logits-sized tensors (hundreds of MiB) per step, and each one's pages are zero-filled by the kernel on first
/// touch: the issue's text MLM run spent more system than user time (107 M minor page faults). With the thresholds set
/// here (1 GiB each, via <c>mallopt</c>, mallopt(3)) freed blocks stay in the heap and are reused. The cost: memory
/// freed at the top of the heap below 1 GiB is kept by the process (resident size stays near its peak).
/// </para>
/// <para>
/// Limits (glibc 2.36): threads other than the process's first use their own arenas, made of heaps of at most 64 MiB,
/// so there a block above about 64 MiB is still mapped per call, and a heap that becomes wholly free is unmapped
/// whatever the thresholds; the CLI trains on the first thread, whose arena grows with brk and has neither limit.
/// <c>M_ARENA_MAX</c> = 1 would put later threads into the first arena too; it is not set, because it cannot move
/// threads that already have an arena (the .NET runtime's and the test runner's) and its lock contention was not
/// measured. Changing the settings after libtorch's first allocations is fine: they apply to every later allocation.
/// </para>
/// Called by every entry point (the CLI, the Trainer's constructor, the test host, the benchmarks) instead of the
/// <c>GLIBC_TUNABLES</c>/<c>MALLOC_*</c> environment variables, which glibc reads only at process start.
/// </summary>
public static partial class NativeAllocator
{
    /// <summary>The mmap threshold set (1 GiB): glibc's <c>M_MMAP_THRESHOLD</c>.</summary>
    public const int MmapThresholdBytes = 1 << 30;

    /// <summary>The trim threshold set (1 GiB): glibc's <c>M_TRIM_THRESHOLD</c>.</summary>
    public const int TrimThresholdBytes = 1 << 30;

    // mallopt parameter numbers from glibc's malloc.h.
    private const int MTrimThreshold = -1;
    private const int MMmapThreshold = -3;

    private static readonly Lazy<NativeAllocatorTuning> Once = new(Apply, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>
    /// Applies the settings once per process (later calls return the first result); safe from any thread and before
    /// or after libtorch loads. Never throws: on other platforms it reports why nothing was done.
    /// </summary>
    /// <returns>What was applied.</returns>
    public static NativeAllocatorTuning Tune() => Once.Value;

    /// <summary>Whether <see cref="Tune"/> has run and glibc accepted the settings.</summary>
    public static bool IsTuned => Once.IsValueCreated && Once.Value.Applied;

    /// <summary>
    /// Sets glibc's mmap threshold to <paramref name="bytes"/> (for tests and benchmarks that compare against a low
    /// threshold); returns false when not on glibc or when glibc refuses the value.
    /// </summary>
    /// <param name="bytes">Threshold in bytes; glibc's default is 128 KiB (adaptive up to 32 MiB, until set).</param>
    public static bool SetMmapThreshold(int bytes) => IsGlibc() && MallOpt(MMmapThreshold, bytes) == 1;

    /// <summary>
    /// Whether the first byte of <paramref name="tensor"/>'s CPU storage lies in the process's brk heap (the
    /// <c>[heap]</c> line of /proc/self/maps, glibc's main arena) rather than in a mapping of its own: with the tuning, a
    /// large tensor allocated on the first thread comes from the heap; with glibc's default threshold it is mapped.
    /// False when not on Linux.
    /// </summary>
    /// <param name="tensor">A CPU tensor with at least one element.</param>
    public static unsafe bool IsInBrkHeap(TorchSharp.torch.Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (!OperatingSystem.IsLinux() || tensor.numel() == 0)
        {
            return false;
        }

        ulong address;
        fixed (byte* p = tensor.bytes)
        {
            address = (ulong)p;
        }

        foreach (string line in File.ReadLines("/proc/self/maps"))
        {
            if (!line.EndsWith("[heap]", StringComparison.Ordinal))
            {
                continue;
            }

            string[] range = line[..line.IndexOf(' ', StringComparison.Ordinal)].Split('-');
            ulong start = Convert.ToUInt64(range[0], 16), end = Convert.ToUInt64(range[1], 16);
            if (address >= start && address < end)
            {
                return true;
            }
        }

        return false;
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

    private static NativeAllocatorTuning Apply()
    {
        if (!IsGlibc())
        {
            return new NativeAllocatorTuning(false, MmapThresholdBytes, TrimThresholdBytes, $"not glibc on Linux ({RuntimeInformation.OSDescription})");
        }

        bool mmap = MallOpt(MMmapThreshold, MmapThresholdBytes) == 1;
        bool trim = MallOpt(MTrimThreshold, TrimThresholdBytes) == 1;
        return mmap && trim
            ? new NativeAllocatorTuning(true, MmapThresholdBytes, TrimThresholdBytes, null)
            : new NativeAllocatorTuning(false, MmapThresholdBytes, TrimThresholdBytes, $"glibc refused mallopt: M_MMAP_THRESHOLD {(mmap ? "ok" : "refused")}, M_TRIM_THRESHOLD {(trim ? "ok" : "refused")}");
    }

    private static bool IsGlibc()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            return GnuGetLibcVersion() != IntPtr.Zero;
        }
        catch (EntryPointNotFoundException)
        {
            return false; // musl and other C libraries
        }
        catch (DllNotFoundException)
        {
            return false;
        }
    }

    [LibraryImport("libc.so.6", EntryPoint = "mallopt")]
    private static partial int MallOpt(int param, int value);

    [LibraryImport("libc.so.6", EntryPoint = "gnu_get_libc_version")]
    private static partial IntPtr GnuGetLibcVersion();

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
