#!/usr/bin/python3
"""memmodel.evaluate -- evaluation of msadb's memory model.

    PYTHONPATH=tools /usr/bin/python3 -m memmodel.evaluate prepare [--data .train-data]
        held-out evaluation sets: 100 single-hop needles (held-out entities
        and values, tools/memmodel/data.py's "held" vocabulary) inserted
        as paragraphs into the first documents of the dict-gcide haystack
        (held-out natural text), nested haystacks of 16K, 128K, 1M and 10M
        tokens (prefixes of one document list), and 40 multi-hop pairs in a
        separate 128K-token haystack.  Writes DATA/eval.json (the recipe:
        which document gets which fact) and DATA/eval_gpu.npz (the same
        documents tokenized, for gpu_eval).
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.evaluate cpu --model models/msadb-mem.gguf
        [--sizes 16K,128K,1M] [--lib BUILD/libmsadb/libmsadb.so] [--out J]
        the same needles measured through the real C library on this
        machine (ctypes over libmsadb: msadb_llm_ingest of every document
        into a store, msadb_llm_ask): memory at each size; (a) no memory;
        (b) the haystack's last ~950 tokens in the prompt (truncated to the
        model's 1024-token context); (c) RAG: Xapian (BM25) over the same
        documents, the top 3 pasted before the question; multi-hop with
        interleave off, on, and 2 and 3 rounds, and how often one round
        pulls the first hop's document (first_hop_pulled, with the right
        answers among those and the others) (--what picks: none, exact, trunc, rag, rag1,
        multihop, interleave, each; "rag1" is RAG with the top document only,
        the cheapest RAG prompt; "exact" attends every block, separating
        routing from reading; "interleave" one interleave round on the
        single-hop questions; "each" route_each_token).  A later run into
        the same --out keeps the figures it does not measure again.
        Latency per question is wall time.  --summary reps (with --what multihop
        --sizes "") routes the multi-hop questions with another summary.
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.evaluate plot --cpu J --gpu J --png docs/model-eval.png
        accuracy vs memory size
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.evaluate check --model models/msadb-mem.gguf
        next-token logits of msadb's C runtime (BUILD/tests/test_model --dump,
        --build BUILD) vs the PyTorch model holding the GGUF's weights, in
        float64
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.evaluate plot-log [--log models/msadb-mem.train-log.jsonl] [--png P]
        loss curves of the training log, steps counted across its commands

The same evaluation through the PyTorch model on the GPU is
memmodel.gpu_eval (memmodel.train --eval-gpu).
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np

from . import data as mmd
from .clib import Msadb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

SIZES = {"16K": 16384, "128K": 131072, "1M": 1 << 20, "10M": 10 * (1 << 20)}
N_NEEDLES = 100
N_MULTIHOP = 40
MH_TOKENS = 131072
TOPK_RAG = 3


# --------------------------------------------------------------------------
# Preparation (development machine)
# --------------------------------------------------------------------------

def _insert(doc, fact, rng):
    paras = doc.split("\n\n")
    i = int(rng.integers(0, len(paras) + 1))
    return "\n\n".join(paras[:i] + [fact] + paras[i:])


def draw_needles(seed):
    """N_NEEDLES single-hop examples (the five kinds in turn) and N_MULTIHOP
    multi-hop ones on held-out entities, no key shared."""
    g = mmd.FactGen(seed, "held")
    kinds = ["code", "lives", "pet", "room", "roomcode"]
    used, needles, mh = set(), [], []
    while len(needles) < N_NEEDLES:
        ex = g.example(kinds[len(needles) % len(kinds)])
        if set(ex["keys"]) & used:
            continue
        used |= set(ex["keys"])
        needles.append(ex)
    while len(mh) < N_MULTIHOP:
        ex = g.example("multihop")
        if set(ex["keys"]) & used:
            continue
        used |= set(ex["keys"])
        mh.append(ex)
    return needles, mh


def place_needles(docs, lens, needles, rng):
    """Each needle's fact inserted into one of the documents of the first
    ~12K tokens; (documents, {document: needle indexes}, region size)."""
    region = int(np.searchsorted(np.cumsum(lens), 12000)) + 1
    docs = list(docs)
    ins = {}
    for i, ex in enumerate(needles):
        d = int(rng.integers(region))
        docs[d] = _insert(docs[d], ex["facts"][0], rng)
        ins.setdefault(d, []).append(i)
    return docs, ins, region


def multihop_haystack(docs, lens, mh, rng):
    """The last documents of the list up to MH_TOKENS, each pair's two facts
    in two different ones; (documents, their indexes in the list)."""
    idx, tot = [], 0
    for j in range(len(docs) - 1, -1, -1):
        idx.append(j)
        tot += lens[j]
        if tot >= MH_TOKENS - 40 * 30:
            break
    idx.reverse()
    mh_docs = [docs[j] for j in idx]
    for ex in mh:
        a, b = rng.choice(len(mh_docs), 2, replace=False)
        mh_docs[a] = _insert(mh_docs[a], ex["facts"][0], rng)
        mh_docs[b] = _insert(mh_docs[b], ex["facts"][1], rng)
    return mh_docs, idx


def nested_sizes(tok):
    """{size name: documents and tokens of the shortest prefix reaching it}."""
    cum = np.cumsum([len(t) for t in tok])
    sizes = {}
    for name, n in SIZES.items():
        k = min(int(np.searchsorted(cum, n)) + 1, len(tok))
        sizes[name] = {"docs": k, "tokens": int(cum[k - 1])}
    return sizes


def write_gpu_arrays(path, sp, tok, mh_tok, needles, mh, sizes):
    """eval_gpu.npz: the haystack up to its largest size, the multi-hop
    haystack, questions and answers (no EOS), tokenized."""
    def qa(ex):
        _, _, q, a, _ = mmd.tokenize_example(sp, ex)
        return q, a[:-1]

    maxd = max(v["docs"] for v in sizes.values())
    qs = [qa(e) for e in needles]
    ms = [qa(e) for e in mh]
    arrays = {}
    for name, lists in (("doc", tok[:maxd]), ("mh", mh_tok), ("q", [q for q, _ in qs]),
                        ("a", [a for _, a in qs]), ("mq", [q for q, _ in ms]),
                        ("ma", [a for _, a in ms])):
        arrays[name + "_tok"], arrays[name + "_off"] = mmd.ragged(lists)
    np.savez_compressed(path, **arrays, size_names=np.array(list(sizes)),
                        size_docs=np.array([v["docs"] for v in sizes.values()]),
                        size_tokens=np.array([v["tokens"] for v in sizes.values()]),
                        eos=np.array(sp.eos_id()))


def cmd_prepare(args):
    sp = mmd.load_sp()
    rng = np.random.default_rng(args.seed)
    docs = mmd.read_docs(os.path.join(args.data, "text", "dict-gcide.txt"))
    needles, mh = draw_needles(args.seed)
    lens = np.array([len(x) for x in sp.encode(docs)], np.int64)
    docs, ins, region = place_needles(docs, lens, needles, rng)
    mh_docs, mh_docs_idx = multihop_haystack(docs, lens, mh, rng)
    segment = args.segment or mmd.model_segment(args.model)
    tok = mmd.tokenize_as(sp, docs, segment)
    sizes = nested_sizes(tok)
    mh_tok = mmd.tokenize_as(sp, mh_docs, segment)
    total = int(sum(len(t) for t in tok))
    rec = {"needles": needles, "multihop": mh, "needle_docs": {str(k): v for k, v in ins.items()},
           "sizes": sizes, "mh_doc_index": mh_docs_idx, "region_docs": region,
           "total_docs": len(docs), "total_tokens": total, "seed": args.seed, "segment": segment}
    with open(os.path.join(args.data, "eval.json"), "w") as f:
        json.dump(rec, f, indent=1)
    # the documents as text (for the C evaluation), and tokens (GPU)
    mmd._write_docs(os.path.join(args.data, "eval_docs.txt"), docs)
    mmd._write_docs(os.path.join(args.data, "eval_mh_docs.txt"), mh_docs)
    write_gpu_arrays(os.path.join(args.data, "eval_gpu.npz"), sp, tok, mh_tok, needles, mh, sizes)
    print(json.dumps({"sizes": sizes, "region_docs": region, "total_tokens": total,
                      "mh_docs": len(mh_docs), "mh_tokens": int(sum(len(t) for t in mh_tok))}))


# --------------------------------------------------------------------------
# CPU evaluation through the C library
# --------------------------------------------------------------------------


def norm_answer(s):
    return s.strip().rstrip(".").strip()


# routing summaries (msadb's names; declared: the model's own routing)
SUMMARIES = {"declared": None, "mean": "mean", "minmax": "minmax", "reps": "reps"}
WHAT = ("none", "exact", "trunc", "rag", "rag1", "multihop", "interleave", "each")


def run_qs(m, st, qs, exp, full=None, **kw):
    """(accuracy, median latency, answers) of questions qs against answers
    exp; full (a list), if given, gets each whole msadb.Answer (hits too)."""
    ok, lat, outs = 0, [], []
    for q, e in zip(qs, exp):
        t = time.time()
        r = m.answer(st, q, **kw)
        lat.append(time.time() - t)
        outs.append(r.text)
        if full is not None:
            full.append(r)
        ok += norm_answer(r.text) == e
    return ok / len(qs), float(np.median(lat)), outs


def cpu_results(args):
    """The figures kept in --out (a later run keeps what it does not measure)."""
    res = {"mode": "C library (libmsadb) on this machine, %d CPU cores" % os.cpu_count(),
           "model": args.model, "sizes": {}}
    if os.path.exists(args.out):
        res = json.load(open(args.out))
        res.setdefault("sizes", {})
    if res.setdefault("top_k", args.top_k) != args.top_k:
        raise SystemExit("--top-k %d: %s holds figures for top_k %d (use another --out)"
                         % (args.top_k, args.out, res["top_k"]))
    return res


def cpu_other_asks(args, m, st, rec, docs, nd, r):
    """Other ways of asking the store of nd documents, into r: "exact", every
    block attended (separates routing from reading); "interleave", one
    interleave round; "each", every generated token routes again; "trunc",
    the haystack's last ~950 tokens in the prompt; "rag", "rag1": BM25."""
    needles = rec["needles"]
    qs = [e["question"] for e in needles]
    exp = [e["answer"] for e in needles]
    for what, key, how in (("exact", "exact", {"exact": True}),
                           ("interleave", "interleave", {"interleave": 1}),
                           ("each", "route_each_token", {"route_each_token": True})):
        if what in args.what:
            acc_o, lat_o, outs_o = run_qs(m, st, qs, exp, **how)
            r[key] = {"acc": acc_o, "latency_s": lat_o, "by_kind": by_kind(needles, outs_o)}
            print(key, acc_o, lat_o, flush=True)
    if "trunc" in args.what:
        tail, n = [], 0
        for i in range(nd - 1, -1, -1):
            tl = m.tokenize_len(docs[i])
            if n + tl > 950:
                break
            tail.insert(0, docs[i].strip())
            n += tl
        pre = " ".join(tail) + " "
        acc_b, lat_b, _ = run_qs(m, None, [pre + q for q in qs], exp, no_memory=True)
        r["truncated"] = {"acc": acc_b, "latency_s": lat_b, "context_tokens": n}
        print("truncated", acc_b, lat_b, flush=True)
    rags = {name: topk for name, topk in (("rag", TOPK_RAG), ("rag1", 1)) if name in args.what}
    if rags:
        for name, rr in rag_eval(m, docs[:nd], qs, exp, rags).items():
            r[name] = rr
            print(name, rr["acc"], rr["latency_s"], flush=True)


def cpu_sizes(args, m, rec, docs, res, save):
    """The nested stores: the largest prefix ingested once, measured as it grows."""
    import shutil
    sizes = [s for s in args.sizes.split(",") if s]
    if not sizes:
        return
    needles = rec["needles"]
    qs = [e["question"] for e in needles]
    exp = [e["answer"] for e in needles]
    path = os.path.join(args.store_dir, "eval-store")
    if not args.reuse:
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(args.store_dir, exist_ok=True)
    st = m.create_store(path)
    # --reuse: a store kept (--keep) from an earlier run already holds the
    # documents of the first size asked for; ingest times are then not measured
    done = rec["sizes"][sizes[0]]["docs"] if args.reuse else 0
    t_ing = 0.0
    for s in sizes:
        nd = rec["sizes"][s]["docs"]
        t = time.time()
        for i in range(done, nd):
            m.ingest(st, "gcide-%d" % i, docs[i])
        t_ing += time.time() - t
        done = nd
        acc, lat, outs = run_qs(m, st, qs, exp)
        # a later run with other --what keeps the other figures of a size
        r = res["sizes"].setdefault(s, {})
        r.update({"tokens": rec["sizes"][s]["tokens"], "docs": nd, "acc": acc, "latency_s": lat,
                  "by_kind": by_kind(needles, outs),
                  "wrong": [(q, e, o) for q, e, o in zip(qs, exp, outs)
                            if norm_answer(o) != e][:8]})
        if not args.reuse:
            r["ingest_s_cumulative"] = round(t_ing, 1)
        print(s, acc, lat, "ingest", round(t_ing, 1), flush=True)
        save()
        cpu_other_asks(args, m, st, rec, docs, nd, r)
        save()
    m.close_store(st)
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)


def followup_figures(m, st, pairs, qs, every=20):
    """The two-hop questions qs (one per pair) asked with follow-up
    questions (msadb_ask_params.followups at its default, no interleave):
    accuracy, median latency, answers right, questions that asked a
    follow-up, follow-ups naming the first hop's room (read from memory),
    and every `every`-th question with what it asked and got."""
    answers = []
    acc, lat, _ = run_qs(m, st, qs, [e["answer"] for e in pairs], full=answers)
    asked = right_room = 0
    for e, r in zip(pairs, answers):
        room = re.search(r"room (\d+)", e["facts"][0]).group(1)
        asked += bool(r.followups)
        right_room += bool(r.followups) and re.search(r"\broom %s\b" % room, r.followups[0]) is not None
    return {"followups": acc, "latency_followups_s": lat,
            "followup_right": sum(norm_answer(r.text) == e["answer"] for e, r in zip(pairs, answers)),
            "followup_asked": asked, "followup_right_room": right_room,
            "followup_examples": [{"q": q, "asked": list(a.followups), "got": a.text}
                                  for q, a in list(zip(qs, answers))[::every]]}


def first_hop_pulls(m, st, pairs, mh_docs, routed, answers):
    """Where one interleave round goes: how many questions it pulls the
    first hop's document for (the document of the best-scoring hit of the
    last memory layer, as msadb_llm_ask picks it, from routed: each pair's
    msadb.Answer without interleave), and how many of those and of the
    others its answers (one per pair) get right."""
    ids = m.doc_ids(st)
    pulled = right_pulled = right_other = 0
    for e, r, a in zip(pairs, routed, answers):
        first = {x for i, d in enumerate(mh_docs) if e["facts"][0] in d for x in ids["mh-%d" % i]}
        h = r.hits
        hit = len(h) and int(h["doc_id"][int(np.argmax(h["score"]))]) in first
        ok = norm_answer(a) == e["answer"]
        pulled += bool(hit)
        right_pulled += bool(hit) and ok
        right_other += (not hit) and ok
    return {"first_hop_pulled": pulled, "right_when_pulled": right_pulled,
            "right_when_not": right_other}


def cpu_multihop(args, m, rec, res):
    """The multi-hop pairs in their own store, interleave off and on."""
    import shutil
    mh_docs = mmd.read_docs(os.path.join(args.data, "eval_mh_docs.txt"))
    path = os.path.join(args.store_dir, "eval-mh")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(args.store_dir, exist_ok=True)  # --sizes '': no size run made it
    st = m.create_store(path)
    for i, d in enumerate(mh_docs):
        m.ingest(st, "mh-%d" % i, d)
    mq = [e["question"] for e in rec["multihop"]]
    me = [e["answer"] for e in rec["multihop"]]
    routed = []
    off = run_qs(m, st, mq, me, full=routed, followups=0)
    on = run_qs(m, st, mq, me, interleave=1, followups=0)
    key = "multihop" if args.summary == "declared" else "multihop_" + args.summary
    res[key] = {"interleave_off": off[0], "interleave_on": on[0],
                "latency_off_s": off[1], "latency_on_s": on[1], "pairs": len(mq)}
    res[key].update(first_hop_pulls(m, st, rec["multihop"], mh_docs, routed, on[2]))
    for rounds in (2, 3):
        res[key]["interleave_%d" % rounds] = run_qs(m, st, mq, me, interleave=rounds,
                                                    followups=0)[0]
    # follow-up questions (a model declaring msadb.followup), no interleave
    fu = followup_figures(m, st, rec["multihop"], mq)
    del fu["followup_examples"]
    res[key].update(fu)
    print(key, res[key], flush=True)
    m.close_store(st)
    shutil.rmtree(path, ignore_errors=True)


def cmd_cpu(args):
    args.what = set(w for w in args.what.split(",") if w)
    if args.what - set(WHAT):
        raise SystemExit("--what: unknown %s (known: %s)" % (",".join(sorted(args.what - set(WHAT))),
                                                            ",".join(WHAT)))
    if args.summary != "declared" and (args.what != {"multihop"} or args.sizes):
        raise SystemExit("--summary: only with --what multihop --sizes '' (its figures are "
                         "kept apart as multihop_SUMMARY)")
    rec = json.load(open(os.path.join(args.data, "eval.json")))
    docs = mmd.read_docs(os.path.join(args.data, "eval_docs.txt"))
    m = Msadb(args.lib)
    m.summary = SUMMARIES[args.summary]
    m.top_k = args.top_k
    m.open_model(args.model, args.segment)
    res = cpu_results(args)

    def save():
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    if "no_memory" not in res and "none" in args.what:
        qs = [e["question"] for e in rec["needles"]]
        acc, lat, outs = run_qs(m, None, qs, [e["answer"] for e in rec["needles"]],
                                no_memory=True)
        res["no_memory"] = {"acc": acc, "latency_s": lat, "sample": outs[:5]}
        print("no memory", acc, lat, flush=True)
        save()
    cpu_sizes(args, m, rec, docs, res, save)
    if "multihop" in args.what:
        cpu_multihop(args, m, rec, res)
        save()


def by_kind(needles, outs):
    """Accuracy per kind of fact."""
    r = {}
    for e, o in zip(needles, outs):
        v = r.setdefault(e["kind"], [0, 0])
        v[0] += 1
        v[1] += norm_answer(o) == e["answer"]
    return {k: round(v[1] / v[0], 3) for k, v in r.items()}


def rag_eval(m, docs, qs, exp, topks):
    """(c) classic RAG: Xapian BM25 over the documents (indexed once), the
    top topk pasted before the question, answered by the same model without
    memory; topks {name: topk}, returns {name: figures}."""
    import xapian
    db = xapian.WritableDatabase("", xapian.DB_BACKEND_INMEMORY)
    tg = xapian.TermGenerator()
    tg.set_stemmer(xapian.Stem("english"))
    t = time.time()
    for i, d in enumerate(docs):
        doc = xapian.Document()
        tg.set_document(doc)
        tg.index_text(d)
        doc.set_data(str(i))
        db.add_document(doc)
    t_index = time.time() - t
    qp = xapian.QueryParser()
    qp.set_stemmer(xapian.Stem("english"))
    qp.set_stemming_strategy(xapian.QueryParser.STEM_SOME)
    qp.set_database(db)
    enq = xapian.Enquire(db)
    enq.set_weighting_scheme(xapian.BM25Weight())
    res = {}
    for name, topk in topks.items():
        ok, lat, hit = 0, [], 0
        for q, e in zip(qs, exp):
            t = time.time()
            enq.set_query(qp.parse_query(q))
            top = [int(x.document.get_data()) for x in enq.get_mset(0, topk)]
            ctx = []
            n = 0
            for i in top:
                tl = m.tokenize_len(docs[i])
                if n + tl > 960:
                    break
                ctx.append(docs[i].strip())
                n += tl
            a = m.ask(None, " ".join(ctx) + " " + q, no_memory=True)
            lat.append(time.time() - t)
            ok += norm_answer(a) == e
            hit += any(e in docs[i] for i in top)
        res[name] = {"acc": ok / len(qs), "latency_s": float(np.median(lat)),
                     "retrieval_hit": hit / len(qs), "index_s": round(t_index, 1), "top": topk}
    return res


def cmd_plot(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    order = list(SIZES)
    for path, label, style in ((args.cpu, "memory, C library (CPU)", "o-"),
                               (args.gpu, "memory, PyTorch + msadb routing (GPU)", "s--")):
        if not path or not os.path.exists(path):
            continue
        r = json.load(open(path))
        xs, ys = [], []
        for s in order:
            v = r.get("sizes", {}).get(s)
            if isinstance(v, dict):
                xs.append(v["tokens"])
                ys.append(100 * v["acc"])
        ax.plot(xs, ys, style, label=label)
        if path == args.cpu:
            for key, lab, st in (("interleave", "memory + one interleave round (C)", "D-"),
                                 ("rag", "RAG: Xapian BM25 top-3 in prompt", "^-"),
                                 ("rag1", "RAG: Xapian BM25 top-1 in prompt", "<-"),
                                 ("truncated", "haystack truncated to context", "v-")):
                xs2, ys2 = [], []
                for s in order:
                    v = r.get("sizes", {}).get(s)
                    if isinstance(v, dict) and key in v:
                        xs2.append(v["tokens"])
                        ys2.append(100 * v[key]["acc"])
                if xs2:
                    ax.plot(xs2, ys2, st, label=lab)
            if "no_memory" in r:
                ax.axhline(100 * r["no_memory"]["acc"], color="gray", ls=":", label="no memory")
    ax.set_xscale("log")
    ax.set_xlabel("haystack (tokens of memory)")
    ax.set_ylabel("exact answers (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Needle in a haystack, held-out facts (msadb-mem)")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


# --------------------------------------------------------------------------
# C runtime vs PyTorch: next-token logits on the same tokens
# --------------------------------------------------------------------------

def c_logits(build, model, ids):
    """Next-token logits [n][vocab] of the C runtime on ids (positions 0..n-1),
    written by the build's tests/test_model --dump (the dump model_reference
    compares with PyTorch)."""
    import subprocess
    import tempfile
    exe = os.path.join(build, "tests", "test_model")
    if not os.path.exists(exe):
        raise SystemExit("check: %s not found: build the tree (ninja -C %s) or pass --build"
                         % (exe, build))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "d")
        lst = ",".join(map(str, ids))
        subprocess.run([exe, "--dump", model, prefix, lst, ",".join(map(str, range(len(ids))))],
                       check=True)
        return np.fromfile(prefix + ".logits", np.float32).reshape(len(ids), -1)


def cmd_check(args):
    """C runtime logits vs the PyTorch model (GGUF weights, f64) on prompts."""
    import torch
    from .net import torch_from_gguf
    sp = mmd.load_sp()
    m = torch_from_gguf(args.model).double()
    prompts = ["What is the password of the amber lockbox?",
               "In the beginning God created the heaven and the earth.",
               "The ls command lists directory contents. " * 12]
    worst = 0.0
    out = []
    for p in prompts:
        ids = [sp.bos_id()] + sp.encode(p)
        lc = c_logits(args.build, args.model, ids)
        with torch.no_grad():
            h, _ = m.forward_plain(torch.tensor([ids]))
            lt = m.logits(h)[0].numpy()
        d = float(np.abs(lc - lt).max())
        worst = max(worst, d)
        out.append({"prompt": p[:50], "tokens": len(ids), "max_abs_diff": d,
                    "max_abs_logit": float(np.abs(lt).max()),
                    "argmax_agree": float(np.mean(lc.argmax(-1) == lt.argmax(-1)))})
        print(out[-1], flush=True)
    print(json.dumps({"worst_max_abs_diff": worst}))
    return out


def cmd_plot_log(args):
    """Loss curves of a training log (memmodel.train's jsonl, with a
    "run" field per command): steps are counted across the commands."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(args.log)]
    offset, last_run, last_step = 0, None, 0
    series = {"lm": ([], []), "qa_ans": ([], []), "ans": ([], []), "acc": ([], [])}
    starts = []
    for r in rows:
        if "step" not in r:
            continue
        if r.get("run") != last_run:
            # a command that starts counting again goes after the last; one that carried
            # the step count forward (--resume, --init-gguf, --continue) already does
            if r["step"] <= last_step:
                offset += last_step
            last_run = r.get("run")
            starts.append((offset + r["step"] - 1, last_run))
        last_step = r["step"]
        x = offset + r["step"]
        for k in series:
            # memory batches without context: the answer loss msadb's reading sees
            if k in r and (k not in ("ans", "acc") or (r.get("mem") == 1 and r.get("ctx") == 0)):
                series[k][0].append(x)
                series[k][1].append(r[k])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = {"lm": "LM loss (text)", "qa_ans": "in-context QA answer loss",
              "ans": "memory answer loss (question alone, msadb routing)"}
    for k, lab in labels.items():
        if series[k][0]:
            ax.plot(series[k][0], series[k][1], lw=0.8, label=lab)
    ax2 = ax.twinx()
    if series["acc"][0]:
        ax2.plot(series["acc"][0], series["acc"][1], lw=0.6, color="gray", alpha=0.6,
                 label="memory exact answers (batch)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("exact answers (fraction)")
    for x, run in starts:
        ax.axvline(x, color="k", lw=0.5, ls=":")
        ax.text(x, 8.0, " %s" % str(run).split(":")[0], fontsize=7, va="top")  # the run number
    ax.set_ylim(0, 8.5)
    ax.set_xlabel("optimizer step (all commands, in order; dotted: start of a command)")
    ax.set_ylabel("loss (nats)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    ax.set_title("msadb-mem training (%s)" % os.path.basename(args.log))
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(args.png)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["prepare", "cpu", "plot", "check", "plot-log"])
    ap.add_argument("--log", default=os.path.join(ROOT, "models", "msadb-mem.train-log.jsonl"))
    ap.add_argument("--build", default="/tmp/build-train")
    ap.add_argument("--data", default=os.path.join(ROOT, ".train-data"))
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "msadb-mem.gguf"))
    ap.add_argument("--lib", default="/tmp/build-train/libmsadb/libmsadb.so")
    ap.add_argument("--sizes", default="16K,128K,1M")
    ap.add_argument("--what", default="none,trunc,rag,multihop")
    ap.add_argument("--store-dir", default="/tmp/msadb-eval")
    ap.add_argument("--summary", choices=list(SUMMARIES), default="declared",
                    help="cpu: the routing summary of the multi-hop questions (default: the "
                         "model's declared routing)")
    ap.add_argument("--top-k", type=int, default=16,
                    help="cpu: blocks each kv head of a memory layer selects (msadb_ask_params)")
    ap.add_argument("--segment", choices=["document", "paragraph", "joined"], default=None,
                    help="cpu, prepare: how ingest reads a document (default: the model's "
                         "msadb.segment; prepare: document or joined, for the GPU arrays)")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    ap.add_argument("--reuse", action="store_true",
                    help="open the kept store instead of ingesting again (see --keep)")
    ap.add_argument("--out", default="/tmp/msadb-eval/cpu.json")
    ap.add_argument("--cpu", default="")
    ap.add_argument("--gpu", default="")
    ap.add_argument("--png", default=None,
                    help="default: docs/model-eval.png (plot), models/msadb-mem.loss.png (plot-log)")
    args = ap.parse_args(argv)
    if args.png is None:
        args.png = (os.path.join(ROOT, "models", "msadb-mem.loss.png") if args.cmd == "plot-log"
                    else os.path.join(ROOT, "docs", "model-eval.png"))
    if args.cmd == "prepare":
        cmd_prepare(args)
    elif args.cmd == "cpu":
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        cmd_cpu(args)
    elif args.cmd == "check":
        cmd_check(args)
    elif args.cmd == "plot-log":
        cmd_plot_log(args)
    else:
        cmd_plot(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
