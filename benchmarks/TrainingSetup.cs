using System.Diagnostics;
using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// The BERT MLM model and batch the training benchmarks use, sized for a 2-core CPU: BERT-mini's encoder
/// (Turc et al. 2019: 4 layers, hidden 256, 4 heads, feed-forward 1024, post-LN) with the synthetic token
/// vocabulary (512 regular ids + 4 specials, padded to 576), 128 tokens per sample, 16 samples per batch.
/// </summary>
internal sealed record TrainingShape
{
    /// <summary>The model preset the encoder sizes come from.</summary>
    public string Preset { get; init; } = "bert-mini";

    /// <summary>Regular token ids of the synthetic data (the vocabulary adds four specials).</summary>
    public int RegularVocab { get; init; } = 512;

    /// <summary>Rows of the token embedding (≥ RegularVocab + 4, a multiple of 64).</summary>
    public int VocabSize { get; init; } = 576;

    /// <summary>Tokens per sample (T).</summary>
    public int SequenceLength { get; init; } = 128;

    /// <summary>Samples per batch (B).</summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>Layer sizes when they are not a preset's (e.g. all-MiniLM-L6-v2); null = <see cref="Preset"/>'s. <see cref="Preset"/> then only names the shape.</summary>
    public TransformerConfig? Sizes { get; init; }

    /// <summary>True for a GPT causal language model (preset names starting with "gpt"), false for BERT MLM.</summary>
    public bool Causal => Sizes is null && Preset.StartsWith("gpt", StringComparison.OrdinalIgnoreCase);

    /// <summary>The model configuration.</summary>
    public TransformerConfig Config => (Sizes ?? TransformerConfig.Preset(Preset)) with { VocabSize = VocabSize, MaxSequenceLength = SequenceLength };

    /// <summary>Tokens per batch (B × T).</summary>
    public long TokensPerBatch => (long)BatchSize * SequenceLength;

    /// <summary>Learning rate of AdamW (as in BERT pre-training recipes; the value does not change the step time).</summary>
    public double LearningRate { get; init; } = 1e-4;

    /// <summary>A description for tables and JSON.</summary>
    public string Describe()
    {
        TransformerConfig c = Config;
        return $"{Preset} {(Causal ? "causal LM (pre-LN)" : "MLM (post-LN)")}: {c.NumLayers} layers, hidden {c.HiddenSize}, {c.NumHeads} heads, FFN {c.IntermediateSize}, vocab {c.VocabSize}, " +
               $"batch {BatchSize} × {SequenceLength} tokens, dropout {c.Dropout}, AdamW lr {LearningRate}";
    }
}

/// <summary>
/// Pre-collated MLM batches held in memory (built once by the Data project's synthetic dataset, MLM collator and
/// DataLoader, outside any dispose scope), served as an <see cref="IDataLoader"/> so the Trainer and a hand-written
/// loop see the same tensors with no data-loading work in the timed steps.
/// </summary>
internal sealed class InMemoryBatches : IDataLoader, IDisposable
{
    private readonly List<Batch> _batches;

    private InMemoryBatches(List<Batch> batches) => _batches = batches;

    /// <summary>Builds <paramref name="count"/> batches of <paramref name="shape"/> (MLM-masked, or causal-LM labels when <see cref="TrainingShape.Causal"/>).</summary>
    public static InMemoryBatches Create(TrainingShape shape, int count, long seed = 0)
    {
        var dataset = new SyntheticTokenDataset(new SyntheticTokenOptions
        {
            NumSamples = shape.BatchSize * count,
            SequenceLength = shape.SequenceLength,
            RegularVocabSize = shape.RegularVocab,
            Seed = seed,
        });
        ICollator<long[]> collator = shape.Causal ? new CausalLmCollator(dataset.Vocabulary) : new MlmCollator(dataset.Vocabulary, new MlmCollatorOptions { Seed = seed });
        var loader = new DataLoader<long[]>(dataset, shape.BatchSize, collator, shuffle: true, dropLast: true, seed: seed);
        return new InMemoryBatches(loader.GetEpoch(0).ToList());
    }

    /// <summary>The batches.</summary>
    public IReadOnlyList<Batch> Batches => _batches;

    /// <inheritdoc/>
    public long? BatchesPerEpoch => _batches.Count;

    /// <inheritdoc/>
    public long? SamplesPerEpoch => _batches.Sum(b => b.NumSamples);

    /// <inheritdoc/>
    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0) => _batches.Skip((int)skipBatches);

    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        foreach (Batch b in _batches)
        {
            foreach (Tensor t in b.Values)
            {
                t.Dispose();
            }
        }

        _batches.Clear();
    }
}

/// <summary>Builds Trainers and the hand-written loop over the same model shape.</summary>
internal static class TrainingSetup
{
    /// <summary>Seed of every model's initialisation, so all variants start from the same weights.</summary>
    public const int ModelSeed = 17;

    /// <summary>
    /// A Trainer on the CPU for <paramref name="shape"/> (BERT MLM, or GPT causal LM when <see cref="TrainingShape.Causal"/>) with AdamW, no progress bar, no loggers, no max duration
    /// (each timed sample calls <c>Fit(n ba)</c>), LowPrecisionLayerNorm when <paramref name="lowPrecisionLayerNorm"/>,
    /// and training metrics only when <paramref name="computeTrainingMetrics"/> (Composer's default is off).
    /// </summary>
    public static Trainer CreateTrainer(TrainingShape shape, InMemoryBatches data, Precision precision, bool lowPrecisionLayerNorm = false, bool computeTrainingMetrics = false)
    {
        torch.manual_seed(ModelSeed);
        ComposerModel model = shape.Causal ? new GptForCausalLM(shape.Config) : new BertForMaskedLM(shape.Config);
        var algorithms = new List<IAlgorithm>();
        if (lowPrecisionLayerNorm)
        {
            algorithms.Add(new LowPrecisionLayerNorm());
        }

        return new Trainer(
            model,
            new TrainerOptions { Precision = precision, Device = "cpu", Seed = ModelSeed, ProgressBar = false, ComputeTrainingMetrics = computeTrainingMetrics },
            trainDataloader: data,
            algorithms: algorithms,
            optimizerFactory: p => torch.optim.AdamW(p, lr: shape.LearningRate));
    }

    /// <summary>Runs <paramref name="steps"/> batches through <c>Trainer.Fit</c> and returns milliseconds per step.</summary>
    public static double FitSteps(Trainer trainer, int steps)
    {
        var clock = Stopwatch.StartNew();
        trainer.Fit(Time.FromBatch(steps));
        return clock.Elapsed.TotalMilliseconds / steps;
    }
}

/// <summary>
/// The plain TorchSharp training loop the Trainer is compared with: for each batch, in a dispose scope, zero the
/// gradients, forward and loss inside the precision's autocast scope, backward, optimizer step. No events, no
/// metrics, no loss read back to the host.
/// </summary>
internal sealed class HandWrittenLoop
{
    private readonly ComposerModel _model;
    private readonly optim.Optimizer _optimizer;
    private readonly Precision _precision;
    private readonly IReadOnlyList<Batch> _batches;
    private int _next;

    /// <summary>Creates the loop over an existing model and optimizer (e.g. the Trainer's own, so both do identical work).</summary>
    public HandWrittenLoop(ComposerModel model, optim.Optimizer optimizer, Precision precision, IReadOnlyList<Batch> batches)
    {
        _model = model;
        _optimizer = optimizer;
        _precision = precision;
        _batches = batches;
    }

    /// <summary>Trains <paramref name="steps"/> batches and returns milliseconds per step.</summary>
    public double Steps(int steps)
    {
        _model.train();
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            Batch batch = _batches[_next];
            _next = (_next + 1) % _batches.Count;
            using var scope = torch.NewDisposeScope();
            foreach (TorchSharp.Modules.Parameter p in _model.parameters())
            {
                p.grad = null; // as the Trainer clears them (Composer's zero_grad(set_to_none=True))
            }

            Tensor loss;
            using (_precision.Enter(DeviceType.CPU))
            {
                Tensor outputs = _model.call(batch);
                loss = _model.Loss(outputs, batch);
            }

            loss.backward();
            _optimizer.step();
        }

        return clock.Elapsed.TotalMilliseconds / steps;
    }
}
