using System.Runtime.InteropServices;

namespace ComposerSharp.Benchmarks.Harness;

/// <summary>
/// The 1 GiB <c>M_MMAP_THRESHOLD</c>/<c>M_TRIM_THRESHOLD</c> setting (mallopt(3)) that the library applied before it
/// was found to grow fp32 training memory without bound (see <see cref="ComposerSharp.Interop.ProcessMemory"/>); kept
/// here only so the "vocab" part can show what it bought (fewer page faults) and what it cost (resident growth).
/// </summary>
internal static class GlibcMalloc
{
    private const int MTrimThreshold = -1;
    private const int MMmapThreshold = -3;

    /// <summary>Sets both thresholds to 1 GiB in this process; false where glibc is absent or refuses.</summary>
    public static bool RaiseThresholds()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            return MallOpt(MMmapThreshold, 1 << 30) == 1 && MallOpt(MTrimThreshold, 1 << 30) == 1;
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
        catch (DllNotFoundException)
        {
            return false;
        }
    }

    [DllImport("libc.so.6", EntryPoint = "mallopt")]
    private static extern int MallOpt(int param, int value);
}
