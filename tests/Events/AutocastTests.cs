using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Events;

/// <summary>
/// <see cref="AutocastScope"/> has the meaning of <c>torch.autocast(device_type, dtype, enabled)</c>: result dtypes,
/// nesting, restoring on exit (exceptions included), clearing the cast cache at the outermost exit, per-thread state.
/// </summary>
[TestFixture]
public class AutocastTests
{
    private static ScalarType MatmulDtype()
    {
        using var d = torch.NewDisposeScope();
        return torch.randn(3, 4).matmul(torch.randn(4, 2)).dtype;
    }

    [TearDown]
    public void AutocastIsOffAfterEachTest() => Assert.That(Autocast.IsEnabled(DeviceType.CPU), Is.False, "a test leaked an autocast scope");

    [TestCase(DeviceType.META)]
    [TestCase(DeviceType.MPS)]
    public void UnsupportedDeviceTypeIsRefusedBeforeReachingLibtorch(DeviceType deviceType)
    {
        var ex = Assert.Throws<ArgumentException>(() => new AutocastScope(deviceType, ScalarType.BFloat16));
        Assert.That(ex!.Message, Does.Contain(deviceType.ToString()).And.Contain("CPU or CUDA"));
        Assert.Throws<ArgumentException>(() => AutocastScope.Disabled(deviceType));
    }

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

    [Test]
    public void Float16ScopeMakesMatmulAndLinearFloat16WithinTolerance()
    {
        using var d = torch.NewDisposeScope();
        var lin = nn.Linear(16, 8);
        var x = torch.randn(5, 16);
        Tensor reference = x.to(ScalarType.Float64).matmul(lin.weight!.to(ScalarType.Float64).t()).add(lin.bias!.to(ScalarType.Float64));
        using (new AutocastScope(DeviceType.CPU, ScalarType.Float16))
        {
            Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.EqualTo(ScalarType.Float16));
            Tensor y = lin.call(x);
            Assert.That(y.dtype, Is.EqualTo(ScalarType.Float16));
            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float16));
            // fp16 keeps 11 significant bits: |error| ≤ 1e-2 for outputs of magnitude ~2.
            double err = y.to(ScalarType.Float64).sub(reference).abs().max().item<double>();
            Assert.That(err, Is.LessThan(1e-2));
        }
    }

    [Test]
    public void PrecisionEnterOpensTheMatchingScope()
    {
        using (Precision.AmpBf16.Enter(DeviceType.CPU))
        {
            Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.EqualTo(ScalarType.BFloat16));
            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.BFloat16));
        }

        using (Precision.AmpFp16.Enter(DeviceType.CPU))
        {
            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float16));
        }

        using (Precision.Fp32.Enter(DeviceType.CPU))
        {
            Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.Null);
            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float32));
        }

        Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.Null);
    }

    [Test]
    public void InnerDisabledScopeGivesFloat32AndTheOuterStateReturnsAfterIt()
    {
        using (new AutocastScope(DeviceType.CPU, ScalarType.Float16))
        {
            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float16));
            using (Precision.Fp32.Enter(DeviceType.CPU))
            {
                Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float32));
                Assert.That(Autocast.IsEnabled(DeviceType.CPU), Is.False);
                Assert.That(Autocast.GetDtype(DeviceType.CPU), Is.EqualTo(ScalarType.Float16), "a disabled scope keeps the dtype, like torch.autocast(enabled=False)");
            }

            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float16));
            using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16, enabled: false))
            {
                Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.Null);
            }

            Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.EqualTo(ScalarType.Float16));
        }
    }

    [Test]
    public void InnerScopeWithAnotherDtypeIsRestoredOnExit()
    {
        using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16))
        {
            using (new AutocastScope(DeviceType.CPU, ScalarType.Float16))
            {
                Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float16));
            }

            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.BFloat16));
        }
    }

    [Test]
    public void StateIsRestoredWhenAScopeExitsByAnException()
    {
        ScalarType before = Autocast.GetDtype(DeviceType.CPU);
        using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16))
        {
            var ex = Assert.Throws<InvalidOperationException>(() =>
            {
                using (new AutocastScope(DeviceType.CPU, ScalarType.Float16))
                {
                    throw new InvalidOperationException("forward failed");
                }
            });
            Assert.That(ex!.Message, Is.EqualTo("forward failed"));
            Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.EqualTo(ScalarType.BFloat16), "the outer scope is back in force");
        }

        Assert.Throws<ArithmeticException>(() =>
        {
            using (new AutocastScope(DeviceType.CPU, ScalarType.Float16))
            {
                throw new ArithmeticException("loss is NaN");
            }
        });
        Assert.That(Autocast.IsEnabled(DeviceType.CPU), Is.False);
        Assert.That(Autocast.GetDtype(DeviceType.CPU), Is.EqualTo(before));
        Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float32));
    }

    [Test]
    public void OnlyTheOutermostScopeClearsTheCastCacheAndLeavesAutocastOff()
    {
        // libtorch caches the BFloat16 copy of a Float32 leaf tensor that requires grad (a weight) for the life of
        // the outermost autocast region, so an in-place change of the weight inside the region is not seen until
        // the cache is cleared. (TorchSharp's Linear passes the view weight.t(), which is never cached, so the
        // weight is used directly here.)
        using var d = torch.NewDisposeScope();
        ScalarType before = Autocast.GetDtype(DeviceType.CPU);
        Tensor w = torch.randn(16, 8).requires_grad_();
        Tensor x = torch.randn(8, 16);
        Tensor Forward() => x.matmul(w).to(ScalarType.Float64);
        Tensor Reference() => x.to(ScalarType.Float64).matmul(w.detach().to(ScalarType.Float64));
        static double MaxDiff(Tensor a, Tensor b) => a.sub(b).abs().max().item<double>();

        Tensor first;
        using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16))
        {
            first = Forward();
            using (torch.no_grad())
            {
                w.add_(1.0);
            }

            Assert.That(MaxDiff(Forward(), first), Is.EqualTo(0), "the cached BFloat16 weight is reused inside the region");
            using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16))
            {
            }

            Assert.That(MaxDiff(Forward(), first), Is.EqualTo(0), "closing an inner scope must not clear the cache");
        }

        Assert.That(Autocast.IsEnabled(DeviceType.CPU), Is.False);
        Assert.That(Autocast.GetDtype(DeviceType.CPU), Is.EqualTo(before));
        using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16))
        {
            // bf16 keeps 8 significant bits: outputs of magnitude up to ~16 are within 0.25 of the float64
            // reference, while the stale result is off by |row sum of x| (the +1 on every weight).
            Tensor fresh = Forward();
            Assert.That(MaxDiff(fresh, Reference()), Is.LessThan(0.25));
            Assert.That(MaxDiff(first, Reference()), Is.GreaterThan(1.0));
        }
    }

    [Test]
    public void AScopeOnOneThreadDoesNotAffectAnother()
    {
        bool? otherEnabled = null;
        ScalarType? otherResult = null;
        using (new AutocastScope(DeviceType.CPU, ScalarType.BFloat16))
        {
            var t = new Thread(() =>
            {
                otherEnabled = Autocast.IsEnabled(DeviceType.CPU);
                otherResult = MatmulDtype();
            });
            t.Start();
            Assert.That(t.Join(TimeSpan.FromSeconds(30)), Is.True);
            Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.BFloat16), "still on here");
        }

        Assert.That(otherEnabled, Is.False);
        Assert.That(otherResult, Is.EqualTo(ScalarType.Float32));

        // And the other way round: a scope held open on another thread leaves this one in Float32.
        using var opened = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        ScalarType? insideOther = null, afterOther = null;
        var holder = new Thread(() =>
        {
            using (new AutocastScope(DeviceType.CPU, ScalarType.Float16))
            {
                insideOther = MatmulDtype();
                opened.Set();
                release.Wait(TimeSpan.FromSeconds(30));
            }

            afterOther = MatmulDtype();
        });
        holder.Start();
        Assert.That(opened.Wait(TimeSpan.FromSeconds(30)), Is.True);
        Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.Null);
        Assert.That(MatmulDtype(), Is.EqualTo(ScalarType.Float32));
        release.Set();
        Assert.That(holder.Join(TimeSpan.FromSeconds(30)), Is.True);
        Assert.That((insideOther, afterOther), Is.EqualTo((ScalarType.Float16, ScalarType.Float32)));
    }

    [Test]
    public void DisposingOnAnotherThreadThrowsAndLeavesTheScopeToItsOwner()
    {
        var scope = new AutocastScope(DeviceType.CPU, ScalarType.BFloat16);
        Exception? caught = null;
        try
        {
            var t = new Thread(() =>
            {
                try
                {
                    scope.Dispose();
                }
                catch (Exception ex)
                {
                    caught = ex;
                }
            });
            t.Start();
            Assert.That(t.Join(TimeSpan.FromSeconds(30)), Is.True);
            Assert.That(caught, Is.InstanceOf<InvalidOperationException>());
            Assert.That(caught!.Message, Does.Contain("per thread"));
            Assert.That(Autocast.ActiveDtype(DeviceType.CPU), Is.EqualTo(ScalarType.BFloat16), "the owner's scope is still open");
        }
        finally
        {
            scope.Dispose();
        }

        Assert.That(Autocast.IsEnabled(DeviceType.CPU), Is.False);
        Assert.DoesNotThrow(() => scope.Dispose(), "a second dispose does nothing");
    }

    [Test]
    public void OnlyBFloat16AndFloat16AreAutocastDtypes()
    {
        var ex = Assert.Throws<ArgumentException>(() => new AutocastScope(DeviceType.CPU, ScalarType.Float32));
        Assert.That(ex!.Message, Does.Contain("Float32").And.Contain("BFloat16 or Float16"));
        Assert.That(Autocast.IsEnabled(DeviceType.CPU), Is.False, "a refused scope changes nothing");
    }
}
