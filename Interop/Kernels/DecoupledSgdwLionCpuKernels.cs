using System.Runtime.Intrinsics;

namespace ComposerSharp.Interop.Kernels;

/// <summary>
/// The per-step scalars of one Composer <c>DecoupledSGDW</c> update of one parameter (composer/optim/decoupled_weight_decay.py),
/// computed in double precision by the caller and rounded to Float32 by <see cref="SgdwCpuKernel"/>.
/// </summary>
/// <param name="DecayRate">The weight-decay rate <c>r</c> of the step (<c>weight_decay·lr/initial_lr</c>, or <c>weight_decay</c> when <c>initial_lr</c> is 0; 0 for no decay): the parameter is multiplied by <c>1 − r</c> first.</param>
/// <param name="Lr">The learning rate γ of the step.</param>
/// <param name="Momentum">The momentum factor μ, ≥ 0; 0 leaves the momentum buffer unread and unwritten.</param>
/// <param name="Dampening">The dampening τ: the buffer update is <c>b = μ·b + (1 − τ)·g</c>.</param>
/// <param name="Nesterov">Whether the step direction is <c>g + μ·b</c> (Nesterov) instead of <c>b</c>.</param>
/// <param name="FirstStep">Whether this is the parameter's first step with momentum: the buffer is set to the gradient (PyTorch's <c>torch.clone(d_p)</c>) instead of updated.</param>
public readonly record struct SgdwStepScalars(double DecayRate, double Lr, double Momentum, double Dampening, bool Nesterov, bool FirstStep);

/// <summary>
/// The per-step scalars of one llm-foundry <c>DecoupledLionW</c> update of one parameter (llmfoundry/optim/lion.py;
/// Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), rounded to Float32 by <see cref="LionWCpuKernel"/>.
/// </summary>
/// <param name="DecayRate">The weight-decay rate <c>r</c> of the step (<c>weight_decay·lr/initial_lr</c>, or <c>weight_decay</c> when <c>initial_lr</c> is 0; 0 for no decay).</param>
/// <param name="Lr">The learning rate γ of the step.</param>
/// <param name="Beta1">β₁, the interpolation of the update direction <c>sign(m + (1 − β₁)(g − m))</c>, in [0, 1].</param>
/// <param name="Beta2">β₂, the decay of the momentum <c>m = m + (1 − β₂)(g − m)</c>, in [0, 1].</param>
public readonly record struct LionWStepScalars(double DecayRate, double Lr, double Beta1, double Beta2);

/// <summary>
/// A one-pass Composer <c>DecoupledSGDW</c> update of one contiguous Float32 span (composer/optim/decoupled_weight_decay.py,
/// <c>DecoupledSGDW.sgdw</c>): reads parameter, gradient and momentum buffer once and writes parameter and buffer
/// once. Same dispatch as <see cref="AdamWCpuKernel"/> (AVX-512, AVX2, scalar; the tail runs the scalar code).
/// </summary>
/// <remarks>
/// Per element, in Float32, no fused multiply-add:
/// <code>
/// b = g                                   (first step with momentum)
/// b = b·μ + g·(1 − τ)                     (later steps; PyTorch's buf.mul_(μ).add_(g, alpha=1 − τ))
/// d = nesterov ? g + μ·b : b              (d = g when μ = 0)
/// p = p + (p·(−r) + (−γ)·d)               (p·(1 − r) − γ·d in one rounding of the sum)
/// </code>
/// Any span of <c>ComposerSharp.Core.Tensors.FlatBufferLayout</c> (a parameter, or a rank's shard) can be passed.
/// </remarks>
public static unsafe class SgdwCpuKernel
{
    /// <summary>Updates <paramref name="param"/> and <paramref name="momentumBuffer"/> in place from <paramref name="grad"/>.</summary>
    /// <param name="param">The parameter's elements (Float32), updated in place.</param>
    /// <param name="grad">The gradient's elements (Float32), read only; same length.</param>
    /// <param name="momentumBuffer">The momentum buffer (Float32), same length; untouched when μ is 0 (then it may be empty).</param>
    /// <param name="scalars">The step's scalars.</param>
    /// <param name="path">The instruction set; <see cref="SimdPath.Auto"/> picks the widest the CPU has.</param>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    public static void Step(Span<float> param, ReadOnlySpan<float> grad, Span<float> momentumBuffer, in SgdwStepScalars scalars, SimdPath path = SimdPath.Auto)
    {
        int n = param.Length;
        bool useBuffer = scalars.Momentum != 0;
        if (grad.Length != n || (useBuffer && momentumBuffer.Length != n))
        {
            throw new ArgumentException($"The spans differ in length: param {n}, grad {grad.Length}, momentum_buffer {momentumBuffer.Length}.", nameof(grad));
        }

        SimdPath p = LayerNormCpuKernel.Resolve(path);
        float negRate = (float)-scalars.DecayRate, negLr = (float)-scalars.Lr;
        float mu = (float)scalars.Momentum, omd = (float)(1 - scalars.Dampening);
        int mode = !useBuffer ? 0 : scalars.FirstStep ? 1 : 2;
        bool nesterov = scalars.Nesterov;
        fixed (float* pp = param, gp = grad, bp = momentumBuffer)
        {
            int i = 0;
            if (p == SimdPath.Avx512)
            {
                Vector512<float> vRate = Vector512.Create(negRate), vLr = Vector512.Create(negLr), vMu = Vector512.Create(mu), vOmd = Vector512.Create(omd);
                for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                {
                    Vector512<float> g = Vector512.Load(gp + i), d = g;
                    if (mode != 0)
                    {
                        Vector512<float> b = mode == 1 ? g : (Vector512.Load(bp + i) * vMu) + (g * vOmd);
                        b.Store(bp + i);
                        d = nesterov ? g + (vMu * b) : b;
                    }

                    Vector512<float> p0 = Vector512.Load(pp + i);
                    (p0 + ((p0 * vRate) + (vLr * d))).Store(pp + i);
                }
            }
            else if (p == SimdPath.Avx2)
            {
                Vector256<float> vRate = Vector256.Create(negRate), vLr = Vector256.Create(negLr), vMu = Vector256.Create(mu), vOmd = Vector256.Create(omd);
                for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                {
                    Vector256<float> g = Vector256.Load(gp + i), d = g;
                    if (mode != 0)
                    {
                        Vector256<float> b = mode == 1 ? g : (Vector256.Load(bp + i) * vMu) + (g * vOmd);
                        b.Store(bp + i);
                        d = nesterov ? g + (vMu * b) : b;
                    }

                    Vector256<float> p0 = Vector256.Load(pp + i);
                    (p0 + ((p0 * vRate) + (vLr * d))).Store(pp + i);
                }
            }

            for (; i < n; i++)
            {
                float g = gp[i], d = g;
                if (mode != 0)
                {
                    float b = mode == 1 ? g : (bp[i] * mu) + (g * omd);
                    bp[i] = b;
                    d = nesterov ? g + (mu * b) : b;
                }

                pp[i] += (pp[i] * negRate) + (negLr * d);
            }
        }
    }
}

/// <summary>
/// A one-pass llm-foundry <c>DecoupledLionW</c> update of one contiguous Float32 span (llmfoundry/optim/lion.py,
/// <c>DecoupledLionW.lionw</c>; Chen et al. 2023): reads parameter, gradient and <c>exp_avg</c> once and writes
/// parameter and <c>exp_avg</c> once. Same dispatch as <see cref="AdamWCpuKernel"/>.
/// </summary>
/// <remarks>
/// Per element, in Float32, no fused multiply-add (the interpolations are <c>torch.lerp</c>'s form for weights below 0.5):
/// <code>
/// u = sign(m + (1 − β₁)·(g − m))         (sign(0) = 0)
/// p = p + (p·(−r) + (−γ)·u)
/// m = m + (1 − β₂)·(g − m)
/// </code>
/// Any span of <c>ComposerSharp.Core.Tensors.FlatBufferLayout</c> (a parameter, or a rank's shard) can be passed.
/// </remarks>
public static unsafe class LionWCpuKernel
{
    /// <summary>Updates <paramref name="param"/> and <paramref name="expAvg"/> in place from <paramref name="grad"/>.</summary>
    /// <param name="param">The parameter's elements (Float32), updated in place.</param>
    /// <param name="grad">The gradient's elements (Float32), read only; same length.</param>
    /// <param name="expAvg">The momentum <c>exp_avg</c> (Float32), same length, updated in place.</param>
    /// <param name="scalars">The step's scalars.</param>
    /// <param name="path">The instruction set; <see cref="SimdPath.Auto"/> picks the widest the CPU has.</param>
    /// <exception cref="ArgumentException">The spans differ in length.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    public static void Step(Span<float> param, ReadOnlySpan<float> grad, Span<float> expAvg, in LionWStepScalars scalars, SimdPath path = SimdPath.Auto)
    {
        int n = param.Length;
        if (grad.Length != n || expAvg.Length != n)
        {
            throw new ArgumentException($"The spans differ in length: param {n}, grad {grad.Length}, exp_avg {expAvg.Length}.", nameof(grad));
        }

        SimdPath p = LayerNormCpuKernel.Resolve(path);
        float negRate = (float)-scalars.DecayRate, negLr = (float)-scalars.Lr;
        float omb1 = (float)(1 - scalars.Beta1), omb2 = (float)(1 - scalars.Beta2);
        fixed (float* pp = param, gp = grad, mp = expAvg)
        {
            int i = 0;
            if (p == SimdPath.Avx512)
            {
                Vector512<float> vRate = Vector512.Create(negRate), vLr = Vector512.Create(negLr), v1 = Vector512.Create(omb1), v2 = Vector512.Create(omb2);
                Vector512<float> one = Vector512<float>.One, zero = Vector512<float>.Zero;
                for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                {
                    Vector512<float> g = Vector512.Load(gp + i), m = Vector512.Load(mp + i), diff = g - m;
                    Vector512<float> c = m + (v1 * diff);
                    Vector512<float> u = (Vector512.GreaterThan(c, zero) & one) - (Vector512.LessThan(c, zero) & one);
                    Vector512<float> p0 = Vector512.Load(pp + i);
                    (p0 + ((p0 * vRate) + (vLr * u))).Store(pp + i);
                    (m + (v2 * diff)).Store(mp + i);
                }
            }
            else if (p == SimdPath.Avx2)
            {
                Vector256<float> vRate = Vector256.Create(negRate), vLr = Vector256.Create(negLr), v1 = Vector256.Create(omb1), v2 = Vector256.Create(omb2);
                Vector256<float> one = Vector256<float>.One, zero = Vector256<float>.Zero;
                for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                {
                    Vector256<float> g = Vector256.Load(gp + i), m = Vector256.Load(mp + i), diff = g - m;
                    Vector256<float> c = m + (v1 * diff);
                    Vector256<float> u = (Vector256.GreaterThan(c, zero) & one) - (Vector256.LessThan(c, zero) & one);
                    Vector256<float> p0 = Vector256.Load(pp + i);
                    (p0 + ((p0 * vRate) + (vLr * u))).Store(pp + i);
                    (m + (v2 * diff)).Store(mp + i);
                }
            }

            for (; i < n; i++)
            {
                float g = gp[i], m = mp[i], diff = g - m;
                float c = m + (omb1 * diff);
                float u = c > 0 ? 1f : c < 0 ? -1f : 0f;
                pp[i] += (pp[i] * negRate) + (negLr * u);
                mp[i] = m + (omb2 * diff);
            }
        }
    }
}
