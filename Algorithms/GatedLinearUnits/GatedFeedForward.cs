using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Algorithms;

/// <summary>The activation <c>act_fn</c> of a gated linear unit (Shazeer 2020, "GLU Variants Improve Transformer", §2).</summary>
public enum GluActivation
{
    /// <summary>Exact GELU (GEGLU); BERT's own activation.</summary>
    Gelu,

    /// <summary>GELU, tanh approximation (GPT-2's <c>gelu_new</c>).</summary>
    GeluTanh,

    /// <summary>ReLU (ReGLU).</summary>
    Relu,

    /// <summary>SiLU / Swish with β = 1 (SwiGLU).</summary>
    Silu,
}

/// <summary>
/// The gated feed-forward block that replaces a transformer's <c>FeedForward</c>:
/// <c>wo(act(gated_layer(x)) ⊙ non_gated_layer(x))</c>, with [B, T, hidden] in and out, Float32 parameters (Float32,
/// or BFloat16/Float16 under autocast, like any Linear). The hidden width stays the intermediate size of the block it
/// replaces, so the block gets one more hidden × intermediate matrix (Composer keeps d_ff too). Module names
/// <c>gated_layer</c>, <c>non_gated_layer</c>, <c>wo</c> as Composer's <c>BERTGatedFFOutput</c>
/// (composer/algorithms/gated_linear_units/gated_linear_unit_layers.py).
/// </summary>
/// <remarks>
/// Unlike Composer's module, this one holds neither the dropout nor the residual add and LayerNorm: the transformer
/// block around it keeps doing those (dropout on the output of the feed-forward, then the residual add, then for
/// post-LN the block's <c>ln_2</c>, which the algorithm replaces by a fresh LayerNorm, as Composer's module brings
/// its own).
/// </remarks>
public sealed class GatedFeedForward : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // PyTorch-style names: the field names are the module names in state_dict.
    private readonly Linear gated_layer;
    private readonly Linear non_gated_layer;
    private readonly Linear wo;
#pragma warning restore IDE1006

    /// <summary>Creates the block with weights ~ N(0, <paramref name="initializerRange"/>²) and zero biases (BERT's initialization).</summary>
    /// <param name="hiddenSize">Input and output width (d_embed).</param>
    /// <param name="intermediateSize">Width of the gated product (d_ff).</param>
    /// <param name="activation">The activation applied to the gated projection.</param>
    /// <param name="gatedLayerBias">Whether <c>gated_layer</c> has a bias (Composer default false).</param>
    /// <param name="nonGatedLayerBias">Whether <c>non_gated_layer</c> has a bias (Composer default false).</param>
    /// <param name="initializerRange">Standard deviation of the weights' normal initialization; positive.</param>
    /// <exception cref="ArgumentOutOfRangeException">A width is not positive, the activation is undefined, or the range is not positive.</exception>
    public GatedFeedForward(long hiddenSize, long intermediateSize, GluActivation activation, bool gatedLayerBias = false, bool nonGatedLayerBias = false, double initializerRange = 0.02)
        : base(nameof(GatedFeedForward))
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(hiddenSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(intermediateSize);
        if (!Enum.IsDefined(activation))
        {
            throw new ArgumentOutOfRangeException(nameof(activation), activation, "Expected gelu, gelu_tanh, relu or silu.");
        }

        if (!(initializerRange > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(initializerRange), initializerRange, "The initializer range must be positive.");
        }

        gated_layer = nn.Linear(hiddenSize, intermediateSize, hasBias: gatedLayerBias);
        non_gated_layer = nn.Linear(hiddenSize, intermediateSize, hasBias: nonGatedLayerBias);
        wo = nn.Linear(intermediateSize, hiddenSize);
        Activation = activation;
        using (torch.no_grad())
        {
            foreach (Linear linear in new[] { gated_layer, non_gated_layer, wo })
            {
                nn.init.normal_(linear.weight, 0.0, initializerRange);
                if (linear.bias is not null)
                {
                    nn.init.zeros_(linear.bias);
                }
            }
        }

        RegisterComponents();
    }

    /// <summary>The activation of the gated projection.</summary>
    public GluActivation Activation { get; }

    /// <summary>The projection that goes through the activation (hidden → intermediate).</summary>
    public Linear GatedLayer => gated_layer;

    /// <summary>The projection multiplied in without activation (hidden → intermediate).</summary>
    public Linear NonGatedLayer => non_gated_layer;

    /// <summary>The output projection (intermediate → hidden), with a bias.</summary>
    public Linear OutProjection => wo;

    /// <summary>[B, T, hidden] → [B, T, hidden].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor gate = Apply(gated_layer.call(x), Activation);
        return wo.call(gate * non_gated_layer.call(x)).MoveToOuterDisposeScope();
    }

    /// <summary>Applies <paramref name="activation"/> element-wise; same shape and dtype.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Undefined activation.</exception>
    public static Tensor Apply(Tensor x, GluActivation activation) => activation switch
    {
        GluActivation.Gelu => F.gelu(x),
        GluActivation.GeluTanh => F.gelu(x, GELU.Approximate.tanh),
        GluActivation.Relu => F.relu(x),
        GluActivation.Silu => F.silu(x),
        _ => throw new ArgumentOutOfRangeException(nameof(activation), activation, "Expected gelu, gelu_tanh, relu or silu."),
    };
}
