using System.Globalization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Training.Optim;

/// <summary>
/// The settings of an optimizer, checked once, here, and turned into a TorchSharp optimizer over given parameters.
/// Property names are PyTorch's <c>torch.optim</c> argument names in camel case (<c>lr</c> → <see cref="AdamFamilyOptions.Lr"/>),
/// so the YAML's <c>optimizer: {name: adamw, lr: …, betas: […], eps: …, weight_decay: …}</c> binds to them by name.
/// </summary>
public interface IOptimizerOptions
{
    /// <summary>Checks every value (PyTorch's ranges: <c>Invalid learning rate</c>, <c>Invalid beta parameter</c>, …).</summary>
    /// <exception cref="ArgumentException">A value out of range; <see cref="ArgumentException.ParamName"/> is the property's name and the message quotes the value and the range.</exception>
    void Validate();

    /// <summary>Creates the optimizer over <paramref name="parameters"/> (call after the model is on its device).</summary>
    /// <exception cref="ArgumentException">As <see cref="Validate"/>.</exception>
    optim.Optimizer Create(IEnumerable<Parameter> parameters);
}

/// <summary>
/// The settings Adam and AdamW share (Kingma &amp; Ba 2015, "Adam: A Method for Stochastic Optimization"), with
/// PyTorch's defaults: <c>lr</c> 1e-3, <c>betas</c> (0.9, 0.999), <c>eps</c> 1e-8.
/// </summary>
public abstract record AdamFamilyOptions : IOptimizerOptions
{
    /// <summary>Learning rate, &gt; 0.</summary>
    public double Lr { get; init; } = 1e-3;

    /// <summary>The two decay rates of the moment estimates, each in [0, 1).</summary>
    public IReadOnlyList<double> Betas { get; init; } = new[] { 0.9, 0.999 };

    /// <summary>Term added to the denominator for numerical stability, &gt; 0.</summary>
    public double Eps { get; init; } = 1e-8;

    /// <summary>Weight decay coefficient, ≥ 0 (decoupled for AdamW, an L2 penalty added to the gradient for Adam).</summary>
    public double WeightDecay { get; init; }

    /// <inheritdoc/>
    public void Validate()
    {
        OptimizerChecks.Range(nameof(Lr), "lr", Lr, min: 0, exclusive: true);
        if (Betas is not { Count: 2 })
        {
            throw new ArgumentException($"betas has {Betas?.Count ?? 0} values; expected two numbers, e.g. [0.9, 0.98].", nameof(Betas));
        }

        OptimizerChecks.Range(nameof(Betas), "betas", Betas[0], min: 0, max: 1);
        OptimizerChecks.Range(nameof(Betas), "betas", Betas[1], min: 0, max: 1);
        OptimizerChecks.Range(nameof(Eps), "eps", Eps, min: 0, exclusive: true);
        OptimizerChecks.Range(nameof(WeightDecay), "weight_decay", WeightDecay, min: 0);
    }

    /// <inheritdoc/>
    public abstract optim.Optimizer Create(IEnumerable<Parameter> parameters);
}

/// <summary>
/// AdamW: Adam with decoupled weight decay (Loshchilov &amp; Hutter 2019, "Decoupled Weight Decay Regularization";
/// <c>torch.optim.AdamW</c>), <c>weight_decay</c> 0.01 by default as in PyTorch. The default optimizer of
/// <c>composersharp train</c>.
/// </summary>
public sealed record AdamWOptions : AdamFamilyOptions
{
    /// <summary>PyTorch's defaults, <c>weight_decay</c> 0.01.</summary>
    public AdamWOptions() => WeightDecay = 0.01;

    /// <inheritdoc/>
    public override optim.Optimizer Create(IEnumerable<Parameter> parameters)
    {
        Validate();
        return torch.optim.AdamW(parameters, Lr, Betas[0], Betas[1], Eps, WeightDecay);
    }
}

/// <summary>
/// Composer's <c>DecoupledAdamW</c> (composer/optim/decoupled_weight_decay.py; Loshchilov &amp; Hutter 2019): AdamW
/// whose weight decay follows the learning-rate schedule without being scaled by the learning rate,
/// <c>θ ← θ·(1 − weight_decay·lr/initial_lr)</c>, run by the fused flat-buffer optimizer <see cref="FusedAdamW"/>
/// (CPU, Float32 parameters). Composer's defaults: <c>betas</c> (0.9, 0.95), <c>weight_decay</c> 1e-5. Registered
/// as <c>decoupled_adamw</c>; not the default optimizer.
/// </summary>
public sealed record DecoupledAdamWOptions : AdamFamilyOptions
{
    /// <summary>Composer's defaults: <c>lr</c> 1e-3, <c>betas</c> (0.9, 0.95), <c>eps</c> 1e-8, <c>weight_decay</c> 1e-5.</summary>
    public DecoupledAdamWOptions()
    {
        Betas = new[] { 0.9, 0.95 };
        WeightDecay = 1e-5;
    }

    /// <inheritdoc/>
    /// <exception cref="NotSupportedException">At the first step, a parameter that is not a CPU Float32 tensor (see <see cref="FusedAdamW"/>).</exception>
    public override optim.Optimizer Create(IEnumerable<Parameter> parameters)
    {
        Validate();
        return new FusedAdamW(parameters, Lr, Betas[0], Betas[1], Eps, WeightDecay, decoupled: true);
    }
}

/// <summary>Adam (<c>torch.optim.Adam</c>, an L2 penalty added to the gradient), <c>weight_decay</c> 0 by default as in PyTorch.</summary>
public sealed record AdamOptions : AdamFamilyOptions
{
    /// <inheritdoc/>
    public override optim.Optimizer Create(IEnumerable<Parameter> parameters)
    {
        Validate();
        return torch.optim.Adam(parameters, Lr, Betas[0], Betas[1], Eps, WeightDecay);
    }
}

/// <summary>Stochastic gradient descent with optional momentum (<c>torch.optim.SGD</c>); <c>lr</c> 1e-3 by default here (PyTorch requires it).</summary>
public sealed record SgdOptions : IOptimizerOptions
{
    /// <summary>Learning rate, &gt; 0.</summary>
    public double Lr { get; init; } = 1e-3;

    /// <summary>Momentum factor, ≥ 0.</summary>
    public double Momentum { get; init; }

    /// <summary>L2 penalty coefficient, ≥ 0.</summary>
    public double WeightDecay { get; init; }

    /// <inheritdoc/>
    public void Validate()
    {
        OptimizerChecks.Range(nameof(Lr), "lr", Lr, min: 0, exclusive: true);
        OptimizerChecks.Range(nameof(Momentum), "momentum", Momentum, min: 0);
        OptimizerChecks.Range(nameof(WeightDecay), "weight_decay", WeightDecay, min: 0);
    }

    /// <inheritdoc/>
    public optim.Optimizer Create(IEnumerable<Parameter> parameters)
    {
        Validate();
        return torch.optim.SGD(parameters, Lr, Momentum, weight_decay: WeightDecay);
    }
}

/// <summary>The range checks PyTorch's optimizers make, with messages that quote the value and the range.</summary>
internal static class OptimizerChecks
{
    public static void Range(string property, string name, double value, double min, double max = double.PositiveInfinity, bool exclusive = false)
    {
        bool ok = (exclusive ? value > min : value >= min) && value < max;
        if (!ok)
        {
            string range = max == double.PositiveInfinity ? (exclusive ? $"greater than {min}" : $"at least {min}") : $"in [{min}, {max})";
            throw new ArgumentException($"{name} is {value.ToString(CultureInfo.InvariantCulture)}; expected a number {range}.", property);
        }
    }
}

/// <summary>
/// Composer's <c>DecoupledSGDW</c> (composer/optim/decoupled_weight_decay.py), run by the fused flat-buffer
/// <see cref="FusedDecoupledSGDW"/> (CPU, Float32 parameters). Registered as <c>decoupled_sgdw</c> with Composer's
/// keys <c>lr</c>, <c>momentum</c>, <c>dampening</c>, <c>weight_decay</c>, <c>nesterov</c> (defaults 0 / false;
/// Composer requires <c>lr</c>, 1e-3 here).
/// </summary>
public sealed record DecoupledSgdwOptions : IOptimizerOptions
{
    /// <summary>Learning rate, &gt; 0.</summary>
    public double Lr { get; init; } = 1e-3;

    /// <summary>Momentum factor, ≥ 0.</summary>
    public double Momentum { get; init; }

    /// <summary>Dampening of the momentum, in [0, 1].</summary>
    public double Dampening { get; init; }

    /// <summary>Decoupled weight decay, ≥ 0.</summary>
    public double WeightDecay { get; init; }

    /// <summary>Nesterov momentum (needs <c>momentum</c> &gt; 0 and <c>dampening</c> 0).</summary>
    public bool Nesterov { get; init; }

    /// <inheritdoc/>
    public void Validate()
    {
        OptimizerChecks.Range(nameof(Lr), "lr", Lr, min: 0, exclusive: true);
        OptimizerChecks.Range(nameof(Momentum), "momentum", Momentum, min: 0);
        OptimizerChecks.Range(nameof(Dampening), "dampening", Dampening, min: 0, max: 1.0000001);
        OptimizerChecks.Range(nameof(WeightDecay), "weight_decay", WeightDecay, min: 0);
        if (Nesterov && (Momentum <= 0 || Dampening != 0))
        {
            throw new ArgumentException($"nesterov is true with momentum {Momentum.ToString(CultureInfo.InvariantCulture)} and dampening {Dampening.ToString(CultureInfo.InvariantCulture)}; expected momentum > 0 and dampening 0.", nameof(Nesterov));
        }
    }

    /// <inheritdoc/>
    /// <exception cref="NotSupportedException">At the first step, a parameter that is not a CPU Float32 tensor.</exception>
    public optim.Optimizer Create(IEnumerable<Parameter> parameters)
    {
        Validate();
        return new FusedDecoupledSGDW(parameters, Lr, Momentum, Dampening, WeightDecay, Nesterov);
    }
}

/// <summary>
/// llm-foundry's <c>DecoupledLionW</c> (llmfoundry/optim/lion.py; Chen et al. 2023), run by the fused flat-buffer
/// <see cref="FusedDecoupledLionW"/> (CPU, Float32 parameters). Registered as <c>decoupled_lionw</c> with
/// llm-foundry's keys and defaults: <c>lr</c> 1e-4, <c>betas</c> [0.9, 0.99], <c>weight_decay</c> 0.
/// </summary>
public sealed record DecoupledLionWOptions : IOptimizerOptions
{
    /// <summary>Learning rate, &gt; 0.</summary>
    public double Lr { get; init; } = 1e-4;

    /// <summary>β₁ (update interpolation) and β₂ (momentum decay), each in [0, 1].</summary>
    public IReadOnlyList<double> Betas { get; init; } = new[] { 0.9, 0.99 };

    /// <summary>Decoupled weight decay, ≥ 0.</summary>
    public double WeightDecay { get; init; }

    /// <inheritdoc/>
    public void Validate()
    {
        OptimizerChecks.Range(nameof(Lr), "lr", Lr, min: 0, exclusive: true);
        if (Betas is not { Count: 2 })
        {
            throw new ArgumentException($"betas has {Betas?.Count ?? 0} values; expected two numbers, e.g. [0.9, 0.99].", nameof(Betas));
        }

        OptimizerChecks.Range(nameof(Betas), "betas", Betas[0], min: 0, max: 1.0000001);
        OptimizerChecks.Range(nameof(Betas), "betas", Betas[1], min: 0, max: 1.0000001);
        OptimizerChecks.Range(nameof(WeightDecay), "weight_decay", WeightDecay, min: 0);
    }

    /// <inheritdoc/>
    /// <exception cref="NotSupportedException">At the first step, a parameter that is not a CPU Float32 tensor.</exception>
    public optim.Optimizer Create(IEnumerable<Parameter> parameters)
    {
        Validate();
        return new FusedDecoupledLionW(parameters, Lr, Betas[0], Betas[1], WeightDecay);
    }
}
