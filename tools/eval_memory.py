#!/usr/bin/python3
"""eval_memory.py -- evaluation of msadb's memory model.

    /usr/bin/python3 tools/eval_memory.py prepare [--data .train-data]
        held-out evaluation sets: 100 single-hop needles (held-out entities
        and values, tools/make_memory_data.py's "held" vocabulary) inserted
        as paragraphs into the first documents of the dict-gcide haystack
        (held-out natural text), nested haystacks of 16K, 128K, 1M and 10M
        tokens (prefixes of one document list), and 40 multi-hop pairs in a
        separate 128K-token haystack.  Writes DATA/eval.json (the recipe:
        which document gets which fact) and DATA/eval_gpu.npz (the same
        documents tokenized, for gpu_eval).
    /usr/bin/python3 tools/eval_memory.py cpu --model models/msadb-mem.gguf
        [--sizes 16K,128K,1M] [--lib BUILD/libmsadb/libmsadb.so] [--out J]
        the same needles measured through the real C library on this
        machine (ctypes over libmsadb: msadb_llm_ingest of every document
        into a store, msadb_llm_ask): memory at each size; (a) no memory;
        (b) the haystack's last ~950 tokens in the prompt (truncated to the
        model's 1024-token context); (c) RAG: Xapian (BM25) over the same
        documents, the top 3 pasted before the question; multi-hop with
        interleave off and on (--what picks: none, exact, trunc, rag, rag1,
        multihop, interleave, each; "rag1" is RAG with the top document only,
        the cheapest RAG prompt; "exact" attends every block, separating
        routing from reading; "interleave" one interleave round on the
        single-hop questions; "each" route_each_token).  A later run into
        the same --out keeps the figures it does not measure again.
        Latency per question is wall time.  --summary reps (with --what multihop
        --sizes "") routes the multi-hop questions with another summary.
    /usr/bin/python3 tools/eval_memory.py plot --cpu J --gpu J --png docs/model-eval.png
        accuracy vs memory size
    /usr/bin/python3 tools/eval_memory.py check --model models/msadb-mem.gguf
        next-token logits of msadb's C runtime (a small program built against
        BUILD/libmsadb/libmsadb.a) vs the PyTorch model holding the GGUF's
        weights, in float64
    /usr/bin/python3 tools/eval_memory.py plot-log [--log models/msadb-mem.train-log.jsonl] [--png P]
        loss curves of the training log, steps counted across its commands
    /usr/bin/python3 tools/eval_memory.py mirrors --lib BUILD/libmsadb/libmsadb.so
        checks the ctypes copies of msadb_ask_params and msadb_options
        against include/msadb.h and the library (a meson test)

gpu_eval() is called by tools/train_memory_model.py after training: the
same evaluation through the PyTorch model with msadb's routing (mean-key
score, max over the group's q heads and the prompt's tokens, top-16 blocks
per kv head; each generated token selects its own), run on the GPU where
10M tokens of memory fit.
"""
import argparse
import ctypes
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

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


def cmd_prepare(args):
    import make_memory_data as mmd
    sp = mmd.load_sp()
    rng = np.random.default_rng(args.seed)
    docs = mmd.read_docs(os.path.join(args.data, "text", "dict-gcide.txt"))
    g = mmd.FactGen(args.seed, "held")
    kinds = ["code", "lives", "pet", "room", "roomcode"]
    used, needles = set(), []
    while len(needles) < N_NEEDLES:
        ex = g.example(kinds[len(needles) % len(kinds)])
        if set(ex["keys"]) & used:
            continue
        used |= set(ex["keys"])
        needles.append(ex)
    mh = []
    while len(mh) < N_MULTIHOP:
        ex = g.example("multihop")
        if set(ex["keys"]) & used:
            continue
        used |= set(ex["keys"])
        mh.append(ex)
    # token counts of the haystack documents
    lens = np.array([len(x) for x in sp.encode(docs)], np.int64)
    # needles go into the documents of the first ~12K tokens
    region = int(np.searchsorted(np.cumsum(lens), 12000)) + 1
    docs = list(docs)
    ins = {}
    for i, ex in enumerate(needles):
        d = int(rng.integers(region))
        docs[d] = _insert(docs[d], ex["facts"][0], rng)
        ins.setdefault(d, []).append(i)
    # multi-hop haystack: documents from the end of the list
    mh_docs_idx = []
    tot = 0
    for j in range(len(docs) - 1, -1, -1):
        mh_docs_idx.append(j)
        tot += lens[j]
        if tot >= MH_TOKENS - 40 * 30:
            break
    mh_docs_idx.reverse()
    mh_docs = [docs[j] for j in mh_docs_idx]
    for i, ex in enumerate(mh):
        a, b = rng.choice(len(mh_docs), 2, replace=False)
        mh_docs[a] = _insert(mh_docs[a], ex["facts"][0], rng)
        mh_docs[b] = _insert(mh_docs[b], ex["facts"][1], rng)
    tok = sp.encode(docs)
    cum = np.cumsum([len(t) for t in tok])
    sizes = {}
    for name, n in SIZES.items():
        k = int(np.searchsorted(cum, n)) + 1
        if k > len(tok):
            k = len(tok)
        sizes[name] = {"docs": k, "tokens": int(cum[k - 1])}
    mh_tok = sp.encode(mh_docs)

    def qa(ex):
        _, _, q, a = mmd.tokenize_example(sp, ex)
        return q, a[:-1]

    rec = {"needles": needles, "multihop": mh, "needle_docs": {str(k): v for k, v in ins.items()},
           "sizes": sizes, "mh_doc_index": mh_docs_idx, "region_docs": region,
           "total_docs": len(docs), "total_tokens": int(cum[-1]), "seed": args.seed}
    with open(os.path.join(args.data, "eval.json"), "w") as f:
        json.dump(rec, f, indent=1)
    # the documents as text (for the C evaluation), and tokens (GPU)
    with open(os.path.join(args.data, "eval_docs.txt"), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(d.replace("\f", " ") + "\n\f\n")
    with open(os.path.join(args.data, "eval_mh_docs.txt"), "w", encoding="utf-8") as f:
        for d in mh_docs:
            f.write(d.replace("\f", " ") + "\n\f\n")
    maxd = max(v["docs"] for v in sizes.values())

    def ragged(lists):
        flat = np.concatenate([np.array(x, np.uint16) for x in lists])
        off = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        return flat, off

    dt, do = ragged(tok[:maxd])
    mt, mo = ragged(mh_tok)
    qs = [qa(e) for e in needles]
    ms = [qa(e) for e in mh]
    qt, qo = ragged([q for q, _ in qs])
    at, ao = ragged([a for _, a in qs])
    mqt, mqo = ragged([q for q, _ in ms])
    mat, mao = ragged([a for _, a in ms])
    np.savez_compressed(os.path.join(args.data, "eval_gpu.npz"), doc_tok=dt, doc_off=do,
                        mh_tok=mt, mh_off=mo, q_tok=qt, q_off=qo, a_tok=at, a_off=ao,
                        mq_tok=mqt, mq_off=mqo, ma_tok=mat, ma_off=mao,
                        size_names=np.array(list(sizes)),
                        size_docs=np.array([v["docs"] for v in sizes.values()]),
                        size_tokens=np.array([v["tokens"] for v in sizes.values()]),
                        eos=np.array(sp.eos_id()))
    print(json.dumps({"sizes": sizes, "region_docs": region, "total_tokens": int(cum[-1]),
                      "mh_docs": len(mh_docs), "mh_tokens": int(sum(len(t) for t in mh_tok))}))


# --------------------------------------------------------------------------
# GPU evaluation through the PyTorch model (msadb's routing)
# --------------------------------------------------------------------------

def _ragged(z, name):
    t, o = z[name + "_tok"], z[name + "_off"]
    return [t[o[i]:o[i + 1]].astype(np.int64) for i in range(len(o) - 1)]


def encode_pool(model, docs, dev, batch_tokens=1 << 18):
    """Runs documents (token lists) through the model with document-wise
    positions; returns per memory layer (K, V) [kv, P, 64, hd] f32, block
    valid [P, 64], block -> document index [P], in document order."""
    import torch
    import train_memory_model as tm
    B = tm.BLOCK
    order = np.argsort([len(d) for d in docs], kind="stable")
    nmem = len(model.c.mem_layers())
    Ks = [[] for _ in range(nmem)]
    Vs = [[] for _ in range(nmem)]
    valids, docids = [], []
    i = 0
    with torch.no_grad():
        while i < len(order):
            L = ((len(docs[order[i]]) + B - 1) // B) * B
            # docs sorted by length: a batch pads to its longest
            j = i
            while j < len(order) and (j - i + 1) * (((len(docs[order[j]]) + B - 1) // B) * B) <= batch_tokens:
                j += 1
            j = max(j, i + 1)
            idx = order[i:j]
            L = ((max(len(docs[t]) for t in idx) + B - 1) // B) * B
            x = np.zeros((len(idx), L), np.int64)
            v = np.zeros((len(idx), L), bool)
            for r, t in enumerate(idx):
                x[r, :len(docs[t])] = docs[t]
                v[r, :len(docs[t])] = True
            xt = torch.from_numpy(x).to(dev)
            _, caps = model.forward_plain(xt, capture=True)
            nb = L // B
            vb = torch.from_numpy(v.reshape(len(idx) * nb, B)).to(dev)
            keep = vb.any(1)
            for m, (k, vv) in enumerate(caps):
                kv, hd = k.shape[1], k.shape[3]
                K = k.float().reshape(len(idx), kv, nb, B, hd).permute(1, 0, 2, 3, 4).reshape(kv, -1, B, hd)
                V = vv.float().reshape(len(idx), kv, nb, B, hd).permute(1, 0, 2, 3, 4).reshape(kv, -1, B, hd)
                Ks[m].append(K[:, keep])
                Vs[m].append(V[:, keep])
            valids.append(vb[keep])
            di = torch.from_numpy(np.repeat(idx, nb)).to(dev)[keep]
            docids.append(di)
            i = j
        doc = torch.cat(docids)
        # document order (stable: blocks of one document stay in order)
        perm = torch.sort(doc, stable=True).indices
        out = []
        for m in range(nmem):
            K = torch.cat(Ks[m], 1)[:, perm].to(torch.float16)
            V = torch.cat(Vs[m], 1)[:, perm].to(torch.float16)
            out.append((K, V))
        return out, torch.cat(valids)[perm], doc[perm]


def _pools(kvs, valid, doc, nb, means_cache):
    import train_memory_model as tm
    pools = []
    for m, (K, V) in enumerate(kvs):
        if m not in means_cache:
            w = valid.float()
            # mean of the f32 keys, stored in f16 as msadb's summaries are
            means_cache[m] = ((K.float() * w[None, :, :, None]).sum(2) /
                              w.sum(1).clamp(min=1)[None, :, None]).half().float()
        p = tm.Pool.__new__(tm.Pool)
        p.K, p.V, p.valid, p.doc = K[:, :nb], V[:, :nb], valid[:nb], doc[:nb]
        p.means = means_cache[m][:, :nb]
        pools.append(p)
    return pools


def generate(model, qs, pools, dev, eos, top_k=16, max_new=10, batch=20, interleave=None):
    """Greedy answers (token lists) to questions qs (token lists with BOS).
    interleave: (docs token lists) -> one round: the best document of the
    prompt pass (max routing score in the last memory layer) is put after
    BOS and routing runs again."""
    import torch
    outs = []
    for s in range(0, len(qs), batch):
        chunk = [list(q) for q in qs[s:s + batch]]
        if interleave is not None and pools is not None:
            T = max(len(q) for q in chunk)
            tok = np.zeros((len(chunk), T), np.int64)
            val = np.zeros((len(chunk), T), bool)
            for i, q in enumerate(chunk):
                tok[i, :len(q)] = q
                val[i, :len(q)] = True
            with torch.no_grad():
                _, _, info = model.forward_query(torch.from_numpy(tok).to(dev), torch.from_numpy(val).to(dev),
                                                 torch.from_numpy(val.sum(1)).to(dev), pools, top_k)
            bb = info["best_block"].cpu().numpy()
            dd = pools[-1].doc[torch.from_numpy(bb).to(dev)].cpu().numpy()
            chunk = [[q[0]] + list(interleave[int(d)]) + q[1:] for q, d in zip(chunk, dd)]
        plen = [len(q) for q in chunk]
        seqs = [list(q) for q in chunk]
        done = [False] * len(seqs)
        gen = [[] for _ in seqs]
        for _ in range(max_new):
            T = max(len(q) for q in seqs)
            tok = np.zeros((len(seqs), T), np.int64)
            val = np.zeros((len(seqs), T), bool)
            for i, q in enumerate(seqs):
                tok[i, :len(q)] = q
                val[i, :len(q)] = True
            with torch.no_grad():
                x, _, _ = model.forward_query(torch.from_numpy(tok).to(dev), torch.from_numpy(val).to(dev),
                                              torch.tensor(plen, device=dev), pools, top_k)
                last = torch.tensor([len(q) - 1 for q in seqs], device=dev)
                h = x[torch.arange(len(seqs), device=dev), last]
                nxt = model.logits(h[:, None])[:, 0].argmax(-1).cpu().numpy()
            for i, t in enumerate(nxt):
                if done[i]:
                    continue
                if int(t) == eos:
                    done[i] = True
                else:
                    gen[i].append(int(t))
                    seqs[i].append(int(t))
            if all(done):
                break
        outs += gen
    return outs


def gpu_eval(model, path, dev, deadline, log=print):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    z = np.load(path)
    eos = int(z["eos"])
    docs = _ragged(z, "doc")
    qs, ans = _ragged(z, "q"), _ragged(z, "a")
    res = {"mode": "pytorch-gpu, msadb routing (mean key, top-16 blocks/kv head), f16 K/V",
           "sizes": {}}
    t0 = time.time()
    kvs, valid, doc = encode_pool(model, docs, dev)
    res["encode_seconds"] = round(time.time() - t0, 1)
    blocks_per_doc = torch.bincount(doc, minlength=len(docs)).cpu().numpy()
    cum_blocks = np.cumsum(blocks_per_doc)
    mc = {}

    # the kinds of the questions, where prepare's eval.json lies beside the arrays
    meta = os.path.join(os.path.dirname(os.path.abspath(path)), "eval.json")
    kinds = None
    if os.path.exists(meta):
        with open(meta) as f:
            kinds = [n["kind"] for n in json.load(f)["needles"]]

    def acc(outs, ans, where=None):
        ok = [list(o) == list(a) for o, a in zip(outs, ans)]
        if where is not None and kinds is not None and len(kinds) == len(ok):
            where["by_kind"] = {k: float(np.mean([o for o, kk in zip(ok, kinds) if kk == k]))
                                for k in sorted(set(kinds))}
        return float(np.mean(ok))

    outs = generate(model, qs, None, dev, eos)
    res["no_memory"] = acc(outs, ans)
    log({"event": "eval", "what": "no_memory", "acc": res["no_memory"]})
    for name, nd, nt in zip(z["size_names"], z["size_docs"], z["size_tokens"]):
        if time.time() > deadline:
            res["sizes"][str(name)] = "skipped: time"
            continue
        nb = int(cum_blocks[int(nd) - 1])
        pools = _pools(kvs, valid, doc, nb, mc)
        t1 = time.time()
        outs = generate(model, qs, pools, dev, eos)
        r = {}
        a = acc(outs, ans, r)
        res["sizes"][str(name)] = {"tokens": int(nt), "docs": int(nd), "blocks": nb, "acc": a,
                                   "seconds": round(time.time() - t1, 1),
                                   "sample": [outs[i] for i in range(3)], **r}
        log({"event": "eval", "size": str(name), "tokens": int(nt), "acc": a, **r})
    del kvs, mc
    torch.cuda.empty_cache()
    if time.time() < deadline:
        mdocs = _ragged(z, "mh")
        mq, ma = _ragged(z, "mq"), _ragged(z, "ma")
        kvs, valid, doc = encode_pool(model, mdocs, dev)
        pools = _pools(kvs, valid, doc, valid.shape[0], {})
        off = acc(generate(model, mq, pools, dev, eos), ma)
        on = acc(generate(model, mq, pools, dev, eos, interleave=mdocs), ma)
        res["multihop"] = {"interleave_off": off, "interleave_on": on, "pairs": len(mq)}
        log({"event": "eval", "multihop": res["multihop"]})
    return res


# --------------------------------------------------------------------------
# CPU evaluation through the C library
# --------------------------------------------------------------------------

def header_fields(struct):
    """Field names of a struct of include/msadb.h, in order."""
    import re
    src = open(os.path.join(ROOT, "include", "msadb.h")).read()
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (struct, struct), src, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        m = re.search(r"\(\s*\*\s*(\w+)\s*\)", decl) or re.search(r"(\w+)\s*(\[[^\]]*\])?$", decl)
        names.append(m.group(1))
    return names


def check_mirrors(L):
    """Problems of the ctypes mirrors (AskParams, Options) against the
    header and the library: field names and order as declared, and a layout
    check: the library's *_init() fills a sentinel-filled buffer; its defaults
    must land in the right fields and nothing may be written past the
    mirror's size."""
    problems = []
    for cls, name, init, defaults in (
            (AskParams, "msadb_ask_params", "msadb_ask_params_init",
             {"top_k": 16, "max_tokens": 64, "top_p": 1.0}),
            (Options, "msadb_options", "msadb_options_init", {"zstd_level": 1})):
        want = header_fields(name)
        have = [f[0] for f in cls._fields_]
        if want != have:
            problems.append("%s fields %s, header %s" % (cls.__name__, have, want))
            continue
        n = ctypes.sizeof(cls)
        buf = (ctypes.c_ubyte * (n + 64))(*([0xAB] * (n + 64)))
        getattr(L, init)(ctypes.byref(buf))
        if any(b != 0xAB for b in buf[n:]):
            problems.append("%s: the library's struct is larger than the mirror (%d bytes)"
                            % (name, n))
        st = cls.from_buffer(buf)
        for f, _ in cls._fields_:
            v = getattr(st, f)
            exp = defaults.get(f, 0)
            if (v or 0) != exp:
                problems.append("%s.%s reads %r after %s(), expected %r" % (name, f, v, init, exp))
    return problems


class AskParams(ctypes.Structure):
    _fields_ = [("spaces", ctypes.c_void_p), ("n_spaces", ctypes.c_size_t),
                ("top_k", ctypes.c_uint32), ("select", ctypes.c_int), ("exact", ctypes.c_int),
                ("no_memory", ctypes.c_int), ("max_tokens", ctypes.c_uint32),
                ("temperature", ctypes.c_float), ("top_p", ctypes.c_float),
                ("seed", ctypes.c_uint64), ("query_pos", ctypes.c_int32),
                ("route_each_token", ctypes.c_int), ("interleave", ctypes.c_uint32),
                ("summary", ctypes.c_uint32), ("score", ctypes.c_int), ("on_text", ctypes.c_void_p),
                ("user", ctypes.c_void_p)]


class Options(ctypes.Structure):
    _fields_ = [("read_only", ctypes.c_int), ("map_size", ctypes.c_uint64),
                ("max_readers", ctypes.c_uint), ("zstd_level", ctypes.c_int),
                ("no_sync", ctypes.c_int), ("key", ctypes.c_void_p), ("passphrase", ctypes.c_char_p)]


class Msadb:
    """The few public functions the evaluation needs, through ctypes."""

    def __init__(self, lib):
        self.L = L = ctypes.CDLL(lib)
        problems = check_mirrors(L)
        if problems:
            raise SystemExit("eval_memory.py: ctypes mirrors out of date with include/msadb.h:\n  "
                             + "\n  ".join(problems))
        L.msadb_strerror.restype = ctypes.c_char_p
        self.llm = ctypes.c_void_p()
        # how ask() routes: summary MSADB_SUMMARY_* (0: the model's declared routing),
        # top_k blocks per kv head (msadb_ask_params' default 16)
        self.summary, self.top_k = 0, 16

    def check(self, rc, what):
        if rc:
            raise RuntimeError("%s: %s" % (what, self.L.msadb_strerror(rc).decode()))

    def open_model(self, path):
        self.check(self.L.msadb_llm_open(path.encode(), ctypes.byref(self.llm)), "llm_open")

    def create_store(self, path, dtype=None):
        sig = ctypes.create_string_buffer(4096)
        self.check(self.L.msadb_llm_signature(self.llm, sig), "signature")
        opt = Options()
        self.L.msadb_options_init(ctypes.byref(opt))
        opt.no_sync = 1
        st = ctypes.c_void_p()
        self.check(self.L.msadb_open_or_create(path.encode(), sig, ctypes.byref(opt),
                                               ctypes.byref(st)), "open_or_create")
        return st

    def close_store(self, st):
        self.L.msadb_close(st)

    def ingest(self, st, title, text):
        b = text.encode()
        did = ctypes.c_uint64()
        self.check(self.L.msadb_llm_ingest(self.llm, st, b"default", title.encode(), b,
                                           ctypes.c_size_t(len(b)), ctypes.byref(did)), "ingest")

    def ask(self, st, question, no_memory=False, interleave=0, top_k=None, max_tokens=12,
            exact=False, route_each_token=False):
        p = AskParams()
        self.L.msadb_ask_params_init(ctypes.byref(p))
        p.summary = self.summary
        p.no_memory = int(no_memory)
        p.exact = int(exact)
        p.interleave = interleave
        p.route_each_token = int(route_each_token)
        p.top_k = self.top_k if top_k is None else top_k
        p.max_tokens = max_tokens
        buf = ctypes.create_string_buffer(4096)
        n = ctypes.c_size_t()
        b = question.encode()
        self.check(self.L.msadb_llm_ask(self.llm, st, b, ctypes.c_size_t(len(b)), ctypes.byref(p), buf,
                                        ctypes.c_size_t(4096), ctypes.byref(n), None, ctypes.c_size_t(0),
                                        None), "ask")
        return buf.value.decode("utf-8", "replace")

    def tokenize_len(self, text):
        n = ctypes.c_size_t()
        b = text.encode()
        self.L.msadb_llm_tokenize(self.llm, b, ctypes.c_size_t(len(b)), 0, None, None,
                                  ctypes.c_size_t(0), ctypes.byref(n))
        return n.value


def norm_answer(s):
    return s.strip().rstrip(".").strip()


SUMMARIES = {"declared": 0, "mean": 1, "minmax": 2, "reps": 4}  # MSADB_SUMMARY_*
WHAT = ("none", "exact", "trunc", "rag", "rag1", "multihop", "interleave", "each")


def cmd_cpu(args):
    import make_memory_data as mmd
    import shutil
    args.what = set(w for w in args.what.split(",") if w)
    if args.what - set(WHAT):
        raise SystemExit("--what: unknown %s (known: %s)" % (",".join(sorted(args.what - set(WHAT))),
                                                            ",".join(WHAT)))
    rec = json.load(open(os.path.join(args.data, "eval.json")))
    docs = mmd.read_docs(os.path.join(args.data, "eval_docs.txt"))
    mh_docs = mmd.read_docs(os.path.join(args.data, "eval_mh_docs.txt"))
    if args.summary != "declared" and (args.what != {"multihop"} or args.sizes):
        raise SystemExit("--summary: only with --what multihop --sizes '' (its figures are "
                         "kept apart as multihop_SUMMARY)")
    m = Msadb(args.lib)
    m.summary = SUMMARIES[args.summary]
    m.top_k = args.top_k
    m.open_model(args.model)
    needles = rec["needles"]
    res = {"mode": "C library (libmsadb) on this machine, %d CPU cores" % os.cpu_count(),
           "model": args.model, "sizes": {}}
    if os.path.exists(args.out):
        res = json.load(open(args.out))
        res.setdefault("sizes", {})
    if res.setdefault("top_k", args.top_k) != args.top_k:
        raise SystemExit("--top-k %d: %s holds figures for top_k %d (use another --out)"
                         % (args.top_k, args.out, res["top_k"]))

    def save():
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    def run_qs(st, qs, exp, **kw):
        ok, lat, outs = 0, [], []
        for q, e in zip(qs, exp):
            t = time.time()
            a = m.ask(st, q, **kw)
            lat.append(time.time() - t)
            outs.append(a)
            ok += norm_answer(a) == e
        return ok / len(qs), float(np.median(lat)), outs

    qs = [e["question"] for e in needles]
    exp = [e["answer"] for e in needles]
    # "none", "trunc", "rag", "multihop" (the baselines and multi-hop set), "exact" (every
    # block attended), "interleave" (one interleave round), "each" (route_each_token)
    if "no_memory" not in res and "none" in args.what:
        acc, lat, outs = run_qs(None, qs, exp, no_memory=True)
        res["no_memory"] = {"acc": acc, "latency_s": lat, "sample": outs[:5]}
        print("no memory", acc, lat, flush=True)
        save()
    # stores are nested: ingest the largest prefix once, measuring as it grows
    sizes = [s for s in args.sizes.split(",") if s]
    if sizes:
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
            acc, lat, outs = run_qs(st, qs, exp)
            # a later run with other --what keeps the other figures of a size
            res["sizes"].setdefault(s, {}).update(
                {"tokens": rec["sizes"][s]["tokens"], "docs": nd, "acc": acc, "latency_s": lat,
                 "by_kind": by_kind(needles, outs),
                 "wrong": [(q, e, o) for q, e, o in zip(qs, exp, outs) if norm_answer(o) != e][:8]})
            if not args.reuse:
                res["sizes"][s]["ingest_s_cumulative"] = round(t_ing, 1)
            print(s, acc, lat, "ingest", round(t_ing, 1), flush=True)
            save()
            # other ways of asking the same store: "exact", every block attended
            # (separates routing from reading); "interleave", one interleave round
            # (the best-routed document's text in the prompt, routing again, as for
            # multi-hop questions); "each", every generated token routes again
            for what, key, how in (("exact", "exact", {"exact": True}),
                                   ("interleave", "interleave", {"interleave": 1}),
                                   ("each", "route_each_token", {"route_each_token": True})):
                if what in args.what:
                    acc_o, lat_o, outs_o = run_qs(st, qs, exp, **how)
                    res["sizes"][s][key] = {"acc": acc_o, "latency_s": lat_o,
                                            "by_kind": by_kind(needles, outs_o)}
                    print(s, key, acc_o, lat_o, flush=True)
            if "trunc" in args.what:
                # (b) the haystack truncated to the context: its last ~950 tokens
                tail, n = [], 0
                for i in range(nd - 1, -1, -1):
                    tl = m.tokenize_len(docs[i])
                    if n + tl > 950:
                        break
                    tail.insert(0, docs[i].strip())
                    n += tl
                pre = " ".join(tail) + " "
                acc_b, lat_b, _ = run_qs(None, [pre + q for q in qs], exp, no_memory=True)
                res["sizes"][s]["truncated"] = {"acc": acc_b, "latency_s": lat_b, "context_tokens": n}
                print(s, "truncated", acc_b, lat_b, flush=True)
            rags = {name: topk for name, topk in (("rag", TOPK_RAG), ("rag1", 1))
                    if name in args.what}
            if rags:
                for name, r in rag_eval(m, docs[:nd], qs, exp, rags).items():
                    res["sizes"][s][name] = r
                    print(s, name, r["acc"], r["latency_s"], flush=True)
            save()
        m.close_store(st)
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
    if "multihop" in args.what:
        path = os.path.join(args.store_dir, "eval-mh")
        shutil.rmtree(path, ignore_errors=True)
        st = m.create_store(path)
        for i, d in enumerate(mh_docs):
            m.ingest(st, "mh-%d" % i, d)
        mq = [e["question"] for e in rec["multihop"]]
        me = [e["answer"] for e in rec["multihop"]]
        off = run_qs(st, mq, me)
        on = run_qs(st, mq, me, interleave=1)
        key = "multihop" if args.summary == "declared" else "multihop_" + args.summary
        res[key] = {"interleave_off": off[0], "interleave_on": on[0],
                    "latency_off_s": off[1], "latency_on_s": on[1], "pairs": len(mq)}
        print(key, res[key], flush=True)
        m.close_store(st)
        shutil.rmtree(path, ignore_errors=True)
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

LOGITS_C = r"""
/* logits of every token of a token file through msadb's runtime */
#include <stdio.h>
#include <stdlib.h>
#include "model.h"
int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    msadb_model *m;
    int rc = msadb_model_open(argv[1], &m);
    if (rc) { fprintf(stderr, "open %d\n", rc); return 1; }
    FILE *f = fopen(argv[2], "rb");
    int32_t ids[8192];
    size_t n = fread(ids, 4, 8192, f);
    fclose(f);
    const msadb_model_config *c = msadb_model_get_config(m);
    msadb_model_ctx *ctx;
    if (msadb_model_ctx_new(m, (uint32_t)n, &ctx)) return 1;
    float *lg = malloc(n * c->n_vocab * sizeof *lg);
    rc = msadb_model_forward(ctx, ids, (uint32_t)n, NULL, lg, 1, NULL);
    if (rc) { fprintf(stderr, "forward %d\n", rc); return 1; }
    f = fopen(argv[3], "wb");
    fwrite(lg, sizeof *lg, n * c->n_vocab, f);
    fclose(f);
    return 0;
}
"""


def build_logits_tool(build):
    import subprocess
    src, exe = "/tmp/msadb_logits.c", "/tmp/msadb_logits"
    with open(src, "w") as f:
        f.write(LOGITS_C)
    cmd = ("cc -O2 -std=c11 -I%s/include -I%s/libmsadb %s -o %s %s/libmsadb/libmsadb.a "
           "$(pkg-config --libs lmdb libzstd libsodium libpcre2-8 openblas 2>/dev/null || echo "
           "-llmdb -lzstd -lsodium -lpcre2-8 -lopenblas) -lpthread -lm"
           % (ROOT, ROOT, src, exe, build))
    subprocess.run(cmd, shell=True, check=True)
    return exe


def torch_from_gguf(path):
    """The PyTorch model with the weights the GGUF file holds (dequantized);
    the file's metadata in its gguf_meta."""
    import torch
    import gguf
    import train_memory_model as tm
    r = gguf.GGUFReader(path)
    mt = r.meta
    c = tm.Config()
    c.n_layers = mt["llama.block_count"]
    c.d = mt["llama.embedding_length"]
    c.ffn = mt["llama.feed_forward_length"]
    c.n_heads = mt["llama.attention.head_count"]
    c.n_kv = mt["llama.attention.head_count_kv"]
    c.hd = mt.get("llama.attention.key_length", c.d // c.n_heads)
    c.ctx = mt["llama.context_length"]
    c.theta = mt["llama.rope.freq_base"]
    c.eps = mt["llama.attention.layer_norm_rms_epsilon"]
    c.vocab = len(mt["tokenizer.ggml.tokens"])
    m = tm.Model(c)
    sd = {"tok.weight": r.tensor_f32("token_embd.weight"), "out_norm": r.tensor_f32("output_norm.weight")}
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}
    for i in range(c.n_layers):
        sd["layers.%d.attn_norm" % i] = r.tensor_f32("blk.%d.attn_norm.weight" % i)
        sd["layers.%d.ffn_norm" % i] = r.tensor_f32("blk.%d.ffn_norm.weight" % i)
        for a, b in names.items():
            sd["layers.%d.%s.weight" % (i, a)] = r.tensor_f32("blk.%d.%s.weight" % (i, b))
    m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    m.gguf_meta = mt
    return m.eval()


def cmd_check(args):
    """C runtime logits vs the PyTorch model (GGUF weights, f64) on prompts."""
    import subprocess
    import torch
    import make_memory_data as mmd
    sp = mmd.load_sp()
    exe = build_logits_tool(args.build)
    m = torch_from_gguf(args.model).double()
    prompts = ["What is the password of the amber lockbox?",
               "In the beginning God created the heaven and the earth.",
               "The ls command lists directory contents. " * 12]
    worst = 0.0
    out = []
    for p in prompts:
        ids = [sp.bos_id()] + sp.encode(p)
        np.array(ids, np.int32).tofile("/tmp/msadb_ids.bin")
        subprocess.run([exe, args.model, "/tmp/msadb_ids.bin", "/tmp/msadb_logits.bin"], check=True)
        lc = np.fromfile("/tmp/msadb_logits.bin", np.float32).reshape(len(ids), -1)
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


def cmd_mirrors(args):
    """Exit 1 if the ctypes mirrors disagree with include/msadb.h / the library."""
    problems = check_mirrors(ctypes.CDLL(args.lib))
    for p in problems:
        print("FAIL:", p)
    if problems:
        sys.exit(1)
    print("ctypes mirrors match include/msadb.h and %s" % os.path.basename(args.lib))


def cmd_plot_log(args):
    """Loss curves of a training log (train_memory_model.py's jsonl, with a
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
        ax.text(x, 8.0, " %s" % run, fontsize=7, va="top")
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
    ap.add_argument("cmd", choices=["prepare", "cpu", "plot", "check", "plot-log", "mirrors"])
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
    elif args.cmd == "mirrors":
        cmd_mirrors(args)
    else:
        cmd_plot(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
