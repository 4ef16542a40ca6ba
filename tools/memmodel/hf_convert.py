#!/usr/bin/python3
"""hf_convert.py -- the bundled memory model (GGUF) as a Hugging Face
transformers checkpoint and back, so the same model runs in msadb's
built-in runtime and in transformers (with msadb.transformers' memory).

    PYTHONPATH=tools python3 -m memmodel.hf_convert gguf2hf models/msadb-mem.gguf OUT_DIR
        [--tokenizer models/msadb-mem.tokenizer.model]
    PYTHONPATH=tools python3 -m memmodel.hf_convert hf2gguf HF_DIR OUT.gguf [--wtype q8_0|f16|f32|bf16]

gguf2hf writes OUT_DIR/config.json (LlamaForCausalLM), model.safetensors
(float32, the GGUF weights dequantized), generation_config.json, and the
SentencePiece tokenizer.model with tokenizer_config.json (LlamaTokenizer).
hf2gguf reads such a directory (float32 or float16 safetensors) and writes
a GGUF file the runtime loads (llama.cpp's names, through
memmodel.export_gguf).  Needs numpy only.

RoPE: GGUF models (llama.cpp's convention, and msadb's) rotate consecutive
pairs (2i, 2i+1) of each head; transformers' Llama rotates halves (i, i +
head_dim/2).  The converter permutes the rows of the q and k projections
(per head: even rows first, then odd rows; hf2gguf undoes it), which makes
both give the same attention scores.  The keys transformers computes are
then a fixed permutation, within each head, of the runtime's: a store
filled by one engine is read by the other when msadb.transformers reorders
its queries and keys alike (key_layout="pairs"), which changes no score.  The
routing the model was trained with (msadb.routing.* keys) is kept in
config.json as "msadb_routing", its abstain answer (msadb.abstain), its follow-up prefix
(msadb.followup) and how msadb's ingest reads a document for it (msadb.segment) in
"msadb_source".
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

from . import gguf, safetensors_io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
         "ffn_norm": "post_attention_layernorm"}
# memmodel.net's names, which export_gguf.build() takes
TRAIN = {"attn_q": "wq.weight", "attn_k": "wk.weight", "attn_v": "wv.weight",
         "attn_output": "wo.weight", "ffn_gate": "w_gate.weight", "ffn_up": "w_up.weight",
         "ffn_down": "w_down.weight", "attn_norm": "attn_norm", "ffn_norm": "ffn_norm"}


def pairs_to_halves(w, n_heads, hd):
    """q/k projection rows, per head, from the pair convention to halves."""
    out, inp = w.shape
    return w.reshape(n_heads, hd // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def halves_to_pairs(w, n_heads, hd):
    out, inp = w.shape
    return w.reshape(n_heads, 2, hd // 2, inp).swapaxes(1, 2).reshape(out, inp)


def gguf2hf(src, out_dir, tokenizer=None):
    r = gguf.GGUFReader(src)
    m = r.meta
    if m.get("general.architecture") != "llama":
        raise SystemExit("%s: architecture %r, only llama converts" % (src, m.get("general.architecture")))
    L = m["llama.block_count"]
    d = m["llama.embedding_length"]
    H = m["llama.attention.head_count"]
    KV = m.get("llama.attention.head_count_kv", H)
    hd = m.get("llama.attention.key_length", d // H)
    n_rot = m.get("llama.rope.dimension_count", hd)
    if n_rot != hd:
        raise SystemExit("%s: RoPE over %d of %d dims: transformers' Llama rotates whole heads"
                         % (src, n_rot, hd))
    if "llama.rope.scaling.type" in m:
        raise SystemExit("%s: RoPE scaling is not converted" % src)
    vocab = len(m["tokenizer.ggml.tokens"])
    sd = {"model.embed_tokens.weight": r.tensor_f32("token_embd.weight"),
          "model.norm.weight": r.tensor_f32("output_norm.weight")}
    tied = "output.weight" not in r.tensors
    if not tied:
        sd["lm_head.weight"] = r.tensor_f32("output.weight")
    for i in range(L):
        for g, h in LAYER.items():
            w = r.tensor_f32("blk.%d.%s.weight" % (i, g))
            if g == "attn_q":
                w = pairs_to_halves(w, H, hd)
            elif g == "attn_k":
                w = pairs_to_halves(w, KV, hd)
            sd["model.layers.%d.%s.weight" % (i, h)] = w
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "vocab_size": vocab, "hidden_size": d,
           "intermediate_size": m["llama.feed_forward_length"], "num_hidden_layers": L,
           "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": hd,
           "max_position_embeddings": m.get("llama.context_length", 2048),
           "rms_norm_eps": m["llama.attention.layer_norm_rms_epsilon"],
           "rope_theta": m.get("llama.rope.freq_base", 10000.0), "hidden_act": "silu",
           "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": tied,
           "bos_token_id": m.get("tokenizer.ggml.bos_token_id", 1),
           "eos_token_id": m.get("tokenizer.ggml.eos_token_id", 2), "torch_dtype": "float32",
           "msadb_routing": {k.split(".")[-1]: v for k, v in m.items() if k.startswith("msadb.routing.")},
           "msadb_source": {"name": m.get("general.name", ""), "training": m.get("msadb.training", ""),
                            "abstain": m.get("msadb.abstain", ""),
                            "followup": m.get("msadb.followup", ""),
                            "segment": m.get("msadb.segment", "")}}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                   "do_sample": False}, f, indent=1)
    safetensors_io.st_write(os.path.join(out_dir, "model.safetensors"),
                            {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()},
                            meta={"format": "pt"})
    if tokenizer:
        shutil.copyfile(tokenizer, os.path.join(out_dir, "tokenizer.model"))
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token":
                       m.get("tokenizer.ggml.add_bos_token", True), "add_eos_token": False,
                       "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                       "legacy": True}, f, indent=1)
    return cfg


def hf2gguf(src_dir, out, wtype="q8_0", tokenizer=None):
    from . import export_gguf
    cfg = json.load(open(os.path.join(src_dir, "config.json")))
    if cfg.get("model_type") != "llama":
        raise SystemExit("%s: model_type %r, only llama converts" % (src_dir, cfg.get("model_type")))
    st = safetensors_io.st_read(os.path.join(src_dir, "model.safetensors"))
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    L = cfg["num_hidden_layers"]
    if not cfg.get("tie_word_embeddings", False) and "lm_head.weight" in st:
        raise SystemExit("%s: untied output embedding (lm_head) is not written by export_gguf" % src_dir)
    sd = {"tok.weight": st["model.embed_tokens.weight"], "out_norm": st["model.norm.weight"]}
    for i in range(L):
        for g, h in LAYER.items():
            w = np.asarray(st["model.layers.%d.%s.weight" % (i, h)], np.float32)
            if g == "attn_q":
                w = halves_to_pairs(w, H, hd)
            elif g == "attn_k":
                w = halves_to_pairs(w, KV, hd)
            sd["layers.%d.%s" % (i, TRAIN[g])] = w
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    meta = {"config": {"n_layers": L, "ctx": cfg.get("max_position_embeddings", 2048),
                       "d": cfg["hidden_size"], "ffn": cfg["intermediate_size"], "n_heads": H,
                       "n_kv": KV, "hd": hd, "theta": cfg.get("rope_theta", 10000.0),
                       "eps": cfg["rms_norm_eps"], "vocab": cfg["vocab_size"]}}
    extra = {"msadb.routing." + k: v for k, v in cfg.get("msadb_routing", {}).items()}
    src = cfg.get("msadb_source", {})
    if src.get("training"):
        extra["msadb.training"] = src["training"]
    if src.get("abstain"):
        extra["msadb.abstain"] = src["abstain"]
    if src.get("segment"):
        extra["msadb.segment"] = src["segment"]
    if src.get("followup"):
        extra["msadb.followup"] = src["followup"]
    tok = tokenizer or os.path.join(src_dir, "tokenizer.model")
    w = export_gguf.build(sd, meta, tok, wtype, src.get("name") or "msadb-mem", extra)
    tmp = out + ".tmp"
    w.write(tmp)
    os.replace(tmp, out)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("gguf2hf")
    a.add_argument("gguf")
    a.add_argument("out_dir")
    a.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "msadb-mem.tokenizer.model"))
    b = sub.add_parser("hf2gguf")
    b.add_argument("hf_dir")
    b.add_argument("out")
    b.add_argument("--wtype", default="q8_0", choices=["q8_0", "f16", "f32", "bf16"])
    b.add_argument("--tokenizer", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "gguf2hf":
        gguf2hf(args.gguf, args.out_dir, args.tokenizer if os.path.exists(args.tokenizer) else None)
        print("%s: config.json, model.safetensors" % args.out_dir)
    else:
        hf2gguf(args.hf_dir, args.out, args.wtype, args.tokenizer)
        print("%s: %d bytes" % (args.out, os.path.getsize(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
