using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Data;
using ComposerSharp.Inference;
using ComposerSharp.Models;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 5: text generation with and without the key/value cache. A randomly initialised GPT of gpt-tiny's shape
/// (2 layers, width 128, context 256) and GPT-2's tokenizer generates the same number of tokens greedily from the same
/// prompt, once reusing cached keys and values (each new token costs one position) and once re-running the whole
/// prefix per token. Reports tokens per second of each and their per-round ratio.
/// </summary>
internal static class GenerationBenchmark
{
    private const string Cached = "kv cache";
    private const string Uncached = "no cache (full prefix)";

    public static PartReport Run(Settings settings)
    {
        (int warmup, int rounds, int tokens) = settings.Quick ? (1, 2, 16) : (1, 7, 200);
        torch.manual_seed(1);
        using var model = new GptForCausalLM(TransformerConfig.Preset("gpt-tiny") with { Dropout = 0, AttentionDropout = 0 });
        var tokenizer = new Gpt2Tokenizer();
        using var generator = new TextGenerator(model, tokenizer);
        const string Prompt = "It was the best of times, it was the worst of times, it was the age of wisdom,";
        var options = new GenerationOptions { MaxNewTokens = tokens, Temperature = 0, StopAtEndOfText = false };
        double Ms(bool cache)
        {
            GenerationResult r = generator.Generate(Prompt, options with { UseCache = cache });
            return r.Elapsed.TotalMilliseconds / r.TokenIds.Count;
        }

        Interleaved run = Interleaved.Run(new[] { new Variant(Cached, () => Ms(true)), new Variant(Uncached, () => Ms(false)) }, warmup, rounds);
        int promptTokens = tokenizer.Encode(Prompt).Length;
        var report = new PartReport("generate", $"(6) GPT generation, {tokens} new tokens after a {promptTokens}-token prompt (gpt-tiny shape, greedy): key/value cache vs full prefix");
        report.Columns.AddRange(new[] { "variant", "ms/token (median ±IQR/2)", "tokens/s", "ratio vs kv cache" });
        var rows = new List<object>();
        foreach (string name in new[] { Cached, Uncached })
        {
            Stats s = run.StatsOf(name);
            Stats? ratio = name == Cached ? null : run.Ratio(name, Cached);
            report.Rows.Add(new[] { name, Fmt.Ms(s, 2), Fmt.N(1000 / s.Median, 1), ratio is null ? "1" : $"{Fmt.N(ratio.Median, 2)} ({Fmt.N(ratio.P25, 2)}–{Fmt.N(ratio.P75, 2)})" });
            rows.Add(new { variant = name, ms_per_token = s, tokens_per_second = 1000 / s.Median, ratio_vs_cache = ratio });
        }

        report.Data = new { new_tokens = tokens, prompt_tokens = promptTokens, rows };
        report.Notes.Add("Each round generates once with each variant in rotated order; the ratio is the median of per-round ratios. The uncached cost grows with the prefix, so the ratio grows with the number of new tokens.");
        return report;
    }
}
