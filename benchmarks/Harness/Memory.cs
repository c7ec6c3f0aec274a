using System.Diagnostics;
using System.Globalization;

namespace ComposerSharp.Benchmarks.Harness;

/// <summary>
/// Peak resident memory of this process. On Linux the peak (VmHWM) can be reset by writing 5 to
/// /proc/self/clear_refs, so each configuration gets its own peak; elsewhere the process-lifetime peak is reported.
/// </summary>
internal static class ProcessMemory
{
    /// <summary>Resets the peak to the current resident size, when the OS allows it; returns the current resident bytes.</summary>
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

        return Resident();
    }

    /// <summary>Current resident bytes (VmRSS).</summary>
    public static long Resident() => ReadStatus("VmRSS:") ?? Process.GetCurrentProcess().WorkingSet64;

    /// <summary>Peak resident bytes since the last <see cref="ResetPeak"/> (VmHWM).</summary>
    public static long Peak() => ReadStatus("VmHWM:") ?? Process.GetCurrentProcess().PeakWorkingSet64;

    private static long? ReadStatus(string key)
    {
        try
        {
            string? line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal));
            if (line is null)
            {
                return null;
            }

            string[] parts = line[key.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(parts[0], CultureInfo.InvariantCulture) * 1024;
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
}
