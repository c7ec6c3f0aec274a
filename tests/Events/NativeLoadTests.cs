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
}
