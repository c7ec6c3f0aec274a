#!/usr/bin/env python3
"""Independent reference for the Hugging Face format tests (run by HuggingFaceReferenceTests.cs).

Reads safetensors files with its own parser (struct + json + numpy: no `safetensors` package), and computes the
forward pass of transformers' BertForMaskedLM, BertForSequenceClassification and GPT2LMHeadModel from config.json,
written from the maths of transformers' modeling_bert.py and modeling_gpt2.py (no transformers package), in float64.

  hf_reference.py check FOLDER INPUTS LOGITS    compare FOLDER's model on INPUTS with LOGITS; prints {"max_abs_diff": ..}
  hf_reference.py make ARCH FOLDER INPUTS OUT   write a random ARCH (bert_cls | bert_mlm | gpt2) model folder with
                                                this file's own safetensors writer, and its logits on INPUTS to OUT
  hf_reference.py bpe FOLDER TEXT               GPT-2 byte-level BPE of ASCII TEXT from FOLDER's vocab.json and
                                                merges.txt (as GPT2Tokenizer.bpe); prints {"ids": [...], "vocab": n, "merges": n}
"""
import json
import math
import struct
import sys

import numpy as np
import torch

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(array.copy())
    return header, out


def write_safetensors(path, tensors):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    codes = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64"}
    for name, t in tensors.items():
        raw = t.contiguous().numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def gelu(x):  # hidden_act "gelu": exact, x * Phi(x)
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_new(x):  # "gelu_new": the tanh approximation (GPT-2)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def act(name):
    return gelu if name == "gelu" else gelu_new


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def linear(x, w, b):  # nn.Linear: weight [out, in]
    return x @ w.T + b


def conv1d(x, w, b):  # GPT-2 Conv1D: weight [in, out]
    return x @ w + b


def attention(q, k, v, heads, additive_mask):
    bsz, t, hidden = q.shape
    d = hidden // heads
    split = lambda x: x.view(bsz, x.shape[1], heads, d).permute(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + additive_mask
    probs = torch.softmax(scores, dim=-1)
    return (probs @ v).permute(0, 2, 1, 3).reshape(bsz, t, hidden)


def bert(cfg, w, ids, mask, types, arch):
    eps, heads, f = cfg["layer_norm_eps"], cfg["num_attention_heads"], act(cfg["hidden_act"])
    t = ids.shape[1]
    h = w["bert.embeddings.word_embeddings.weight"][ids] + w["bert.embeddings.position_embeddings.weight"][torch.arange(t)]
    h = h + w["bert.embeddings.token_type_embeddings.weight"][types]
    h = layer_norm(h, w["bert.embeddings.LayerNorm.weight"], w["bert.embeddings.LayerNorm.bias"], eps)
    additive = (1.0 - mask[:, None, None, :].double()) * torch.finfo(torch.float64).min
    for i in range(cfg["num_hidden_layers"]):
        p = "bert.encoder.layer.%d." % i
        lin = lambda name, x: linear(x, w[p + name + ".weight"], w[p + name + ".bias"])
        ctx = attention(lin("attention.self.query", h), lin("attention.self.key", h), lin("attention.self.value", h), heads, additive)
        a = layer_norm(lin("attention.output.dense", ctx) + h, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        o = lin("output.dense", f(lin("intermediate.dense", a)))
        h = layer_norm(o + a, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    if arch == "BertForMaskedLM":
        x = f(linear(h, w["cls.predictions.transform.dense.weight"], w["cls.predictions.transform.dense.bias"]))
        x = layer_norm(x, w["cls.predictions.transform.LayerNorm.weight"], w["cls.predictions.transform.LayerNorm.bias"], eps)
        return x @ w["bert.embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]
    if cfg.get("classifier_pooling", "cls") == "mean":
        # BertForMeanPooledSequenceClassification (ComposerSharp's, not a transformers class): the attention-masked
        # mean of the last hidden states takes the place of h[:, 0] before BERT's pooler.
        m = mask.double()[:, :, None]
        first = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
    else:
        first = h[:, 0]
    pooled = torch.tanh(linear(first, w["bert.pooler.dense.weight"], w["bert.pooler.dense.bias"]))
    return linear(pooled, w["classifier.weight"], w["classifier.bias"])


def gpt2(cfg, w, ids, mask):
    eps, heads, f = cfg["layer_norm_epsilon"], cfg["n_head"], act(cfg["activation_function"])
    t = ids.shape[1]
    h = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][torch.arange(t)]
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None] & (mask[:, None, None, :] != 0)
    additive = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    hidden = h.shape[-1]
    for i in range(cfg["n_layer"]):
        p = "transformer.h.%d." % i
        a = layer_norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = conv1d(a, w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"])
        q, k, v = qkv.split(hidden, dim=2)
        h = h + conv1d(attention(q, k, v, heads, additive), w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"])
        m = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        h = h + conv1d(f(conv1d(m, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"])), w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
    h = layer_norm(h, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
    return h @ w["transformer.wte.weight"].T


def forward(folder, inputs):
    with open(folder + "/config.json") as fh:
        cfg = json.load(fh)
    _, weights = read_safetensors(folder + "/model.safetensors")
    weights = {k: v.double() for k, v in weights.items()}
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    arch = cfg["architectures"][0]
    if cfg["model_type"] == "gpt2":
        return gpt2(cfg, weights, ids, mask)
    return bert(cfg, weights, ids, mask, inputs["token_type_ids"], arch)


def make(arch, folder, inputs_path, out_path):
    import os
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    rnd = lambda *shape: (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.2).float()
    vocab, hidden, layers, heads, inner, positions = 101, 32, 2, 4, 64, 24
    w = {}
    if arch == "gpt2":
        cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab, "n_positions": positions, "n_embd": hidden,
               "n_layer": layers, "n_head": heads, "n_inner": inner, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
               "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "initializer_range": 0.02}
        w["transformer.wte.weight"], w["transformer.wpe.weight"] = rnd(vocab, hidden), rnd(positions, hidden)
        for i in range(layers):
            p = "transformer.h.%d." % i
            for ln in ("ln_1", "ln_2"):
                w[p + ln + ".weight"], w[p + ln + ".bias"] = 1.0 + rnd(hidden), rnd(hidden)
            for name, (n_in, n_out) in {"attn.c_attn": (hidden, 3 * hidden), "attn.c_proj": (hidden, hidden), "mlp.c_fc": (hidden, inner), "mlp.c_proj": (inner, hidden)}.items():
                w[p + name + ".weight"], w[p + name + ".bias"] = rnd(n_in, n_out), rnd(n_out)
            w[p + "attn.bias"] = torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions)  # the old causal-mask buffer
        w["transformer.ln_f.weight"], w["transformer.ln_f.bias"] = 1.0 + rnd(hidden), rnd(hidden)
    else:
        cfg = {"architectures": ["BertForSequenceClassification" if arch == "bert_cls" else "BertForMaskedLM"], "model_type": "bert",
               "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": inner,
               "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": positions,
               "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
               "id2label": {"0": "negative", "1": "neutral", "2": "positive"}, "label2id": {"negative": 0, "neutral": 1, "positive": 2}}
        e = "bert.embeddings."
        w[e + "word_embeddings.weight"], w[e + "position_embeddings.weight"], w[e + "token_type_embeddings.weight"] = rnd(vocab, hidden), rnd(positions, hidden), rnd(2, hidden)
        w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"] = 1.0 + rnd(hidden), rnd(hidden)
        for i in range(layers):
            p = "bert.encoder.layer.%d." % i
            for name, (n_in, n_out) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden), "attention.self.value": (hidden, hidden),
                                        "attention.output.dense": (hidden, hidden), "intermediate.dense": (hidden, inner), "output.dense": (inner, hidden)}.items():
                w[p + name + ".weight"], w[p + name + ".bias"] = rnd(n_out, n_in), rnd(n_out)
            for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
                w[p + ln + ".weight"], w[p + ln + ".bias"] = 1.0 + rnd(hidden), rnd(hidden)
        if arch == "bert_cls":
            w["bert.pooler.dense.weight"], w["bert.pooler.dense.bias"] = rnd(hidden, hidden), rnd(hidden)
            w["classifier.weight"], w["classifier.bias"] = rnd(3, hidden), rnd(3)
        else:
            c = "cls.predictions."
            w[c + "transform.dense.weight"], w[c + "transform.dense.bias"] = rnd(hidden, hidden), rnd(hidden)
            w[c + "transform.LayerNorm.weight"], w[c + "transform.LayerNorm.bias"] = 1.0 + rnd(hidden), rnd(hidden)
            w[c + "bias"] = rnd(vocab)
    with open(folder + "/config.json", "w") as fh:
        json.dump(cfg, fh, indent=2)
    write_safetensors(folder + "/model.safetensors", w)
    _, inputs = read_safetensors(inputs_path)
    logits = forward(folder, inputs)
    write_safetensors(out_path, {"logits": logits.float()})
    print(json.dumps({"written": folder, "tensors": len(w)}))


def bpe_encode(folder, text):
    import re
    with open(folder + "/vocab.json", encoding="utf-8") as fh:
        vocab = json.load(fh)
    with open(folder + "/merges.txt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")[1:]
    ranks = {tuple(line.split(" ")): i for i, line in enumerate(lines) if line}
    # GPT-2's byte -> unicode table (encoder.py bytes_to_unicode)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_char = {b: chr(c) for b, c in zip(bs, cs)}
    ids = []
    # GPT-2's pre-tokenizer restricted to ASCII letters, digits, punctuation and spaces (no contractions in the test text)
    for piece in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", text):
        word = [byte_char[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = [(ranks.get((word[i], word[i + 1]), 1 << 30), i) for i in range(len(word) - 1)]
            best, i = min(pairs)
            if best == 1 << 30:
                break
            word = word[:i] + [word[i] + word[i + 1]] + word[i + 2:]
        ids.extend(vocab[w] for w in word)
    return ids, len(vocab), len(ranks)


def main():
    if sys.argv[1] == "bpe":
        ids, n_vocab, n_merges = bpe_encode(sys.argv[2], sys.argv[3])
        print(json.dumps({"ids": ids, "vocab": n_vocab, "merges": n_merges}))
        return 0
    if sys.argv[1] == "check":
        folder, inputs_path, logits_path = sys.argv[2:5]
        _, inputs = read_safetensors(inputs_path)
        _, ours = read_safetensors(logits_path)
        reference = forward(folder, inputs)
        theirs = ours["logits"].double()
        if tuple(theirs.shape) != tuple(reference.shape):
            print(json.dumps({"error": "shape %s vs reference %s" % (list(theirs.shape), list(reference.shape))}))
            return 1
        print(json.dumps({"max_abs_diff": float((theirs - reference).abs().max()), "max_abs_logit": float(reference.abs().max())}))
        return 0
    make(*sys.argv[2:6])
    return 0


if __name__ == "__main__":
    sys.exit(main())
