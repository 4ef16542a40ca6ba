#!/usr/bin/env python3
"""make_test_model.py -- writes a small llama-architecture GGUF model with
seeded random weights, for tests and benchmarks of msadb's runtime.

    PYTHONPATH=tools /usr/bin/python3 -m memmodel.make_test_model OUT.gguf [--layers 2] [--heads 4]
        [--kv-heads 2] [--head-dim 16] [--ffn 96] [--vocab 300] [--ctx 2048]
        [--rope-theta 10000] [--rope-dims N] [--rope-scale 1.0] [--untied] [--wtype f32|f16|bf16|q8_0]
        [--eps 1e-5] [--seed 0] [--routing mean:dot]

Metadata and tensor names are llama.cpp's, so the file reads like a converted
llama model.  RoPE convention: weights are stored as llama.cpp stores them and
the runtime applies llama.cpp's "normal" RoPE, rotating consecutive pairs
(x[2i], x[2i+1]) of each head by pos * freq_scale * theta^(-2i/n_rot)
(docs/runtime.md).  Hugging Face checkpoints rotate halves instead; their
converter permutes the q/k rows so that both agree.  Random weights have no
such origin, so nothing is permuted here.

Tokenizer: a byte-level "llama" (SentencePiece-style) vocabulary: <unk>, <s>,
</s>, the 256 byte tokens <0x00>..<0xFF>, then filler pieces up to --vocab.
"""
import argparse
import sys

import numpy as np

from . import gguf

# llama.cpp token types
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6

FILLER = ["\u2581the", "\u2581a", "\u2581of", "\u2581and", "\u2581to", "\u2581in",
          "\u2581is", "\u2581it", "e", "t", "a", "o", "n", "s", "\u2581"]


def vocabulary(n_vocab):
    if n_vocab < 259:
        raise ValueError("--vocab must be at least 259 (3 specials + 256 bytes)")
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    i = 0
    while len(tokens) < n_vocab:
        piece = FILLER[i] if i < len(FILLER) else "\u2581w%d" % i
        tokens.append(piece)
        types.append(TOKEN_NORMAL)
        i += 1
    scores = [0.0] * 259 + [-float(j) for j in range(1, n_vocab - 259 + 1)]
    return tokens, scores, types


def copy_tokenizer(w, path):
    """Copies the tokenizer.ggml.* keys of the GGUF file at path (a real
    vocabulary, e.g. the bundled model's, so that a model of another shape
    reads the same text into the same tokens); returns its vocabulary size."""
    r = gguf.GGUFReader(path)
    keys = [k for k in r.meta if k.startswith("tokenizer.ggml.")]
    if "tokenizer.ggml.tokens" not in keys:
        raise ValueError("--tokenizer-from: %s has no tokenizer.ggml.tokens" % path)
    for k in keys:  # as gguf.edit copies an entry
        t, et = r.meta_types[k]
        w.add(k, t, r.meta[k], et)
    return len(r.meta["tokenizer.ggml.tokens"])


def build(args):
    rng = np.random.default_rng(args.seed)
    n_embd = args.embd or args.heads * args.head_dim
    wt = gguf.GGML_BY_NAME[args.wtype]
    if args.heads % args.kv_heads:
        raise ValueError("--heads must be a multiple of --kv-heads")
    if wt == gguf.GGML_Q8_0:
        for name, v in (("embedding", n_embd), ("q width", args.heads * args.head_dim),
                        ("ffn", args.ffn)):
            if v % 32:
                raise ValueError("q8_0 needs %s (%d) to be a multiple of 32" % (name, v))

    w = gguf.GGUFWriter()
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", args.name)
    w.add_uint32("general.file_type", {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}[args.wtype])
    w.add_uint32("llama.block_count", args.layers)
    w.add_uint32("llama.context_length", args.ctx)
    w.add_uint32("llama.embedding_length", n_embd)
    w.add_uint32("llama.feed_forward_length", args.ffn)
    w.add_uint32("llama.attention.head_count", args.heads)
    w.add_uint32("llama.attention.head_count_kv", args.kv_heads)
    if args.head_dim * args.heads != n_embd:
        w.add_uint32("llama.attention.key_length", args.head_dim)
        w.add_uint32("llama.attention.value_length", args.head_dim)
    w.add_uint32("llama.rope.dimension_count", args.rope_dims or args.head_dim)
    w.add_float32("llama.rope.freq_base", args.rope_theta)
    if args.rope_scale != 1.0:
        w.add_string("llama.rope.scaling.type", "linear")
        w.add_float32("llama.rope.scaling.factor", args.rope_scale)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", args.eps)
    if args.routing:
        summary, _, score = args.routing.partition(":")
        w.add_string("msadb.routing.summary", summary)
        if score:
            w.add_string("msadb.routing.score", score)

    if args.abstain is not None:
        w.add_string("msadb.abstain", args.abstain)
    if args.segment is not None:
        w.add_string("msadb.segment", args.segment)
    if args.followup is not None:
        w.add_string("msadb.followup", args.followup)

    if args.tokenizer_from:
        n_vocab = copy_tokenizer(w, args.tokenizer_from)
    else:
        n_vocab = args.vocab
        tokens, scores, types = vocabulary(n_vocab)
        gguf.add_spm_tokenizer(w, tokens, scores, types)

    def mat(rows, cols, scale=None):
        s = scale if scale is not None else 1.0 / np.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * s).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    qd, kvd = args.heads * args.head_dim, args.kv_heads * args.head_dim
    # norm weights stay F32, as llama.cpp keeps 1-D tensors
    w.add_tensor("token_embd.weight", mat(n_vocab, n_embd, 1.0), wt)
    for i in range(args.layers):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", norm(n_embd), gguf.GGML_F32)
        w.add_tensor(p + "attn_q.weight", mat(qd, n_embd), wt)
        w.add_tensor(p + "attn_k.weight", mat(kvd, n_embd), wt)
        w.add_tensor(p + "attn_v.weight", mat(kvd, n_embd), wt)
        w.add_tensor(p + "attn_output.weight", mat(n_embd, qd), wt)
        w.add_tensor(p + "ffn_norm.weight", norm(n_embd), gguf.GGML_F32)
        w.add_tensor(p + "ffn_gate.weight", mat(args.ffn, n_embd), wt)
        w.add_tensor(p + "ffn_up.weight", mat(args.ffn, n_embd), wt)
        w.add_tensor(p + "ffn_down.weight", mat(n_embd, args.ffn), wt)
    w.add_tensor("output_norm.weight", norm(n_embd), gguf.GGML_F32)
    if args.untied:
        w.add_tensor("output.weight", mat(n_vocab, n_embd), wt)
    return w


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--embd", type=int, default=0, help="model width (default heads * head dim)")
    ap.add_argument("--ffn", type=int, default=96)
    ap.add_argument("--vocab", type=int, default=300)
    ap.add_argument("--tokenizer-from", default="", metavar="GGUF",
                    help="copy this model's tokenizer (and so its vocabulary size) instead "
                         "of a made-up --vocab one")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--rope-dims", type=int, default=0,
                    help="rotated dims per head (default: all; must be even)")
    ap.add_argument("--rope-scale", type=float, default=1.0, help="linear RoPE scaling factor")
    ap.add_argument("--untied", action="store_true", help="write a separate output.weight")
    ap.add_argument("--wtype", choices=sorted(gguf.GGML_BY_NAME), default="f32")
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--routing", default="",
                    help="SUMMARY[:SCORE] for msadb.routing.summary / .score, e.g. mean:dot")
    ap.add_argument("--segment", default=None,
                    help="msadb.segment: how ingest reads a document (document, paragraph, joined; "
                         "any string, to test refusals)")
    ap.add_argument("--abstain", default=None,
                    help="msadb.abstain: the answer the model gives when memory lacks the fact")
    ap.add_argument("--followup", default=None,
                    help="msadb.followup: the prefix of an answer that is a follow-up question")
    ap.add_argument("--name", default="msadb-test-model")
    return ap.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    try:
        w = build(args)
    except ValueError as e:
        sys.stderr.write("make_test_model: %s\n" % e)
        return 2
    w.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
