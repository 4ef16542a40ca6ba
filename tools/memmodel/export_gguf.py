#!/usr/bin/python3
"""export_gguf.py -- writes msadb's memory model as a llama GGUF file.

    PYTHONPATH=tools python3 -m memmodel.export_gguf CKPT_DIR OUT.gguf [--wtype q8_0|f16|f32]
        [--tokenizer models/msadb-mem.tokenizer.model] [--name msadb-mem]

CKPT_DIR holds the checkpoint tools/memmodel/train.py writes
(ckpt_meta.json, ckpt_0.pt .. ckpt_2.pt: fp32 state dicts).  Needs numpy and
torch (to read the checkpoint); the tokenizer is read from the SentencePiece
model file with a small protobuf reader (no sentencepiece package needed).

The file uses llama.cpp's key and tensor names (tools/memmodel/make_test_model.py's
table), written with the project's own tools/memmodel/gguf.py.  Weights are exported
as trained: the model applies RoPE to consecutive pairs (2i, 2i+1), msadb's
GGUF-native convention, so q/k rows need no permutation.  The output
embedding is tied (no output.weight).  Norm weights stay F32.

Tokenizer metadata: tokenizer.ggml.model "llama", tokens = the SentencePiece
pieces in id order, scores, token_type (1 normal, 2 unknown, 3 control,
6 byte), bos 1, eos 2, unk 0, add_bos_token true, add_eos_token false,
add_space_prefix true.
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
from . import gguf
from .spm_model import read_spm_model


def read_spm(path):
    """pieces, scores, types of a SentencePiece model file (SentencePiece's
    piece types are llama.cpp's token types); and the normalizer's
    add_dummy_prefix."""
    pieces, scores, types, _, norm = read_spm_model(path)
    return [p.decode("utf-8") for p in pieces], scores, types, norm["add_dummy_prefix"]


def load_state(ckpt):
    """(state as numpy fp32, meta) of a memmodel.train checkpoint."""
    from .net import load_state
    sd, meta = load_state(ckpt)
    return {k: v.numpy() for k, v in sd.items()}, meta


def build(sd, meta, tok_path, wtype, name, extra=None):
    c = meta["config"]
    wt = gguf.GGML_BY_NAME[wtype]
    w = gguf.GGUFWriter()
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", name)
    # what the file is and what made it
    w.add_string("general.description",
                 "msadb's own small memory model: llama architecture, memory layers %d..%d "
                 "(latter half), trained by tools/memmodel (docs/model.md)" %
                 (c["n_layers"] // 2, c["n_layers"] - 1))
    w.add_uint32("general.file_type", {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[wtype])
    w.add_uint32("llama.block_count", c["n_layers"])
    w.add_uint32("llama.context_length", c["ctx"])
    w.add_uint32("llama.embedding_length", c["d"])
    w.add_uint32("llama.feed_forward_length", c["ffn"])
    w.add_uint32("llama.attention.head_count", c["n_heads"])
    w.add_uint32("llama.attention.head_count_kv", c["n_kv"])
    if c["hd"] * c["n_heads"] != c["d"]:
        w.add_uint32("llama.attention.key_length", c["hd"])
        w.add_uint32("llama.attention.value_length", c["hd"])
    w.add_uint32("llama.rope.dimension_count", c["hd"])
    w.add_float32("llama.rope.freq_base", c["theta"])
    w.add_float32("llama.attention.layer_norm_rms_epsilon", c["eps"])
    w.add_uint32("llama.vocab_size", c["vocab"])
    for k, v in (extra or {}).items():
        w.add_string(k, v)
    pieces, scores, types, add_dummy = read_spm(tok_path)
    if len(pieces) != c["vocab"]:
        raise ValueError("tokenizer has %d pieces, model %d" % (len(pieces), c["vocab"]))
    gguf.add_spm_tokenizer(w, pieces, scores, types, add_dummy)

    f32 = gguf.GGML_F32
    w.add_tensor("token_embd.weight", sd["tok.weight"], wt)
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}
    for i in range(c["n_layers"]):
        p = "layers.%d." % i
        b = "blk.%d." % i
        w.add_tensor(b + "attn_norm.weight", sd[p + "attn_norm"], f32)
        for src, dst in names.items():
            if dst == "ffn_norm":
                continue
            w.add_tensor(b + dst + ".weight", sd[p + src + ".weight"], wt)
        w.add_tensor(b + "ffn_norm.weight", sd[p + "ffn_norm"], f32)
    w.add_tensor("output_norm.weight", sd["out_norm"], f32)
    return w


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("out")
    ap.add_argument("--wtype", default="q8_0", choices=["q8_0", "f16", "f32", "bf16"])
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "models",
                                                        "msadb-mem.tokenizer.model"))
    ap.add_argument("--name", default="msadb-mem")
    ap.add_argument("--training", default="",
                    help="JSON for the msadb.training key (default: the checkpoint's own "
                         "steps, tokens and training seconds, which count the earlier commands "
                         "it went on from with --continue, --resume or --init-gguf)")
    ap.add_argument("--segment", default="", choices=["", "document", "paragraph", "joined"],
                    help="msadb.segment: how msadb's ingest reads a document for this model "
                         "(paragraph: each paragraph on its own, as training tokenized facts)")
    ap.add_argument("--abstain", default="",
                    help="msadb.abstain: the answer the model was trained to give when memory "
                         "does not hold what is asked (memmodel.data.ABSTAIN for a model trained "
                         "on unanswerable questions; msadb query then exits 3 on it)")
    ap.add_argument("--followup", default="",
                    help="msadb.followup: the prefix of an answer that is a follow-up question "
                         "to ask memory next (memmodel.data.FOLLOWUP for a model trained with "
                         "memmodel.train --mh-followup)")
    args = ap.parse_args(argv)
    sd, meta = load_state(args.ckpt)
    info = args.training or json.dumps({"steps": meta.get("steps"), "tokens": meta.get("tokens"),
                                        "seed": meta.get("seed"), "params": meta.get("params"),
                                        "gpu_train_seconds": meta.get("train_seconds")})
    # how the model was trained to route (memmodel.train: q . mean key, or
    # with --route-centred less its position's mean); msadb_llm_ask routes
    # this way where the store holds mean summaries
    centred = (meta.get("args") or {}).get("route_centred", False)
    extra = {"msadb.training": info, "msadb.routing.summary": "mean",
             "msadb.routing.score": "dot-centred" if centred else "dot"}
    if args.abstain:
        extra["msadb.abstain"] = args.abstain
    if args.segment:
        extra["msadb.segment"] = args.segment
    if args.followup:
        extra["msadb.followup"] = args.followup
    w = build(sd, meta, args.tokenizer, args.wtype, args.name, extra)
    # write beside and rename: a process may have the old file mapped
    tmp = args.out + ".tmp"
    w.write(tmp)
    os.replace(tmp, args.out)
    print("%s: %d bytes" % (args.out, os.path.getsize(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
