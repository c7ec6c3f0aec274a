using ComposerSharp.Core.Tensors;
using ComposerSharp.Interop.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Training.Optim;

/// <summary>
/// The shared part of the fused optimizers that keep one Float32 state tensor per parameter
/// (<see cref="FusedDecoupledSGDW"/>'s <c>momentum_buffer</c>, <see cref="FusedDecoupledLionW"/>'s <c>exp_avg</c>):
/// the states are views of one flat buffer laid out by <see cref="FlatBufferLayout"/> (the layout sharded data
/// parallel uses), and each parameter with a gradient is updated by one pass of a SIMD kernel over its span.
/// </summary>
/// <remarks>
/// Modelled on <see cref="FusedAdamW"/> (and on Apex's multi-tensor apply). Requirements: CPU, Float32, contiguous
/// parameters (a non-contiguous gradient is copied first). A parameter whose gradient is null is skipped (no decay,
/// no step count), as in Composer and llm-foundry. Checkpoints (<c>save_state_dict</c>): per group the options
/// (initial lr, lr, then the subclass's values), per parameter the step count and the state tensor.
/// </remarks>
public abstract class FlatStateOptimizer : OptimizerHelper
{
    private List<IntPtr> _packed = new();

    /// <summary>Creates an empty optimizer; the subclass sets the defaults and calls <see cref="AddGroups"/>.</summary>
    /// <param name="path">The kernel's instruction set.</param>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    protected FlatStateOptimizer(SimdPath path)
    {
        Path = AdamWCpuKernel.Resolve(path);
        _parameter_groups = new List<ParamGroup>();
    }

    /// <summary>The flat layout of <see cref="StateBuffer"/> (parameters in group order).</summary>
    public FlatBufferLayout Layout { get; private set; } = new(Array.Empty<long>());

    /// <summary>All parameters' state: Float32, shape <c>[Layout.TotalLength]</c>, on the CPU.</summary>
    public Tensor StateBuffer { get; private set; } = torch.empty(0).DetachFromDisposeScope();

    /// <summary>The resolved instruction set of the kernel.</summary>
    protected SimdPath Path { get; }

    /// <summary>The per-parameter state (<c>step</c>, <c>buffer</c>) of <paramref name="parameter"/>.</summary>
    /// <exception cref="KeyNotFoundException">The parameter is not in this optimizer.</exception>
    public State StateOf(Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        return (State)_state[parameter.Handle];
    }

    /// <summary>Adds a group (null options take the defaults) and zero state for its parameters; the flat buffer is rebuilt at the next step.</summary>
    /// <exception cref="ArgumentException">The group's options are of another optimizer's type, or a value is out of range.</exception>
    public override void add_param_group(ParamGroup param_group)
    {
        ArgumentNullException.ThrowIfNull(param_group);
        param_group.Options ??= NewOptions();
        CompleteOptions(param_group.Options);
        param_group.Options.InitialLearningRate = param_group.Options.LearningRate!.Value;
        _parameter_groups.Add(param_group);
        foreach (Parameter p in param_group.Parameters)
        {
            var state = new State(p);
            _state[p.Handle] = state;
            state.Initialize(param_group.Options);
        }
    }

    /// <summary>One step over every parameter with a gradient, each in one pass of the SIMD kernel.</summary>
    /// <param name="closure">Re-evaluates the model and returns the loss, or null.</param>
    /// <returns>The closure's loss, or null.</returns>
    /// <exception cref="NotSupportedException">A parameter or gradient is not a CPU Float32 tensor, or a parameter is not contiguous.</exception>
    public override Tensor step(Func<Tensor>? closure = null)
    {
        Pack();
        return _step<ParamGroup>(group =>
        {
            foreach (Parameter param in group.Parameters)
            {
                using Tensor? grad = param.grad;
                if (grad is null)
                {
                    continue;
                }

                Require(param, "parameter");
                Require(grad, "gradient");
                if (!param.is_contiguous())
                {
                    throw new NotSupportedException($"{GetType().Name} needs contiguous parameters.");
                }

                using Tensor? copy = grad.is_contiguous() ? null : grad.contiguous();
                Tensor g = copy ?? grad;
                var state = (State)_state[param.Handle];
                state.step += 1;
                StepParameter(
                    group.Options,
                    System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(param.bytes),
                    System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(g.bytes),
                    System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(state.buffer.bytes),
                    state.step);
            }
        }, closure);
    }

    /// <summary>Loads an in-memory state dictionary of the same optimizer type, copied into the flat buffer.</summary>
    /// <exception cref="ArgumentException">The group or parameter counts differ, or a state's shape does not match.</exception>
    public override void load_state_dict(StateDictionary state_dict)
    {
        Pack();
        base.load_state_dict(state_dict);
    }

    /// <summary>The decay rate of Composer's and llm-foundry's decoupled weight decay: <c>λ·lr/initial_lr</c> (<c>λ</c> when <c>initial_lr</c> is 0), 0 when λ is 0.</summary>
    /// <param name="weightDecay">λ.</param>
    /// <param name="lr">The current learning rate.</param>
    /// <param name="initialLr">The group's initial learning rate.</param>
    /// <returns>The factor <c>r</c> of <c>θ ← θ·(1 − r)</c>.</returns>
    protected static double DecayRate(double weightDecay, double lr, double initialLr) =>
        weightDecay != 0 ? weightDecay * (initialLr != 0 ? lr / initialLr : 1.0) : 0.0;

    /// <summary>A new options object of the subclass's type with every value null (taking the defaults).</summary>
    /// <returns>The options.</returns>
    protected abstract OptimizerOptions NewOptions();

    /// <summary>Fills the null values of <paramref name="options"/> from the defaults and checks them.</summary>
    /// <param name="options">A group's options.</param>
    /// <exception cref="ArgumentException">The options are of another type, or a value is out of range.</exception>
    protected abstract void CompleteOptions(OptimizerOptions options);

    /// <summary>Updates one parameter's span in place.</summary>
    /// <param name="options">The group's options.</param>
    /// <param name="param">The parameter (Float32).</param>
    /// <param name="grad">Its gradient (Float32).</param>
    /// <param name="state">Its state span of the flat buffer (Float32).</param>
    /// <param name="step">The parameter's step count, 1 at its first step.</param>
    protected abstract void StepParameter(OptimizerOptions options, Span<float> param, ReadOnlySpan<float> grad, Span<float> state, long step);

    /// <summary>Adds the groups and packs the flat buffer (call once from the subclass's constructor, after setting <c>_defaults</c>).</summary>
    /// <param name="groups">The parameter groups.</param>
    protected void AddGroups(IEnumerable<ParamGroup> groups)
    {
        ArgumentNullException.ThrowIfNull(groups);
        foreach (ParamGroup group in groups)
        {
            add_param_group(group);
        }

        Pack();
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        base.Dispose(disposing);
        if (disposing)
        {
            foreach ((IntPtr _, OptimizerState s) in _state)
            {
                ((State)s).Dispose();
            }

            StateBuffer.Dispose();
        }
    }

    private void Require(Tensor t, string what)
    {
        if (t.dtype != ScalarType.Float32 || t.device_type != DeviceType.CPU)
        {
            throw new NotSupportedException($"{GetType().Name} updates CPU Float32 tensors only; a {what} is {t.dtype} on {t.device}.");
        }
    }

    private void Pack()
    {
        if (IsPacked())
        {
            return;
        }

        List<Parameter> parameters = _parameter_groups.SelectMany(g => g.Parameters).ToList();
        var layout = new FlatBufferLayout(parameters.Select(p => p.numel()));
        Tensor buffer = torch.zeros(layout.TotalLength, ScalarType.Float32).DetachFromDisposeScope();
        using (torch.no_grad())
        {
            for (int i = 0; i < parameters.Count; i++)
            {
                Parameter p = parameters[i];
                var state = (State)_state[p.Handle];
                Tensor b = buffer.narrow(0, layout.Offsets[i], layout.Lengths[i]).view(p.shape).DetachFromDisposeScope();
                b.copy_(state.buffer);
                state.Repoint(b);
            }
        }

        StateBuffer.Dispose();
        StateBuffer = buffer;
        Layout = layout;
        _packed = parameters.Select(p => p.Handle).ToList();
    }

    private bool IsPacked()
    {
        int k = 0;
        foreach (ParamGroup group in _parameter_groups)
        {
            foreach (Parameter p in group.Parameters)
            {
                if (k >= _packed.Count || p.Handle != _packed[k] || !((State)_state[p.Handle]).Packed)
                {
                    return false;
                }

                k++;
            }
        }

        return k == _packed.Count;
    }

    /// <summary>One parameter's state: its step count and its Float32 state tensor (a view of the flat buffer once packed).</summary>
#pragma warning disable CA1707, SA1307, IDE1006 // PyTorch's state names
    public sealed class State : OptimizerState, IDisposable
    {
        /// <summary>Creates the (not yet initialised) state of <paramref name="parameter"/>.</summary>
        /// <param name="parameter">The parameter.</param>
        public State(Parameter parameter)
            : base(parameter)
        {
        }

        /// <summary>The number of steps taken for this parameter.</summary>
        public long step { get; internal set; }

        /// <summary>The state tensor: <c>momentum_buffer</c> (SGDW) or <c>exp_avg</c> (LionW); the parameter's shape, Float32.</summary>
        public Tensor buffer { get; private set; } = null!;
#pragma warning restore CA1707, SA1307, IDE1006

        internal bool Packed { get; private set; }

        /// <summary>Releases the state tensor.</summary>
        public void Dispose() => buffer?.Dispose();

        /// <summary>A zero state tensor of the parameter's shape and step 0.</summary>
        /// <param name="options">The group's options (unused).</param>
        public override void Initialize(OptimizerOptions options)
        {
            Dispose();
            step = 0;
            buffer = torch.zeros_like(_parameter, dtype: ScalarType.Float32).DetachFromDisposeScope();
            Packed = false;
        }

        /// <summary>Reads the step and the state tensor (into the existing tensor).</summary>
        /// <param name="reader">The stream.</param>
        /// <exception cref="ArgumentException">The tensor's dtype or shape differs.</exception>
        public override void LoadStateDict(BinaryReader reader)
        {
            ArgumentNullException.ThrowIfNull(reader);
            step = reader.ReadInt64();
            buffer.Load(reader);
        }

        /// <summary>Writes the step and the state tensor.</summary>
        /// <param name="writer">The stream.</param>
        public override void SaveStateDict(BinaryWriter writer)
        {
            ArgumentNullException.ThrowIfNull(writer);
            writer.Write(step);
            buffer.Save(writer);
        }

        /// <summary>Copies another <see cref="State"/> into this one's tensor.</summary>
        /// <param name="source">The source state.</param>
        /// <exception cref="NotSupportedException">Another state type.</exception>
        public override void LoadStateDict(OptimizerState source)
        {
            if (source is not State o)
            {
                throw new NotSupportedException($"A flat-state optimizer cannot take state of type {source?.GetType().Name}.");
            }

            using (torch.no_grad())
            {
                buffer.copy_(o.buffer);
            }

            step = o.step;
        }

        /// <summary>Same step and state within <c>allclose</c>'s default tolerances.</summary>
        /// <param name="other">The other state.</param>
        /// <returns>Whether they match.</returns>
        public override bool ApproximatelyEquals(OptimizerState other) =>
            other is State o && o.step == step && o.buffer.allclose(buffer);

        internal void Repoint(Tensor b)
        {
            Dispose();
            buffer = b;
            Packed = true;
        }
    }
}
