using ComposerSharp.Models.Decoders;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// RMS normalisation that runs in the autocast low-precision dtype (llm-foundry's <c>LPRMSNorm</c>,
/// llmfoundry/models/layers/norm.py). Input and output: any shape <c>[*, features]</c>. When autocast is enabled for
/// the input's device type (CPU or CUDA), the input and weight are cast to that device's autocast dtype (BFloat16 or
/// Float16) and <c>x · rsqrt(mean(x², last dim) + eps) · weight</c> runs in that dtype with autocast disabled; the
/// result is cast back to the input's dtype, as llm-foundry does (<c>.to(dtype=x.dtype)</c>). Without autocast the
/// result is bitwise that of the original <see cref="RMSNorm"/>.
/// </summary>
/// <remarks>
/// The weight is applied by a separate broadcast multiply, so on CPU its gradient is the sum over all rows of
/// <c>dy · x̂</c> reduced by libtorch's CPU sum, which accumulates BFloat16/Float16 in Float32 and rounds once (as
/// <see cref="SplitAffineLayerNorm"/> does for LPLayerNorm), and is then cast to the Float32 weight's gradient. Built from
/// an <see cref="RMSNorm"/>, it keeps its eps and its <c>weight</c> <c>Parameter</c> object (see <see cref="LowPrecisionNorm"/>).
/// </remarks>
public sealed class LPRMSNorm : LowPrecisionNorm
{
    private readonly Func<Tensor, Tensor?, Tensor?, Tensor> _norm;

    /// <summary>Creates the low-precision module from <paramref name="original"/>, taking over its weight.</summary>
    /// <param name="original">The RMSNorm replaced.</param>
    /// <exception cref="ArgumentNullException"><paramref name="original"/> is null.</exception>
    public LPRMSNorm(RMSNorm original)
        : base(nameof(LPRMSNorm), original, original?.Weight, null)
    {
        eps = original!.Eps;
        _norm = (x, w, _) => ReferenceForm(x, w!, eps);
    }

    /// <summary>The value added to the mean square for numerical stability.</summary>
    public double eps { get; }

    /// <summary>Normalises <paramref name="input"/> [*, features]; same shape and dtype as the input under autocast (see the class summary).</summary>
    public override Tensor forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        ScalarType dtype = input.dtype;
        return RunLowPrecision(input, _norm, (x, w, _) => LowPrecisionForm(x, w, eps, dtype));
    }

    /// <summary>
    /// llm-foundry's <c>rms_norm</c> in the dtype of <paramref name="x"/>: <c>x · rsqrt(mean(x², -1) + eps)</c>, times
    /// <paramref name="weight"/> when given, cast to <paramref name="outputDtype"/>.
    /// </summary>
    /// <param name="x">[*, features], BFloat16 or Float16 (or any floating dtype).</param>
    /// <param name="weight">[features] in <paramref name="x"/>'s dtype, or null.</param>
    /// <param name="eps">Added to the mean square.</param>
    /// <param name="outputDtype">The dtype of the result.</param>
    /// <returns>Same shape as <paramref name="x"/>, <paramref name="outputDtype"/>.</returns>
    public static Tensor LowPrecisionForm(Tensor x, Tensor? weight, double eps, ScalarType outputDtype)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = torch.NewDisposeScope();
        Tensor normalized = x * torch.rsqrt(x.pow(2).mean(new long[] { -1 }, keepdim: true) + eps);
        Tensor y = weight is null ? normalized : normalized * weight;
        return (y.dtype == outputDtype ? y : y.to(outputDtype)).MoveToOuterDisposeScope();
    }

    private static Tensor ReferenceForm(Tensor x, Tensor weight, double eps)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h = x.to(ScalarType.Float32);
        h = h * torch.rsqrt(h.pow(2).mean(new long[] { -1 }, keepdim: true) + eps);
        return (weight * h.to(x.dtype)).MoveToOuterDisposeScope();
    }
}
