using ComposerSharp.Models;

namespace ComposerSharp.Cli.Configuration;

/// <summary>
/// The <c>parallelism: {fsdp: {…}}</c> section with Composer's key names (composer/utils/parallelism.py,
/// <c>FSDPConfig</c>), validated once. Today only what is implemented is accepted: activation checkpointing of every
/// transformer block, with <c>sharding_strategy: NO_SHARD</c> (today's data parallelism); every other Composer key
/// or value is refused with what is supported, never silently ignored.
/// </summary>
/// <param name="ActivationCheckpointing">Composer's <c>activation_checkpointing</c>: each transformer block's activations are recomputed in backward (<see cref="ComposerSharp.Core.ActivationCheckpoint"/>).</param>
public sealed record ParallelismConfig(bool ActivationCheckpointing)
{
    /// <summary>The top-level key.</summary>
    public const string Key = "parallelism";

    /// <summary>Composer's <c>FSDPConfig</c> keys that are not implemented here (refused with a message that says so).</summary>
    private static readonly string[] ComposerOnlyKeys =
    {
        "mixed_precision", "backward_prefetch", "limit_all_gathers", "sync_module_states", "forward_prefetch",
        "cpu_offload", "use_orig_params", "auto_wrap", "ignored_modules", "keep_low_precision_grads",
        "load_monolith_rank0_only", "load_planner", "save_planner", "sharded_ckpt_prefix_dir", "process_group",
        "data_parallel_shard_degree", "data_parallel_replicate_degree", "device_mesh", "verbose", "sharded_ckpt_prefix_dir",
    };

    private static readonly string[] SupportedKeys =
    {
        "sharding_strategy", "activation_checkpointing", "activation_checkpointing_reentrant", "activation_cpu_offload", "state_dict_type",
    };

    /// <summary>
    /// Reads and checks <c>parallelism</c> of <paramref name="config"/>; null when the key is absent.
    /// </summary>
    /// <param name="config">The whole job configuration.</param>
    /// <returns>The settings, or null without a <c>parallelism</c> key.</returns>
    /// <exception cref="ConfigException">
    /// A key other than <c>fsdp</c> under <c>parallelism</c>; an unknown key under <c>fsdp</c>; a Composer key that
    /// is not implemented; <c>sharding_strategy</c> other than <c>NO_SHARD</c> (or absent: Composer's default,
    /// FULL_SHARD, is not implemented); <c>activation_checkpointing_reentrant: false</c>;
    /// <c>activation_cpu_offload: true</c>; <c>state_dict_type</c> other than <c>full</c>.
    /// </exception>
    public static ParallelismConfig? Read(ConfigSection config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (!config.ContainsKey(Key))
        {
            return null;
        }

        ConfigSection parallelism = config.Section(Key);
        if (parallelism.Keys.FirstOrDefault(k => k == "tp") is { } tp)
        {
            throw new ConfigException("'parallelism.tp' (tensor parallelism) is not implemented; supported: parallelism.fsdp.");
        }

        parallelism.RequireKnownKeys(new[] { "fsdp" });
        ConfigSection fsdp = parallelism.Section("fsdp");
        foreach (string key in fsdp.Keys)
        {
            if (ComposerOnlyKeys.Contains(key))
            {
                throw new ConfigException($"'parallelism.fsdp.{key}' is a Composer FSDP key that is not implemented yet; supported: {string.Join(", ", SupportedKeys)} (see docs/distributed.md).");
            }
        }

        fsdp.RequireKnownKeys(SupportedKeys);
        string strategy = fsdp.GetString("sharding_strategy") ?? "FULL_SHARD";
        if (!string.Equals(strategy, "NO_SHARD", StringComparison.OrdinalIgnoreCase))
        {
            string given = fsdp.ContainsKey("sharding_strategy") ? $"is '{strategy}'" : "is not set (Composer's default is FULL_SHARD)";
            throw new ConfigException(
                $"'parallelism.fsdp.sharding_strategy' {given}: FULL_SHARD, SHARD_GRAD_OP and HYBRID_SHARD are not implemented yet; supported: NO_SHARD (today's data parallelism, the same results as without the fsdp section).");
        }

        if (fsdp.GetBool("activation_checkpointing_reentrant") == false)
        {
            throw new ConfigException("'parallelism.fsdp.activation_checkpointing_reentrant' is false: only the reentrant form (true, Composer's default) is implemented.");
        }

        if (fsdp.GetBool("activation_cpu_offload") == true)
        {
            throw new ConfigException("'parallelism.fsdp.activation_cpu_offload' is true: offloading activations to the CPU is not implemented (and on CPU training there is nowhere to offload to); supported: false.");
        }

        if (fsdp.GetString("state_dict_type") is { } type && !string.Equals(type, "full", StringComparison.OrdinalIgnoreCase))
        {
            throw new ConfigException($"'parallelism.fsdp.state_dict_type' is '{type}': sharded checkpoints are not implemented yet; supported: full (rank 0 writes today's format).");
        }

        return new ParallelismConfig(fsdp.GetBool("activation_checkpointing") ?? false);
    }

    /// <summary>Applies the settings to <paramref name="model"/> (before the Trainer's module surgery, which keeps the blocks' flags).</summary>
    /// <param name="model">The built model.</param>
    /// <exception cref="ConfigException"><c>activation_checkpointing: true</c> and the model has no transformer blocks to wrap.</exception>
    public void ApplyTo(ComposerModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!ActivationCheckpointing)
        {
            return;
        }

        if (model is not TransformerModel transformer)
        {
            throw new ConfigException($"'parallelism.fsdp.activation_checkpointing' is true, but the model ({model.GetType().Name}) has no transformer blocks, the units that can be checkpointed; supported: the transformer models (bert_mlm, bert_classification, gpt).");
        }

        transformer.Backbone.SetActivationCheckpointing(true);
    }
}
