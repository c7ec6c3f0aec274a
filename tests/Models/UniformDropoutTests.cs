using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Tests.Models;

/// <summary>
/// <see cref="UniformDropout"/> against the contract of torch.nn.Dropout (and libtorch's dropout): the zeroed
/// fraction, the kept values' scale in the input dtype, the gradient, eval mode, p = 0 and 1, bad p, seeding.
/// </summary>
[TestFixture]
public class UniformDropoutTests
{
    /// <summary>Same shape and every element equal (TorchSharp's Tensor.equal is element-wise).</summary>
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [TestCase(ScalarType.Float32, 0.1)]
    [TestCase(ScalarType.BFloat16, 0.1)]
    [TestCase(ScalarType.Float16, 0.3)]
    public void ZeroesAboutPAndScalesTheRestLikeLibtorchsDropout(ScalarType dtype, double p)
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(31);
        const long n = 200_000;
        Tensor x = (torch.rand(n) + 0.5).to(dtype).requires_grad_(); // no zeros in the input
        Tensor y = UniformDropout.Apply(x, p);
        Assert.That(y.dtype, Is.EqualTo(dtype));
        Assert.That(y.shape, Is.EqualTo(x.shape));

        Tensor dropped = y.eq(0);
        double fraction = dropped.to(ScalarType.Float64).mean().item<double>();
        double sigma = Math.Sqrt(p * (1 - p) / n);
        Assert.That(fraction, Is.EqualTo(p).Within(5 * sigma), "fraction zeroed (5 standard errors)");

        // libtorch's dropout: input * (bernoulli mask / (1 - p)), the mask computed in the input dtype.
        Tensor scale = torch.ones(1, dtype: dtype).div_(1 - p);
        Tensor expectedKept = x.detach() * scale;
        Tensor kept = dropped.logical_not();
        Assert.That(Same(y.detach().masked_select(kept), expectedKept.masked_select(kept)), Is.True, "kept values = x × (1/(1−p) in the input dtype)");

        Tensor dy = torch.randn(n).to(dtype);
        Tensor dx = torch.autograd.grad(new[] { y }, new[] { x }, new[] { dy })[0];
        Assert.That(Same(dx, torch.where(kept, dy * scale, torch.zeros_like(dy))), Is.True, "gradient = dy × the same mask");

        // The reference layer agrees on the distribution (fraction within the same bound).
        double libtorchFraction = F.dropout(x.detach(), p, training: true).eq(0).to(ScalarType.Float64).mean().item<double>();
        Assert.That(libtorchFraction, Is.EqualTo(p).Within(5 * sigma), "libtorch's dropout, for comparison");
    }

    [Test]
    public void EvalModeZeroAndOneAndBadProbabilities()
    {
        using var d = torch.NewDisposeScope();
        Tensor x = torch.randn(3, 4);
        var m = new UniformDropout(0.5);
        m.eval();
        Assert.That(Same(m.call(x), x), Is.True, "eval mode returns the input");
        m.train();
        Assert.That(Same(UniformDropout.Apply(x, 0), x), Is.True, "p = 0");
        Assert.That(UniformDropout.Apply(x, 1).eq(0).all().item<bool>(), Is.True, "p = 1");
        foreach (double bad in new[] { -0.1, 1.5, double.NaN })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => new UniformDropout(bad))!;
            Assert.That(e.Message, Does.Contain("[0, 1]"));
            Assert.Throws<ArgumentOutOfRangeException>(() => UniformDropout.Apply(x, bad));
        }
    }

    [Test]
    public void TheSeedDecidesTheMask()
    {
        using var d = torch.NewDisposeScope();
        Tensor x = torch.ones(1000);
        torch.manual_seed(5);
        Tensor a = UniformDropout.Apply(x, 0.2);
        torch.manual_seed(5);
        Tensor b = UniformDropout.Apply(x, 0.2);
        Tensor c = UniformDropout.Apply(x, 0.2);
        Assert.That(Same(a, b), Is.True, "same seed, same mask");
        Assert.That(Same(a, c), Is.False, "the next draw differs");
    }
}
