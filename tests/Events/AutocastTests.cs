using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Events;

[TestFixture]
public class AutocastTests
{
    [Test]
    public void EntryPointsResolveOnThisPlatform() => Assert.That(Autocast.IsAvailable, Is.True);

    [Test]
    public void BFloat16ScopeMakesMatmulAndLinearBFloat16AndKeepsGradsFloat32()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(1);
        var lin = nn.Linear(8, 4);
        var x = torch.randn(3, 8);
        Tensor y;
        using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16))
        {
            Assert.That(x.matmul(x.t()).dtype, Is.EqualTo(ScalarType.BFloat16));
            y = lin.call(x);
            Assert.That(y.dtype, Is.EqualTo(ScalarType.BFloat16));
        }

        Assert.That(x.matmul(x.t()).dtype, Is.EqualTo(ScalarType.Float32), "autocast must be off after the scope");
        y.to(ScalarType.Float32).sum().backward();
        Assert.That(lin.weight!.grad!.dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(lin.weight.dtype, Is.EqualTo(ScalarType.Float32));
    }
}
