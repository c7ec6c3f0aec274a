using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Events;

/// <summary>
/// The build patches libLibTorchSharp.so so that it loads on a libstdc++ older than GCC 13's; these tests prove
/// the copy in the test output loads and computes, and that TorchSharp did not fall back to a second copy.
/// </summary>
[TestFixture]
public class NativeLoadTests
{
    [Test]
    public void TensorOperationRunsFromTestOutput()
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2);
        var b = torch.tensor(new float[] { 5, 6, 7, 8 }).reshape(2, 2);
        float[] c = a.matmul(b).data<float>().ToArray();
        Assert.That(c, Is.EqualTo(new float[] { 19, 22, 43, 50 }));
    }

    [Test]
    public void NoFallbackCopyOfNativesWasMade()
    {
        _ = torch.ones(1);
        string outDir = Path.GetDirectoryName(typeof(torch).Assembly.Location)!;
        // TorchSharp copies natives into a "cpu" (or "cuda") folder next to the assembly only when its first load failed.
        Assert.That(Directory.Exists(Path.Combine(outDir, "cpu")), Is.False, "TorchSharp fell back to copying natives; the first load failed.");
    }

    [Test]
    public void OutputCopyDiffersFromNuGetCacheOnlyInTheVersionNeedFlag()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Ignore("The libLibTorchSharp.so patch applies only on Linux.");
        }

        string outDir = Path.GetDirectoryName(typeof(torch).Assembly.Location)!;
        string output = Path.Combine(outDir, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        string version = typeof(torch).Assembly.GetName().Version!.ToString(3);
        string nugetRoot = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string cached = Path.Combine(nugetRoot, "torchsharp", version, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        if (!File.Exists(cached))
        {
            Assert.Ignore($"No NuGet cache copy at {cached} to compare with.");
        }

        byte[] a = File.ReadAllBytes(output);
        byte[] b = File.ReadAllBytes(cached);
        Assert.That(a.Length, Is.EqualTo(b.Length));
        int differing = a.Where((x, i) => x != b[i]).Count();
        string libstdcxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
        bool hostHasVersion = File.Exists(libstdcxx) &&
            System.Text.Encoding.ASCII.GetString(File.ReadAllBytes(libstdcxx)).Contains("GLIBCXX_3.4.32\0", StringComparison.Ordinal);
        // Patched: exactly the vna_flags byte of the GLIBCXX_3.4.32 need differs, and the cache copy is untouched.
        Assert.That(differing, Is.EqualTo(hostHasVersion ? 0 : 1));
    }
}
