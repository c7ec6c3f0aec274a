using ComposerSharp.Algorithms;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Data.Streaming;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Models.Decoders;
using ComposerSharp.Models.HuggingFace;
using ComposerSharp.Onnx;
using ComposerSharp.Training.Callbacks;
using ComposerSharp.Training.Loggers;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Cli;

/// <summary>How a dataloader over a <see cref="DataSource"/> is configured (the keys of <c>train_loader</c>/<c>eval_loader</c> besides <c>dataset</c>).</summary>
/// <param name="BatchSize">Samples per batch.</param>
/// <param name="Shuffle">Shuffle each epoch.</param>
/// <param name="DropLast">Drop an incomplete last batch.</param>
/// <param name="Seed">Seed of the shuffle and of any random collation (MLM masking).</param>
public sealed record LoaderSettings(int BatchSize, bool Shuffle, bool DropLast, long Seed)
{
    /// <summary>Background reader threads (<c>num_workers</c>, PyTorch's name; 0 reads on the training thread). See <see cref="DataLoader{TSample}.NumWorkers"/>.</summary>
    public int NumWorkers { get; init; }

    /// <summary>Batches each worker reads ahead (<c>prefetch_factor</c>, PyTorch's name, default 2).</summary>
    public int PrefetchFactor { get; init; } = 2;

    /// <summary>MosaicML Streaming's <c>shuffle_algo</c> (<c>naive</c>, <c>py1s</c>), or null for the classic order.</summary>
    public string? ShuffleAlgo { get; init; }

    /// <summary>Streaming's <c>shuffle_block_size</c> (samples per shuffle span of a non-sharded dataset), or null for one sample per span.</summary>
    public long? ShuffleBlockSize { get; init; }

    /// <summary>Streaming's <c>num_canonical_nodes</c> (default 1).</summary>
    public int NumCanonicalNodes { get; init; } = 1;
}

/// <summary>A built dataset, ready to be batched: what a registered dataset factory returns.</summary>
/// <param name="Vocabulary">The token id layout of the samples (models size their embeddings from it).</param>
/// <param name="Samples">Number of samples.</param>
/// <param name="CreateLoader">Creates a dataloader over the samples.</param>
/// <param name="Labels">Class names for classification data, else null.</param>
public sealed record DataSource(TokenVocabulary Vocabulary, long Samples, Func<LoaderSettings, IDataLoader> CreateLoader, IReadOnlyList<string>? Labels = null)
{
    /// <summary>
    /// How the dataset turned text into ids (maximum length, cls prefix), recorded in the checkpoint's model
    /// description so that <c>predict</c> reads text the same way; null for data that is not read from text.
    /// </summary>
    public TextInputDescription? Input { get; init; }
}

/// <summary>The models, datasets, algorithms, optimizers, schedulers, callbacks and loggers that ship with ComposerSharp, registered by name.</summary>
public static class BuiltinComponents
{
    /// <summary>Names of the built-in models.</summary>
    public static readonly IReadOnlyList<string> ModelNames = new[] { "bert_mlm", "bert_classification", "gpt", "llama" };

    /// <summary>Registers every built-in component, and the GPT-2 tokenizer as a singleton <see cref="ITextTokenizer"/>.</summary>
    public static IServiceCollection AddComposerSharpComponents(this IServiceCollection services)
    {
        services.AddSingleton<ITextTokenizer>(_ => new Gpt2Tokenizer());

        services.AddModel("bert_mlm", (s, c) => Pretrained(s, c, HuggingFaceArchitecture.BertForMaskedLM) ?? new BertForMaskedLM(ModelConfig(s, c, "bert-tiny")));
        services.AddModel("gpt", (s, c) => Pretrained(s, c, HuggingFaceArchitecture.Gpt2LMHeadModel) ?? new GptForCausalLM(ModelConfig(s, c, "gpt-tiny")));
        services.AddModel("llama", (s, c) => new LlamaForCausalLM(LlamaModelConfig(s, c)));
        services.AddModel("bert_classification", (s, c) =>
        {
            if (Pretrained(s, c, HuggingFaceArchitecture.BertForSequenceClassification) is { } pretrained)
            {
                return pretrained;
            }

            TransformerConfig config = ModelConfig(s, c, "bert-tiny", ClassificationKeys);
            var defaults = new SequenceClassificationOptions { NumLabels = c.Labels?.Count ?? 2 };
            var options = OptionsBinder.Bind(s.Only(ClassificationKeys), defaults);
            return new BertForSequenceClassification(config, options);
        });

        services.AddDataset("synthetic_mlm", (s, c) =>
        {
            var (data, mlm) = BindPair<SyntheticTokenOptions, MlmCollatorOptions>(s, new SyntheticTokenOptions { Seed = c.Seed }, new MlmCollatorOptions { Seed = c.Seed });
            var dataset = new SyntheticTokenDataset(data);
            var collator = new MlmCollator(dataset.Vocabulary, mlm);
            return Source(dataset.Vocabulary, dataset, collator);
        });
        services.AddDataset("synthetic_classification", (s, c) =>
        {
            var options = OptionsBinder.Bind(s, new SyntheticClassificationOptions { Seed = c.Seed }, "pad_to_length");
            var dataset = new SyntheticClassificationDataset(options);
            var collator = new ClassificationCollator(dataset.Vocabulary, (int?)s.GetLong("pad_to_length"));
            IReadOnlyList<string> labels = Enumerable.Range(0, options.NumClasses).Select(i => $"class_{i}").ToList();
            return Source(dataset.Vocabulary, dataset, collator, labels);
        });
        services.AddDataset("text_mlm", (s, c) =>
        {
            var (corpus, mlm) = BindPair<TextCorpusOptions, MlmCollatorOptions>(s, new TextCorpusOptions { Path = RequirePath(s) }, new MlmCollatorOptions { Seed = c.Seed });
            TextBlockDataset dataset = LoadText(c, (tokenizer, logger) => TextBlockDataset.Load(corpus, tokenizer, logger));
            var collator = new MlmCollator(dataset.Vocabulary, mlm);
            return Source(dataset.Vocabulary, dataset, collator);
        });
        services.AddDataset("text_lm", (s, c) =>
        {
            var corpus = OptionsBinder.Bind(s, new TextCorpusOptions { Path = RequirePath(s) });
            TextBlockDataset dataset = LoadText(c, (tokenizer, logger) => TextBlockDataset.Load(corpus, tokenizer, logger));
            var collator = new CausalLmCollator(dataset.Vocabulary);
            return Source(dataset.Vocabulary, dataset, collator);
        });
        services.AddDataset("streaming_text", (s, c) =>
        {
            // llm-foundry's text dataset over MDS shards (composersharp data prepare): local, or remote copied into local;
            // with mlm_probability (Mosaic BERT's key) the batches are masked for BERT, else shifted for a causal LM.
            string[] mlmKeys = OptionKeys<MlmCollatorOptions>().Where(k => k != "seed").ToArray();
            s.RequireKnownKeys(new[] { "local", "remote", "streams", "cache_limit", "predownload", "max_seq_len", "token_dtype" }.Concat(mlmKeys), "option");
            var streams = new List<MdsStream>();
            if (s.GetString("local") is { } local)
            {
                streams.Add(new MdsStream { Local = local, Remote = s.GetString("remote") });
            }

            foreach ((string name, ConfigSection stream) in s.GetNamedList("streams"))
            {
                stream.RequireKnownKeys(new[] { "local", "remote" }, "option");
                streams.Add(new MdsStream
                {
                    Local = stream.GetString("local") ?? throw new ConfigException($"'{stream.PathOf("local")}' is required: the stream {name}'s local folder."),
                    Remote = stream.GetString("remote"),
                });
            }

            if (streams.Count == 0)
            {
                throw new ConfigException($"'{s.PathOf("local")}' (or '{s.PathOf("streams")}') is required: an MDS dataset folder written by composersharp data prepare.");
            }

            var tokenizer = c.Tokenizer ?? c.Services.GetRequiredService<ITextTokenizer>();
            foreach (MdsStream stream in streams)
            {
                // data prepare records the tokenizer's vocabulary size: a dataset made with another tokenizer is refused.
                string metadata = Path.Combine(stream.Remote ?? stream.Local, MdsPrepare.MetadataFileName);
                if (File.Exists(metadata) && System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(metadata))?["tokenizer_vocab_size"]?.GetValue<int>() is { } size && size != tokenizer.Vocabulary.Size)
                {
                    throw new ConfigException($"'{metadata}' was prepared with a tokenizer of {size} tokens; this run's tokenizer has {tokenizer.Vocabulary.Size}. Prepare the data with the run's tokenizer (--tokenizer), or set the run's tokenizer to the one the data was prepared with.");
                }
            }

            var options = new StreamingTextOptions
            {
                Streams = streams,
                CacheLimit = s.GetString("cache_limit") is { } limit ? DataCommands.ParseBytes(limit, s.PathOf("cache_limit")) : null,
                Predownload = (int)(s.GetLong("predownload") ?? 64),
                MaxSeqLen = (int?)s.GetLong("max_seq_len"),
                BytesDtype = s.GetString("token_dtype") ?? "int64",
                VocabSize = tokenizer.Vocabulary.Size,
                OpenRemote = ComposerSharp.Storage.RemoteStores.Open,
            };
            StreamingTextDataset dataset;
            try
            {
                dataset = new StreamingTextDataset(options);
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException or NotSupportedException or ArgumentException)
            {
                throw new ConfigException($"'{s.PathOf(s.ContainsKey("local") ? "local" : "streams")}': {ex.Message}", ex);
            }

            if (s.Keys.Any(mlmKeys.Contains))
            {
                var mlm = OptionsBinder.Bind(s.Only(mlmKeys), new MlmCollatorOptions { Seed = c.Seed });
                return Source(tokenizer.Vocabulary, dataset, new MlmCollator(tokenizer.Vocabulary, mlm));
            }

            return Source(tokenizer.Vocabulary, dataset, new CausalLmCollator(tokenizer.Vocabulary));
        });
        services.AddDataset("jsonl_classification", (s, c) =>
        {
            var options = OptionsBinder.Bind(s, new JsonlClassificationOptions { Path = RequirePath(s), Labels = c.Labels }, "pad_to_length");
            JsonlClassificationDataset dataset = LoadText(c, (tokenizer, logger) => JsonlClassificationDataset.Load(options, tokenizer, logger));
            var collator = new ClassificationCollator(dataset.Vocabulary, (int?)s.GetLong("pad_to_length"));
            return Source(dataset.Vocabulary, dataset, collator, dataset.Labels) with
            {
                Input = new TextInputDescription { MaxLength = options.MaxLength, PrependCls = options.PrependCls },
            };
        });

        foreach (Type algorithm in AlgorithmCatalog.Types)
        {
            services.AddAlgorithm(algorithm);
        }

        services.AddComposerSharpOptimizers();

        services.AddCallback<SpeedMonitor>("speed_monitor");
        services.AddCallback<LRMonitor>("lr_monitor");
        services.AddCallback<MemoryMonitor>("memory_monitor");
        services.AddCallback<RuntimeEstimator>("runtime_estimator");
        services.AddCallback<EarlyStopper>("early_stopper");
        services.AddCallback<ThresholdStopper>("threshold_stopper");

        services.AddLoggerDestination("console", (s, c) =>
        {
            s.RequireKnownKeys(new[] { "log_interval" }, "option");
            ILoggerFactory factory = c.Services.GetRequiredService<ILoggerFactory>();
            return new ConsoleLogger(factory.CreateLogger<ConsoleLogger>(), s.GetTime("log_interval"));
        });
        services.AddLoggerDestination("progress_bar", (s, _) =>
        {
            s.RequireKnownKeys(Array.Empty<string>(), "option");
            return new ProgressBarLogger();
        });
        return services;
    }

    private static readonly string[] ClassificationKeys = { "num_labels", "pooling", "f1_positive_class" };

    /// <summary>
    /// <c>model: {pretrained: FOLDER}</c>: the model read from a Hugging Face folder (config.json + model.safetensors or
    /// pytorch_model.bin), e.g. a published BERT or GPT-2 to fine-tune; other keys of the section (dropout, …) change
    /// the folder's configuration, and a classifier's head starts fresh when the folder has none. Null without the key.
    /// </summary>
    private static TransformerModel? Pretrained(ConfigSection s, ComponentContext c, HuggingFaceArchitecture architecture)
    {
        if (s.GetString("pretrained") is not { } folder)
        {
            return null;
        }

        if (s.ContainsKey("preset"))
        {
            throw new ConfigException($"'{s.PathOf("preset")}' and '{s.PathOf("pretrained")}' exclude each other: the pretrained folder's config.json gives the sizes.");
        }

        if (File.Exists(folder) && folder.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase))
        {
            // An ONNX-only BERT (e.g. a sentence-transformers export): its weights recovered from the graph into a
            // BertModel folder, which then loads as any Hugging Face folder (a classifier's head starts fresh).
            string imported = Path.Combine(Path.GetTempPath(), $"composersharp-onnx-import-{Environment.ProcessId}-{Path.GetFileNameWithoutExtension(folder)}");
            try
            {
                OnnxBertImport.ToHuggingFaceFolder(folder, imported);
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException)
            {
                throw new ConfigException($"'{s.PathOf("pretrained")}' is '{folder}': {ex.Message}", ex);
            }

            folder = imported;
        }

        ConfigSection head = s.Only(ClassificationKeys);
        ConfigSection rest = s.Without(ClassificationKeys.Append("pretrained").ToArray());
        var options = new PretrainedOptions
        {
            Architecture = architecture,
            Configure = config => rest.Count == 0 ? config : OptionsBinder.Bind(rest, config),
            Classification = architecture == HuggingFaceArchitecture.BertForSequenceClassification
                ? OptionsBinder.Bind(head, FolderHead(folder, c))
                : null,
        };
        ILogger? logger = c.Services.GetService<ILoggerFactory>()?.CreateLogger("ComposerSharp.Models.HuggingFace");
        try
        {
            return HuggingFaceFormat.FromPretrained(folder, options, logger).Model;
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or NotSupportedException)
        {
            throw new ConfigException($"'{s.PathOf("pretrained")}' is '{folder}': {ex.Message}", ex);
        }
    }

    /// <summary>The classifier head a pretrained folder implies: the data's label count (else the folder's, else 2) and the folder's classifier_pooling.</summary>
    private static SequenceClassificationOptions FolderHead(string folder, ComponentContext c)
    {
        HuggingFaceModelConfig source;
        try
        {
            source = HuggingFaceConfig.Read(folder);
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException)
        {
            return new SequenceClassificationOptions { NumLabels = c.Labels?.Count ?? 2 }; // FromPretrained reports the folder's problem
        }

        return new SequenceClassificationOptions { NumLabels = c.Labels?.Count ?? source.Labels?.Count ?? 2, Pooling = source.IsClassifier ? source.Pooling : SequencePooling.ClsToken };
    }

    private static TransformerConfig ModelConfig(ConfigSection s, ComponentContext c, string defaultPreset, params string[] extraKeys)
    {
        string preset = s.GetString("preset") ?? defaultPreset;
        TransformerConfig baseConfig;
        try
        {
            baseConfig = TransformerConfig.Preset(preset);
        }
        catch (ArgumentException ex)
        {
            throw new ConfigException($"'{s.PathOf("preset")}' is '{preset}': {ConfigException.LibraryMessage(ex)}", ex);
        }

        if (!s.ContainsKey("vocab_size") && c.Vocabulary is { } vocabulary)
        {
            // Round up to a multiple of 64 (as GPT-2's 50304), which keeps matmul shapes friendly.
            baseConfig = baseConfig with { VocabSize = (vocabulary.Size + 63) / 64 * 64 };
        }

        TransformerConfig config = OptionsBinder.Bind(s, baseConfig, extraKeys.Append("preset").ToArray());
        try
        {
            config.Validate();
        }
        catch (ArgumentException ex)
        {
            throw ConfigException.ForRefusal(s, ex);
        }

        return config;
    }

    /// <summary>
    /// <c>model: {name: llama, preset: llama-tiny|tinyllama-1.1b, ...}</c>: a Llama configuration from a preset and the
    /// section's keys (snake_case of <see cref="LlamaConfig"/>'s properties, e.g. <c>num_key_value_heads</c>,
    /// <c>rope_theta</c>); the vocabulary follows the dataset's unless <c>vocab_size</c> is given. <c>pretrained</c>
    /// and <c>rope_scaling</c> are refused with a one-line reason (not implemented for this family yet).
    /// </summary>
    private static LlamaConfig LlamaModelConfig(ConfigSection s, ComponentContext c)
    {
        foreach (string key in new[] { "pretrained", "rope_scaling" })
        {
            if (s.ContainsKey(key))
            {
                throw new ConfigException($"'{s.PathOf(key)}' is not supported for model 'llama' yet; supported keys: preset and {string.Join(", ", OptionsBinder.KeysOf<LlamaConfig>())}.");
            }
        }

        string preset = s.GetString("preset") ?? "llama-tiny";
        LlamaConfig baseConfig;
        try
        {
            baseConfig = LlamaConfig.Preset(preset);
        }
        catch (ArgumentException ex)
        {
            throw new ConfigException($"'{s.PathOf("preset")}' is '{preset}': {ConfigException.LibraryMessage(ex)}", ex);
        }

        if (!s.ContainsKey("vocab_size") && c.Vocabulary is { } vocabulary)
        {
            baseConfig = baseConfig with { VocabSize = (vocabulary.Size + 63) / 64 * 64 };
        }

        LlamaConfig config = OptionsBinder.Bind(s, baseConfig, "preset");
        try
        {
            config.Validate();
        }
        catch (ArgumentException ex)
        {
            throw ConfigException.ForRefusal(s, ex);
        }

        return config;
    }

    private static (TA, TB) BindPair<TA, TB>(ConfigSection s, TA a, TB b)
        where TA : class
        where TB : class
    {
        string[] keysA = OptionKeys<TA>();
        string[] keysB = OptionKeys<TB>();
        string[] unknown = s.Keys.Where(k => !keysA.Contains(k) && !keysB.Contains(k)).ToArray();
        if (unknown.Length > 0)
        {
            throw new ConfigException($"Unknown option '{s.PathOf(unknown[0])}'; accepted: {string.Join(", ", keysA.Concat(keysB))}.");
        }

        return (OptionsBinder.Bind(s.Only(keysA), a), OptionsBinder.Bind(s.Only(keysB), b));
    }

    private static string[] OptionKeys<T>() =>
        typeof(T).GetProperties().Where(p => p.SetMethod is { IsPublic: true }).Select(p => Algorithm.ToSnakeCase(p.Name)).ToArray();

    private static string RequirePath(ConfigSection s) =>
        s.GetString("path") ?? throw new ConfigException($"'{s.PathOf("path")}' is required: a file or folder of data.");

    private static DataSource Source<T>(TokenVocabulary vocabulary, IDataset<T> dataset, ICollator<T> collator, IReadOnlyList<string>? labels = null) =>
        new(vocabulary, dataset.Count, l => new DataLoader<T>(dataset, l.BatchSize, collator, l.Shuffle, l.DropLast, l.Seed)
        {
            NumWorkers = l.NumWorkers,
            PrefetchFactor = l.PrefetchFactor,
            ShuffleAlgo = l.ShuffleAlgo,
            ShuffleBlockSize = l.ShuffleBlockSize,
            NumCanonicalNodes = l.NumCanonicalNodes,
        }, labels);

    /// <summary>Loads a text dataset with the registered tokenizer; file errors become configuration errors that name the file.</summary>
    private static T LoadText<T>(ComponentContext c, Func<ITextTokenizer, ILogger?, T> load)
    {
        var tokenizer = c.Tokenizer ?? c.Services.GetRequiredService<ITextTokenizer>();
        var logger = c.Services.GetService<ILoggerFactory>()?.CreateLogger("ComposerSharp.Data");
        try
        {
            return load(tokenizer, logger);
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            throw new ConfigException(ex.Message, ex);
        }
    }
}
