#!/usr/bin/env python3
"""model_reference.py -- msadb's C llama forward pass against a plain PyTorch
implementation written from the definitions (float64, CPU).

Usage: model_reference.py PATH/TO/test_model   (MSADB_SOURCE_ROOT optional)

For each configuration (f32/f16/bf16/q8_0 weights, tied and untied output,
GQA and MHA, RoPE theta, linear RoPE scaling, partial rotary dims, head dim
different from n_embd / n_heads, document-wise positions, an input longer
than the runtime's internal chunk) it writes a model with
tools/memmodel/make_test_model.py, runs `test_model --dump`, and compares:
  logits              [n][vocab]
  capture hook  K, V  [layers][kv_heads][n][head_dim]   (K after RoPE)
  attend hook   Q     [layers][n][heads][head_dim]      (after RoPE)
                out   [layers][n][heads][head_dim]      (local attention)
                lse   [layers][n][heads]                (natural log)
The reference reads the weights with tools/memmodel/gguf.py and dequantizes them the
same way, so quantized models are compared on equal weights.  Exit 77 (skip)
when torch is not installed (Debian: python3-torch).
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

try:
    import torch
except ImportError:
    sys.stderr.write("model_reference: torch not installed, skipping\n")
    sys.exit(77)

ROOT = os.environ.get("MSADB_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from memmodel import gguf  # noqa: E402  (tools/ on PYTHONPATH: tests/meson.build)

torch.set_default_dtype(torch.float64)


def cfg_of(r):
    m = r.meta
    n_embd = m["llama.embedding_length"]
    n_head = m["llama.attention.head_count"]
    head_dim = m.get("llama.attention.key_length", n_embd // n_head)
    scale = 1.0
    if m.get("llama.rope.scaling.type", "none") == "linear":
        scale = 1.0 / m["llama.rope.scaling.factor"]
    return dict(
        n_layer=m["llama.block_count"], n_embd=n_embd, n_head=n_head,
        n_kv=m.get("llama.attention.head_count_kv", n_head), head_dim=head_dim,
        n_rot=m.get("llama.rope.dimension_count", head_dim),
        theta=m.get("llama.rope.freq_base", 10000.0), freq_scale=scale,
        eps=m.get("llama.attention.layer_norm_rms_epsilon", 1e-5))


def W(r, name):
    return torch.from_numpy(r.tensor_f32(name).astype(np.float64))


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, pos, c):
    """GGUF-native ("normal") RoPE: rotate consecutive pairs (2i, 2i+1) of the
    first n_rot dims by pos * freq_scale * theta^(-2i/n_rot).  x: [n, heads, d]."""
    n_rot = c["n_rot"]
    if n_rot == 0:
        return x
    i = torch.arange(0, n_rot, 2, dtype=torch.float64)
    inv = c["theta"] ** (-i / n_rot)
    ang = (torch.tensor(pos, dtype=torch.float64)[:, None] * c["freq_scale"]) * inv[None, :]
    rot = torch.polar(torch.ones_like(ang), ang)[:, None, :]       # [n, 1, n_rot/2]
    xr = x[..., :n_rot].reshape(*x.shape[:-1], n_rot // 2, 2)
    z = torch.view_as_complex(xr.contiguous()) * rot
    return torch.cat([torch.view_as_real(z).reshape(*x.shape[:-1], n_rot), x[..., n_rot:]], -1)


def reference(path, tokens, positions):
    r = gguf.GGUFReader(path)
    c = cfg_of(r)
    n, d, nq, nkv = len(tokens), c["head_dim"], c["n_head"], c["n_kv"]
    grp = nq // nkv
    emb = W(r, "token_embd.weight")
    out_w = W(r, "output.weight") if "output.weight" in r.tensors else emb
    x = emb[torch.tensor(tokens)]
    mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # key after query
    rec = {k: [] for k in ("k", "v", "q", "out", "lse")}
    for l in range(c["n_layer"]):
        p = "blk.%d." % l
        h = rms_norm(x, W(r, p + "attn_norm.weight"), c["eps"])
        q = (h @ W(r, p + "attn_q.weight").T).reshape(n, nq, d)
        k = (h @ W(r, p + "attn_k.weight").T).reshape(n, nkv, d)
        v = (h @ W(r, p + "attn_v.weight").T).reshape(n, nkv, d)
        q, k = rope(q, positions, c), rope(k, positions, c)
        kq = k.repeat_interleave(grp, dim=1)        # kv head of q head h is h // grp
        vq = v.repeat_interleave(grp, dim=1)
        s = torch.einsum("ihd,thd->hit", q, kq) / np.sqrt(d)
        s = s.masked_fill(mask[None], float("-inf"))
        lse = torch.logsumexp(s, -1)                 # [heads, n]
        o = torch.einsum("hit,thd->ihd", torch.softmax(s, -1), vq)
        rec["k"].append(k.permute(1, 0, 2))
        rec["v"].append(v.permute(1, 0, 2))
        rec["q"].append(q)
        rec["out"].append(o)
        rec["lse"].append(lse.T)
        x = x + o.reshape(n, nq * d) @ W(r, p + "attn_output.weight").T
        h = rms_norm(x, W(r, p + "ffn_norm.weight"), c["eps"])
        g = torch.nn.functional.silu(h @ W(r, p + "ffn_gate.weight").T)
        x = x + (g * (h @ W(r, p + "ffn_up.weight").T)) @ W(r, p + "ffn_down.weight").T
    logits = rms_norm(x, W(r, "output_norm.weight"), c["eps"]) @ out_w.T
    res = {k: torch.stack(v).numpy() for k, v in rec.items()}
    res["logits"] = logits.numpy()
    return res


def rel_err(ref, got):
    ref = ref.reshape(-1)
    got = got.reshape(-1)
    return float(np.max(np.abs(ref - got)) / max(1.0, float(np.max(np.abs(ref)))))


CONFIGS = [
    # (name, make_test_model options, positions kind, n tokens)
    ("f32-tied-gqa", "--layers 2 --heads 4 --kv-heads 2 --head-dim 16 --ffn 64", "docs", 24),
    ("q8_0-untied-gqa-ropescale", "--layers 2 --heads 4 --kv-heads 2 --head-dim 32 --ffn 96 "
     "--untied --wtype q8_0 --rope-scale 4 --rope-theta 500000", "offset", 20),
    ("q8_0-tied", "--layers 3 --heads 4 --kv-heads 2 --head-dim 16 --embd 64 --ffn 128 "
     "--wtype q8_0", "docs", 33),
    ("f32-untied-mha-partial-rope", "--layers 2 --heads 3 --kv-heads 3 --head-dim 16 --ffn 48 "
     "--untied --rope-dims 8 --rope-scale 2", "plain", 17),
    ("bf16-keylength", "--layers 2 --heads 2 --kv-heads 1 --head-dim 12 --embd 20 --ffn 36 "
     "--wtype bf16", "docs", 15),
    ("f16-untied-mqa", "--layers 1 --heads 8 --kv-heads 1 --head-dim 8 --ffn 32 --wtype f16 "
     "--untied --eps 1e-6", "plain", 12),
    ("f32-long-chunked", "--layers 1 --heads 2 --kv-heads 1 --head-dim 8 --ffn 16", "docs", 530),
]


def positions_for(kind, n):
    if kind == "plain":
        return list(range(n))
    if kind == "offset":
        return [1000 + 3 * i for i in range(n)]
    half = n // 2                                   # two documents, positions restart
    return list(range(half)) + list(range(n - half))


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: model_reference.py PATH/TO/test_model\n")
        return 2
    exe = argv[1]
    tol = {"logits": 1e-4, "k": 1e-5, "v": 1e-5, "q": 1e-5, "out": 1e-5, "lse": 1e-5}
    failed = 0
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts, kind, n in CONFIGS:
            path = os.path.join(tmp, name + ".gguf")
            subprocess.check_call([sys.executable, "-m", "memmodel.make_test_model",
                                   path] + opts.split())
            vocab = len(gguf.GGUFReader(path).meta["tokenizer.ggml.tokens"])
            tokens = rng.integers(0, vocab, n).tolist()
            pos = positions_for(kind, n)
            prefix = os.path.join(tmp, name)
            subprocess.check_call([exe, "--dump", path, prefix, ",".join(map(str, tokens)),
                                   ",".join(map(str, pos))])
            ref = reference(path, tokens, pos)
            errs = []
            for key in ("logits", "k", "v", "q", "out", "lse"):
                got = np.fromfile(prefix + "." + key, dtype=np.float32)
                if got.size != ref[key].size:
                    errs.append("%s: size %d, want %d" % (key, got.size, ref[key].size))
                    continue
                e = rel_err(ref[key], got.astype(np.float64))
                errs.append("%s %.1e" % (key, e))
                if not e <= tol[key]:
                    errs[-1] += " (FAIL, tolerance %.0e)" % tol[key]
                    failed += 1
            print("%-30s %s" % (name, ", ".join(errs)))
    if failed:
        print("model_reference: %d comparisons failed" % failed)
        return 1
    print("model_reference: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
