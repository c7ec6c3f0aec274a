using System.Diagnostics;
using System.Globalization;

namespace ComposerSharp.Benchmarks.Harness;

/// <summary>
/// CPU use of the machine and of this process over an interval, from Linux's /proc/stat and /proc/self/stat:
/// how many cores were busy overall, how many with this process (and the child processes it names), hence how
/// much other work was competing. Load averages are read at the end. Empty values where /proc is absent.
/// </summary>
internal sealed class LoadMeter
{
    private readonly (long Busy, long Total)? _machine;
    private readonly double _processSeconds;
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    private LoadMeter()
    {
        _machine = ReadMachine();
        _processSeconds = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
    }

    /// <summary>Starts measuring.</summary>
    public static LoadMeter Start() => new();

    /// <summary>Ends the interval; <paramref name="childCpuSeconds"/> is CPU time used by child processes of this benchmark during it.</summary>
    public LoadReport Stop(double childCpuSeconds = 0)
    {
        double wall = _clock.Elapsed.TotalSeconds;
        double own = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds - _processSeconds + childCpuSeconds;
        double? busyCores = null;
        (long Busy, long Total)? end = ReadMachine();
        if (_machine is { } s && end is { } e && e.Total > s.Total)
        {
            busyCores = (double)(e.Busy - s.Busy) / (e.Total - s.Total) * Environment.ProcessorCount;
        }

        double ownCores = wall > 0 ? own / wall : 0;
        return new LoadReport(
            Math.Round(wall, 2),
            busyCores is null ? null : Math.Round(busyCores.Value, 2),
            Math.Round(ownCores, 2),
            busyCores is null ? null : Math.Round(Math.Max(0, busyCores.Value - ownCores), 2),
            ReadLoadAverage());
    }

    /// <summary>The 1-, 5- and 15-minute load averages, or null without /proc/loadavg.</summary>
    public static double[]? ReadLoadAverage()
    {
        try
        {
            string[] parts = File.ReadAllText("/proc/loadavg").Split(' ');
            return parts.Take(3).Select(p => double.Parse(p, CultureInfo.InvariantCulture)).ToArray();
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

    private static (long Busy, long Total)? ReadMachine()
    {
        try
        {
            string line = File.ReadLines("/proc/stat").First();
            long[] v = line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Take(8)
                .Select(s => long.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            long total = v.Sum();
            long idle = v[3] + v[4];
            return (total - idle, total);
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

/// <summary>CPU use during one part of the run.</summary>
/// <param name="WallSeconds">Length of the interval.</param>
/// <param name="MachineBusyCores">Average number of busy cores on the machine (all processes).</param>
/// <param name="BenchmarkCores">Average number of cores used by the benchmark (this process and its children).</param>
/// <param name="OtherCores">Average number of cores used by other work (machine − benchmark): the competing load.</param>
/// <param name="LoadAverage">1/5/15-minute load averages at the end of the interval.</param>
internal sealed record LoadReport(double WallSeconds, double? MachineBusyCores, double BenchmarkCores, double? OtherCores, double[]? LoadAverage)
{
    /// <summary>One-line description for the console.</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture,
            $"{WallSeconds:F0} s; cores busy: machine {MachineBusyCores?.ToString("F2", CultureInfo.InvariantCulture) ?? "?"}, benchmark {BenchmarkCores:F2}, other work {OtherCores?.ToString("F2", CultureInfo.InvariantCulture) ?? "?"}; load average {(LoadAverage is null ? "?" : string.Join(" ", LoadAverage.Select(l => l.ToString("F2", CultureInfo.InvariantCulture))))}");
}
