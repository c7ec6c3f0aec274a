using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training.Optim;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Cli;

/// <summary>A plugin's scheduler: the learning rate halves at every batch.</summary>
public sealed class HalvingScheduler : IScheduler
{
    public HalvingScheduler(double floor = 0.0) => Floor = floor;

    public double Floor { get; }

    public double Factor(State state) => Math.Max(Floor, Math.Pow(0.5, state.Timestamp.Batch));
}

/// <summary>An optimizer and a scheduler added by a plugin with one registration each, then chosen by name in YAML.</summary>
[TestFixture]
public class PluginOptimizerTests
{
    [Test]
    [Category(TestCategories.Slow)]
    public void APluginOptimizerAndSchedulerAreUsedFromYaml()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-optim-" + Guid.NewGuid().ToString("N"));
        string yaml = $"""
            run_folder: {folder}
            max_duration: 3ba
            progress_bar: false
            model:
              name: bert_mlm
            train_loader:
              batch_size: 8
              dataset:
                name: synthetic_mlm
                num_samples: 32
                sequence_length: 16
            optimizer:
              name: plain_sgd
              lr: 0.4
            scheduler:
              name: halving
              floor: 0.2
            callbacks:
              lr_monitor: {"{}"}
            """;
        try
        {
            ServiceCollection services = CliApp.CreateServices(Array.Empty<string>());
            services.AddOptimizer("plain_sgd", (s, _) =>
            {
                double lr = s.GetDouble("lr") ?? 0.1;
                return p => torch.optim.SGD(p, lr);
            });
            services.AddScheduler<HalvingScheduler>("halving");
            using ServiceProvider provider = services.BuildServiceProvider();
            JobResult result = new TrainJob(ConfigSection.Parse(yaml), provider).Train();

            // At the last BatchEnd the timestamp is at batch 3 and the schedule has set the next rate:
            // lr 0.4 from the optimizer's key, times max(floor 0.2 from the scheduler's key, 0.5³).
            Assert.That(result.FinalMetrics["lr-SGD/group0"], Is.EqualTo(0.4 * 0.2).Within(1e-12));
        }
        finally
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }

    [Test]
    public void DecoupledAdamWBindsItsYamlKeysWithComposersDefaults()
    {
        using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var catalog = new ComponentCatalog(provider.GetServices<ComponentRegistration>());
        var context = new ComponentContext(provider, "", 0);
        using var p = new TorchSharp.Modules.Parameter(torch.zeros(3));
        var factory = catalog.Create<Func<IEnumerable<TorchSharp.Modules.Parameter>, torch.optim.Optimizer>>(
            ComponentKind.Optimizer, "decoupled_adamw", ConfigSection.Parse("lr: 0.002\neps: 1.0e-6\n"), context);
        using var fused = (FusedAdamW)factory(new[] { p });
        var options = (FusedAdamW.Options)fused.state_dict().Options.Single();
        Assert.That(fused.Decoupled, Is.True);
        Assert.That((options.LearningRate, options.eps, options.beta1, options.beta2, options.weight_decay), Is.EqualTo(((double?)0.002, (double?)1e-6, (double?)0.9, (double?)0.95, (double?)1e-5)));
        Assert.Throws<ConfigException>(() => catalog.Create<Func<IEnumerable<TorchSharp.Modules.Parameter>, torch.optim.Optimizer>>(
            ComponentKind.Optimizer, "decoupled_adamw", ConfigSection.Parse("betas: [0.9, 1.5]\n"), context));
    }

    [Test]
    public void DecoupledSgdwAndLionWBindTheirYamlKeys()
    {
        using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var catalog = new ComponentCatalog(provider.GetServices<ComponentRegistration>());
        var context = new ComponentContext(provider, "", 0);
        using var p = new TorchSharp.Modules.Parameter(torch.zeros(3));
        var sgdw = catalog.Create<Func<IEnumerable<TorchSharp.Modules.Parameter>, torch.optim.Optimizer>>(
            ComponentKind.Optimizer, "decoupled_sgdw", ConfigSection.Parse("lr: 0.1\nmomentum: 0.9\nweight_decay: 1.0e-4\nnesterov: true\n"), context);
        using var s = (FusedDecoupledSGDW)sgdw(new[] { p });
        var so = (FusedDecoupledSGDW.Options)s.state_dict().Options.Single();
        Assert.That((so.LearningRate, so.momentum, so.dampening, so.weight_decay, so.nesterov), Is.EqualTo(((double?)0.1, (double?)0.9, (double?)0.0, (double?)1e-4, (bool?)true)));
        var lion = catalog.Create<Func<IEnumerable<TorchSharp.Modules.Parameter>, torch.optim.Optimizer>>(
            ComponentKind.Optimizer, "decoupled_lionw", ConfigSection.Parse("weight_decay: 1.0e-5\n"), context);
        using var l = (FusedDecoupledLionW)lion(new[] { p });
        var lo = (FusedDecoupledLionW.Options)l.state_dict().Options.Single();
        Assert.That((lo.LearningRate, lo.beta1, lo.beta2, lo.weight_decay), Is.EqualTo(((double?)1e-4, (double?)0.9, (double?)0.99, (double?)1e-5)));
        Assert.Throws<ConfigException>(() => catalog.Create<Func<IEnumerable<TorchSharp.Modules.Parameter>, torch.optim.Optimizer>>(
            ComponentKind.Optimizer, "decoupled_sgdw", ConfigSection.Parse("nesterov: true\n"), context));
    }

    [Test]
    public void AnUnknownOptimizerOrSchedulerListsTheRegisteredOnes()
    {
        using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var catalog = new ComponentCatalog(provider.GetServices<ComponentRegistration>());
        Assert.That(catalog.Names(ComponentKind.Optimizer), Is.EqualTo(new[] { "adam", "adamw", "decoupled_adamw", "decoupled_lionw", "decoupled_sgdw", "sgd" }));
        Assert.That(catalog.Names(ComponentKind.Scheduler), Is.EquivalentTo(new[] { "constant", "step", "multistep", "linear_decay_with_warmup", "cosine_decay_with_warmup", "linear_decay", "exponential", "polynomial", "polynomial_decay_with_warmup", "constant_with_warmup", "multistep_with_warmup", "cosine_warmrestart" }));
        var ex = Assert.Throws<ConfigException>(() => catalog.Create<IScheduler>(ComponentKind.Scheduler, "warmup_stable_decay", new ConfigSection("scheduler"), new ComponentContext(provider, "", 0)));
        Assert.That(ex!.Message, Does.Contain("warmup_stable_decay").And.Contain("cosine_decay_with_warmup"));
    }
}
