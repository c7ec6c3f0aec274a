using System.Diagnostics;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Inference;

/// <summary>Sampling settings of <see cref="TextGenerator"/>, named as Hugging Face's <c>generate</c> arguments.</summary>
public sealed record GenerationOptions
{
    /// <summary>Tokens to generate after the prompt (<c>max_new_tokens</c>); fewer when the model's context is reached or end-of-text is sampled.</summary>
    public int MaxNewTokens { get; init; } = 50;

    /// <summary>Divides the logits before sampling; 0 means greedy (argmax).</summary>
    public double Temperature { get; init; } = 1.0;

    /// <summary>Sample only among the k most probable tokens (0 = no limit).</summary>
    public int TopK { get; init; } = 50;

    /// <summary>Nucleus sampling (Holtzman et al. 2020): the smallest set of tokens whose probability reaches p (1 = no limit).</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>Seed of the sampling generator; the same seed and prompt give the same text.</summary>
    public long Seed { get; init; } = 17;

    /// <summary>Reuse each position's keys and values (<see cref="KeyValueCache"/>), so a new token costs one position; false re-runs the whole prefix for each token (for comparison).</summary>
    public bool UseCache { get; init; } = true;

    /// <summary>Stop when the end-of-text token is sampled.</summary>
    public bool StopAtEndOfText { get; init; } = true;

    /// <summary>The first out-of-range setting: its Hugging Face name (e.g. <c>top_p</c>), its value and what is expected; null when all are valid.</summary>
    public (string Setting, object Value, string Expected)? FirstProblem()
    {
        if (MaxNewTokens < 1)
        {
            return ("max_new_tokens", MaxNewTokens, "a whole number of at least 1");
        }

        if (!(Temperature >= 0) || double.IsInfinity(Temperature))
        {
            return ("temperature", Temperature, "a finite number ≥ 0 (0 = greedy)");
        }

        if (TopK < 0)
        {
            return ("top_k", TopK, "a whole number ≥ 0 (0 = no limit)");
        }

        if (!(TopP > 0 && TopP <= 1))
        {
            return ("top_p", TopP, "a number in (0, 1] (1 = no limit)");
        }

        return null;
    }

    /// <summary>Throws when a setting is out of range (see <see cref="FirstProblem"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The message names the setting, its value and what is expected.</exception>
    public void Validate()
    {
        if (FirstProblem() is { } p)
        {
            throw new ArgumentOutOfRangeException(p.Setting, p.Value, string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{p.Setting} is {p.Value}; expected {p.Expected}."));
        }
    }
}

/// <summary>What <see cref="TextGenerator.Generate"/> produced.</summary>
/// <param name="Text">The generated continuation (without the prompt).</param>
/// <param name="TokenIds">Its token ids.</param>
/// <param name="PromptTokens">Tokens in the prompt.</param>
/// <param name="Elapsed">Wall-clock time of generation, prompt included.</param>
public sealed record GenerationResult(string Text, IReadOnlyList<int> TokenIds, int PromptTokens, TimeSpan Elapsed)
{
    /// <summary>Generated tokens per second.</summary>
    public double TokensPerSecond => Elapsed.TotalSeconds > 0 ? TokenIds.Count / Elapsed.TotalSeconds : 0;
}

/// <summary>
/// Text generation with a GPT model loaded from a checkpoint: the prompt is encoded once (filling the key/value
/// cache), then one token at a time is sampled (temperature, top-k, top-p) and fed back as a single position.
/// A model loaded by <see cref="Load"/> computes as the run's evaluation did (see <see cref="CheckpointModel"/>):
/// under the checkpoint's precision, with its required-on-load algorithms' surgery; <see cref="InferenceOptions"/>
/// chooses another precision.
/// </summary>
public sealed class TextGenerator : IDisposable
{
    private readonly CheckpointModel? _loaded;

    /// <summary>Wraps <paramref name="model"/> and <paramref name="tokenizer"/> (not owned).</summary>
    /// <param name="model">The model.</param>
    /// <param name="tokenizer">The tokenizer.</param>
    /// <param name="precision">The precision of the forward passes (autocast on the CPU for amp_bf16/amp_fp16).</param>
    public TextGenerator(GptForCausalLM model, ITextTokenizer tokenizer, ComposerSharp.Core.Precision precision = ComposerSharp.Core.Precision.Fp32)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        Tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Precision = precision;
    }

    private TextGenerator(CheckpointModel loaded)
        : this(loaded.Model as GptForCausalLM ?? throw new InvalidDataException(
            $"Checkpoint '{loaded.Path}' holds a {loaded.Description.Kind} model, not a {ModelDescription.Gpt} model; only causal language models generate text."), loaded.Tokenizer, loaded.Precision)
        => _loaded = loaded;

    /// <summary>The precision the forward passes run under: the checkpoint's for a model loaded by <see cref="Load"/>, unless <see cref="InferenceOptions.Precision"/> chose another.</summary>
    public ComposerSharp.Core.Precision Precision { get; }

    /// <summary>The model as loaded by <see cref="Load"/> (description, precision, algorithms applied), or null for a model wrapped by the constructor.</summary>
    public CheckpointModel? Loaded => _loaded;

    /// <summary>The model.</summary>
    public GptForCausalLM Model { get; }

    /// <summary>The tokenizer.</summary>
    public ITextTokenizer Tokenizer { get; }

    /// <summary>Loads a GPT checkpoint.</summary>
    /// <exception cref="InvalidDataException">Another model kind, or no description.</exception>
    /// <param name="path">The checkpoint (or latest pointer).</param>
    /// <param name="description">Used instead of the checkpoint's own description.</param>
    /// <param name="tokenizer">Used instead of the tokenizer the description names (needed for a model trained on token ids alone).</param>
    /// <param name="options">The precision instead of the checkpoint's (see <see cref="CheckpointModel.Load"/> for what else it throws).</param>
    public static TextGenerator Load(string path, ModelDescription? description = null, ITextTokenizer? tokenizer = null, InferenceOptions? options = null)
    {
        CheckpointModel loaded = CheckpointModel.Load(path, description, tokenizer, options);
        try
        {
            return new TextGenerator(loaded);
        }
        catch
        {
            loaded.Dispose();
            throw;
        }
    }

    /// <summary>Continues <paramref name="prompt"/>.</summary>
    /// <exception cref="ArgumentException">The prompt is empty or already fills the model's context (the message gives both lengths).</exception>
    /// <exception cref="ArgumentOutOfRangeException">A setting of <paramref name="options"/> is out of range.</exception>
    public GenerationResult Generate(string prompt, GenerationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        options ??= new GenerationOptions();
        options.Validate();
        int[] promptIds = Tokenizer.Encode(prompt);
        int context = Model.Config.MaxSequenceLength;
        if (promptIds.Length == 0)
        {
            promptIds = new[] { Tokenizer.Vocabulary.EndOfTextId }; // GPT-2 starts unconditional samples from <|endoftext|>
        }

        if (promptIds.Length >= context)
        {
            // No parameter name: the message is shown as it is (the CLI prints it for a bad --prompt).
            throw new ArgumentException($"The prompt has {promptIds.Length} tokens but the model's context (max_sequence_length) is {context}; shorten it to at most {context - 1} tokens.");
        }

        int steps = Math.Min(options.MaxNewTokens, context - promptIds.Length);
        var stopwatch = Stopwatch.StartNew();
        var generated = new List<int>();
        Model.eval();
        using var noGrad = torch.no_grad();
        using var generator = new Generator((ulong)options.Seed);
        using KeyValueCache cache = Model.NewCache();
        var sequence = promptIds.Select(i => (long)i).ToList();
        for (int step = 0; step < steps; step++)
        {
            using var scope = StepScope.Begin();
            Tensor logits;
            using (ComposerSharp.Core.PrecisionExtensions.Enter(Precision, DeviceType.CPU))
            {
                if (options.UseCache)
                {
                    long[] fresh = step == 0 ? sequence.ToArray() : new[] { sequence[^1] };
                    logits = Model.ForwardCached(torch.tensor(fresh, new long[] { 1, fresh.Length }), cache);
                }
                else
                {
                    logits = Model.call(new ComposerSharp.Core.Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.tensor(sequence.ToArray(), new long[] { 1, sequence.Count }) }));
                }
            }

            int next = Sample(logits[0, -1], options, generator);
            generated.Add(next);
            sequence.Add(next);
            if (options.StopAtEndOfText && next == Tokenizer.Vocabulary.EndOfTextId)
            {
                break;
            }
        }

        stopwatch.Stop();
        string text = Tokenizer.Decode(generated.Where(id => !(options.StopAtEndOfText && id == Tokenizer.Vocabulary.EndOfTextId)));
        return new GenerationResult(text, generated, promptIds.Length, stopwatch.Elapsed);
    }

    /// <summary>Frees the model when it was loaded by <see cref="Load"/>.</summary>
    public void Dispose() => _loaded?.Dispose();

    /// <summary>Samples one id from next-token logits [V] (only ids of the tokenizer's vocabulary are candidates).</summary>
    private int Sample(Tensor logits, GenerationOptions options, Generator generator)
    {
        Tensor l = logits.narrow(0, 0, Math.Min(logits.shape[0], Tokenizer.Vocabulary.Size)).to(ScalarType.Float32);

        // Special ids other than end-of-text (pad, mask, cls, unk) never occur in running text; exclude them.
        long[] excluded = Tokenizer.Vocabulary.SpecialIds.Where(id => id != Tokenizer.Vocabulary.EndOfTextId).Select(id => (long)id).ToArray();
        l = l.index_fill(0, torch.tensor(excluded), float.NegativeInfinity);
        if (options.Temperature == 0)
        {
            return (int)l.argmax().item<long>();
        }

        l = l / options.Temperature;
        if (options.TopK > 0 && options.TopK < l.shape[0])
        {
            double kth = l.topk(options.TopK).values[-1].item<float>();
            l = l.masked_fill(l.lt(kth), float.NegativeInfinity);
        }

        if (options.TopP < 1)
        {
            (Tensor sorted, Tensor order) = l.sort(descending: true);
            Tensor cumulative = torch.softmax(sorted, 0).cumsum(0);

            // Drop a token when the tokens before it already reach top_p (the first token always stays).
            Tensor drop = (cumulative - torch.softmax(sorted, 0)).ge(options.TopP);
            l = l.scatter(0, order, sorted.masked_fill(drop, float.NegativeInfinity));
        }

        return (int)torch.multinomial(torch.softmax(l, 0), 1, generator: generator).item<long>();
    }
}
