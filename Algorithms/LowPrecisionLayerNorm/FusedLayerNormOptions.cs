using ComposerSharp.Interop.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>Options of the fused CPU LayerNorm kernel (<see cref="FusedLayerNorm"/>).</summary>
public sealed record FusedLayerNormOptions
{
    /// <summary>Instruction set of the inner loops; <see cref="SimdPath.Auto"/> picks the widest the CPU has.</summary>
    public SimdPath Simd { get; init; } = SimdPath.Auto;

    /// <summary>
    /// Most .NET thread-pool workers one call uses; null means libtorch's intra-op thread count
    /// (<c>torch.get_num_threads()</c>), so the kernel never runs more threads than libtorch would on the same cores.
    /// Results do not depend on it (the weight/bias reduction has a fixed order).
    /// </summary>
    /// <remarks>
    /// The kernel runs between libtorch ops, so its workers and libtorch's OpenMP threads take turns on the cores;
    /// they only fight when the idle OpenMP threads spin. Measured on the 2-core AMD EPYC under load (benchmarks/README.md,
    /// change 7): with OMP_WAIT_POLICY=PASSIVE (the benchmark harness's default) 2 workers and 1 worker are within noise;
    /// with ACTIVE (spinning) the second worker is starved and 1 worker is faster. Set <see cref="Workers"/> to 1 when
    /// libgomp spins.
    /// </remarks>
    public int? Workers { get; init; }
}
