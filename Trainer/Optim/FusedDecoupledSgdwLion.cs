using ComposerSharp.Interop.Kernels;
using TorchSharp.Modules;

namespace ComposerSharp.Training.Optim;

#pragma warning disable CA1707, SA1307, IDE1006 // PyTorch's and Composer's argument and field names

/// <summary>
/// Composer's <c>DecoupledSGDW</c> (composer/optim/decoupled_weight_decay.py; Loshchilov &amp; Hutter 2019,
/// "Decoupled Weight Decay Regularization"): SGD with momentum whose weight decay follows the learning-rate schedule
/// without being scaled by the learning rate, <c>θ ← θ·(1 − λ·γ/γ₀) − γ·d</c>, over a flat Float32
/// <c>momentum_buffer</c> with one pass of <see cref="SgdwCpuKernel"/> per parameter.
/// </summary>
/// <remarks>
/// <c>d</c> is the gradient when momentum is 0; otherwise the momentum buffer <c>b</c> (the gradient at the first
/// step, then <c>μ·b + (1 − τ)·g</c>), or <c>g + μ·b</c> with Nesterov. With momentum 0 the buffer stays zero (PyTorch keeps
/// none). CPU Float32 parameters only (see <see cref="FlatStateOptimizer"/>).
/// </remarks>
public sealed class FusedDecoupledSGDW : FlatStateOptimizer
{
    /// <summary>Creates the optimizer over one parameter group.</summary>
    /// <param name="parameters">The parameters (CPU, Float32, contiguous).</param>
    /// <param name="lr">Learning rate γ, ≥ 0 (Composer requires it; 1e-3 here).</param>
    /// <param name="momentum">Momentum μ, ≥ 0.</param>
    /// <param name="dampening">Dampening τ of the momentum.</param>
    /// <param name="weight_decay">λ, ≥ 0 (decoupled).</param>
    /// <param name="nesterov">Nesterov momentum (needs μ &gt; 0 and τ = 0).</param>
    /// <param name="path">The kernel's instruction set.</param>
    /// <exception cref="ArgumentException">A value out of range.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    public FusedDecoupledSGDW(IEnumerable<Parameter> parameters, double lr = 1e-3, double momentum = 0, double dampening = 0, double weight_decay = 0, bool nesterov = false, SimdPath path = SimdPath.Auto)
        : base(path)
    {
        _defaults = new Options { LearningRate = lr, InitialLearningRate = lr, momentum = momentum, dampening = dampening, weight_decay = weight_decay, nesterov = nesterov };
        AddGroups(new[] { new ParamGroup { Parameters = parameters } });
    }

    /// <inheritdoc/>
    protected override OptimizerOptions NewOptions() => new Options();

    /// <inheritdoc/>
    protected override void CompleteOptions(OptimizerOptions options)
    {
        if (options is not Options o)
        {
            throw new ArgumentException($"A FusedDecoupledSGDW parameter group needs FusedDecoupledSGDW.Options, not {options.GetType().Name}.", nameof(options));
        }

        var d = (Options)_defaults;
        o.LearningRate ??= d.LearningRate;
        o.momentum ??= d.momentum;
        o.dampening ??= d.dampening;
        o.weight_decay ??= d.weight_decay;
        o.nesterov ??= d.nesterov;
        if (!(o.LearningRate >= 0))
        {
            throw new ArgumentException($"Invalid learning rate: {o.LearningRate}", nameof(options));
        }

        if (!(o.momentum >= 0))
        {
            throw new ArgumentException($"Invalid momentum value: {o.momentum}", nameof(options));
        }

        if (!(o.weight_decay >= 0))
        {
            throw new ArgumentException($"Invalid weight_decay value: {o.weight_decay}", nameof(options));
        }

        if (o.nesterov == true && (o.momentum <= 0 || o.dampening != 0))
        {
            throw new ArgumentException($"Nesterov momentum requires a momentum and zero dampening (momentum {o.momentum}, dampening {o.dampening}).", nameof(options));
        }
    }

    /// <inheritdoc/>
    protected override void StepParameter(OptimizerOptions options, Span<float> param, ReadOnlySpan<float> grad, Span<float> state, long step)
    {
        var o = (Options)options;
        double lr = o.LearningRate!.Value;
        var scalars = new SgdwStepScalars(DecayRate(o.weight_decay!.Value, lr, o.InitialLearningRate), lr, o.momentum!.Value, o.dampening!.Value, o.nesterov!.Value, step == 1);
        SgdwCpuKernel.Step(param, grad, state, scalars, Path);
    }

    /// <summary>The options of a parameter group (null values take the optimizer's defaults).</summary>
    public sealed class Options : OptimizerOptions
    {
        /// <summary>Momentum μ, ≥ 0.</summary>
        public double? momentum { get; set; }

        /// <summary>Dampening τ.</summary>
        public double? dampening { get; set; }

        /// <summary>Decoupled weight decay λ, ≥ 0.</summary>
        public double? weight_decay { get; set; }

        /// <summary>Nesterov momentum.</summary>
        public bool? nesterov { get; set; }

        /// <summary>Copies the values of another <see cref="Options"/>.</summary>
        /// <param name="source">The source.</param>
        /// <exception cref="NotSupportedException">Another options type.</exception>
        public override void LoadStateDict(OptimizerOptions source)
        {
            ArgumentNullException.ThrowIfNull(source);
            base.LoadStateDict(source);
            if (source is not Options o)
            {
                throw new NotSupportedException($"FusedDecoupledSGDW cannot take options of type {source.GetType().Name}.");
            }

            (momentum, dampening, weight_decay, nesterov) = (o.momentum, o.dampening, o.weight_decay, o.nesterov);
        }

        /// <summary>Reads initial lr, lr, momentum, dampening, weight decay, nesterov.</summary>
        /// <param name="reader">The stream.</param>
        public override void LoadStateDict(BinaryReader reader)
        {
            ArgumentNullException.ThrowIfNull(reader);
            base.LoadStateDict(reader);
            momentum = reader.ReadDouble();
            dampening = reader.ReadDouble();
            weight_decay = reader.ReadDouble();
            nesterov = reader.ReadBoolean();
        }

        /// <summary>Writes initial lr, lr, momentum, dampening, weight decay, nesterov.</summary>
        /// <param name="writer">The stream.</param>
        public override void SaveStateDict(BinaryWriter writer)
        {
            ArgumentNullException.ThrowIfNull(writer);
            base.SaveStateDict(writer);
            writer.Write(momentum!.Value);
            writer.Write(dampening!.Value);
            writer.Write(weight_decay!.Value);
            writer.Write(nesterov!.Value);
        }
    }
}

/// <summary>
/// llm-foundry's <c>DecoupledLionW</c> (llmfoundry/optim/lion.py; Chen et al. 2023, "Symbolic Discovery of
/// Optimization Algorithms"): <c>θ ← θ·(1 − λ·γ/γ₀) − γ·sign(m + (1 − β₁)(g − m))</c>, then
/// <c>m ← m + (1 − β₂)(g − m)</c>, over a flat Float32 <c>exp_avg</c> with one pass of <see cref="LionWCpuKernel"/>
/// per parameter. llm-foundry's defaults: <c>lr</c> 1e-4, <c>betas</c> (0.9, 0.99), <c>weight_decay</c> 0. CPU Float32
/// parameters only (see <see cref="FlatStateOptimizer"/>).
/// </summary>
public sealed class FusedDecoupledLionW : FlatStateOptimizer
{
    /// <summary>Creates the optimizer over one parameter group.</summary>
    /// <param name="parameters">The parameters (CPU, Float32, contiguous).</param>
    /// <param name="lr">Learning rate γ, &gt; 0.</param>
    /// <param name="beta1">β₁, in [0, 1].</param>
    /// <param name="beta2">β₂, in [0, 1].</param>
    /// <param name="weight_decay">λ, ≥ 0 (decoupled).</param>
    /// <param name="path">The kernel's instruction set.</param>
    /// <exception cref="ArgumentException">A value out of range.</exception>
    /// <exception cref="PlatformNotSupportedException"><paramref name="path"/> names an instruction set this CPU lacks.</exception>
    public FusedDecoupledLionW(IEnumerable<Parameter> parameters, double lr = 1e-4, double beta1 = 0.9, double beta2 = 0.99, double weight_decay = 0, SimdPath path = SimdPath.Auto)
        : base(path)
    {
        _defaults = new Options { LearningRate = lr, InitialLearningRate = lr, beta1 = beta1, beta2 = beta2, weight_decay = weight_decay };
        AddGroups(new[] { new ParamGroup { Parameters = parameters } });
    }

    /// <inheritdoc/>
    protected override OptimizerOptions NewOptions() => new Options();

    /// <inheritdoc/>
    protected override void CompleteOptions(OptimizerOptions options)
    {
        if (options is not Options o)
        {
            throw new ArgumentException($"A FusedDecoupledLionW parameter group needs FusedDecoupledLionW.Options, not {options.GetType().Name}.", nameof(options));
        }

        var d = (Options)_defaults;
        o.LearningRate ??= d.LearningRate;
        o.beta1 ??= d.beta1;
        o.beta2 ??= d.beta2;
        o.weight_decay ??= d.weight_decay;
        if (!(o.LearningRate > 0))
        {
            throw new ArgumentException($"Invalid LR: {o.LearningRate}. LR must be > 0", nameof(options));
        }

        if (!(o.beta1 >= 0 && o.beta1 <= 1) || !(o.beta2 >= 0 && o.beta2 <= 1))
        {
            throw new ArgumentException($"Invalid beta values: ({o.beta1}, {o.beta2}); both must be in [0, 1].", nameof(options));
        }

        if (!(o.weight_decay >= 0))
        {
            throw new ArgumentException($"Invalid weight_decay value: {o.weight_decay}", nameof(options));
        }
    }

    /// <inheritdoc/>
    protected override void StepParameter(OptimizerOptions options, Span<float> param, ReadOnlySpan<float> grad, Span<float> state, long step)
    {
        var o = (Options)options;
        double lr = o.LearningRate!.Value;
        LionWCpuKernel.Step(param, grad, state, new LionWStepScalars(DecayRate(o.weight_decay!.Value, lr, o.InitialLearningRate), lr, o.beta1!.Value, o.beta2!.Value), Path);
    }

    /// <summary>The options of a parameter group (null values take the optimizer's defaults).</summary>
    public sealed class Options : OptimizerOptions
    {
        /// <summary>β₁, in [0, 1].</summary>
        public double? beta1 { get; set; }

        /// <summary>β₂, in [0, 1].</summary>
        public double? beta2 { get; set; }

        /// <summary>Decoupled weight decay λ, ≥ 0.</summary>
        public double? weight_decay { get; set; }

        /// <summary>Copies the values of another <see cref="Options"/>.</summary>
        /// <param name="source">The source.</param>
        /// <exception cref="NotSupportedException">Another options type.</exception>
        public override void LoadStateDict(OptimizerOptions source)
        {
            ArgumentNullException.ThrowIfNull(source);
            base.LoadStateDict(source);
            if (source is not Options o)
            {
                throw new NotSupportedException($"FusedDecoupledLionW cannot take options of type {source.GetType().Name}.");
            }

            (beta1, beta2, weight_decay) = (o.beta1, o.beta2, o.weight_decay);
        }

        /// <summary>Reads initial lr, lr, β₁, β₂, weight decay.</summary>
        /// <param name="reader">The stream.</param>
        public override void LoadStateDict(BinaryReader reader)
        {
            ArgumentNullException.ThrowIfNull(reader);
            base.LoadStateDict(reader);
            beta1 = reader.ReadDouble();
            beta2 = reader.ReadDouble();
            weight_decay = reader.ReadDouble();
        }

        /// <summary>Writes initial lr, lr, β₁, β₂, weight decay.</summary>
        /// <param name="writer">The stream.</param>
        public override void SaveStateDict(BinaryWriter writer)
        {
            ArgumentNullException.ThrowIfNull(writer);
            base.SaveStateDict(writer);
            writer.Write(beta1!.Value);
            writer.Write(beta2!.Value);
            writer.Write(weight_decay!.Value);
        }
    }
}
#pragma warning restore CA1707, SA1307, IDE1006
