#!/usr/bin/env python3
"""PyTorch eager peer of ComposerSharp's training-step benchmark (parts peer, peer-modules and memory of benchmarks/README.md).

Trains the same BERT MLM shape as benchmarks/TrainingSetup.cs (post-LN encoder with fused QKV projection,
learned position embedding, embedding LayerNorm, MLM transform + LayerNorm, decoder tied to the token
embedding, cross-entropy over the masked positions computed in float32, AdamW) with PyTorch eager on the CPU,
in fp32 or under torch.autocast('cpu', dtype=torch.bfloat16).

With --model gpt it trains a GPT-2 style causal LM instead (ComposerSharp's GptForCausalLM). With --memory-steps N it
prints {"start": VmRSS before the model, "peak": VmHWM of N steps} (benchmark part "memory").

Two modes:
  standalone:  python3 benchmarks/pytorch_peer.py --precision amp_bf16 --steps 10 --threads 2
               prints one JSON line with the step times.
  --serve:     prints a JSON "ready" line, then reads commands from stdin, one per line:
               "run <fp32|amp_bf16> <steps>" -> one JSON line {"precision", "ms": [per-step ms]}
               "module <piece> <fp32|amp_bf16> <fwd|fwdbwd> <iters>" -> {"ms": mean ms per iteration} of one
               piece of the step (see PIECES and ModuleTimer), for the per-module comparison (part peer-modules)
               "quit" -> exits.
               The .NET harness uses it to interleave PyTorch's steps with its own in the same run.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads, attn_dropout):
        super().__init__()
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.heads = heads
        self.attn_dropout = attn_dropout

    def forward(self, x, mask):
        b, t, hidden = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = attend(q, k, v, mask, self.attn_dropout if self.training else 0.0)
        return self.out_proj(a.transpose(1, 2).reshape(b, t, hidden))


def attend(q, k, v, mask, p):
    """Softmax(q kᵀ / √d, masked) v with attention dropout p: SDPA where PyTorch has it (≥ 2.0), else the same math unfused."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    # PyTorch < 2.0 (e.g. Debian 12's 1.13)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return F.dropout(scores.softmax(-1), p, p > 0) @ v


class Block(nn.Module):
    """Post-LN transformer block (BERT), or pre-LN with tanh GELU when pre (GPT-2)."""

    def __init__(self, hidden, heads, intermediate, dropout, eps, pre=False):
        super().__init__()
        self.pre = pre
        self.attn = SelfAttention(hidden, heads, dropout)
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.fc_in = nn.Linear(hidden, intermediate)
        self.fc_out = nn.Linear(intermediate, hidden)
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        if self.pre:
            h = x + self.dropout(self.attn(self.ln_1(x), mask))
            return h + self.dropout(self.fc_out(F.gelu(self.fc_in(self.ln_2(h)), approximate="tanh")))
        h = self.ln_1(x + self.dropout(self.attn(x, mask)))
        return self.ln_2(h + self.dropout(self.fc_out(F.gelu(self.fc_in(h)))))


class BertForMaskedLM(nn.Module):
    def __init__(self, layers, hidden, heads, intermediate, vocab, max_len, dropout=0.1, eps=1e-12, std=0.02):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(max_len, hidden)
        self.emb_ln = nn.LayerNorm(hidden, eps=eps)
        self.emb_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(Block(hidden, heads, intermediate, dropout, eps) for _ in range(layers))
        self.mlm_transform = nn.Linear(hidden, hidden)
        self.mlm_ln = nn.LayerNorm(hidden, eps=eps)
        self.mlm_bias = nn.Parameter(torch.zeros(vocab))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask, labels=None):
        """MLM logits [B, T, V]; with labels, only at the positions whose label is not -100, [N, V] (Mosaic BERT's sparse prediction)."""
        return self.head(self.encode(input_ids, attention_mask), labels)

    def embed(self, input_ids):
        """Token + position embedding, embedding LayerNorm, dropout: [B, T, hidden]."""
        h = self.wte(input_ids) + self.wpe(torch.arange(input_ids.shape[1], device=input_ids.device))
        return self.emb_dropout(self.emb_ln(h))

    def encode(self, input_ids, attention_mask):
        """Hidden states [B, T, hidden] of the encoder."""
        t = input_ids.shape[1]
        h = self.embed(input_ids)
        mask = attention_mask.ne(0).view(attention_mask.shape[0], 1, 1, t)
        for layer in self.layers:
            h = layer(h, mask)
        return h

    def head(self, h, labels=None):
        """The MLM head on hidden states [B, T, hidden]: logits [B, T, V], or [N, V] at the labelled positions."""
        if labels is not None:
            h = h.reshape(-1, h.shape[-1]).index_select(0, labels.reshape(-1).ne(IGNORE_INDEX).nonzero().squeeze(1))
        h = F.gelu(self.mlm_transform(h))
        if h.dtype != self.mlm_ln.weight.dtype:
            # bf16 activations under autocast: libtorch >= 2.1 normalises them with the float32 weight directly (a
            # mixed-dtype CPU kernel); PyTorch 1.13 has no such kernel, so it needs the activations in float32.
            h = h.float()
        h = self.mlm_ln(h)
        return F.linear(h, self.wte.weight, self.mlm_bias)


class GptForCausalLM(nn.Module):
    """GPT-2 style decoder (pre-LN, causal attention, final LayerNorm, head tied to the token embedding), as ComposerSharp's GptForCausalLM."""

    def __init__(self, layers, hidden, heads, intermediate, vocab, max_len, dropout=0.1, eps=1e-5, std=0.02):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(max_len, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(Block(hidden, heads, intermediate, dropout, eps, pre=True) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden, eps=eps)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask, labels=None):
        """Next-token logits [B, T, V]."""
        t = input_ids.shape[1]
        h = self.emb_dropout(self.wte(input_ids) + self.wpe(torch.arange(t, device=input_ids.device)))
        mask = torch.ones(t, t, dtype=torch.bool).tril().view(1, 1, t, t) & attention_mask.ne(0).view(-1, 1, 1, t)
        for layer in self.layers:
            h = layer(h, mask)
        return F.linear(self.ln_f(h), self.wte.weight)


def causal_loss(logits, labels):
    """Mean next-token cross-entropy in float32: position t predicts label t+1 (the last position is ignored)."""
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], 1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def resident_bytes(field="VmRSS:"):
    """VmRSS (or another /proc/self/status field, e.g. VmHWM:) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return -1


def mlm_loss(logits, labels):
    flat = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1)
    if flat.shape[0] != flat_labels.shape[0]:  # sparse logits: the selected labels, in the same row-major order
        flat_labels = flat_labels[flat_labels.ne(IGNORE_INDEX)]
    total = F.cross_entropy(flat, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / flat_labels.ne(IGNORE_INDEX).sum().clamp_min(1).float()


def make_batches(args, count):
    """Random token batches masked as BERT does (15% selected; 80% mask id, 10% random id, 10% kept)."""
    g = torch.Generator().manual_seed(args.seed)
    regular = args.regular_vocab
    mask_id = regular + 2
    batches = []
    for _ in range(count):
        ids = torch.randint(0, regular, (args.batch, args.seq), generator=g)
        selected = torch.rand(ids.shape, generator=g) < 0.15
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
        r = torch.rand(ids.shape, generator=g)
        ids = torch.where(selected & (r < 0.8), torch.full_like(ids, mask_id), ids)
        ids = torch.where(selected & (r >= 0.8) & (r < 0.9), torch.randint(0, regular, ids.shape, generator=g), ids)
        batches.append((ids, torch.ones_like(ids), labels))
    return batches


def make_causal_batches(args, count):
    """Random token batches with labels = input ids (the loss shifts them), as ComposerSharp's CausalLmCollator."""
    g = torch.Generator().manual_seed(args.seed)
    ids = [torch.randint(0, args.regular_vocab, (args.batch, args.seq), generator=g) for _ in range(count)]
    return [(x, torch.ones_like(x), x.clone()) for x in ids]


class Peer:
    def __init__(self, args):
        torch.set_num_threads(args.threads)
        gpt = args.model == "gpt"
        self.batches = (make_causal_batches if gpt else make_batches)(args, 8)
        self.baseline_rss = resident_bytes()
        self.loss = causal_loss if gpt else mlm_loss
        torch.manual_seed(args.seed)
        self.model = (GptForCausalLM if gpt else BertForMaskedLM)(args.layers, args.hidden, args.heads, args.intermediate, args.vocab, args.seq)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr)
        self.next = 0

    def step(self, precision, sparse=False):
        ids, attention_mask, labels = self.batches[self.next]
        self.next = (self.next + 1) % len(self.batches)
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "amp_bf16" else contextlib.nullcontext()
        with ctx:
            loss = self.loss(self.model(ids, attention_mask, labels if sparse else None), labels)
        loss.backward()
        self.optimizer.step()
        return (time.perf_counter() - start) * 1000.0


# The pieces "module" times, in the order the .NET part lists them (benchmarks/PeerModulesBenchmark.cs builds the same
# pieces from ComposerSharp's modules). Each is (needs_backward_ok, builder); a builder returns a function that runs
# the piece's forward once and returns its output.
PIECES = ["embeddings", "mask", "qkv", "sdpa", "out_proj", "attention", "fc_in", "gelu", "fc_out", "ffn", "dropout",
          "residual_add", "layernorm", "block", "encoder", "head", "loss", "model", "optimizer", "zero_grad", "train_step"]
FORWARD_ONLY = {"mask", "optimizer", "zero_grad", "train_step"}


class ModuleTimer:
    """Times one piece of the step (forward, or forward + backward with a fixed random output gradient) at the model's shapes."""

    def __init__(self, peer, args):
        self.peer = peer
        self.args = args
        self.built = {}
        g = torch.Generator().manual_seed(args.seed + 1)
        self.grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in peer.model.parameters()]

    def leaf(self, *shape, dtype=torch.float32):
        return torch.randn(*shape).to(dtype).requires_grad_()

    def build(self, name, low):
        a, m = self.args, self.peer.model
        layer = m.layers[0]
        b, t, hidden, inter, heads = a.batch, a.seq, a.hidden, a.intermediate, a.heads
        ids, attention_mask, labels = self.peer.batches[0]
        mask = attention_mask.ne(0).view(b, 1, 1, t)
        if name == "embeddings":
            return lambda: m.embed(ids)
        if name == "mask":
            return lambda: attention_mask.ne(0).view(b, 1, 1, t)
        if name == "qkv":
            x = self.leaf(b, t, hidden)
            return lambda: layer.attn.qkv(x)
        if name == "sdpa":
            q, k, v = (self.leaf(b, heads, t, hidden // heads, dtype=low) for _ in range(3))
            return lambda: attend(q, k, v, mask, layer.attn.attn_dropout)
        if name == "out_proj":
            x = self.leaf(b, t, hidden, dtype=low)
            return lambda: layer.attn.out_proj(x)
        if name == "attention":
            x = self.leaf(b, t, hidden)
            return lambda: layer.attn(x, mask)
        if name == "fc_in":
            x = self.leaf(b, t, hidden)
            return lambda: layer.fc_in(x)
        if name == "gelu":
            x = self.leaf(b, t, inter, dtype=low)
            return lambda: F.gelu(x)
        if name == "fc_out":
            x = self.leaf(b, t, inter, dtype=low)
            return lambda: layer.fc_out(x)
        if name == "ffn":
            x = self.leaf(b, t, hidden)
            return lambda: layer.fc_out(F.gelu(layer.fc_in(x)))
        if name == "dropout":
            x = self.leaf(b, t, hidden, dtype=low)
            return lambda: layer.dropout(x)
        if name == "residual_add":
            x, y = self.leaf(b, t, hidden), self.leaf(b, t, hidden, dtype=low)
            return lambda: x + y
        if name == "layernorm":
            x = self.leaf(b, t, hidden)
            return lambda: layer.ln_1(x)
        if name == "block":
            x = self.leaf(b, t, hidden)
            return lambda: layer(x, mask)
        if name == "encoder":
            return lambda: m.encode(ids, attention_mask)
        if name == "head":
            x = self.leaf(b, t, hidden)
            return lambda: m.head(x, labels)
        if name == "loss":
            x = self.leaf(int(labels.ne(IGNORE_INDEX).sum()), a.vocab, dtype=low)
            return lambda: mlm_loss(x, labels)
        if name == "model":
            return lambda: mlm_loss(m(ids, attention_mask, labels), labels)
        if name == "optimizer":
            return self.peer.optimizer.step
        if name == "zero_grad":
            params = list(m.parameters())

            def zero_grad():
                for p, g in zip(params, self.grads):
                    p.grad = g
                self.peer.optimizer.zero_grad(set_to_none=True)
            return zero_grad
        if name == "train_step":
            return None
        raise ValueError(f"unknown piece {name!r}; expected one of {PIECES}")

    def run(self, name, precision, backward, iters):
        """Mean milliseconds per iteration of the piece; parameter gradients accumulate across iterations (as micro-batches would)."""
        if name not in PIECES:
            raise ValueError(f"unknown piece {name!r}; expected one of {PIECES}")
        if backward and name in FORWARD_ONLY:
            raise ValueError(f"piece {name!r} has no backward")
        low = torch.bfloat16 if precision == "amp_bf16" else torch.float32
        if name == "train_step":
            return sum(self.peer.step(precision, sparse=True) for _ in range(iters)) / iters
        key = (name, precision)
        if key not in self.built:
            self.built[key] = [self.build(name, low), None]
        fn, grad = self.built[key]
        if name == "optimizer":
            for p, g in zip(self.peer.model.parameters(), self.grads):
                if p.grad is None:
                    p.grad = g.clone()
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "amp_bf16" else contextlib.nullcontext
        start = time.perf_counter()
        for _ in range(iters):
            with ctx():
                y = fn()
            if backward:
                if grad is None:
                    grad = torch.randn(y.shape).to(y.dtype) if y.dim() > 0 else None
                    self.built[key][1] = grad
                y.backward(grad)
        return (time.perf_counter() - start) * 1000.0 / iters


def blas_library():
    """The BLAS shared object mapped into this process (Debian switches libblas.so.3 between reference BLAS and OpenBLAS)."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line}
        return ", ".join(sorted(os.path.basename(n) for n in names)) or "none mapped"
    except OSError:
        return "unknown"


def describe(args, peer):
    return {
        "ready": True,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "blas": blas_library(),
        "sdpa": hasattr(F, "scaled_dot_product_attention"),
        "parameters": sum(p.numel() for p in peer.model.parameters()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--precision", choices=["fp32", "amp_bf16"], default="amp_bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=576)
    parser.add_argument("--regular-vocab", type=int, default=512)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--model", choices=["bert", "gpt"], default="bert")
    parser.add_argument("--memory-steps", type=int, default=0,
                        help="print {start: VmRSS before the model, peak: VmHWM of this many steps (sparse MLM head), reset just before them}")
    args = parser.parse_args()

    peer = Peer(args)
    if args.memory_steps > 0:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        for _ in range(args.memory_steps):
            peer.step(args.precision, sparse=True)
        print(json.dumps({"start": peer.baseline_rss, "peak": resident_bytes("VmHWM:")}))
        return
    info = describe(args, peer)
    if args.serve:
        print(json.dumps(info), flush=True)
        timer = None
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "quit":
                break
            if parts[0] == "module":
                # "module <piece> <fp32|amp_bf16> <fwd|fwdbwd> <iters>" -> {"ms": mean ms per iteration}
                try:
                    if len(parts) != 5 or parts[2] not in ("fp32", "amp_bf16") or parts[3] not in ("fwd", "fwdbwd"):
                        raise ValueError(f"expected 'module <piece> fp32|amp_bf16 fwd|fwdbwd N'; pieces: {' '.join(PIECES)}")
                    if timer is None:
                        timer = ModuleTimer(peer, args)
                    print(json.dumps({"ms": timer.run(parts[1], parts[2], parts[3] == "fwdbwd", int(parts[4]))}), flush=True)
                except (ValueError, RuntimeError) as e:
                    print(json.dumps({"error": f"{line.strip()!r}: {e}"}), flush=True)
                continue
            if parts[0] != "run" or len(parts) not in (3, 4) or parts[1] not in ("fp32", "amp_bf16") or parts[3:] not in ([], ["dense"], ["sparse"]):
                print(json.dumps({"error": f"unknown command: {line.strip()!r}; expected 'run fp32|amp_bf16 N [dense|sparse]' or 'quit'"}), flush=True)
                continue
            sparse = parts[3:] == ["sparse"]
            ms = [peer.step(parts[1], sparse) for _ in range(int(parts[2]))]
            print(json.dumps({"precision": parts[1], "ms": ms}), flush=True)
        return

    for _ in range(args.warmup):
        peer.step(args.precision)
    ms = [peer.step(args.precision) for _ in range(args.steps)]
    info.update({"precision": args.precision, "ms": ms, "median_ms": sorted(ms)[len(ms) // 2]})
    print(json.dumps(info))


if __name__ == "__main__":
    main()
