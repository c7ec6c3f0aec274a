using System.Globalization;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Training.Optim;
using Microsoft.Extensions.DependencyInjection;
using TorchSharp;

namespace ComposerSharp.Cli;

/// <summary>
/// The optimizers and schedulers that ship with ComposerSharp, registered by name in the same catalog as every other
/// component, so a plugin adds its own with one <c>AddOptimizer</c> or <c>AddScheduler</c> call.
/// </summary>
public static class BuiltinOptimizers
{
    /// <summary>
    /// Registers the optimizers <c>adamw</c> (decoupled weight decay, Loshchilov &amp; Hutter 2019; the default),
    /// <c>adam</c> and <c>sgd</c>, with <c>lr</c>, <c>betas</c>, <c>eps</c>, <c>weight_decay</c> and (sgd)
    /// <c>momentum</c>, and Composer's schedulers by their Composer names: <c>constant</c>, <c>step</c>,
    /// <c>multistep</c>, <c>linear_decay_with_warmup</c>, <c>cosine_decay_with_warmup</c>.
    /// </summary>
    public static IServiceCollection AddComposerSharpOptimizers(this IServiceCollection services)
    {
        services.AddOptimizer("adamw", (s, _) =>
        {
            AdamSettings a = Adam(s, defaultWeightDecay: 0.01);
            return p => torch.optim.AdamW(p, a.Lr, a.Beta1, a.Beta2, a.Eps, a.WeightDecay);
        });
        services.AddOptimizer("adam", (s, _) =>
        {
            AdamSettings a = Adam(s, defaultWeightDecay: 0.0);
            return p => torch.optim.Adam(p, a.Lr, a.Beta1, a.Beta2, a.Eps, a.WeightDecay);
        });
        services.AddOptimizer("sgd", (s, _) =>
        {
            double lr = s.GetDouble("lr") ?? 1e-3;
            double weightDecay = s.GetDouble("weight_decay") ?? 0.0;
            double momentum = s.GetDouble("momentum") ?? 0.0;
            RequireRange(s, "lr", lr, min: 0, exclusive: true);
            RequireRange(s, "weight_decay", weightDecay, min: 0);
            s.RequireKnownKeys(new[] { "name", "lr", "momentum", "weight_decay" }, "option");
            RequireRange(s, "momentum", momentum, min: 0);
            return p => torch.optim.SGD(p, lr, momentum, weight_decay: weightDecay);
        });

        services.AddScheduler<ConstantScheduler>("constant");
        services.AddScheduler<StepScheduler>("step");
        services.AddScheduler<MultiStepScheduler>("multistep");
        services.AddScheduler<LinearWithWarmupScheduler>("linear_decay_with_warmup");
        services.AddScheduler<CosineAnnealingWithWarmupScheduler>("cosine_decay_with_warmup");
        return services;
    }

    private sealed record AdamSettings(double Lr, double Beta1, double Beta2, double Eps, double WeightDecay);

    private static AdamSettings Adam(ConfigSection s, double defaultWeightDecay)
    {
        double lr = s.GetDouble("lr") ?? 1e-3;
        double weightDecay = s.GetDouble("weight_decay") ?? defaultWeightDecay;
        double eps = s.GetDouble("eps") ?? 1e-8;
        (double beta1, double beta2) = (0.9, 0.999);
        if (s.Get("betas") is { } betas)
        {
            if (betas is not List<object?> { Count: 2 } pair ||
                !double.TryParse(pair[0] as string, NumberStyles.Float, CultureInfo.InvariantCulture, out beta1) ||
                !double.TryParse(pair[1] as string, NumberStyles.Float, CultureInfo.InvariantCulture, out beta2))
            {
                throw new ConfigException($"'{s.PathOf("betas")}' must be a list of two numbers, e.g. [0.9, 0.98].");
            }
        }

        RequireRange(s, "lr", lr, min: 0, exclusive: true);
        RequireRange(s, "weight_decay", weightDecay, min: 0);
        RequireRange(s, "eps", eps, min: 0, exclusive: true);
        RequireRange(s, "betas", beta1, min: 0, max: 1);
        RequireRange(s, "betas", beta2, min: 0, max: 1);
        s.RequireKnownKeys(new[] { "name", "lr", "betas", "eps", "weight_decay" }, "option");
        return new AdamSettings(lr, beta1, beta2, eps, weightDecay);
    }

    private static void RequireRange(ConfigSection s, string key, double value, double min, double max = double.PositiveInfinity, bool exclusive = false)
    {
        bool ok = (exclusive ? value > min : value >= min) && value < max;
        if (!ok)
        {
            string range = max == double.PositiveInfinity ? (exclusive ? $"greater than {min}" : $"at least {min}") : $"in [{min}, {max})";
            throw new ConfigException($"'{s.PathOf(key)}' is {value.ToString(CultureInfo.InvariantCulture)}; expected a number {range}.");
        }
    }
}
