using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Models.Decoders;

/// <summary>
/// Root-mean-square layer normalization (Zhang &amp; Sennrich 2019) as Hugging Face's <c>LlamaRMSNorm</c>
/// (transformers/models/llama/modeling_llama.py): the input is upcast to Float32, divided by
/// √(mean(x², last dim) + eps), cast back to the input dtype and multiplied by the learned <c>weight</c> [features]
/// (Float32, initialized to 1; no bias). Input and output [..., features]; the output dtype is the promotion of the
/// input dtype and the weight's (Float32 for a Float32 weight, also under autocast, as in PyTorch).
/// </summary>
public sealed class RMSNorm : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // PyTorch-style name: the state_dict key.
    private readonly Parameter weight;
#pragma warning restore IDE1006

    /// <summary>Creates the norm over the last dimension of size <paramref name="features"/>.</summary>
    /// <param name="features">Size of the normalized (last) dimension.</param>
    /// <param name="eps">Added to the mean square before the square root (Hugging Face's <c>rms_norm_eps</c>).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="features"/> or <paramref name="eps"/> is not positive.</exception>
    public RMSNorm(long features, double eps)
        : base(nameof(RMSNorm))
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(features);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(eps);
        weight = new Parameter(torch.ones(features));
        Eps = eps;
        RegisterComponents();
    }

    /// <summary>The scale, Float32 [features].</summary>
    public Parameter Weight => weight;

    /// <summary>The epsilon added to the mean square.</summary>
    public double Eps { get; }

    /// <summary>Normalizes <paramref name="x"/> [..., features] over its last dimension.</summary>
    /// <returns>Same shape; dtype as described on the class.</returns>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h = x.to(ScalarType.Float32);
        h = h * torch.rsqrt(h.pow(2).mean(new long[] { -1 }, keepdim: true) + Eps);
        return (weight * h.to(x.dtype)).MoveToOuterDisposeScope();
    }
}
