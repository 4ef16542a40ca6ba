#!/usr/bin/env python3
"""hf_check.py -- msadb.transformers checked on Hugging Face transformers
models (needs torch and transformers 5.x; a GPU when there is one).

    PYTHONPATH=tools:libmsadb/python /usr/bin/python3 -m memmodel.hf_check prepare DIR   # development machine
    PYTHONPATH=tools:libmsadb/python python3 -m memmodel.hf_check run --data DIR --out RESULT.json [--what exact,niah,speed]
        [--bench-tokens 1048576] [--device cuda]

prepare (numpy; dict-gcide and the word lists the memory model's data
recipe uses, see tools/memmodel/data.py) writes DIR/niah.json: a
needle-in-a-haystack set -- 40 facts from the held-out vocabularies, each
inserted into one document of a dict-gcide haystack of about 16K tokens,
with their questions -- and DIR/bench_docs.txt, dict-gcide documents for
the throughput memory.

run:
  exact  For Llama, Mistral, Qwen2 and Qwen3 configs (tiny: 4 layers,
         seeded random weights, float32), on the CPU and on the GPU: the
         model generates greedily with three documents in memory (ingested
         by msadb.transformers.ingest, every layer a memory layer, f32
         store, exact mode) and, as the reference, with the same documents
         in its KV cache (each run on its own at positions 0..T-1, the
         caches concatenated) and no msadb at all.  Logits of every step
         must agree within 1e-3.
  niah   The bundled model converted to a transformers checkpoint
         (memmodel.hf_convert) answers the 40 questions with memory through
         transformers + msadb.transformers, and the same GGUF model through
         msadb's C runtime (msadb.Model.ask); accuracies must agree within
         one question.  Also: the transformers model reading the store the
         C runtime filled (key_layout="pairs": its queries reordered to the
         GGUF RoPE layout the C runtime's keys are in).
  speed  Decoding tokens/s of the converted model with no memory (the
         model's own sdpa attention, and msadb's attention function with no
         store) and with --bench-tokens tokens of memory (route once, and
         route every token), 64 new tokens; with the time spent copying
         between host and device and inside the library.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from . import data as mmd
from . import hf_convert

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

N_QUESTIONS = 40
HAYSTACK_CHARS = 16384 * 2  # dict-gcide: about 2 characters a token


def cmd_prepare(args):
    from .evaluate import _insert
    rng = np.random.default_rng(args.seed)
    docs = mmd.extract_gcide()
    hay, n = [], 0
    while n < HAYSTACK_CHARS:
        hay.append(docs[len(hay)])
        n += len(hay[-1])
    g = mmd.FactGen(args.seed, "held")
    kinds = ["code", "lives", "pet", "room", "roomcode"]
    used, qs = set(), []
    while len(qs) < N_QUESTIONS:
        ex = g.example(kinds[len(qs) % len(kinds)])
        if set(ex["keys"]) & used:
            continue
        used |= set(ex["keys"])
        d = int(rng.integers(len(hay)))
        hay[d] = _insert(hay[d], ex["facts"][0], rng)
        qs.append({"question": ex["question"], "answer": ex["answer"], "kind": ex["kind"], "doc": d})
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "niah.json"), "w") as f:
        json.dump({"docs": hay, "questions": qs, "seed": args.seed}, f, indent=1)
    bench, n = [], 0
    for d in docs[len(hay):]:
        bench.append(d)
        n += len(d)
        if n >= args.bench_chars:
            break
    with open(os.path.join(args.dir, "bench_docs.txt"), "w", encoding="utf-8") as f:
        f.write("\n\f\n".join(bench))
    print("%d haystack documents, %d questions, %d bench documents (%d characters)"
          % (len(hay), len(qs), len(bench), n))


# --------------------------------------------------------------------------

def tiny_configs():
    import transformers as tf
    common = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                  max_position_embeddings=2048, rope_theta=10000.0, initializer_range=0.1,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    out = {}
    for name, cls, extra in (("llama", "LlamaConfig", {}), ("mistral", "MistralConfig", {"sliding_window": None}),
                             ("qwen2", "Qwen2Config", {"use_sliding_window": False}),
                             ("qwen3", "Qwen3Config", {"use_sliding_window": False})):
        if hasattr(tf, cls):
            out[name] = getattr(tf, cls)(**common, **extra)
    return out


def _load(fn, what):
    import torch
    try:
        return fn(what, dtype=torch.float32)
    except TypeError:  # releases before "dtype" replaced "torch_dtype"
        return fn(what, torch_dtype=torch.float32)


def layer_kv(cache, i):
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[i], cache.value_cache[i]
    return cache[i]


def check_exact(dev, log):
    import torch
    import transformers as tf
    import msadb
    import msadb.transformers as mt
    res = {}
    for name, cfg in tiny_configs().items():
        torch.manual_seed(0)
        model = _load(tf.AutoModelForCausalLM.from_config, cfg).to(dev).eval()
        model.generation_config.eos_token_id = None
        rng = np.random.default_rng(1)
        docs = [rng.integers(3, cfg.vocab_size, n).tolist() for n in (45, 70, 33)]
        question = rng.integers(3, cfg.vocab_size, 9).tolist()
        steps = 8
        path = "/tmp/hf_check_exact_%s_%s" % (name, dev)
        os.system("rm -rf " + path)
        sig = mt.signature_for(model, memory_layers=list(range(cfg.num_hidden_layers)), dtype="f32",
                               block_size=16)
        with msadb.Store.create(path, sig, no_sync=True) as st, torch.no_grad():
            ids = mt.ingest(model, st, docs, titles=["a", "b", "c"])
            # reference: documents in the KV cache, no msadb
            cache = None
            for d in docs:
                r = model(input_ids=torch.tensor([d], device=dev),
                          position_ids=torch.arange(len(d), device=dev)[None], use_cache=True)
                if cache is None:
                    cache = r.past_key_values
                else:
                    for i in range(cfg.num_hidden_layers):
                        k, v = layer_kv(r.past_key_values, i)
                        cache.update(k, v, i)
            ref_logits, toks = [], list(question)
            inp = torch.tensor([question], device=dev)
            pos = torch.arange(len(question), device=dev)[None]
            for s in range(steps):
                r = model(input_ids=inp, position_ids=pos, past_key_values=cache, use_cache=True)
                cache = r.past_key_values
                lg = r.logits[0, -1].float()
                ref_logits.append(lg.cpu().numpy())
                t = int(lg.argmax())
                toks.append(t)
                inp = torch.tensor([[t]], device=dev)
                pos = torch.tensor([[len(question) + s]], device=dev)
            # with memory, through model.generate
            with mt.MemoryAttention(model, st, exact=True) as mem:
                g = model.generate(torch.tensor([question], device=dev), max_new_tokens=steps,
                                   do_sample=False, output_logits=True, return_dict_in_generate=True,
                                   eos_token_id=None, pad_token_id=0)
            mem_logits = [x[0].float().cpu().numpy() for x in g.logits]
            diff = max(float(np.abs(a - b).max()) for a, b in zip(mem_logits, ref_logits))
            res[name] = {"max_abs_logit_diff": diff,
                         "max_abs_logit": float(max(np.abs(a).max() for a in ref_logits)),
                         "tokens_equal": g.sequences[0].tolist() == toks,
                         "steps": steps, "doc_tokens": [len(d) for d in docs],
                         "blocks_read": mem.blocks_read, "documents": len(ids),
                         "pass": diff <= 1e-3 and g.sequences[0].tolist() == toks}
            log({"event": "exact", "device": dev, "model": name, **res[name]})
        os.system("rm -rf " + path)
    return res


def load_converted(dev, work):
    import transformers as tf
    hf_dir = os.path.join(work, "msadb-mem-hf")
    hf_convert.gguf2hf(os.path.join(ROOT, "models", "msadb-mem.gguf"), hf_dir)
    model = _load(tf.AutoModelForCausalLM.from_pretrained, hf_dir).to(dev).eval()
    return model, json.load(open(os.path.join(hf_dir, "config.json")))


def hf_answer(model, mem_opts, c_model, st, question, dev, max_new=12):
    import torch
    import msadb.transformers as mt
    ids, _ = c_model.tokenize(question, add_bos=True)
    with mt.MemoryAttention(model, st, **mem_opts) as mem:
        g = model.generate(torch.tensor([ids.tolist()], device=dev), max_new_tokens=max_new,
                           do_sample=False, eos_token_id=2, pad_token_id=0)
    new = g[0, len(ids):].tolist()
    if 2 in new:
        new = new[:new.index(2)]
    return c_model.detokenize(new), mem


class _CTokenizer:
    """msadb's C tokenizer (msadb.Model.tokenize) in transformers' call
    shape: ids only, no special tokens."""

    def __init__(self, c_model):
        self.c_model = c_model

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return {"input_ids": self.c_model.tokenize(text)[0].tolist()}


def check_niah(dev, data, work, log):
    import torch
    import msadb
    import msadb.transformers as mt
    niah = json.load(open(os.path.join(data, "niah.json")))
    model, cfg = load_converted(dev, work)
    routing = cfg.get("msadb_routing", {})
    opts = {"summary": routing.get("summary"), "score": routing.get("score"), "top_k": 16}
    cm = msadb.Model(os.path.join(ROOT, "models", "msadb-mem.gguf"))
    sig = cm.signature()
    os.system("rm -rf %s/niah_c %s/niah_hf" % (work, work))
    st_c = cm.open_store(os.path.join(work, "niah_c"), no_sync=True)
    t = time.time()
    cm.ingest(st_c, [("hay %d" % i, d) for i, d in enumerate(niah["docs"])])
    c_ingest = time.time() - t
    st_h = msadb.Store.create(os.path.join(work, "niah_hf"), sig, no_sync=True)
    # texts through transformers ingest, read as the converted config says
    # (msadb_source.segment, joined for the bundled model), tokenized by the
    # C runtime's tokenizer in transformers' call shape: both stores must
    # hold the same tokens
    segment = mt.model_segment(model)
    t = time.time()
    with torch.no_grad():
        h_ids = mt.ingest(model, st_h, niah["docs"], tokenizer=_CTokenizer(cm),
                          titles=["hay %d" % i for i in range(len(niah["docs"]))])
    hf_ingest = time.time() - t
    with st_c.snapshot() as sc, st_h.snapshot() as sh:
        same_tokens = sum(np.array_equal(sc.tokens(a)[0], sh.tokens(b)[0])
                          for a, b in zip(sorted(d.id for d in sc.documents()), h_ids))
    rows, acc = [], {"c_runtime": 0, "transformers": 0, "transformers_on_c_store": 0}
    for q in niah["questions"]:
        a_c = cm.ask(st_c, q["question"], max_tokens=12).text
        with torch.no_grad():
            a_h, mem = hf_answer(model, opts, cm, st_h, q["question"], dev)
            a_x, _ = hf_answer(model, dict(opts, key_layout="pairs"), cm, st_c, q["question"], dev)
        ok = [q["answer"] in a for a in (a_c, a_h, a_x)]
        for k, o in zip(acc, ok):
            acc[k] += o
        rows.append({"question": q["question"], "answer": q["answer"], "c_runtime": a_c,
                     "transformers": a_h, "transformers_on_c_store": a_x,
                     "same_text": a_c.strip() == a_h.strip(), "blocks_read_hf": mem.blocks_read})
    res = {"questions": len(rows), "accuracy": acc,
           "same_answer_text": sum(r["same_text"] for r in rows),
           "haystack_tokens": st_c.stat().n_tokens, "ingest_seconds": {"c_runtime_cpu": c_ingest,
                                                                       "transformers": hf_ingest},
           "segment": segment, "same_tokens": same_tokens,
           "pass": abs(acc["c_runtime"] - acc["transformers"]) <= 1
           and same_tokens == len(niah["docs"]), "rows": rows}
    log({"event": "niah", **{k: v for k, v in res.items() if k != "rows"}})
    st_c.close()
    st_h.close()
    cm.close()
    return res


def check_speed(dev, data, work, bench_tokens, deadline, log):
    import torch
    import msadb
    import msadb.transformers as mt
    model, cfg = load_converted(dev, work)
    routing = cfg.get("msadb_routing", {})
    cm = msadb.Model(os.path.join(ROOT, "models", "msadb-mem.gguf"))
    path = os.path.join(work, "bench")
    os.system("rm -rf " + path)
    st = msadb.Store.create(path, cm.signature(), no_sync=True)
    with open(os.path.join(data, "bench_docs.txt"), encoding="utf-8") as f:
        docs = [d for d in f.read().split("\n\f\n") if d.strip()]
    t0 = time.time()
    n_tok, i, stats = 0, 0, {"transfer_ms": 0.0}
    ingest_deadline = t0 + (deadline - t0) * 0.6
    while n_tok < bench_tokens and i < len(docs) and time.time() < ingest_deadline:
        items = []
        while i < len(docs) and len(items) < 256:
            ids, spans = cm.tokenize(docs[i])
            items.append({"ids": ids[:1024], "text": None, "title": "bench %d" % i})
            n_tok += min(len(ids), 1024)
            i += 1
        s = {}
        with torch.no_grad():
            mt.ingest(model, st, items, stats=s)
        stats["transfer_ms"] += s["transfer_ms"]
    ingest_s = time.time() - t0
    stat = st.stat()
    log({"event": "bench_ingest", "tokens": stat.n_tokens, "documents": stat.n_documents,
         "seconds": ingest_s, "transfer_ms": stats["transfer_ms"], "block_bytes": stat.block_bytes})
    q, _ = cm.tokenize("What is the lock number for the western logged?", add_bos=True)
    inp = torch.tensor([q.tolist()], device=dev)
    new = 64

    def timed(fn, reps=3):
        best = None
        for _ in range(reps):
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            e = time.perf_counter() - t
            best = e if best is None else min(best, e)
        return best

    def gen():
        with torch.no_grad():
            return model.generate(inp, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  pad_token_id=0)
    res = {"memory_tokens": stat.n_tokens, "memory_documents": stat.n_documents,
           "memory_blocks_per_plane": stat.n_blocks, "store_bytes": stat.block_bytes + stat.summary_bytes,
           "ingest_seconds": ingest_s, "ingest_transfer_ms": stats["transfer_ms"], "new_tokens": new,
           "prompt_tokens": int(inp.shape[1])}
    gen()  # warm up
    s = timed(gen)
    res["sdpa_no_memory"] = {"seconds": s, "tokens_per_s": new / s}
    mt.register()
    prev = mt._set_impl(model, mt.ATTN_NAME)
    s = timed(gen)
    mt._set_impl(model, prev)
    res["msadb_fn_no_memory"] = {"seconds": s, "tokens_per_s": new / s}
    for label, kw in (("memory_route_once", {}), ("memory_route_each_token", {"route_each_token": True})):
        mem = mt.MemoryAttention(model, st, summary=routing.get("summary"), score=routing.get("score"),
                                 top_k=16, **kw)
        with mem:
            gen()
            mem.reset_stats()
            s = timed(gen, reps=1)
        res[label] = {"seconds": s, "tokens_per_s": new / s, "transfer_ms": mem.transfer_ms,
                      "store_ms": mem.store_ms, "calls": mem.calls, "blocks_read": mem.blocks_read,
                      "tokens_attended": mem.tokens_attended}
        log({"event": "speed", "mode": label, **res[label]})
    log({"event": "speed", **{k: v for k, v in res.items() if not isinstance(v, dict)}})
    st.close()
    cm.close()
    return res


def cmd_run(args):
    import torch
    import transformers
    import msadb
    t_start = time.time()
    deadline = t_start + args.budget
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "msadb": msadb.__version__, "library": msadb.LIBRARY,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cpus": os.cpu_count()}

    def save():
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)

    def log(rec):
        print(json.dumps(rec), flush=True)
    what = set(args.what.split(","))
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.work, exist_ok=True)
    def guarded(name, fn, *a):
        try:
            out[name] = fn(*a)
        except Exception:
            import traceback
            out[name] = {"error": traceback.format_exc(), "pass": False}
            print(out[name]["error"], flush=True)
        save()
    if "exact" in what:
        for d in (["cpu", dev] if dev != "cpu" else ["cpu"]):
            guarded("exact_" + d, check_exact, d, log)
    if "niah" in what:
        guarded("niah", check_niah, dev, args.data, args.work, log)
    if "speed" in what:
        guarded("speed", check_speed, dev, args.data, args.work, args.bench_tokens, deadline, log)
    out["seconds"] = time.time() - t_start
    save()
    ok = all(r.get("pass", False) for k, v in out.items() if k.startswith("exact_")
             for r in (v.values() if "error" not in v else [v]))
    ok = ok and out.get("niah", {}).get("pass", True) and "error" not in out.get("speed", {})
    print("hf_check: %s" % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=4321)
    p.add_argument("--bench-chars", type=int, default=2 * (1 << 20) + 200000)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--work", default="/tmp/hf_check")
    r.add_argument("--what", default="exact,niah,speed")
    r.add_argument("--device", default=None)
    r.add_argument("--bench-tokens", type=int, default=1 << 20)
    r.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    args = ap.parse_args(argv)
    return cmd_prepare(args) if args.cmd == "prepare" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
