using System.Diagnostics;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// Logs memory use after every training batch (AfterTrainBatch, as Composer's <c>MemoryMonitor</c>), for the CPU
/// process rather than CUDA's allocator (TorchSharp does not expose <c>torch.cuda.memory_stats</c>):
/// <c>memory/process_working_set_bytes</c> (resident memory, bytes), <c>memory/process_private_bytes</c>
/// (bytes), <c>memory/managed_heap_bytes</c> (.NET GC heap, bytes) and <c>memory/live_tensors</c> (TorchSharp
/// tensors created minus disposed on the training thread, from <c>DisposeScopeManager.Statistics</c>).
/// </summary>
public sealed class MemoryMonitor : Callback
{
    /// <inheritdoc/>
    public override void AfterTrainBatch(State state, Logger logger) => logger.LogMetrics(Measure());

    /// <summary>The current values, under the metric names above.</summary>
    public static IReadOnlyDictionary<string, double> Measure()
    {
        using Process process = Process.GetCurrentProcess();
        return new Dictionary<string, double>
        {
            ["memory/process_working_set_bytes"] = process.WorkingSet64,
            ["memory/process_private_bytes"] = process.PrivateMemorySize64,
            ["memory/managed_heap_bytes"] = GC.GetTotalMemory(forceFullCollection: false),
            ["memory/live_tensors"] = DisposeScopeManager.Statistics.ThreadTotalLiveCount,
        };
    }
}
