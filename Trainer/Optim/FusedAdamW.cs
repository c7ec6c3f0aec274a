using System.Runtime.InteropServices;
using ComposerSharp.Core.Tensors;
using ComposerSharp.Interop.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Training.Optim;

/// <summary>
/// AdamW with its two moment estimates kept in two flat, contiguous Float32 buffers and each parameter updated by one
/// pass of a C# SIMD kernel (<see cref="AdamWCpuKernel"/>: AVX-512, AVX2 or scalar) that reads parameter, gradient,
/// <c>exp_avg</c> and <c>exp_avg_sq</c> once and writes parameter and moments once, instead of TorchSharp's several
/// tensor ops per parameter.
/// </summary>
/// <remarks>
/// <para>
/// With <c>decoupled = false</c> it is PyTorch's <c>torch.optim.AdamW</c> (Loshchilov &amp; Hutter 2019,
/// "Decoupled Weight Decay Regularization"; https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html) with
/// <c>amsgrad = False</c> and <c>maximize = False</c>: <c>θ ← θ·(1 − γλ)</c>, then the bias-corrected Adam step
/// <c>θ ← θ − (γ / (1 − β₁ᵗ))·m / (√v / √(1 − β₂ᵗ) + ε)</c>. With <c>decoupled = true</c> it is Composer's
/// <c>DecoupledAdamW</c> (composer/optim/decoupled_weight_decay.py): the decay is not scaled by the learning rate but
/// by its schedule, <c>θ ← θ·(1 − λ·γ/γ₀)</c> with <c>γ₀</c> the group's initial learning rate
/// (<see cref="OptimizerOptions.InitialLearningRate"/>; a factor of 1 when <c>γ₀</c> is 0), and skipped when λ is 0.
/// The step counter is per parameter, as PyTorch's; a parameter whose gradient is null is skipped entirely (no
/// decay, no step count), as in both.
/// </para>
/// <para>
/// Layout: <see cref="ExpAvgBuffer"/> and <see cref="ExpAvgSqBuffer"/> are one-dimensional Float32 tensors of
/// <see cref="Layout"/>.<see cref="FlatBufferLayout.TotalLength"/> elements; each parameter's state tensors are
/// views of its range (<see cref="FlatBufferLayout"/>: offsets in the parameters' order over all parameter groups,
/// aligned to 16 elements). The parameters themselves stay separate TorchSharp <see cref="Parameter"/>s. When the
/// parameter list changes (<c>add_param_group</c>, module surgery), the buffers are rebuilt on the next step, the
/// existing state copied over.
/// </para>
/// <para>
/// Requirements: parameters and gradients on the CPU, Float32, contiguous (a non-contiguous gradient is copied
/// first), each below 2³¹ bytes (the limit of TorchSharp's <c>Tensor.bytes</c> span).
/// </para>
/// <para>
/// Checkpoints: the payload of <c>save_state_dict</c> is byte for byte the layout of TorchSharp's
/// <see cref="TorchSharp.Modules.AdamW"/> (per group: initial lr, lr, β₁, β₂, ε, weight decay, amsgrad = false, maximize = false;
/// per parameter: step, <c>exp_avg</c>, <c>exp_avg_sq</c>, no <c>max_exp_avg_sq</c>), but TorchSharp's
/// <c>OptimizerHelper.load_state_dict(BinaryReader)</c> checks the type name written first ("FusedAdamW" vs
/// "AdamW"), so a checkpoint file of one does not load into the other. In memory,
/// <see cref="load_state_dict(OptimizerHelper.StateDictionary)"/> accepts a TorchSharp AdamW's <c>state_dict()</c>.
/// Whether the optimizer was decoupled is not saved (the AdamW layout has no field for it).
/// </para>
/// </remarks>
public sealed class FusedAdamW : OptimizerHelper, optim.IBetas
{
    private readonly bool _decoupled;
    private readonly SimdPath _path;
    private List<IntPtr> _packed = new();

    /// <summary>Creates the optimizer over one parameter group.</summary>
    /// <param name="parameters">The parameters (CPU, Float32, contiguous).</param>
    /// <param name="lr">Learning rate γ, ≥ 0.</param>
    /// <param name="beta1">β₁, in [0, 1).</param>
    /// <param name="beta2">β₂, in [0, 1).</param>
    /// <param name="eps">ε, ≥ 0.</param>
    /// <param name="weight_decay">λ, ≥ 0 (PyTorch's AdamW default 0.01; Composer's DecoupledAdamW default 1e-5).</param>
    /// <param name="decoupled">Composer's DecoupledAdamW (decay scaled by <c>lr / initial_lr</c>) instead of PyTorch's AdamW (decay scaled by <c>lr</c>).</param>
    /// <param name="path">The kernel's instruction set; <see cref="SimdPath.Auto"/> picks the widest the CPU has.</param>
    /// <exception cref="ArgumentException">A value out of range.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
#pragma warning disable CA1707 // PyTorch's argument names
    public FusedAdamW(IEnumerable<Parameter> parameters, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0.01, bool decoupled = false, SimdPath path = SimdPath.Auto)
        : this(new[] { new ParamGroup { Parameters = parameters } }, lr, beta1, beta2, eps, weight_decay, decoupled, path)
    {
    }

    /// <summary>Creates the optimizer over several parameter groups; a group's <see cref="Options"/> (if any) overrides these defaults.</summary>
    /// <param name="groups">The parameter groups, each with <see cref="ParamGroup.Options"/> null or an <see cref="Options"/>.</param>
    /// <param name="lr">Default learning rate γ, ≥ 0.</param>
    /// <param name="beta1">Default β₁, in [0, 1).</param>
    /// <param name="beta2">Default β₂, in [0, 1).</param>
    /// <param name="eps">Default ε, ≥ 0.</param>
    /// <param name="weight_decay">Default λ, ≥ 0.</param>
    /// <param name="decoupled">Composer's DecoupledAdamW instead of PyTorch's AdamW (for every group).</param>
    /// <param name="path">The kernel's instruction set.</param>
    /// <exception cref="ArgumentException">A value out of range, or a group's options are not <see cref="Options"/>.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    public FusedAdamW(IEnumerable<ParamGroup> groups, double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weight_decay = 0.01, bool decoupled = false, SimdPath path = SimdPath.Auto)
#pragma warning restore CA1707
    {
        ArgumentNullException.ThrowIfNull(groups);
        Check(lr, beta1, beta2, eps, weight_decay);
        _path = AdamWCpuKernel.Resolve(path);
        _decoupled = decoupled;
        _defaults = new Options { LearningRate = lr, InitialLearningRate = lr, beta1 = beta1, beta2 = beta2, eps = eps, weight_decay = weight_decay };
        _parameter_groups = new List<ParamGroup>();
        foreach (ParamGroup group in groups)
        {
            add_param_group(group);
        }

        Pack();
    }

    /// <summary>Whether this is Composer's DecoupledAdamW (decay scaled by <c>lr / initial_lr</c>) rather than PyTorch's AdamW.</summary>
    public bool Decoupled => _decoupled;

    /// <summary>The flat layout of <see cref="ExpAvgBuffer"/> and <see cref="ExpAvgSqBuffer"/> (parameters in group order).</summary>
    public FlatBufferLayout Layout { get; private set; } = new(Array.Empty<long>());

    /// <summary>All parameters' <c>exp_avg</c>: Float32, shape <c>[Layout.TotalLength]</c>, on the CPU.</summary>
    public Tensor ExpAvgBuffer { get; private set; } = torch.empty(0).DetachFromDisposeScope();

    /// <summary>All parameters' <c>exp_avg_sq</c>: Float32, shape <c>[Layout.TotalLength]</c>, on the CPU.</summary>
    public Tensor ExpAvgSqBuffer { get; private set; } = torch.empty(0).DetachFromDisposeScope();

    /// <summary>β₁ and β₂ of the first group (TorchSharp's <see cref="optim.IBetas"/>, used by its one-cycle scheduler); setting sets every group's.</summary>
    public (double, double) Betas
    {
        get
        {
            var options = (Options)_parameter_groups[0].Options;
            return (options.beta1!.Value, options.beta2!.Value);
        }

        set
        {
            foreach (ParamGroup group in _parameter_groups)
            {
                var options = (Options)group.Options;
                options.beta1 = value.Item1;
                options.beta2 = value.Item2;
            }
        }
    }

    /// <summary>The per-parameter state (<c>step</c>, <c>exp_avg</c>, <c>exp_avg_sq</c>) of <paramref name="parameter"/>.</summary>
    /// <exception cref="KeyNotFoundException">The parameter is not in this optimizer.</exception>
    public State StateOf(Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        return (State)_state[parameter.Handle];
    }

    /// <summary>Adds a group (its options default to the constructor's) and creates zero state for its parameters; the flat buffers are rebuilt at the next step.</summary>
    /// <exception cref="ArgumentException">The group's options are neither null nor <see cref="Options"/>, or a value is out of range.</exception>
    public override void add_param_group(ParamGroup param_group)
    {
        ArgumentNullException.ThrowIfNull(param_group);
        var def = (Options)_defaults;
        param_group.Options ??= new Options();
        if (param_group.Options is not Options options)
        {
            throw new ArgumentException($"A FusedAdamW parameter group needs FusedAdamW.Options, not {param_group.Options.GetType().Name}.", nameof(param_group));
        }

        options.LearningRate ??= def.LearningRate;
        options.beta1 ??= def.beta1;
        options.beta2 ??= def.beta2;
        options.eps ??= def.eps;
        options.weight_decay ??= def.weight_decay;
        Check(options.LearningRate!.Value, options.beta1!.Value, options.beta2!.Value, options.eps!.Value, options.weight_decay!.Value);
        options.InitialLearningRate = options.LearningRate.Value;
        _parameter_groups.Add(param_group);
        foreach (Parameter p in param_group.Parameters)
        {
            var state = new State(p);
            _state[p.Handle] = state;
            state.Initialize(options);
        }
    }

    /// <summary>
    /// One AdamW (or DecoupledAdamW) step over every parameter with a gradient, each in one pass of the SIMD kernel.
    /// </summary>
    /// <param name="closure">Re-evaluates the model and returns the loss (with gradients enabled), or null.</param>
    /// <returns>The closure's loss, or null.</returns>
    /// <exception cref="NotSupportedException">A parameter or gradient is not a CPU Float32 tensor, or a parameter is not contiguous.</exception>
    public override Tensor step(Func<Tensor>? closure = null)
    {
        Pack();
        return _step<ParamGroup>(group =>
        {
            var options = (Options)group.Options;
            double lr = options.LearningRate!.Value;
            double beta1 = options.beta1!.Value, beta2 = options.beta2!.Value, eps = options.eps!.Value, wd = options.weight_decay!.Value;
            double initialLr = options.InitialLearningRate;
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
                    throw new NotSupportedException("FusedAdamW needs contiguous parameters.");
                }

                using Tensor? copy = grad.is_contiguous() ? null : grad.contiguous();
                Tensor g = copy ?? grad;
                var state = (State)_state[param.Handle];
                state.step += 1;
                double decayRate = _decoupled
                    ? (wd != 0 ? wd * (initialLr != 0 ? lr / initialLr : 1.0) : 0.0)
                    : lr * wd;
                double bc1 = 1 - Math.Pow(beta1, state.step);
                double bc2 = 1 - Math.Pow(beta2, state.step);
                var scalars = new AdamWStepScalars(decayRate, beta1, beta2, lr / bc1, Math.Sqrt(bc2), eps);
                AdamWCpuKernel.Step(
                    MemoryMarshal.Cast<byte, float>(param.bytes),
                    MemoryMarshal.Cast<byte, float>(g.bytes),
                    MemoryMarshal.Cast<byte, float>(state.exp_avg.bytes),
                    MemoryMarshal.Cast<byte, float>(state.exp_avg_sq.bytes),
                    scalars,
                    _path);
            }
        }, closure);
    }

    /// <summary>
    /// Loads another optimizer's in-memory state dictionary: this class's, or a TorchSharp <see cref="TorchSharp.Modules.AdamW"/>'s
    /// (amsgrad and maximize off), copied into the flat buffers.
    /// </summary>
    /// <exception cref="ArgumentException">The group or parameter counts differ, or a state's shapes do not match.</exception>
    /// <exception cref="NotSupportedException">The source uses amsgrad or maximize.</exception>
    public override void load_state_dict(StateDictionary state_dict)
    {
        Pack();
        base.load_state_dict(state_dict);
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

            ExpAvgBuffer.Dispose();
            ExpAvgSqBuffer.Dispose();
        }
    }

    private static void Check(double lr, double beta1, double beta2, double eps, double weightDecay)
    {
        if (!(lr >= 0))
        {
            throw new ArgumentException($"Invalid learning rate: {lr}", nameof(lr));
        }

        if (!(eps >= 0))
        {
            throw new ArgumentException($"Invalid epsilon value: {eps}", nameof(eps));
        }

        if (!(beta1 >= 0 && beta1 < 1))
        {
            throw new ArgumentException($"Invalid beta parameter at index 0: {beta1}", nameof(beta1));
        }

        if (!(beta2 >= 0 && beta2 < 1))
        {
            throw new ArgumentException($"Invalid beta parameter at index 1: {beta2}", nameof(beta2));
        }

        if (!(weightDecay >= 0))
        {
            throw new ArgumentException($"Invalid weight_decay value: {weightDecay}", nameof(weightDecay));
        }
    }

    private static void Require(Tensor t, string what)
    {
        if (t.dtype != ScalarType.Float32 || t.device_type != DeviceType.CPU)
        {
            throw new NotSupportedException($"FusedAdamW updates CPU Float32 tensors only; a {what} is {t.dtype} on {t.device}.");
        }
    }

    /// <summary>
    /// Makes every parameter's state a view of the flat buffers, in the current group order: nothing to do when the
    /// order is unchanged and every state is already packed; otherwise new buffers, the state copied in.
    /// </summary>
    private void Pack()
    {
        if (IsPacked())
        {
            return;
        }

        List<Parameter> parameters = _parameter_groups.SelectMany(g => g.Parameters).ToList();
        var layout = new FlatBufferLayout(parameters.Select(p => p.numel()));
        Tensor expAvg = torch.zeros(layout.TotalLength, ScalarType.Float32).DetachFromDisposeScope();
        Tensor expAvgSq = torch.zeros(layout.TotalLength, ScalarType.Float32).DetachFromDisposeScope();
        using (torch.no_grad())
        {
            for (int i = 0; i < parameters.Count; i++)
            {
                Parameter p = parameters[i];
                var state = (State)_state[p.Handle];
                Tensor m = expAvg.narrow(0, layout.Offsets[i], layout.Lengths[i]).view(p.shape).DetachFromDisposeScope();
                Tensor v = expAvgSq.narrow(0, layout.Offsets[i], layout.Lengths[i]).view(p.shape).DetachFromDisposeScope();
                m.copy_(state.exp_avg);
                v.copy_(state.exp_avg_sq);
                state.Repoint(m, v);
            }
        }

        ExpAvgBuffer.Dispose();
        ExpAvgSqBuffer.Dispose();
        ExpAvgBuffer = expAvg;
        ExpAvgSqBuffer = expAvgSq;
        Layout = layout;
        _packed = parameters.Select(p => p.Handle).ToList();
    }

    /// <summary>Whether the parameters, in group order, are those last packed and every state is a view of the buffers (no allocation).</summary>
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

    /// <summary>
    /// The options of a parameter group; field names and the saved layout are those of TorchSharp's
    /// <c>AdamW.Options</c> (initial lr, lr, β₁, β₂, ε, weight decay, then amsgrad and maximize, always false here).
    /// </summary>
#pragma warning disable CA1707, SA1307, IDE1006 // TorchSharp's field names
    public sealed class Options : OptimizerOptions
    {
        /// <summary>β₁, in [0, 1); null takes the optimizer's default.</summary>
        public double? beta1 { get; set; }

        /// <summary>β₂, in [0, 1); null takes the optimizer's default.</summary>
        public double? beta2 { get; set; }

        /// <summary>ε, ≥ 0; null takes the optimizer's default.</summary>
        public double? eps { get; set; }

        /// <summary>Weight decay λ, ≥ 0; null takes the optimizer's default.</summary>
        public double? weight_decay { get; set; }
#pragma warning restore CA1707, SA1307, IDE1006

        /// <summary>Copies the values of another <see cref="Options"/> or a TorchSharp <c>AdamW.Options</c>.</summary>
        /// <exception cref="NotSupportedException">An AdamW source with amsgrad or maximize on, or another options type.</exception>
        public override void LoadStateDict(OptimizerOptions source)
        {
            ArgumentNullException.ThrowIfNull(source);
            base.LoadStateDict(source);
            switch (source)
            {
                case Options o:
                    (beta1, beta2, eps, weight_decay) = (o.beta1, o.beta2, o.eps, o.weight_decay);
                    break;
                case TorchSharp.Modules.AdamW.Options a when a.amsgrad != true && a.maximize != true:
                    (beta1, beta2, eps, weight_decay) = (a.beta1, a.beta2, a.eps, a.weight_decay);
                    break;
                default:
                    throw new NotSupportedException($"FusedAdamW cannot take options of type {source.GetType().Name} (or an AdamW with amsgrad or maximize).");
            }
        }

        /// <summary>Reads the AdamW options layout.</summary>
        /// <exception cref="NotSupportedException">The stream has amsgrad or maximize on.</exception>
        public override void LoadStateDict(BinaryReader reader)
        {
            ArgumentNullException.ThrowIfNull(reader);
            base.LoadStateDict(reader);
            beta1 = reader.ReadDouble();
            beta2 = reader.ReadDouble();
            eps = reader.ReadDouble();
            weight_decay = reader.ReadDouble();
            bool amsgrad = reader.ReadBoolean();
            bool maximize = reader.ReadBoolean();
            if (amsgrad || maximize)
            {
                throw new NotSupportedException("FusedAdamW does not implement amsgrad or maximize.");
            }
        }

        /// <summary>Writes the AdamW options layout (amsgrad and maximize false).</summary>
        public override void SaveStateDict(BinaryWriter writer)
        {
            ArgumentNullException.ThrowIfNull(writer);
            base.SaveStateDict(writer);
            writer.Write(beta1!.Value);
            writer.Write(beta2!.Value);
            writer.Write(eps!.Value);
            writer.Write(weight_decay!.Value);
            writer.Write(false);
            writer.Write(false);
        }
    }

    /// <summary>
    /// One parameter's state: the step count and the two moments, which are views (the parameter's shape, Float32)
    /// of the optimizer's flat buffers once packed.
    /// </summary>
#pragma warning disable CA1707, SA1307, IDE1006 // TorchSharp's field names
    public sealed class State : OptimizerState, IDisposable
    {
        /// <summary>The number of steps taken for this parameter (PyTorch's <c>state['step']</c>).</summary>
        public long step { get; internal set; }

        /// <summary>The first-moment estimate <c>exp_avg</c> (the parameter's shape, Float32).</summary>
        public Tensor exp_avg { get; private set; } = null!;

        /// <summary>The second-moment estimate <c>exp_avg_sq</c> (the parameter's shape, Float32).</summary>
        public Tensor exp_avg_sq { get; private set; } = null!;
#pragma warning restore CA1707, SA1307, IDE1006

        /// <summary>Creates the (not yet initialised) state of <paramref name="parameter"/>.</summary>
        public State(Parameter parameter)
            : base(parameter)
        {
        }

        internal bool Packed { get; private set; }

        /// <summary>Releases the two moment tensors (views keep the flat buffers alive until released).</summary>
        public void Dispose()
        {
            exp_avg?.Dispose();
            exp_avg_sq?.Dispose();
        }

        /// <summary>Zero moments of the parameter's shape (not yet in the flat buffers) and step 0.</summary>
        public override void Initialize(OptimizerOptions options)
        {
            Dispose();
            step = 0;
            exp_avg = torch.zeros_like(_parameter, dtype: ScalarType.Float32).DetachFromDisposeScope();
            exp_avg_sq = torch.zeros_like(_parameter, dtype: ScalarType.Float32).DetachFromDisposeScope();
            Packed = false;
        }

        /// <summary>Reads step, <c>exp_avg</c>, <c>exp_avg_sq</c> (into the existing tensors) and the AdamW <c>max_exp_avg_sq</c> flag.</summary>
        /// <exception cref="ArgumentException">A tensor's dtype or shape differs.</exception>
        /// <exception cref="NotSupportedException">The stream holds a <c>max_exp_avg_sq</c> (amsgrad).</exception>
        public override void LoadStateDict(BinaryReader reader)
        {
            ArgumentNullException.ThrowIfNull(reader);
            step = reader.ReadInt64();
            exp_avg.Load(reader);
            exp_avg_sq.Load(reader);
            if (reader.ReadBoolean())
            {
                throw new NotSupportedException("FusedAdamW does not implement amsgrad (the stream holds max_exp_avg_sq).");
            }
        }

        /// <summary>Writes step, <c>exp_avg</c>, <c>exp_avg_sq</c> and false (no <c>max_exp_avg_sq</c>): TorchSharp's AdamW state layout.</summary>
        public override void SaveStateDict(BinaryWriter writer)
        {
            ArgumentNullException.ThrowIfNull(writer);
            writer.Write(step);
            exp_avg.Save(writer);
            exp_avg_sq.Save(writer);
            writer.Write(false);
        }

        /// <summary>Copies another <see cref="State"/> or a TorchSharp <c>AdamW.State</c> into this one's tensors.</summary>
        /// <exception cref="NotSupportedException">Another state type, or an AdamW state with <c>max_exp_avg_sq</c>.</exception>
        public override void LoadStateDict(OptimizerState source)
        {
            (long S, Tensor M, Tensor V) src = source switch
            {
                State o => (o.step, o.exp_avg, o.exp_avg_sq),
                TorchSharp.Modules.AdamW.State a when a.max_exp_avg_sq is null => (a.step, a.exp_avg, a.exp_avg_sq),
                _ => throw new NotSupportedException($"FusedAdamW cannot take state of type {source?.GetType().Name} (or an AdamW state with amsgrad)."),
            };
            using (torch.no_grad())
            {
                exp_avg.copy_(src.M);
                exp_avg_sq.copy_(src.V);
            }

            step = src.S;
        }

        /// <summary>Same step and moments within <c>allclose</c>'s default tolerances.</summary>
        public override bool ApproximatelyEquals(OptimizerState other) =>
            other is State o && o.step == step && o.exp_avg.allclose(exp_avg) && o.exp_avg_sq.allclose(exp_avg_sq);

        internal void Repoint(Tensor expAvg, Tensor expAvgSq)
        {
            Dispose();
            exp_avg = expAvg;
            exp_avg_sq = expAvgSq;
            Packed = true;
        }
    }
}
