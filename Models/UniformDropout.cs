using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Models;

/// <summary>
/// Dropout (Srivastava et al. 2014) with the contract of <c>torch.nn.Dropout</c>: in training mode each element is
/// zeroed with probability p and the others are scaled by 1/(1 − p) (the scale rounded to the input's dtype, as
/// libtorch's dropout does); in eval mode, or with p = 0, the input is returned unchanged (an alias). The keep mask comes from
/// one Float32 uniform draw per element (<c>torch.rand</c>, libtorch's global generator, so seeds and deterministic
/// mode apply) compared with p, where libtorch's CPU dropout draws a Bernoulli tensor in the input's dtype. Same
/// distribution, a different stream of random numbers, and faster on the CPU for BFloat16 inputs: measured by the
/// benchmark part <c>peer-modules</c> (piece <c>dropout</c>; benchmarks/README.md, change log). Shape and dtype of
/// the output are those of the input; the gradient is the output gradient times the same mask.
/// </summary>
public sealed class UniformDropout : nn.Module<Tensor, Tensor>
{
    /// <summary>Creates the module.</summary>
    /// <param name="p">Probability of zeroing an element, in [0, 1].</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="p"/> is outside [0, 1] or NaN.</exception>
    public UniformDropout(double p)
        : base(nameof(UniformDropout))
    {
        if (!(p >= 0 && p <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(p), p, "The dropout probability must be in [0, 1].");
        }

        P = p;
    }

    /// <summary>The probability of zeroing an element.</summary>
    public double P { get; }

    /// <summary>Applies dropout in training mode; returns an alias of <paramref name="input"/> (a new handle on the same tensor, owned by the open dispose scope) in eval mode.</summary>
    /// <param name="input">Any shape, a floating dtype.</param>
    /// <returns>Same shape and dtype.</returns>
    public override Tensor forward(Tensor input) => training ? Apply(input, P) : input.alias();

    /// <summary>Dropout with probability <paramref name="p"/> (always on, as in training mode).</summary>
    /// <param name="input">Any shape, a floating dtype.</param>
    /// <param name="p">Probability of zeroing an element, in [0, 1].</param>
    /// <returns>An alias of <paramref name="input"/> when p = 0; zeros when p = 1; else the masked, rescaled input.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="p"/> is outside [0, 1] or NaN.</exception>
    public static Tensor Apply(Tensor input, double p)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (!(p >= 0 && p <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(p), p, "The dropout probability must be in [0, 1].");
        }

        if (p == 0 || input.numel() == 0)
        {
            return input.alias();
        }

        if (p == 1)
        {
            return input * 0;
        }

        Tensor mask;
        using (torch.no_grad())
        {
            using var scope = torch.NewDisposeScope();
            Tensor keep = torch.rand(input.shape, dtype: ScalarType.Float32, device: input.device).ge_(p);
            mask = (input.dtype == ScalarType.Float32 ? keep.mul_(1.0 / (1.0 - p)) : keep.to(input.dtype).mul_(1.0 / (1.0 - p))).MoveToOuterDisposeScope();
        }

        return input * mask;
    }
}
