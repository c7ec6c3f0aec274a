using ComposerSharp.Interop;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Interop;

/// <summary>
/// glibc malloc tuning (<see cref="NativeAllocator"/>): applied in the test host and by the Trainer, and in force: a
/// large tensor comes from the heap instead of a mapping of its own, checked against a low threshold in the same
/// process so the check is shown to see the difference.
/// </summary>
[TestFixture]
[NonParallelizable]
public class NativeAllocatorTests
{
    // The child's tensor: 40 MiB, above glibc's adaptive mmap threshold limit (32 MiB).
    private const long Pages = (10L << 20) * sizeof(float) / 4096;

    [Test]
    public void TheSettingsAreAppliedByTheTestHostAndTheTrainer()
    {
        NativeAllocatorTuning tuning = NativeAllocator.Tune();
        if (!OperatingSystem.IsLinux() || tuning.Reason?.StartsWith("not glibc", StringComparison.Ordinal) == true)
        {
            Assert.Ignore($"glibc malloc tuning applies on glibc only: {tuning.Reason}");
        }

        Assert.That(tuning.Applied, Is.True, tuning.Reason);
        Assert.That(NativeAllocator.IsTuned, Is.True);
        Assert.That((tuning.MmapThresholdBytes, tuning.TrimThresholdBytes), Is.EqualTo((1L << 30, 1L << 30)));
        Assert.That(NativeAllocator.Tune(), Is.SameAs(tuning), "applied once per process");
    }

    [Test]
    public void AProcessThatOnlyBuildsATrainerIsTuned()
    {
        if (!NativeAllocator.Tune().Applied)
        {
            Assert.Ignore($"glibc malloc tuning is not available here: {NativeAllocator.Tune().Reason}");
        }

        ChildProcess.Result r = ChildProcess.Run("ComposerSharp.Tests.ProcessHost.dll", new[] { "allocator-by-trainer" }, TimeSpan.FromSeconds(120));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Stdout, Does.Contain("tuned before: False, after: True, reason: none"), r.ToString());
    }

    [Test]
    public void ALargeTensorComesFromTheHeapInsteadOfAMappingOfItsOwn()
    {
        if (!NativeAllocator.Tune().Applied)
        {
            Assert.Ignore($"glibc malloc tuning is not available here: {NativeAllocator.Tune().Reason}");
        }

        // In a fresh process, on its first thread (glibc's main arena, where the CLI trains): a test runner thread's
        // arena is made of 64 MiB heaps, and one freed whole is unmapped whatever the thresholds (see NativeAllocator).
        ChildProcess.Result r = ChildProcess.Run("ComposerSharp.Tests.ProcessHost.dll", new[] { "allocator-faults" }, TimeSpan.FromSeconds(120));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        using var json = System.Text.Json.JsonDocument.Parse(r.Stdout.Trim().Split('\n')[^1]);
        System.Text.Json.JsonElement root = json.RootElement;
        Assert.That(root.GetProperty("tuned").GetBoolean() && root.GetProperty("lowered").GetBoolean(), Is.True, r.Stdout);
        Assert.That(root.GetProperty("low_threshold_in_heap").GetBoolean(), Is.False, "with a low threshold a 40 MiB tensor is a mapping of its own (the control)");
        Assert.That(root.GetProperty("tuned_in_heap").GetBoolean(), Is.True, "with the tuned threshold a 40 MiB tensor comes from the heap");

        // Not asserted: whether the freed pages are reused. Allocating the same 40 MiB again and again here still
        // faults every page in both modes (the heap grows by 40 MiB a time: the aligned request is a few bytes larger
        // than the freed block, which a small allocation above it keeps from merging with the top). The effect on a
        // training step is measured by the benchmark part "vocab".
        TestContext.Out.WriteLine($"minor faults per 40 MiB tensor ({Pages} pages): tuned {root.GetProperty("tuned_faults").GetInt64()}, 128 KiB threshold {root.GetProperty("low_threshold_faults").GetInt64()}");
    }
}
