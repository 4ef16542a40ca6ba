#!/usr/bin/python3
"""memmodel.hf_convert: the bundled model to a transformers checkpoint and
back gives the same GGUF tensors and metadata, and the q/k row permutation
makes transformers' RoPE (halves) give the attention scores of the GGUF
convention (pairs) -- checked with numpy on the converted weights."""
import json
import os

import pyenv
import numpy as np

from memmodel import gguf, hf_convert, safetensors_io  # tools/ on PYTHONPATH (meson)


def rope_pairs(x, pos, theta):
    """GGUF/msadb convention: dims (2i, 2i+1) rotate by pos * theta^(-2i/D)."""
    D = x.shape[-1]
    f = theta ** (-np.arange(0, D, 2) / D)
    a = pos[:, None] * f[None]
    c, s = np.cos(a), np.sin(a)
    y = x.copy()
    y[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    y[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
    return y


def rope_halves(x, pos, theta):
    """transformers' Llama: dims (i, i + D/2) rotate by pos * theta^(-2i/D)."""
    D = x.shape[-1]
    f = theta ** (-np.arange(0, D, 2) / D)
    a = pos[:, None] * f[None]
    c, s = np.cos(a), np.sin(a)
    h = D // 2
    return np.concatenate([x[..., :h] * c - x[..., h:] * s, x[..., :h] * s + x[..., h:] * c], -1)


def test_round_trip_and_rope():
    d = pyenv.tmpdir("msadb-convert-")
    hf = os.path.join(d, "hf")
    hf_convert.gguf2hf(pyenv.MODEL, hf, os.path.join(pyenv.ROOT, "models", "msadb-mem.tokenizer.model"))
    cfg = json.load(open(os.path.join(hf, "config.json")))
    assert cfg["model_type"] == "llama" and cfg["msadb_routing"] == {"summary": "mean", "score": "dot"}
    assert os.path.exists(os.path.join(hf, "tokenizer.model"))
    back = os.path.join(d, "back.gguf")
    hf_convert.hf2gguf(hf, back, "q8_0")
    a, b = gguf.GGUFReader(pyenv.MODEL), gguf.GGUFReader(back)
    assert a.meta == b.meta
    assert sorted(a.tensors) == sorted(b.tensors)
    for n, t in a.tensors.items():
        assert t.ggml_type == b.tensors[n].ggml_type and t.raw == b.tensors[n].raw, n

    # scores of layer 0, head 1 (kv head 0) on random hidden states
    st = safetensors_io.st_read(os.path.join(hf, "model.safetensors"))
    H, KV, D, theta = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rope_theta"]
    x = np.random.default_rng(0).standard_normal((7, cfg["hidden_size"]))
    pos = np.arange(7, dtype=np.float64) * 13
    wq_g, wk_g = a.tensor_f32("blk.0.attn_q.weight"), a.tensor_f32("blk.0.attn_k.weight")
    wq_h, wk_h = st["model.layers.0.self_attn.q_proj.weight"], st["model.layers.0.self_attn.k_proj.weight"]
    q_g = rope_pairs((x @ wq_g.T).reshape(7, H, D)[:, 1], pos, theta)
    k_g = rope_pairs((x @ wk_g.T).reshape(7, KV, D)[:, 0], pos, theta)
    q_h = rope_halves((x @ wq_h.T).reshape(7, H, D)[:, 1], pos, theta)
    k_h = rope_halves((x @ wk_h.T).reshape(7, KV, D)[:, 0], pos, theta)
    s_g, s_h = q_g @ k_g.T, q_h @ k_h.T
    assert np.abs(s_g - s_h).max() <= 1e-3 * np.abs(s_g).max(), np.abs(s_g - s_h).max()
    # without the permutation the scores differ: the check can fail
    q_x = rope_halves((x @ wq_g.T).reshape(7, H, D)[:, 1], pos, theta)
    k_x = rope_halves((x @ wk_g.T).reshape(7, KV, D)[:, 0], pos, theta)
    assert np.abs(q_x @ k_x.T - s_g).max() > 1e-2 * np.abs(s_g).max()
    # the keys of the two conventions: one permutation within each head
    assert np.allclose(k_g[:, 0::2], k_h[:, :D // 2], atol=1e-4) and np.allclose(k_g[:, 1::2], k_h[:, D // 2:], atol=1e-4)


def test_refusals():
    d = pyenv.tmpdir("msadb-convert-")
    bad = os.path.join(d, "bad.gguf")
    gguf.edit(pyenv.MODEL, bad, set_kv=[("general.architecture", gguf.T_STRING, "gpt2")])
    try:
        hf_convert.gguf2hf(bad, os.path.join(d, "x"))
        raise AssertionError("a gpt2 GGUF converted")
    except SystemExit as e:
        assert "only llama" in str(e)


if __name__ == "__main__":
    pyenv.run_tests(globals())
