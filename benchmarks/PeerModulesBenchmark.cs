using System.Diagnostics;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 4b (<c>peer-modules</c>): the training step of part 4 cut into pieces, each timed on both sides at the same
/// shapes, threads and precision: ours built from the BertForMaskedLM's own modules, the peer's by the
/// <c>module</c> command of pytorch_peer.py (same piece names). Each piece runs forward only, or forward then
/// backward with a fixed random output gradient (parameter gradients accumulate over the iterations on both sides);
/// under amp_bf16 the forward runs in an autocast scope entered per iteration, as the Trainer does. Inputs are fresh
/// N(0, 1) leaves in the dtype the piece sees in the real step (Float32 residual stream; BFloat16 projections and
/// activations under autocast). For every piece, precision and mode, each round times ours and the peer's
/// back to back (order alternating by round), so the per-round ratio sees one moment's load.
/// </summary>
internal static class PeerModulesBenchmark
{
    /// <summary>The pieces (names shared with pytorch_peer.py's PIECES), how often each runs in one step, and whether it has a backward.</summary>
    private static readonly (string Name, int PerStep, bool Backward, string What)[] Pieces =
    {
        ("embeddings", 1, true, "token + position (+ ours: token-type 0 row) embedding, LayerNorm, dropout"),
        ("mask", 1, false, "attention_mask.ne(0).view(B,1,1,T)"),
        ("qkv", 4, true, "Linear hidden→3·hidden on the Float32 stream"),
        ("sdpa", 4, true, "attention core with dropout 0.1 on [B,heads,T,head_dim] (ours: what MultiHeadSelfAttention runs, EagerAttention for BFloat16 training on the CPU, else scaled_dot_product_attention; PyTorch 1.13: matmul, masked_fill, softmax, dropout, matmul)"),
        ("out_proj", 4, true, "Linear hidden→hidden on the attention output"),
        ("attention", 4, true, "the whole self-attention module"),
        ("fc_in", 4, true, "Linear hidden→FFN on the Float32 stream"),
        ("gelu", 4, true, "exact GELU on [B,T,FFN]"),
        ("fc_out", 4, true, "Linear FFN→hidden"),
        ("ffn", 4, true, "fc_in, GELU, fc_out"),
        ("dropout", 8, true, "dropout 0.1 on a branch output [B,T,hidden]"),
        ("residual_add", 8, true, "Float32 stream + branch output"),
        ("layernorm", 8, true, "LayerNorm on the Float32 stream [B,T,hidden]"),
        ("block", 4, true, "one post-LN transformer block"),
        ("encoder", 1, true, "embeddings, mask and the 4 blocks"),
        ("head", 1, true, "gather of the masked positions, transform, GELU, LayerNorm, tied decoder"),
        ("loss", 1, true, "cross-entropy over the masked positions in Float32 (incl. the labels' selection and the logits' Float32 copy)"),
        ("model", 1, true, "forward of the whole model and the loss"),
        ("optimizer", 1, false, "AdamW step over every parameter"),
        ("zero_grad", 1, false, "assign each parameter a gradient, then zero_grad (set to none)"),
        ("train_step", 1, false, "zero_grad, forward + loss, backward, AdamW step (ours: the hand-written loop of part 3a)"),
    };

    /// <summary>Runs the comparison, or returns a skipped report.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("peer-modules", "(4b) The step of part 4 piece by piece: ours vs PyTorch eager (same shapes, threads, precision)");
        string script = PeerBenchmark.FindScript();
        (string? python, string probe) = PeerBenchmark.FindPython(settings.Python);
        if (python is null)
        {
            report.Skipped = $"no python3 that imports torch ({probe}); see the peer part.";
            return report;
        }

        string[] unknown = settings.Pieces?.Where(n => !Pieces.Any(p => p.Name == n)).ToArray() ?? Array.Empty<string>();
        if (unknown.Length > 0)
        {
            throw new ArgumentException($"--pieces: unknown piece(s) {string.Join(", ", unknown)}; expected some of {string.Join(", ", Pieces.Select(p => p.Name))}.");
        }

        bool Wanted(string name) => settings.Pieces is null || settings.Pieces.Contains(name);
        var shape = new TrainingShape();
        using PeerBenchmark.PeerProcess peer = PeerBenchmark.PeerProcess.Start(python, script, shape, settings.Threads, settings.OmpWaitPolicy);
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        torch.manual_seed(TrainingSetup.ModelSeed);
        using var model = new BertForMaskedLM(shape.Config);
        model.train();
        using optim.Optimizer optimizer = torch.optim.AdamW(model.parameters(), lr: shape.LearningRate);
        var ours = new OurPieces(model, optimizer, data, shape);
        int rounds = settings.Quick ? 2 : 7;
        double targetMs = settings.Quick ? 5 : 25;

        var keys = new List<(string Piece, Precision Precision, bool Backward, int Iters)>();
        foreach (Precision p in new[] { Precision.Fp32, Precision.AmpBf16 })
        {
            foreach ((string name, _, bool hasBackward, _) in Pieces.Where(p => Wanted(p.Name)))
            {
                foreach (bool backward in hasBackward ? new[] { false, true } : new[] { false })
                {
                    // Warm both sides up once (first calls allocate optimizer state, autograd buffers, oneDNN primitives), then size the sample from our time.
                    ours.Run(name, p, backward, 1);
                    peer.Module(name, p.ToComposerName(), backward, 1);
                    double once = ours.Run(name, p, backward, 1);
                    keys.Add((name, p, backward, (int)Math.Clamp(Math.Ceiling(targetMs / Math.Max(once, 1e-3)), 1, 500)));
                }
            }
        }

        var oursSamples = keys.ToDictionary(k => k, _ => new List<double>());
        var peerSamples = keys.ToDictionary(k => k, _ => new List<double>());
        for (int r = 0; r < rounds; r++)
        {
            foreach (var k in keys)
            {
                if (r % 2 == 0)
                {
                    oursSamples[k].Add(ours.Run(k.Piece, k.Precision, k.Backward, k.Iters));
                    peerSamples[k].Add(peer.Module(k.Piece, k.Precision.ToComposerName(), k.Backward, k.Iters));
                }
                else
                {
                    peerSamples[k].Add(peer.Module(k.Piece, k.Precision.ToComposerName(), k.Backward, k.Iters));
                    oursSamples[k].Add(ours.Run(k.Piece, k.Precision, k.Backward, k.Iters));
                }
            }
        }

        report.Columns.AddRange(new[] { "piece", "precision", "×/step", "ours fwd ms", "PyTorch fwd ms", "ratio fwd (P25–P75)", "ours fwd+bwd ms", "PyTorch fwd+bwd ms", "ratio fwd+bwd (P25–P75)", "ours − PyTorch ms/step" });
        var rows = new List<PeerModuleRow>();
        foreach (Precision p in new[] { Precision.Fp32, Precision.AmpBf16 })
        {
            foreach ((string name, int perStep, bool hasBackward, string what) in Pieces.Where(p => Wanted(p.Name)))
            {
                PeerModuleRow row = Summarise(name, p, perStep, what, keys, oursSamples, peerSamples, hasBackward);
                rows.Add(row);
                report.Rows.Add(new[]
                {
                    name, p.ToComposerName(), perStep.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    Fmt.Ms(row.OursForward, 3), Fmt.Ms(row.PeerForward, 3), RatioCell(row.RatioForward),
                    row.OursBackward is null ? "—" : Fmt.Ms(row.OursBackward, 3), row.PeerBackward is null ? "—" : Fmt.Ms(row.PeerBackward!, 3),
                    row.RatioBackward is null ? "—" : RatioCell(row.RatioBackward), Fmt.N(row.ExcessPerStepMs, 1),
                });
            }
        }

        report.Data = new { python, peer = peer.Info, shape = shape.Describe(), rounds, target_sample_ms = targetMs, rows };
        report.Notes.Add($"PyTorch {peer.Info.GetProperty("torch_version").GetString()} at {python}{PeerBenchmark.DebianPackageVersion()}, BLAS {peer.Info.GetProperty("blas").GetString()}, threads {peer.Info.GetProperty("threads").GetInt32()}; model {shape.Describe()}.");
        report.Notes.Add("Each cell: median over rounds of the mean ms per iteration (± half the IQR); ratio = median of per-round ratios ours / PyTorch. " +
                         "'ours − PyTorch ms/step' = (difference of medians of fwd+bwd, or fwd for forward-only pieces) × times per step; pieces nest (attention ⊃ qkv, sdpa, out_proj; block ⊃ attention, ffn, 2 dropouts, 2 adds, 2 LayerNorms; encoder ⊃ blocks; model ⊃ encoder, head, loss), so do not add the column up.");
        foreach ((string name, _, _, string what) in Pieces.Where(p => Wanted(p.Name)))
        {
            report.Notes.Add($"{name}: {what}.");
        }

        report.Load = meter.Stop(peer.CpuSeconds());
        return report;
    }

    private static string RatioCell(Stats ratio) => $"{Fmt.N(ratio.Median, 3)} ({Fmt.N(ratio.P25, 2)}–{Fmt.N(ratio.P75, 2)})";

    private static PeerModuleRow Summarise(
        string name, Precision p, int perStep, string what,
        List<(string Piece, Precision Precision, bool Backward, int Iters)> keys,
        Dictionary<(string, Precision, bool, int), List<double>> ours,
        Dictionary<(string, Precision, bool, int), List<double>> peer,
        bool hasBackward)
    {
        var fwd = keys.Single(k => k.Piece == name && k.Precision == p && !k.Backward);
        Stats oursF = Stats.Of(ours[fwd]), peerF = Stats.Of(peer[fwd]);
        Stats ratioF = Stats.Of(ours[fwd].Zip(peer[fwd], (a, b) => a / b).ToArray());
        if (!hasBackward)
        {
            return new PeerModuleRow(name, p.ToComposerName(), perStep, what, oursF, peerF, ratioF, null, null, null, (oursF.Median - peerF.Median) * perStep);
        }

        var bwd = keys.Single(k => k.Piece == name && k.Precision == p && k.Backward);
        Stats oursB = Stats.Of(ours[bwd]), peerB = Stats.Of(peer[bwd]);
        Stats ratioB = Stats.Of(ours[bwd].Zip(peer[bwd], (a, b) => a / b).ToArray());
        return new PeerModuleRow(name, p.ToComposerName(), perStep, what, oursF, peerF, ratioF, oursB, peerB, ratioB, (oursB.Median - peerB.Median) * perStep);
    }

    /// <summary>Our side: the pieces built from the model's modules (the same code paths as the model's forward where a module exists; the model's private embedding and head code copied where not).</summary>
    private sealed class OurPieces
    {
        private readonly BertForMaskedLM _model;
        private readonly optim.Optimizer _optimizer;
        private readonly InMemoryBatches _data;
        private readonly TrainingShape _shape;
        private readonly Dictionary<string, nn.Module> _modules;
        private readonly Dictionary<(string, Precision), (Func<Tensor> Forward, Tensor[] Inputs)> _built = new();
        private readonly Dictionary<(string, Precision), Tensor> _outputGrads = new();
        private readonly Tensor[] _grads;

        public OurPieces(BertForMaskedLM model, optim.Optimizer optimizer, InMemoryBatches data, TrainingShape shape)
        {
            _model = model;
            _optimizer = optimizer;
            _data = data;
            _shape = shape;
            _modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
            using (torch.no_grad())
            {
                var g = new Generator(TrainingSetup.ModelSeed + 1);
                _grads = model.parameters().Select(p => (torch.randn(p.shape, generator: g) * 1e-3).DetachFromDisposeScope()).ToArray();
            }
        }

        private T M<T>(string name)
            where T : nn.Module => _modules.TryGetValue(name, out nn.Module? m) ? (T)m : throw new KeyNotFoundException($"BertForMaskedLM has no module {name}; it has: {string.Join(", ", _modules.Keys)}");

        /// <summary>Mean ms per iteration of <paramref name="piece"/>.</summary>
        public double Run(string piece, Precision precision, bool backward, int iters)
        {
            if (piece == "train_step")
            {
                return new HandWrittenLoop(_model, _optimizer, precision, _data.Batches).Steps(iters);
            }

            if (piece == "optimizer")
            {
                EnsureGradients();
            }

            if (!_built.TryGetValue((piece, precision), out var built))
            {
                built = Build(piece, precision == Precision.AmpBf16 ? ScalarType.BFloat16 : ScalarType.Float32);
                _built[(piece, precision)] = built;
            }

            var clock = Stopwatch.StartNew();
            for (int i = 0; i < iters; i++)
            {
                using var scope = torch.NewDisposeScope();
                Tensor y;
                using (precision.Enter(DeviceType.CPU))
                {
                    y = built.Forward();
                }

                if (backward)
                {
                    if (y.Dimensions == 0)
                    {
                        y.backward();
                    }
                    else
                    {
                        if (!_outputGrads.TryGetValue((piece, precision), out Tensor? g))
                        {
                            g = torch.randn(y.shape).to(y.dtype).DetachFromDisposeScope();
                            _outputGrads[(piece, precision)] = g;
                        }

                        torch.autograd.backward(new[] { y }, new[] { g });
                    }
                }
            }

            return clock.Elapsed.TotalMilliseconds / iters;
        }

        private void EnsureGradients()
        {
            int i = 0;
            foreach (Parameter p in _model.parameters())
            {
                if (p.grad is null)
                {
                    p.grad = _grads[i].clone().DetachFromDisposeScope();
                }

                i++;
            }
        }

        private (Func<Tensor> Forward, Tensor[] Inputs) Build(string piece, ScalarType low)
        {
            TransformerConfig c = _shape.Config;
            long b = _shape.BatchSize, t = _shape.SequenceLength, hidden = c.HiddenSize, inter = c.IntermediateSize, heads = c.NumHeads;
            Batch batch = _data.Batches[0];
            Tensor ids = batch["input_ids"], attentionMask = batch["attention_mask"], labels = batch["labels"];
            Tensor mask = attentionMask.ne(0).view(b, 1, 1, t).DetachFromDisposeScope();
            Tensor Leaf(ScalarType dtype, params long[] dims)
            {
                using var noGrad = torch.no_grad();
                return torch.randn(dims).to(dtype).requires_grad_().DetachFromDisposeScope();
            }

            const string L = "backbone.layers.0.";
            TransformerBlock block = _model.Backbone.Layers[0];
            Linear qkv = M<Linear>(L + "attn.qkv"), outProj = M<Linear>(L + "attn.out_proj");
            var ffn = (FeedForward)block.Mlp;
            UniformDropout dropout = M<UniformDropout>(L + "dropout");
            switch (piece)
            {
                case "embeddings":
                {
                    // TransformerBackbone.Embed and the start of Forward, from the same modules.
                    Embedding wte = M<Embedding>("backbone.wte"), wpe = M<Embedding>("backbone.wpe");
                    Embedding? wtt = _modules.TryGetValue("backbone.wtt", out nn.Module? tt) ? (Embedding)tt : null;
                    var embLn = M<nn.Module<Tensor, Tensor>>("backbone.emb_ln");
                    UniformDropout embDropout = M<UniformDropout>("backbone.emb_dropout");
                    return (() =>
                    {
                        Tensor positions = torch.arange(t, dtype: ScalarType.Int64);
                        Tensor h = wte.call(ids) + wpe.call(positions);
                        if (wtt is not null)
                        {
                            h = h + wtt.weight![0];
                        }

                        return embDropout.call(embLn.call(h));
                    }, Array.Empty<Tensor>());
                }

                case "mask":
                    return (() => attentionMask.ne(0).view(b, 1, 1, t), Array.Empty<Tensor>());
                case "qkv":
                {
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden);
                    return (() => qkv.call(x), new[] { x });
                }

                case "sdpa":
                {
                    Tensor q = Leaf(low, b, heads, t, hidden / heads), k = Leaf(low, b, heads, t, hidden / heads), v = Leaf(low, b, heads, t, hidden / heads);
                    double p = c.AttentionDropout;
                    // What MultiHeadSelfAttention runs: the written-out attention for BFloat16 training on the CPU, else libtorch's SDPA.
                    return (() => EagerAttention.Preferred(q, t, p) ? EagerAttention.Attend(q, k, v, mask, p, false) : F.scaled_dot_product_attention(q, k, v, mask, p, false), new[] { q, k, v });
                }

                case "out_proj":
                {
                    Tensor x = Leaf(low, b, t, hidden);
                    return (() => outProj.call(x), new[] { x });
                }

                case "attention":
                {
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden);
                    return (() => block.Attention.call(x, mask), new[] { x });
                }

                case "fc_in":
                {
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden);
                    return (() => ffn.InProjection.call(x), new[] { x });
                }

                case "gelu":
                {
                    Tensor x = Leaf(low, b, t, inter);
                    return (() => F.gelu(x), new[] { x });
                }

                case "fc_out":
                {
                    Tensor x = Leaf(low, b, t, inter);
                    return (() => ffn.OutProjection.call(x), new[] { x });
                }

                case "ffn":
                {
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden);
                    return (() => ffn.call(x), new[] { x });
                }

                case "dropout":
                {
                    Tensor x = Leaf(low, b, t, hidden);
                    return (() => dropout.call(x), new[] { x });
                }

                case "residual_add":
                {
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden), y = Leaf(low, b, t, hidden);
                    return (() => x + y, new[] { x, y });
                }

                case "layernorm":
                {
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden);
                    return (() => block.LayerNorm1.call(x), new[] { x });
                }

                case "block":
                {
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden);
                    return (() => block.call(x, mask), new[] { x });
                }

                case "encoder":
                    return (() => _model.Backbone.Forward(ids, attentionMask, null), Array.Empty<Tensor>());
                case "head":
                {
                    // BertForMaskedLM.forward after Encode, from the same modules.
                    Tensor x = Leaf(ScalarType.Float32, b, t, hidden);
                    Linear transform = M<Linear>("mlm_transform");
                    var mlmLn = M<nn.Module<Tensor, Tensor>>("mlm_ln");
                    Parameter bias = _model.named_parameters().Single(n => n.name == "mlm_bias").parameter;
                    Tensor wteWeight = _model.Backbone.TokenEmbedding.weight!;
                    return (() =>
                    {
                        Tensor positions = labels.reshape(-1).ne(Losses.IgnoreIndex).nonzero().squeeze(1);
                        Tensor h = x.reshape(-1, hidden).index_select(0, positions);
                        h = mlmLn.call(F.gelu(transform.call(h)));
                        return F.linear(h, wteWeight, bias);
                    }, new[] { x });
                }

                case "loss":
                {
                    long n = labels.ne(Losses.IgnoreIndex).sum().item<long>();
                    Tensor logits = Leaf(low, n, c.VocabSize);
                    return (() => _model.Loss(logits, batch), new[] { logits });
                }

                case "model":
                    return (() => _model.Loss(_model.call(batch), batch), Array.Empty<Tensor>());
                case "optimizer":
                    return (() =>
                    {
                        _optimizer.step();
                        return torch.empty(0);
                    }, Array.Empty<Tensor>());
                case "zero_grad":
                    return (() =>
                    {
                        int i = 0;
                        foreach (Parameter p in _model.parameters())
                        {
                            p.grad = _grads[i++];
                        }

                        foreach (Parameter p in _model.parameters())
                        {
                            p.grad = null; // what the Trainer does before each batch (Composer's zero_grad(set_to_none=True))
                        }

                        return torch.empty(0);
                    }, Array.Empty<Tensor>());
                default:
                    throw new ArgumentException($"Unknown piece '{piece}'; expected one of {string.Join(", ", Pieces.Select(p => p.Name))}.", nameof(piece));
            }
        }
    }
}

/// <summary>One piece of part 4b at one precision.</summary>
/// <param name="Piece">Name shared with pytorch_peer.py.</param>
/// <param name="Precision">fp32 or amp_bf16.</param>
/// <param name="PerStep">How many times the piece runs in one training step.</param>
/// <param name="What">What the piece is.</param>
/// <param name="OursForward">Our forward ms per iteration.</param>
/// <param name="PeerForward">PyTorch's forward ms per iteration.</param>
/// <param name="RatioForward">Per-round ratio ours / PyTorch, forward.</param>
/// <param name="OursBackward">Our forward+backward ms per iteration (null for forward-only pieces).</param>
/// <param name="PeerBackward">PyTorch's forward+backward ms per iteration.</param>
/// <param name="RatioBackward">Per-round ratio ours / PyTorch, forward+backward.</param>
/// <param name="ExcessPerStepMs">(ours − PyTorch) median ms × times per step, forward+backward where it exists.</param>
internal sealed record PeerModuleRow(
    string Piece, string Precision, int PerStep, string What, Stats OursForward, Stats PeerForward, Stats RatioForward,
    Stats? OursBackward, Stats? PeerBackward, Stats? RatioBackward, double ExcessPerStepMs);
