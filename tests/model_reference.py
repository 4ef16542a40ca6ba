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
same way, so quantized models are compared on equal weights.

Every configuration runs twice: with MSADB_MODEL_F32=1 (the f32 products, tight
tolerances) and in the runtime's default mode.  Where that is bf16 (a CPU with
AVX512-BF16, runtime/matmul.h) the reference rounds to bf16 what the runtime
rounds: the weights and inputs of every projection, and in attention the
scaled queries, the keys, the probabilities and the values.  An f32 difference
of one unit in the last place now and then puts an input on the other side of
a bf16 rounding boundary (one input of a few thousand); its 2^-9 change then
spreads to later layers and, through attention, to later tokens.  So bf16 runs
are judged by two figures: the median error (most values agree to f32
accumulation, ~1e-8; without the rounding in the reference it is ~5e-4, which
is checked, so that the comparison could not pass by being loose) and the
largest error, which bounds what such flips did.  Exit 77 (skip) when torch is
not installed (Debian: python3-torch).
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


def bf16(t):
    """t rounded to bf16 (round to nearest even, through f32), as float64."""
    return t.to(torch.float32).to(torch.bfloat16).to(torch.float64)


def reference(path, tokens, positions, round_bf16=False):
    """The forward pass; round_bf16: the products see bf16 inputs and weights."""
    r = gguf.GGUFReader(path)
    rd = bf16 if round_bf16 else (lambda t: t)

    def mm(h, w):
        return rd(h) @ rd(w).T

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
        q = mm(h, W(r, p + "attn_q.weight")).reshape(n, nq, d)
        k = mm(h, W(r, p + "attn_k.weight")).reshape(n, nkv, d)
        v = mm(h, W(r, p + "attn_v.weight")).reshape(n, nkv, d)
        q, k = rope(q, positions, c), rope(k, positions, c)
        kq = k.repeat_interleave(grp, dim=1)        # kv head of q head h is h // grp
        vq = v.repeat_interleave(grp, dim=1)
        if round_bf16:                               # scale applied to q before rounding
            s = torch.einsum("ihd,thd->hit", rd(q / np.sqrt(d)), rd(kq))
        else:
            s = torch.einsum("ihd,thd->hit", q, kq) / np.sqrt(d)
        s = s.masked_fill(mask[None], float("-inf"))
        lse = torch.logsumexp(s, -1)                 # [heads, n]
        o = torch.einsum("hit,thd->ihd", rd(torch.softmax(s, -1)), rd(vq))
        rec["k"].append(k.permute(1, 0, 2))
        rec["v"].append(v.permute(1, 0, 2))
        rec["q"].append(q)
        rec["out"].append(o)
        rec["lse"].append(lse.T)
        x = x + mm(o.reshape(n, nq * d), W(r, p + "attn_output.weight"))
        h = rms_norm(x, W(r, p + "ffn_norm.weight"), c["eps"])
        g = torch.nn.functional.silu(mm(h, W(r, p + "ffn_gate.weight")))
        x = x + mm(g * mm(h, W(r, p + "ffn_up.weight")), W(r, p + "ffn_down.weight"))
    logits = mm(rms_norm(x, W(r, "output_norm.weight"), c["eps"]), out_w)
    res = {k: torch.stack(v).numpy() for k, v in rec.items()}
    res["logits"] = logits.numpy()
    return res


def rel_err(ref, got, stat=np.max):
    """stat (max or median) of |ref - got| relative to max |ref| (at least 1)."""
    ref = ref.reshape(-1)
    got = got.reshape(-1)
    return float(stat(np.abs(ref - got)) / max(1.0, float(np.max(np.abs(ref)))))


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
    tols = {"f32": {"logits": 1e-4, "k": 1e-5, "v": 1e-5, "q": 1e-5, "out": 1e-5, "lse": 1e-5},
            "bf16": {"logits": 5e-2, "k": 2e-2, "v": 2e-2, "q": 2e-2, "out": 2e-2, "lse": 2e-2}}
    bf16_median = 1e-5      # the median error a bf16 run must stay under, every key
    failed = 0
    modes = []
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts, kind, n in CONFIGS:
            path = os.path.join(tmp, name + ".gguf")
            subprocess.check_call([sys.executable, "-m", "memmodel.make_test_model",
                                   path] + opts.split())
            vocab = len(gguf.GGUFReader(path).meta["tokenizer.ggml.tokens"])
            tokens = rng.integers(0, vocab, n).tolist()
            pos = positions_for(kind, n)
            for force_f32 in (True, False):
                prefix = os.path.join(tmp, name + ("-f32" if force_f32 else "-default"))
                env = dict(os.environ)
                env.pop("MSADB_MODEL_F32", None)
                if force_f32:
                    env["MSADB_MODEL_F32"] = "1"
                subprocess.check_call([exe, "--dump", path, prefix, ",".join(map(str, tokens)),
                                       ",".join(map(str, pos))], env=env)
                with open(prefix + ".matmul") as f:
                    mode = f.read().strip()
                if force_f32 and mode != "f32":
                    print("%s: MSADB_MODEL_F32=1 gave %r products (FAIL)" % (name, mode))
                    failed += 1
                    continue
                if not force_f32 and mode == "f32":
                    continue                    # no AVX512-BF16: the run above was it
                modes.append(mode)
                ref = reference(path, tokens, pos, round_bf16=mode == "bf16")
                got = {key: np.fromfile(prefix + "." + key, dtype=np.float32).astype(np.float64)
                       for key in ("logits", "k", "v", "q", "out", "lse")}
                errs = []
                for key, g in got.items():
                    if g.size != ref[key].size:
                        errs.append("%s: size %d, want %d" % (key, g.size, ref[key].size))
                        failed += 1
                        continue
                    e = rel_err(ref[key], g)
                    errs.append("%s %.1e" % (key, e))
                    if not e <= tols[mode][key]:
                        errs[-1] += " (FAIL, tolerance %.0e)" % tols[mode][key]
                        failed += 1
                    if mode == "bf16":
                        e = rel_err(ref[key], g, np.median)
                        errs[-1] += " (median %.0e)" % e
                        if not e <= bf16_median:
                            errs[-1] += " (FAIL, median tolerance %.0e)" % bf16_median
                            failed += 1
                if mode == "bf16":
                    # the unrounded reference must be clearly further off:
                    # otherwise the median could not tell bf16 from f32
                    plain = reference(path, tokens, pos)
                    e = rel_err(plain["logits"], got["logits"], np.median)
                    errs.append("unrounded logits median %.0e" % e)
                    if not e > 10 * bf16_median:
                        errs[-1] += " (FAIL, want > %.0e)" % (10 * bf16_median)
                        failed += 1
                print("%-30s %-4s %s" % (name, mode, ", ".join(errs)))
    print("modes compared: %s" % ", ".join(sorted(set(modes))))
    if failed:
        print("model_reference: %d comparisons failed" % failed)
        return 1
    print("model_reference: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
