using ComposerSharp.Interop.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Fused low-precision LayerNorm for CPU, as a TorchSharp custom autograd function: one read of the
/// Float32 or BFloat16 input, one write of the BFloat16 output (the cast fused in), Float32 accumulation, mean and rstd
/// saved; backward writes the input gradient in the input's dtype and reduces the weight and bias gradients in
/// Float32 in a fixed order (see <see cref="LayerNormCpuKernel"/>). It keeps the contract of
/// <see cref="SplitAffineLayerNorm"/>, with Float32 weight and bias used as they are (no rounding of them).
/// </summary>
public static class FusedLayerNorm
{
    /// <summary>
    /// Why <see cref="Apply"/> cannot run on these arguments, or null when it can: CPU tensors, contiguous input of
    /// dtype Float32 or BFloat16, output dtype BFloat16, one normalised dimension (or several, flattened) whose size
    /// fits an int, Float32 contiguous weight and bias of that many elements (or null).
    /// </summary>
    public static string? Unsupported(Tensor input, long[] normalizedShape, Tensor? weight, Tensor? bias, ScalarType outputDtype)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(normalizedShape);
        if (input.device_type != DeviceType.CPU)
        {
            return $"input is on {input.device_type}; the fused kernel is CPU only";
        }

        if (input.dtype is not (ScalarType.Float32 or ScalarType.BFloat16))
        {
            return $"input dtype {input.dtype}; the fused kernel reads Float32 or BFloat16";
        }

        if (outputDtype != ScalarType.BFloat16)
        {
            return $"output dtype {outputDtype}; the fused kernel writes BFloat16 only";
        }

        if (!input.is_contiguous())
        {
            return "input is not contiguous";
        }

        long width = normalizedShape.Aggregate(1L, (a, b) => a * b);
        if (normalizedShape.Length == 0 || normalizedShape.Length > input.Dimensions
            || !input.shape.AsSpan(^normalizedShape.Length..).SequenceEqual(normalizedShape) || width < 1 || width > int.MaxValue / 4)
        {
            return $"normalized_shape [{string.Join(",", normalizedShape)}] does not match the trailing dimensions of input [{string.Join(",", input.shape)}] or is empty";
        }

        foreach ((Tensor? p, string name) in new[] { (weight, "weight"), (bias, "bias") })
        {
            if (p is not null && (p.device_type != DeviceType.CPU || p.dtype != ScalarType.Float32 || !p.is_contiguous() || p.numel() != width))
            {
                return $"{name} must be a contiguous CPU Float32 tensor of {width} elements; got {p.dtype} [{string.Join(",", p.shape)}] on {p.device_type}";
            }
        }

        return null;
    }

    /// <summary>
    /// Layer normalisation over the trailing <paramref name="normalizedShape"/> of <paramref name="input"/>, output
    /// in BFloat16, differentiable with respect to input, weight and bias.
    /// </summary>
    /// <param name="input">Shape <c>[*, normalized_shape]</c>, Float32 or BFloat16, contiguous, CPU.</param>
    /// <param name="normalizedShape">The trailing dimensions normalised over.</param>
    /// <param name="weight">Float32 scale of <paramref name="normalizedShape"/>'s element count, or null (ones).</param>
    /// <param name="bias">Float32 shift of the same size, or null (zeros).</param>
    /// <param name="eps">Added to the variance; must be finite and ≥ 0.</param>
    /// <param name="options">Kernel options; null for the defaults.</param>
    /// <returns>BFloat16 tensor of <paramref name="input"/>'s shape.</returns>
    /// <exception cref="ArgumentException">The arguments are not supported (the message says which, see <see cref="Unsupported"/>), or eps is negative or not finite.</exception>
    public static Tensor Apply(Tensor input, long[] normalizedShape, Tensor? weight, Tensor? bias, double eps, FusedLayerNormOptions? options = null)
    {
        if (Unsupported(input, normalizedShape, weight, bias, ScalarType.BFloat16) is { } reason)
        {
            throw new ArgumentException($"The fused CPU LayerNorm cannot run: {reason}.", nameof(input));
        }

        if (!double.IsFinite(eps) || eps < 0)
        {
            throw new ArgumentException($"eps is {eps}; expected a finite value ≥ 0.", nameof(eps));
        }

        options ??= new FusedLayerNormOptions();
        int workers = options.Workers ?? Math.Max(1, torch.get_num_threads());
        if (workers < 1)
        {
            throw new ArgumentException($"Workers is {workers}; expected at least 1.", nameof(options));
        }

        LayerNormCpuKernel.Resolve(options.Simd);
        int width = (int)normalizedShape.Aggregate(1L, (a, b) => a * b);
        return FusedLayerNormAutograd.apply(input, weight, bias, new KernelCall(width, eps, options.Simd, workers));
    }

    /// <summary>The non-tensor arguments of one call, passed through the autograd context.</summary>
    internal sealed record KernelCall(int Width, double Eps, SimdPath Simd, int Workers);
}

/// <summary>The autograd node of <see cref="FusedLayerNorm.Apply"/>: forward and backward call <see cref="LayerNormCpuKernel"/>.</summary>
internal sealed class FusedLayerNormAutograd : autograd.SingleTensorFunction<FusedLayerNormAutograd>
{
    /// <inheritdoc />
    public override string Name => "FusedLayerNormCpu";

    /// <summary>vars: input, weight or null, bias or null, <see cref="FusedLayerNorm.KernelCall"/>.</summary>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var input = (Tensor)vars[0];
        var weight = vars[1] as Tensor;
        var bias = vars[2] as Tensor;
        var call = (FusedLayerNorm.KernelCall)vars[3];
        long rows = input.numel() / call.Width;
        Tensor output = empty(input.shape, ScalarType.BFloat16);
        Tensor mean = empty(rows, ScalarType.Float32);
        Tensor rstd = empty(rows, ScalarType.Float32);
        LayerNormCpuKernel.Forward(input, weight, bias, call.Eps, output, mean, rstd, rows, call.Width, call.Simd, call.Workers);
        var saved = new List<Tensor> { input, mean, rstd };
        if (weight is not null)
        {
            saved.Add(weight);
        }

        ctx.save_for_backward(saved);
        ctx.save_data("call", call);
        ctx.save_data("hasWeight", weight is not null);
        ctx.save_data("hasBias", bias is not null);
        return output;
    }

    /// <summary>Gradients for input, weight (null when absent), bias (null when absent), and null for the call record.</summary>
    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        var call = (FusedLayerNorm.KernelCall)ctx.get_data("call");
        bool hasWeight = (bool)ctx.get_data("hasWeight");
        bool hasBias = (bool)ctx.get_data("hasBias");
        List<Tensor> saved = ctx.get_saved_variables();
        Tensor input = saved[0], mean = saved[1], rstd = saved[2];
        Tensor? weight = hasWeight ? saved[3] : null;
        long rows = input.numel() / call.Width;
        Tensor dy = grad_output.dtype == ScalarType.BFloat16 && grad_output.is_contiguous()
            ? grad_output
            : grad_output.to(ScalarType.BFloat16).contiguous();
        Tensor dx = empty(input.shape, input.dtype);
        Tensor? dW = hasWeight ? empty(call.Width, ScalarType.Float32) : null;
        Tensor? dB = hasBias ? empty(call.Width, ScalarType.Float32) : null;
        LayerNormCpuKernel.Backward(dy, input, weight, mean, rstd, dx, dW, dB, rows, call.Width, call.Simd, call.Workers);
        return new List<Tensor> { dx, dW?.reshape(weight!.shape)!, dB!, null! };
    }
}
