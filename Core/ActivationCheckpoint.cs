using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Core;

/// <summary>
/// Activation checkpointing (gradient checkpointing; Chen et al. 2016, "Training Deep Nets with Sublinear Memory
/// Cost"), the behaviour of PyTorch's <c>torch.utils.checkpoint.checkpoint</c> (torch/utils/checkpoint.py), which
/// TorchSharp does not have: a unit's forward runs without recording its autograd graph, so none of its
/// intermediate activations are kept; only its input is. In backward the forward is run again, with gradients on,
/// under the CPU random-number-generator state and the autocast state of the first run (so dropout draws the same
/// masks and low-precision ops round the same way), and the gradient flows through that recomputed graph into the
/// input and the unit's parameters. Written as a TorchSharp custom autograd function
/// (<c>torch.autograd.SingleTensorFunction</c>).
/// </summary>
/// <remarks>
/// <para>The recomputation uses <c>torch.autograd.grad</c> inside the backward of the function, as PyTorch's
/// reentrant variant does (<c>use_reentrant=True</c>, Composer's default for <c>activation_checkpointing_reentrant</c>);
/// the RNG state seen by the rest of the step is restored after the recomputation (PyTorch's <c>fork_rng</c>), so
/// checkpointing changes neither the gradients nor later random draws.</para>
/// <para>The function must be a pure function of its input, the parameters and the RNG: a decision drawn from
/// another source (e.g. a managed <see cref="System.Random"/>) must be taken outside it and captured.</para>
/// <para>CPU only: TorchSharp 0.107 exposes no way to read or set a CUDA generator's state, so replaying dropout
/// on CUDA is not possible and a CUDA input is refused.</para>
/// </remarks>
public static class ActivationCheckpoint
{
    /// <summary>
    /// Runs <paramref name="function"/> on <paramref name="input"/> with its activations recomputed in backward
    /// instead of kept. Without gradients (under <c>no_grad</c>, or when neither the input nor any parameter requires
    /// a gradient) it simply calls the function.
    /// </summary>
    /// <param name="function">The unit's forward: (input, context) → output (any shapes; the output floating point). Called twice when backward runs, the second time with a detached copy of the input and the same context.</param>
    /// <param name="input">The unit's input (floating point, e.g. Float32 [B, T, hidden]); receives a gradient if it requires one.</param>
    /// <param name="context">A tensor the function reads but does not differentiate (e.g. the attention mask, Bool [B, 1, T, T]), or null. It is kept alive by the autograd graph until backward, whatever dispose scope created it.</param>
    /// <param name="parameters">Every parameter the function uses; those with <c>requires_grad</c> receive their gradients through this function (frozen ones are skipped).</param>
    /// <returns>What <paramref name="function"/> returns, attached to the autograd graph through this function.</returns>
    /// <exception cref="ArgumentNullException">A null function, input or parameter sequence.</exception>
    /// <exception cref="NotSupportedException">The input is not on the CPU (see the remarks).</exception>
    public static Tensor Apply(Func<Tensor, Tensor?, Tensor> function, Tensor input, Tensor? context, IEnumerable<Parameter> parameters)
    {
        ArgumentNullException.ThrowIfNull(function);
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(parameters);
        Parameter[] trainable = parameters.Where(p => p.requires_grad).ToArray();
        if (!torch.is_grad_enabled() || (!input.requires_grad && trainable.Length == 0))
        {
            return function(input, context);
        }

        if (input.device_type != DeviceType.CPU)
        {
            throw new NotSupportedException(
                $"Activation checkpointing got an input on {input.device}: only CPU tensors are supported, because TorchSharp 0.107 cannot read or restore a CUDA generator's state to replay dropout in the recomputation.");
        }

        var vars = new object?[3 + trainable.Length];
        vars[0] = input;
        vars[1] = context?.detach();
        vars[2] = new Unit(function);
        for (int i = 0; i < trainable.Length; i++)
        {
            vars[3 + i] = trainable[i];
        }

        return CheckpointFunction.apply(vars!);
    }

    /// <summary>
    /// True on the calling thread while a checkpointed function runs its first pass, under <c>no_grad</c>, in a
    /// forward whose gradients will be computed by the recomputation. A module that picks a different kernel when
    /// gradients are off (as <c>EagerAttention.Preferred</c> does) reads it so that both passes take the same path
    /// and give bitwise-identical values.
    /// </summary>
    public static bool IsFirstPass => t_firstPass;

    [ThreadStatic]
    private static bool t_firstPass;

    /// <summary>Runs the first pass of <paramref name="unit"/> under <c>no_grad</c> with <see cref="IsFirstPass"/> set.</summary>
    internal static Tensor FirstPass(Unit unit, Tensor input, Tensor? context)
    {
        bool previous = t_firstPass;
        t_firstPass = true;
        try
        {
            using (torch.no_grad())
            {
                return unit.Function(input, context);
            }
        }
        finally
        {
            t_firstPass = previous;
        }
    }

    /// <summary>The non-tensor argument of one call.</summary>
    internal sealed record Unit(Func<Tensor, Tensor?, Tensor> Function);
}

/// <summary>
/// The autograd node of <see cref="ActivationCheckpoint.Apply"/>. vars: the input tensor, the
/// context tensor or null, the <see cref="ActivationCheckpoint.Unit"/>, then the trainable parameters.
/// </summary>
internal sealed class CheckpointFunction : autograd.SingleTensorFunction<CheckpointFunction>
{
    /// <inheritdoc />
    public override string Name => "CheckpointFunction";

    /// <summary>Keeps the input, the RNG and autocast state; runs the function without recording a graph.</summary>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var input = (Tensor)vars[0];
        var context = vars[1] as Tensor;
        var unit = (ActivationCheckpoint.Unit)vars[2];
        ctx.save_for_backward(context is null ? [input] : [input, context]);
        ctx.save_data("unit", unit);
        using (Tensor state = torch.random.get_rng_state())
        {
            // A managed copy: the state tensor would be disposed with the dispose scope the forward runs in.
            ctx.save_data("rng", state.data<byte>().ToArray());
        }

        ctx.save_data("autocast", Autocast.ActiveDtype(DeviceType.CPU) is { } dtype ? (object)dtype : "off");
        ctx.save_data("inputRequiresGrad", input.requires_grad);
        ctx.save_data("parameters", vars.Skip(3).Cast<Tensor>().ToList());
        return ActivationCheckpoint.FirstPass(unit, input, context);
    }

    /// <summary>Recomputes the forward under the saved state and returns the gradients of the input and of each parameter.</summary>
    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        var unit = (ActivationCheckpoint.Unit)ctx.get_data("unit");
        var rng = (byte[])ctx.get_data("rng");
        object autocast = ctx.get_data("autocast");
        bool inputRequiresGrad = (bool)ctx.get_data("inputRequiresGrad");
        List<Tensor> saved = ctx.get_saved_variables();
        Tensor input = saved[0];
        Tensor? context = saved.Count > 1 ? saved[1] : null;

        using Tensor stepRng = torch.random.get_rng_state();
        try
        {
            using (Tensor replay = torch.tensor(rng, ScalarType.Byte))
            {
                torch.random.set_rng_state(replay);
            }

            using var grad = torch.enable_grad();
            using AutocastScope? scope = autocast is ScalarType dtype ? new AutocastScope(DeviceType.CPU, dtype) : null;
            Tensor detached = input.detach().requires_grad_(inputRequiresGrad);
            Tensor output = unit.Function(detached, context);
            var inputs = new List<Tensor>();
            if (inputRequiresGrad)
            {
                inputs.Add(detached);
            }

            inputs.AddRange(UnitParameters(ctx));
            IList<Tensor> grads = torch.autograd.grad(
                new List<Tensor> { output },
                inputs,
                new List<Tensor> { grad_output },
                retain_graph: false,
                create_graph: false,
                allow_unused: true);
            var result = new List<Tensor> { inputRequiresGrad ? grads[0] : null!, null!, null! };
            result.AddRange(grads.Skip(inputRequiresGrad ? 1 : 0));
            return result;
        }
        finally
        {
            torch.random.set_rng_state(stepRng);
        }
    }

    private static IEnumerable<Tensor> UnitParameters(autograd.AutogradContext ctx) =>
        (List<Tensor>)ctx.get_data("parameters");
}
