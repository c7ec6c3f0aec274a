using ComposerSharp.Distributed;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Distributed;

/// <summary>The NCCL backend's error paths (there is no GPU on the development machine).</summary>
[TestFixture]
public sealed class NcclTests
{
    [Test]
    public void AMissingNcclLibrarySaysWhatWasTriedAndWhatToInstall()
    {
        var e = Assert.Throws<DllNotFoundException>(() => NcclLibrary.Load(new[] { "libnccl-does-not-exist.so.2", "libc.so.6" }));
        Assert.That(e!.Message, Does.Contain("libnccl-does-not-exist.so.2 (not found)").And.Contain("libc.so.6 (no NCCL symbols exported)").And.Contain("dist_backend: mpi"));
    }

    [Test]
    public void NcclRefusesCpuDevicesAndOtherCudaIndices()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => NcclProcessGroup.CheckDevice(torch.CPU))!.Message, Does.Contain("needs a CUDA device"));
        Assert.That(Assert.Throws<ArgumentException>(() => NcclProcessGroup.CheckDevice(new Device(DeviceType.CUDA, 1)))!.Message, Does.Contain("CUDA_VISIBLE_DEVICES"));
        Assert.DoesNotThrow(() => NcclProcessGroup.CheckDevice(new Device(DeviceType.CUDA, 0)));
    }

    [Test]
    public void NcclAsABackendForACpuDeviceIsAClearError()
    {
        var env = new DistributedEnvironment(0, 2, 0, 2, 0, null, null, "ompi");
        var e = Assert.Throws<ArgumentException>(() => ProcessGroupFactory.Create(torch.CPU, new DistributedOptions { Backend = "nccl" }, env));
        Assert.That(e!.Message, Does.Contain("dist_backend = nccl needs a CUDA device"));
    }

    [Test]
    public void NcclDataTypesFollowNcclH()
    {
        Assert.That(NcclProcessGroup.DataType(ScalarType.Float32), Is.EqualTo(7));
        Assert.That(NcclProcessGroup.DataType(ScalarType.BFloat16), Is.EqualTo(9));
        Assert.That(NcclProcessGroup.DataType(ScalarType.Int64), Is.EqualTo(4));
        Assert.Throws<ArgumentException>(() => NcclProcessGroup.DataType(ScalarType.ComplexFloat32));
        Assert.That(NcclLibrary.Describe(5, "bad usage"), Is.EqualTo("ncclInvalidUsage: bad usage"));
    }
}
