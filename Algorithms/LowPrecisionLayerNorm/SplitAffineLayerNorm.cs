using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Algorithms;

/// <summary>
/// The split-affine layer normalisation (<c>layer_norm</c> without affine parameters, then <c>addcmul</c>) that <see cref="LPLayerNorm"/> runs on CPU under autocast when the fused kernel does not: output in the low-precision dtype,
/// weight and bias gradients reduced over the rows with Float32 accumulation. This is the contract a fused CPU kernel
/// replacing it must keep (see the remarks).
/// </summary>
/// <remarks>
/// <para>
/// Why: libtorch's CPU BFloat16/Float16 <c>layer_norm</c> backward sums the weight and bias gradients over all rows in
/// per-thread buffers of the input's dtype, so at 4,096 rows of 768 they are off by 7–13 % (BFloat16) or 1–1.4 %
/// (Float16) of their largest value against a float64 reference; giving it Float32 weight and bias (the mixed-type
/// kernel) does not change that. On CUDA, libtorch's half-precision LayerNorm backward accumulates these sums in
/// Float32, which is the behaviour this op gives the CPU.
/// </para>
/// <para>
/// How: <c>layer_norm</c> without affine parameters gives <c>x̂ = (x − mean) · rstd</c> in the input's dtype (its
/// backward, the input gradient, reduces only along each row of <c>normalized_shape</c>, in Float32 inside
/// libtorch), then <c>addcmul(bias, x̂, weight)</c> applies the affine part. Autograd reduces the weight gradient
/// <c>Σ_rows dy·x̂</c> and the bias gradient <c>Σ_rows dy</c> with libtorch's CPU <c>sum</c>, which accumulates
/// reduced floating types in Float32; the per-feature result is rounded once to the low-precision dtype, as CUDA's
/// kernel writes it into a Half weight's gradient, and the cast back to the parameter's dtype (Float32) follows in
/// the backward of the cast that produced the low-precision weight. Measured at [8,512,768] and [4,2048,1024]: weight and
/// bias gradients within 0.1–0.4 % of their largest value (BFloat16), input gradient within 1 %.
/// </para>
/// <para>
/// Contract for a replacement kernel: same output dtype (the input's), output within the error of libtorch's
/// low-precision <c>layer_norm</c>; input gradient in the input's dtype; weight and bias gradients accumulated over the
/// rows in at least Float32, rounded at most once, per feature. The tests in
/// <c>tests/Algorithms/LowPrecisionNormGradientTests.cs</c> check exactly this against float64 at real sizes.
/// </para>
/// </remarks>
public static class SplitAffineLayerNorm
{
    /// <summary>
    /// Layer normalisation over the trailing <paramref name="normalizedShape"/> of <paramref name="input"/> with the
    /// affine part applied separately, so that weight and bias gradients accumulate in Float32 (see the class remarks).
    /// Without weight and bias it is libtorch's <c>layer_norm</c> itself.
    /// </summary>
    /// <param name="input">Shape <c>[*, normalized_shape]</c>, any floating dtype (meant for BFloat16 or Float16 on CPU).</param>
    /// <param name="normalizedShape">The trailing dimensions normalised over.</param>
    /// <param name="weight">Scale of shape <paramref name="normalizedShape"/> in <paramref name="input"/>'s dtype, or null.</param>
    /// <param name="bias">Shift of shape <paramref name="normalizedShape"/> in <paramref name="input"/>'s dtype, or null.</param>
    /// <param name="eps">Added to the variance for numerical stability.</param>
    /// <returns>The normalised tensor: same shape and dtype as <paramref name="input"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="input"/> or <paramref name="normalizedShape"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="weight"/> or <paramref name="bias"/> has another dtype than <paramref name="input"/>.</exception>
    public static Tensor Apply(Tensor input, long[] normalizedShape, Tensor? weight, Tensor? bias, double eps)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(normalizedShape);
        RequireDtype(weight, input.dtype, nameof(weight));
        RequireDtype(bias, input.dtype, nameof(bias));
        if (weight is null && bias is null)
        {
            return F.layer_norm(input, normalizedShape, null, null, eps);
        }

        using var scope = NewDisposeScope();
        Tensor normalized = F.layer_norm(input, normalizedShape, null, null, eps);
        Tensor output = (weight, bias) switch
        {
            ({ } w, { } b) => addcmul(b, normalized, w, 1),
            ({ } w, null) => normalized * w,
            (null, { } b) => normalized + b,
            _ => throw new InvalidOperationException("unreachable: both parameters absent is handled above"),
        };
        return output.MoveToOuterDisposeScope();
    }

    private static void RequireDtype(Tensor? parameter, ScalarType expected, string name)
    {
        if (parameter is not null && parameter.dtype != expected)
        {
            throw new ArgumentException($"{name} has dtype {parameter.dtype}; expected the input's dtype {expected} (cast it first, as LPLayerNorm does under autocast).", name);
        }
    }
}
