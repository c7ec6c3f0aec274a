using System.Runtime.Intrinsics;

namespace ComposerSharp.Interop.Kernels;

/// <summary>
/// The per-step scalars of one AdamW update of one parameter, computed once in double precision by the caller and
/// rounded to Float32 here (the element-wise arithmetic is Float32, as libtorch's for a Float32 tensor).
/// </summary>
/// <param name="DecayRate">The weight-decay rate <c>r</c> of the step, every parameter element multiplied by <c>1 − r</c>
/// first: <c>lr·weight_decay</c> for PyTorch's AdamW, <c>weight_decay·lr/initial_lr</c> for Composer's
/// DecoupledAdamW; 0 for no decay.</param>
/// <param name="Beta1">β₁, the decay rate of the first moment, in [0, 1).</param>
/// <param name="Beta2">β₂, the decay rate of the second moment, in [0, 1).</param>
/// <param name="StepSize"><c>lr / (1 − β₁ᵗ)</c> (PyTorch's <c>step_size</c>) for step <c>t</c> ≥ 1.</param>
/// <param name="SqrtBiasCorrection2"><c>√(1 − β₂ᵗ)</c> for step <c>t</c> ≥ 1.</param>
/// <param name="Eps">ε, added to the denominator after the bias correction.</param>
public readonly record struct AdamWStepScalars(double DecayRate, double Beta1, double Beta2, double StepSize, double SqrtBiasCorrection2, double Eps);

/// <summary>
/// A one-pass AdamW update of one contiguous Float32 span: reads the parameter, its gradient and the two moment
/// estimates once, writes parameter and moments once. System.Runtime.Intrinsics with the same dispatch as
/// <see cref="LayerNormCpuKernel"/>: 512-bit vectors where the CPU has AVX-512 (F + BW), else 256-bit (AVX2), else
/// scalar C#; the tail shorter than a vector runs the scalar code.
/// </summary>
/// <remarks>
/// Per element, in Float32, the update of PyTorch's <c>torch.optim.AdamW</c> and Composer's
/// <c>DecoupledAdamW.adamw</c> (composer/optim/decoupled_weight_decay.py):
/// <code>
/// p  = p · (1 − r)                  (as p + (p·(−r) + update), so the Float32 rounding of 1 − r never enters)
/// m  = m + (1 − β₁) · (g − m)        (= β₁·m + (1 − β₁)·g; PyTorch's exp_avg.lerp_(grad, 1 − β₁))
/// v  = v + (1 − β₂) · (g·g − v)      (= β₂·v + (1 − β₂)·g²)
/// p  = p − step_size · m / (√v / √(1 − β₂ᵗ) + ε)
/// </code>
/// (the decay and the Adam step are added to <c>p</c> in one rounding).
/// The moments use the interpolation form, with the Float32 rounding of <c>1 − β</c> only: the form
/// <c>m·β + g·(1 − β)</c> (TorchSharp's AdamW) multiplies by a Float32 β whose rounding error (1.3e-8 relative for
/// 0.999) compounds over the steps a moment remembers, a systematic drift of about 1e-6 relative in
/// <c>exp_avg_sq</c> after 100 steps against a float64 reference; likewise a Float32 factor <c>1 − lr·λ</c> near 1
/// is off by up to 3e-8, a drift of that much per step in every parameter. Here the remaining error is the per-op
/// rounding.
/// No fused multiply-add is used. Single-threaded: the caller decides
/// how spans are shared among threads. Only <c>amsgrad = false</c> and <c>maximize = false</c> are covered.
/// </remarks>
public static unsafe class AdamWCpuKernel
{
    /// <summary>The path <paramref name="path"/> resolves to on this CPU (<see cref="SimdPath.Auto"/>: the widest available).</summary>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    public static SimdPath Resolve(SimdPath path) => LayerNormCpuKernel.Resolve(path);

    /// <summary>
    /// Updates <paramref name="param"/>, <paramref name="expAvg"/> and <paramref name="expAvgSq"/> in place from
    /// <paramref name="grad"/>; all four spans have the same length (any length, including 0).
    /// </summary>
    /// <param name="param">The parameter's elements (Float32), updated in place.</param>
    /// <param name="grad">The gradient's elements (Float32), read only.</param>
    /// <param name="expAvg">The first-moment estimate <c>exp_avg</c> (Float32), updated in place.</param>
    /// <param name="expAvgSq">The second-moment estimate <c>exp_avg_sq</c> (Float32), updated in place.</param>
    /// <param name="scalars">The step's scalars.</param>
    /// <param name="path">The instruction set; <see cref="SimdPath.Auto"/> picks the widest the CPU has.</param>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    public static void Step(Span<float> param, ReadOnlySpan<float> grad, Span<float> expAvg, Span<float> expAvgSq, in AdamWStepScalars scalars, SimdPath path = SimdPath.Auto)
    {
        int n = param.Length;
        if (grad.Length != n || expAvg.Length != n || expAvgSq.Length != n)
        {
            throw new ArgumentException($"The spans differ in length: param {n}, grad {grad.Length}, exp_avg {expAvg.Length}, exp_avg_sq {expAvgSq.Length}.", nameof(grad));
        }

        SimdPath p = LayerNormCpuKernel.Resolve(path);
        float negRate = (float)-scalars.DecayRate;
        float omb1 = (float)(1 - scalars.Beta1);
        float omb2 = (float)(1 - scalars.Beta2);
        float negStep = (float)-scalars.StepSize;
        float sqrtBc2 = (float)scalars.SqrtBiasCorrection2;
        float eps = (float)scalars.Eps;
        fixed (float* pp = param, gp = grad, mp = expAvg, vp = expAvgSq)
        {
            int i = 0;
            if (p == SimdPath.Avx512)
            {
                i = Vector512Loop(pp, gp, mp, vp, n, negRate, omb1, omb2, negStep, sqrtBc2, eps);
            }
            else if (p == SimdPath.Avx2)
            {
                i = Vector256Loop(pp, gp, mp, vp, n, negRate, omb1, omb2, negStep, sqrtBc2, eps);
            }

            for (; i < n; i++)
            {
                float g = gp[i];
                float m = mp[i] + (omb1 * (g - mp[i]));
                float v = vp[i] + (omb2 * ((g * g) - vp[i]));
                mp[i] = m;
                vp[i] = v;
                float denom = (MathF.Sqrt(v) / sqrtBc2) + eps;
                pp[i] += (pp[i] * negRate) + (negStep * (m / denom));
            }
        }
    }

    private static int Vector512Loop(float* pp, float* gp, float* mp, float* vp, int n, float negRate, float omb1, float omb2, float negStep, float sqrtBc2, float eps)
    {
        Vector512<float> vRate = Vector512.Create(negRate), vOmb1 = Vector512.Create(omb1);
        Vector512<float> vOmb2 = Vector512.Create(omb2), vNeg = Vector512.Create(negStep);
        Vector512<float> vBc2 = Vector512.Create(sqrtBc2), vEps = Vector512.Create(eps);
        int i = 0;
        for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
        {
            Vector512<float> g = Vector512.Load(gp + i);
            Vector512<float> m0 = Vector512.Load(mp + i), v0 = Vector512.Load(vp + i);
            Vector512<float> m = m0 + (vOmb1 * (g - m0));
            Vector512<float> v = v0 + (vOmb2 * ((g * g) - v0));
            m.Store(mp + i);
            v.Store(vp + i);
            Vector512<float> denom = (Vector512.Sqrt(v) / vBc2) + vEps;
            Vector512<float> p0 = Vector512.Load(pp + i);
            (p0 + ((p0 * vRate) + (vNeg * (m / denom)))).Store(pp + i);
        }

        return i;
    }

    private static int Vector256Loop(float* pp, float* gp, float* mp, float* vp, int n, float negRate, float omb1, float omb2, float negStep, float sqrtBc2, float eps)
    {
        Vector256<float> vRate = Vector256.Create(negRate), vOmb1 = Vector256.Create(omb1);
        Vector256<float> vOmb2 = Vector256.Create(omb2), vNeg = Vector256.Create(negStep);
        Vector256<float> vBc2 = Vector256.Create(sqrtBc2), vEps = Vector256.Create(eps);
        int i = 0;
        for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
        {
            Vector256<float> g = Vector256.Load(gp + i);
            Vector256<float> m0 = Vector256.Load(mp + i), v0 = Vector256.Load(vp + i);
            Vector256<float> m = m0 + (vOmb1 * (g - m0));
            Vector256<float> v = v0 + (vOmb2 * ((g * g) - v0));
            m.Store(mp + i);
            v.Store(vp + i);
            Vector256<float> denom = (Vector256.Sqrt(v) / vBc2) + vEps;
            Vector256<float> p0 = Vector256.Load(pp + i);
            (p0 + ((p0 * vRate) + (vNeg * (m / denom)))).Store(pp + i);
        }

        return i;
    }
}
