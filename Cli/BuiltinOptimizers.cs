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
    /// Registers the optimizers <c>adamw</c> (<see cref="AdamWOptions"/>; the default), <c>adam</c>
    /// (<see cref="AdamOptions"/>), <c>decoupled_adamw</c> (<see cref="DecoupledAdamWOptions"/>, Composer's DecoupledAdamW on the fused <see cref="FusedAdamW"/>) <c>sgd</c> (<see cref="SgdOptions"/>), <c>decoupled_sgdw</c> (<see cref="DecoupledSgdwOptions"/>, Composer's DecoupledSGDW) and <c>decoupled_lionw</c> (<see cref="DecoupledLionWOptions"/>, llm-foundry's DecoupledLionW), both on fused flat-buffer kernels, whose keys are their records' properties, and Composer's schedulers by their Composer names: <c>constant</c>, <c>step</c>,
    /// <c>multistep</c>, <c>linear_decay_with_warmup</c>, <c>cosine_decay_with_warmup</c>, <c>linear_decay</c>, <c>exponential</c>,
    /// <c>polynomial</c>, <c>polynomial_decay_with_warmup</c>, <c>constant_with_warmup</c>, <c>multistep_with_warmup</c>, <c>cosine_warmrestart</c>.
    /// </summary>
    public static IServiceCollection AddComposerSharpOptimizers(this IServiceCollection services)
    {
        services.AddOptimizer<AdamWOptions>("adamw");
        services.AddOptimizer<AdamOptions>("adam");
        services.AddOptimizer<DecoupledAdamWOptions>("decoupled_adamw");
        services.AddOptimizer<SgdOptions>("sgd");
        services.AddOptimizer<DecoupledSgdwOptions>("decoupled_sgdw");
        services.AddOptimizer<DecoupledLionWOptions>("decoupled_lionw");

        services.AddScheduler<ConstantScheduler>("constant");
        services.AddScheduler<StepScheduler>("step");
        services.AddScheduler<MultiStepScheduler>("multistep");
        services.AddScheduler<LinearWithWarmupScheduler>("linear_decay_with_warmup");
        services.AddScheduler<CosineAnnealingWithWarmupScheduler>("cosine_decay_with_warmup");
        services.AddScheduler<LinearScheduler>("linear_decay");
        services.AddScheduler<ExponentialScheduler>("exponential");
        services.AddScheduler<PolynomialScheduler>("polynomial");
        services.AddScheduler<PolynomialWithWarmupScheduler>("polynomial_decay_with_warmup");
        services.AddScheduler<ConstantWithWarmupScheduler>("constant_with_warmup");
        services.AddScheduler<MultiStepWithWarmupScheduler>("multistep_with_warmup");
        services.AddScheduler<CosineAnnealingWarmRestartsScheduler>("cosine_warmrestart");
        return services;
    }
}
