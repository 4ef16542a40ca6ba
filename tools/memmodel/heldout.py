#!/usr/bin/python3
"""memmodel.heldout -- an evaluation of the memory model that training cannot
be tuned to.

    PYTHONPATH=tools /usr/bin/python3 -m memmodel.heldout prepare --data DATA [--seed 2718]
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.heldout cpu --data DATA --model M.gguf \\
        --lib BUILD/libmsadb/libmsadb.so [--sizes 16K,128K,1M] [--out J] [--keep --reuse]
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.heldout cpu ... --sizes "" --what mh [--mh-rounds 3]
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.heldout probe-mh --data DATA [--probe-slots held-attr]
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.heldout table --json J [--json J2]
    PYTHONPATH=tools /usr/bin/python3 -m memmodel.heldout diagnose --data DATA --model M.gguf \
        --lib BUILD/libmsadb/libmsadb.so [--cell tpl] [--out J]

prepare (needs DATA/text/dict-gcide.txt from `memmodel.data extract`) writes
DATA/heldout.json (questions, answers, cells, needle positions; the command
and seed) and DATA/heldout_docs.txt (the haystack, in order).  Everything
in it is held out from training (memmodel.data's HELD_* lists):

  entities   held-out nouns, first names, proper nouns, numbers (Vocab "held")
             AND held-out adjectives, animals and attribute words (HELD_SLOTS)
  documents  dict-gcide entries (never trained on) joined into documents of
             512-4096 tokens; a needle document holds 3-6 facts of ONE kind
             (dense: same-kind neighbours are the distractors) at random
             paragraph boundaries, so needles sit anywhere in 4096 tokens
  cells      tpl      training fact and question templates, held-out slots
             q_para   the same facts asked with held-out wordings
                      (HELD_QUESTION_T: other interrogatives, imperatives)
             f_para   facts written as ordinary sentences (HELD_FACT_T),
                      asked with training question templates
             unans    questions whose fact is not in memory (half of them near
                      misses: a stored entity's noun with another adjective,
                      a stored person's other animal, a room without that
                      code); the right answer is memmodel.data.ABSTAIN
  multi-hop  DATA/heldout_mh.json, heldout_mh_docs.txt: N_MH two-hop pairs (a
             room fact, then that room's code) on held-out entities in their
             own haystack of MH_SIZE tokens (the needle-free documents above,
             each fact in a document of its own), asked in cell mh with the
             training multi-hop templates, in cell mh_para with held-out
             ones (HELD_QUESTION_T["multihop"]), in cell mh_new with the
             later held-out ones (HELD_MH_NEW) and in cell mh_fresh with the
             fresh ones (HELD_MH_FRESH); drawn with their own seeds, so
             heldout.json is the same with or without them, and the pairs
             with or without mh_new and mh_fresh

cpu runs it through the C library (memmodel.clib): one store grows through
the nested haystack sizes (prefixes of the document list); at each size
every question whose needle document is in memory is asked (unanswerable
ones always), plus once with no memory.  Reports per cell, per kind and per
needle position (token offset of the fact in its document: 0-511,
512-1023, 1024-2047, 2048-4095), the share of answerable questions
answered ABSTAIN, and the share of unanswerable ones that abstained.

cpu --what mh asks the multi-hop pairs from their own store, without
interleave and with one round (--mh-rounds N: up to N), and counts the
questions whose round pulls the first hop's document.

probe-mh draws two-hop pairs with chosen slot words (--probe-slots: train,
held-adj, held-attr, held) into the first documents of the multi-hop
haystack and counts what breaks: the round's pull, the second hop alone, the
second hop with the first hop's text in front of the question.

diagnose asks one cell's questions again, each from a store holding one
document: the needle document, and variants of it that keep or drop the
fact's neighbours and the gcide text, or move the fact (cmd_diagnose).
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from . import data as mmd
from .evaluate import norm_answer

SIZES = {"16K": 16384, "128K": 131072, "1M": 1 << 20, "10M": 10 * (1 << 20)}
KINDS = ["code", "lives", "pet", "room", "roomcode"]
DOC_MAX = 4096
POS_BUCKETS = [(0, 512), (512, 1024), (1024, 2048), (2048, 4096)]
N_PER_KIND = 24          # facts per kind and fact cell: 120 tpl, 120 f_para
N_UNANS = 120
N_MH = 120               # two-hop pairs, each asked in cells mh and mh_para
MH_SIZE = 1 << 20        # the multi-hop store's haystack


def bucket(pos):
    for a, b in POS_BUCKETS:
        if a <= pos < b:
            return "%d-%d" % (a, b - 1)
    return "4096+"


# --------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------

def draw_facts(seed):
    """(tpl facts, f_para facts): N_PER_KIND of each kind each, on held-out
    entities and slots, no key shared, no entity noun or person shared."""
    held = dict(side="held", slots=mmd.HELD_SLOTS)
    g_tpl = mmd.FactGen(seed, question_t=mmd.QUESTION_T, **held)
    g_para = mmd.FactGen(seed + 1, fact_t=mmd.HELD_FACT_T, **held)
    g_q = mmd.FactGen(seed + 2, question_t=mmd.HELD_QUESTION_T, **held)
    used, names = set(), set()
    out = {"tpl": [], "f_para": []}
    for cell, g in (("tpl", g_tpl), ("f_para", g_para)):
        for kind in KINDS:
            n = 0
            while n < N_PER_KIND:
                f = g.fact(kind)
                d = f["d"]
                keys = {f["key"]} | ({"room#" + f["val"]} if kind == "room" else set()) | (
                    {"room#" + d["room"]} if kind == "roomcode" else set())
                name = d.get("ent", "").split(" ")[-1] or d.get("per") or d.get("room")
                if keys & used or name in names:
                    continue
                used |= keys
                names.add(name)
                if cell == "tpl":
                    # the same fact asked with a held-out wording (q_para)
                    f["question_para"] = g_q._pick(mmd.HELD_QUESTION_T[kind]).format(**d)
                out[cell].append(f)
                n += 1
    return out, used


def draw_unanswerable(seed, facts, used):
    """N_UNANS questions (training templates, held-out slots) about keys not in
    memory; every other one a near miss of a stored fact."""
    g = mmd.FactGen(seed + 3, "held", slots=mmd.HELD_SLOTS)
    rng = np.random.default_rng(seed + 4)
    stored = facts["tpl"] + facts["f_para"]
    out = []
    while len(out) < N_UNANS:
        kind = KINDS[len(out) % len(KINDS)]
        kw = {}
        if len(out) % 2:
            near = [f for f in stored if f["kind"] == kind][int(rng.integers(N_PER_KIND * 2))]
            d = near["d"]
            if kind in ("code", "room"):
                kw["ent"] = "the %s %s" % (g._pick(mmd.HELD_ADJ), d["ent"].split(" ")[-1])
            elif kind == "pet":
                kw["per"] = d["per"]
            elif kind == "lives":
                kw["per"] = d["per"].split(" ")[0] + " " + g.proper()
            else:
                kw["room"] = g._pick(g.v.room)
        f = g.fact(kind, **kw)
        keys = {f["key"]}
        if kind == "lives" and any(s["kind"] == "lives" and s["d"]["per"] == f["d"]["per"]
                                   for s in stored):
            continue
        if keys & used:
            continue
        used |= keys
        f["near_miss"] = bool(len(out) % 2)
        out.append(f)
    return out


def draw_multihop(seed, used):
    """N_MH two-hop pairs on held-out entities and slots, keys not in used:
    a room fact (ENT is kept in room R) and R's roomcode fact; each asked
    with a training multi-hop template (cell mh), a held-out one
    (HELD_QUESTION_T["multihop"], cell mh_para), one of the later held-out
    wordings (HELD_MH_NEW, cell mh_new) and one of the fresh ones
    (HELD_MH_FRESH, cell mh_fresh)."""
    g = mmd.FactGen(seed + 5, "held", slots=mmd.HELD_SLOTS)
    pairs = []
    while len(pairs) < N_MH:
        a = g.fact("room")
        b = g.fact("roomcode", room=a["val"])
        keys = {a["key"], b["key"], "room#" + a["val"]}
        if keys & used:
            continue
        used |= keys
        slots = dict(attr=b["d"]["attr"], ent=a["d"]["ent"], Ent=a["d"]["Ent"])
        pairs.append({"facts": [a["text"], b["text"]], "answer": b["val"],
                      "question": g._pick(mmd.QUESTION_T["multihop"]).format(**slots),
                      "question_para": g._pick(mmd.HELD_QUESTION_T["multihop"]).format(**slots),
                      "slots": slots})
    # cell mh_new: the later held-out wordings, drawn with a seed of their own
    # so that the pairs and the other cells stay those of earlier prepares
    rng = np.random.default_rng(seed + 7)
    for p in pairs:
        p["question_new"] = mmd.HELD_MH_NEW[int(rng.integers(len(mmd.HELD_MH_NEW)))].format(
            **p["slots"])
    # cell mh_fresh: the fresh held-out wordings, a seed of their own as well
    rng = np.random.default_rng(seed + 8)
    for p in pairs:
        p["question_fresh"] = mmd.HELD_MH_FRESH[int(rng.integers(len(mmd.HELD_MH_FRESH)))].format(
            **p["slots"])
    return pairs


def prepare_multihop(args, sp, docs, lens, n_needle_docs, used):
    """DATA/heldout_mh.json and heldout_mh_docs.txt: draw_multihop's pairs in
    their own haystack, the held-out haystack's documents after the needle
    documents up to MH_SIZE tokens, each fact at a paragraph boundary of
    its own document (a pair's two facts in two).  Its random draws are
    its own: heldout.json and heldout_docs.txt do not change with it."""
    rng = np.random.default_rng(args.seed + 6)
    pairs = draw_multihop(args.seed, used)
    upto = n_needle_docs + int(np.searchsorted(np.cumsum(lens[n_needle_docs:]), MH_SIZE))
    hay = list(docs[n_needle_docs:upto])
    free = list(rng.permutation(len(hay)))
    for p in pairs:
        p["docs"] = [int(free.pop()), int(free.pop())]
        for f, d in zip(p["facts"], p["docs"]):
            paras = hay[d].split("\n\n")
            i = int(rng.integers(0, len(paras) + 1))
            hay[d] = "\n\n".join(paras[:i] + [f] + paras[i:])
    mmd._write_docs(os.path.join(args.data, "heldout_mh_docs.txt"), hay)
    rec = {"command": "memmodel.heldout prepare --seed %d" % args.seed, "seed": args.seed,
           "doc_tokens": [len(x) for x in sp.encode(hay)], "pairs": pairs}
    with open(os.path.join(args.data, "heldout_mh.json"), "w") as f:
        json.dump(rec, f, indent=0)
    return {"mh_docs": len(hay), "mh_tokens": int(sum(rec["doc_tokens"])), "mh_pairs": len(pairs)}


def _take_docs(gdocs, glens, cur, target):
    """Consecutive gcide entries from cur joined up to target tokens (at
    least one): (paragraphs, tokens, next cursor)."""
    paras, n = [], 0
    while cur < len(gdocs) and (not paras or n + glens[cur] <= target):
        paras += gdocs[cur].split("\n\n")
        n += glens[cur]
        cur += 1
    return paras, n, cur


def build_needle_doc(sp, rng, facts, gdocs, glens, cur):
    """A document of at most DOC_MAX tokens holding facts (texts) at random
    paragraph boundaries; (text, token offset of each fact, next cursor)."""
    ftok = sum(len(sp.encode(f)) + 2 for f in facts)
    target = int(rng.integers(300, DOC_MAX - ftok - 64))
    paras, _, cur = _take_docs(gdocs, glens, cur, target)
    slots = sorted(int(x) for x in rng.integers(0, len(paras) + 1, len(facts)))
    for j, (s, f) in enumerate(zip(slots, facts)):
        paras.insert(s + j, f)
    text = "\n\n".join(paras)
    pos = []
    for f in facts:
        at = text.index(f)
        pos.append(len(sp.encode(text[:at])) if at else 0)
    n = len(sp.encode(text))
    if n > DOC_MAX:
        raise ValueError("needle document of %d tokens" % n)
    return text, pos, cur


def cmd_prepare(args):
    sp = mmd.load_sp()
    rng = np.random.default_rng(args.seed)
    facts, used = draw_facts(args.seed)
    unans = draw_unanswerable(args.seed, facts, used)
    gdocs = mmd.read_docs(os.path.join(args.data, "text", "dict-gcide.txt"))
    glens = [len(x) for x in sp.encode(gdocs)]
    # needle documents: 3-6 facts of one kind and one cell each
    groups = []
    for cell in ("tpl", "f_para"):
        for kind in KINDS:
            fs = [f for f in facts[cell] if f["kind"] == kind]
            i = 0
            while i < len(fs):
                k = int(rng.integers(3, 7))
                groups.append(fs[i:i + k])
                i += k
    order = rng.permutation(len(groups))
    docs, questions, cur = [], [], 0
    for gi in order:
        fs = groups[gi]
        text, pos, cur = build_needle_doc(sp, rng, [f["text"] for f in fs], gdocs, glens, cur)
        for f, p in zip(fs, pos):
            cell = "tpl" if "question_para" in f else "f_para"
            base = {"kind": f["kind"], "answer": f["val"], "doc": len(docs), "pos": p,
                    "fact": f["text"]}
            questions.append(dict(base, cell=cell, question=f["question"]))
            if cell == "tpl":
                questions.append(dict(base, cell="q_para", question=f["question_para"]))
        docs.append(text)
    n_needle_docs = len(docs)
    for f in unans:
        questions.append({"kind": f["kind"], "answer": mmd.ABSTAIN, "doc": -1, "pos": -1,
                          "cell": "unans", "question": f["question"],
                          "near_miss": f["near_miss"]})
    # the rest of the haystack: gcide entries joined into 512-4096-token documents
    lens = [len(x) for x in sp.encode(docs)]
    total, need = sum(lens), SIZES[args.max_size]
    while total < need and cur < len(gdocs):
        paras, n, cur = _take_docs(gdocs, glens, cur, int(rng.integers(512, DOC_MAX + 1)))
        docs.append("\n\n".join(paras))
        lens.append(n)
        total += n
    mmd._write_docs(os.path.join(args.data, "heldout_docs.txt"), docs)
    rec = {"command": "memmodel.heldout prepare --seed %d --max-size %s" % (args.seed, args.max_size),
           "seed": args.seed, "doc_tokens": lens, "needle_docs": n_needle_docs,
           "questions": questions}
    with open(os.path.join(args.data, "heldout.json"), "w") as f:
        json.dump(rec, f, indent=0)
    cells = {}
    for q in questions:
        cells[q["cell"]] = cells.get(q["cell"], 0) + 1
    mh = prepare_multihop(args, sp, docs, lens, n_needle_docs, used)
    print(json.dumps(dict({"docs": len(docs), "needle_docs": n_needle_docs,
                           "needle_tokens": int(sum(lens[:n_needle_docs])), "tokens": int(total),
                           "questions": cells}, **mh)))


def cmd_arrays(args):
    """DATA/heldout_gpu.npz: the haystack's documents up to the largest of
    --sizes, tokenized as msadb's ingest reads them (--segment, default the
    --model's msadb.segment: document, or joined), the questions and
    answers tokenized, for memmodel.gpu_eval.heldout_gpu."""
    sp = mmd.load_sp()
    rec = json.load(open(os.path.join(args.data, "heldout.json")))
    docs = mmd.read_docs(os.path.join(args.data, "heldout_docs.txt"))
    cum = np.cumsum(rec["doc_tokens"])
    sizes = [(n, int(np.searchsorted(cum, SIZES[n], side="right")))
             for n in args.sizes.split(",") if n]
    nd = max(k for _, k in sizes)
    q, a = [], []
    for x in rec["questions"]:
        qt = sp.encode(x["question"])
        full = sp.encode(x["question"] + " " + x["answer"])
        q.append([sp.bos_id()] + qt)
        a.append(full[len(qt):])
    args.segment = args.segment or mmd.model_segment(args.model)
    dt, do = mmd.ragged(mmd.tokenize_as(sp, docs[:nd], args.segment))
    qt, qo = mmd.ragged(q)
    at, ao = mmd.ragged(a)
    np.savez_compressed(os.path.join(args.data, "heldout_gpu.npz"), doc_tok=dt, doc_off=do,
                        q_tok=qt, q_off=qo, a_tok=at, a_off=ao,
                        abstain=np.array(sp.encode(mmd.ABSTAIN), np.int64),
                        size_names=np.array([n for n, _ in sizes]),
                        size_docs=np.array([k for _, k in sizes]), eos=np.array(sp.eos_id()))
    print(json.dumps({"sizes": dict(sizes), "doc_tokens": int(len(dt)), "segment": args.segment}))


# --------------------------------------------------------------------------
# cpu: through the C library
# --------------------------------------------------------------------------

def score(questions, outs, routed=None):
    """Figures of one run: per cell (accuracy, n, abstained), per cell and
    kind, per cell and needle position; with routed (per question, from
    ask_all: whether the route selected a block of its needle document and
    whether it selected the block holding its answer, None for none, and the
    share of the selected blocks that are first blocks of their documents;
    or, from gpu_eval, the first of these alone)
    also the count of routed questions and of those answered right, of
    questions whose answer's block was read (answer_read) and of those
    abstained all the same, and the summed first-block shares."""
    res = {"cells": {}, "by_kind": {}, "by_pos": {}}
    for i, (q, o) in enumerate(zip(questions, outs)):
        ok = o == q["answer"] or (q["cell"] == "unans" and o.lower() == mmd.ABSTAIN)
        ab = o.lower() == mmd.ABSTAIN
        for tab, key in (("cells", q["cell"]), ("by_kind", q["cell"] + "/" + q["kind"]),
                         ("by_pos", q["cell"] + "/" + bucket(q["pos"]) if q["pos"] >= 0
                          else None)):
            if key is None:
                continue
            c = res[tab].setdefault(key, {"n": 0, "correct": 0, "abstained": 0})
            c["n"] += 1
            c["correct"] += int(ok)
            c["abstained"] += int(ab)
            if routed is None:
                continue
            # ask_all's (document, answer, first share); gpu_eval's document alone
            doc, ans, first = routed[i] if isinstance(routed[i], tuple) else (routed[i], None, None)
            if first is not None:
                c["first_blocks"] = round(c.get("first_blocks", 0.0) + first, 4)
            if doc is not None:
                c["routed"] = c.get("routed", 0) + int(doc)
                c["right_routed"] = c.get("right_routed", 0) + int(doc and ok)
            if ans is not None:
                c["answer_read"] = c.get("answer_read", 0) + int(ans)
                c["abstained_answer_read"] = c.get("abstained_answer_read", 0) + int(ans and ab)
    for tab in res.values():
        for c in tab.values():
            c["acc"] = round(c["correct"] / c["n"], 4)
            c["abstain_rate"] = round(c["abstained"] / c["n"], 4)
    return res


def ask_all(m, st, questions, doc_ids=None, **kw):
    """Answers (stripped of a closing full stop), the mean seconds per
    question, and with doc_ids (store ids of each haystack document's parts)
    per question what the last memory layer's route held: a block of its
    needle document, the block holding its answer (its text in a cited
    span; both None for a question without one), and the share of its
    blocks that are first blocks of their documents."""
    outs, routed, t0 = [], [], time.time()
    for q in questions:
        a = m.answer(st, q["question"], **kw)
        outs.append(norm_answer(a.text))
        if doc_ids is not None:
            first = float((a.hits["token_start"] == 0).mean()) if len(a.hits) else 0.0
            if q["doc"] < 0:
                routed.append((None, None, first))
                continue
            routed.append((bool(np.isin(a.hits["doc_id"], doc_ids[q["doc"]]).any()),
                           any(q["answer"] in (sp.text or "") for sp in a.spans), first))
    return outs, (time.time() - t0) / max(1, len(questions)), routed if doc_ids else None


def abstain_retry(m, st, questions, outs, **kw):
    """The questions answered ABSTAIN asked again with one interleave round
    (the best document's text in front of the question): per cell, how many
    abstained, how many of those the round answers right, how many it still
    abstains on, and the mean seconds of a retry."""
    res, t0, n = {}, time.time(), 0
    for q, o in zip(questions, outs):
        if o.lower() != mmd.ABSTAIN:
            continue
        a = norm_answer(m.ask(st, q["question"], interleave=1, **kw))
        n += 1
        c = res.setdefault(q["cell"], {"abstained": 0, "right_after": 0, "abstained_after": 0})
        c["abstained"] += 1
        c["abstained_after"] += int(a.lower() == mmd.ABSTAIN)
        c["right_after"] += int(a == q["answer"] or (q["cell"] == "unans"
                                                      and a.lower() == mmd.ABSTAIN))
    return dict(res, retry_s=round((time.time() - t0) / max(1, n), 3))


def grow_store(m, st, docs, lens, have, size, log):
    """Ingests documents after the first `have` while the haystack stays
    within size tokens; the new count."""
    cum = np.cumsum(lens)
    upto = int(np.searchsorted(cum, size, side="right"))
    t0 = time.time()
    for i in range(have, upto):
        m.ingest(st, "heldout-%06d" % i, docs[i])
    dt = time.time() - t0
    log({"event": "ingested", "docs": upto, "tokens": int(cum[upto - 1]) if upto else 0,
         "new_tokens": int(cum[upto - 1] - (cum[have - 1] if have else 0)) if upto else 0,
         "seconds": round(dt, 1)})
    return upto


def mh_store(m, args, name, docs):
    """A new store args.store_dir/name holding docs, titled mh-0, mh-1, ...
    (the titles memmodel.evaluate.first_hop_pulls looks up); (store, path)."""
    path = os.path.join(args.store_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(args.store_dir, exist_ok=True)
    st = m.create_store(path)
    for i, d in enumerate(docs):
        m.ingest(st, "mh-%d" % i, d)
    return st, path


def mh_round(m, st, pairs, docs, qs):
    """The two-hop questions qs (one per pair) without interleave and with
    one round, no follow-up questions: (run_qs without, run_qs with,
    first_hop_pulls' counts)."""
    from .evaluate import first_hop_pulls, run_qs
    want = [p["answer"] for p in pairs]
    routed = []
    off = run_qs(m, st, qs, want, full=routed, followups=0)
    on = run_qs(m, st, qs, want, interleave=1, followups=0)
    return off, on, first_hop_pulls(m, st, pairs, docs, routed, on[2])


def cpu_multihop(args, m, log):
    """The two-hop pairs (DATA/heldout_mh.json) in their own store, each
    cell (mh, mh_para, mh_new, mh_fresh) asked without interleave and with 1
    to --mh-rounds rounds (each round reads a pulled document of up to 4096
    tokens: about a second a round on 2 cores); where the one round goes
    (memmodel.evaluate.first_hop_pulls)."""
    from .evaluate import followup_figures, run_qs
    if not os.path.exists(os.path.join(args.data, "heldout_mh.json")):
        raise SystemExit("memmodel.heldout cpu --what mh: %s has no heldout_mh.json (written by "
                         "memmodel.heldout prepare since the multi-hop pairs exist): run prepare "
                         "again; heldout.json stays the same" % args.data)
    rec = json.load(open(os.path.join(args.data, "heldout_mh.json")))
    hay = mmd.read_docs(os.path.join(args.data, "heldout_mh_docs.txt"))
    t0 = time.time()
    st, path = mh_store(m, args, "mh", hay)
    res = {"pairs": len(rec["pairs"]), "tokens": int(sum(rec["doc_tokens"])),
           "ingest_s": round(time.time() - t0, 1)}
    want = [p["answer"] for p in rec["pairs"]]
    for cell, field in (("mh", "question"), ("mh_para", "question_para"),
                        ("mh_new", "question_new"), ("mh_fresh", "question_fresh")):
        if field not in rec["pairs"][0]:
            log({"event": "multihop", "cell": cell, "skipped": "%s/heldout_mh.json predates "
                 "it: run memmodel.heldout prepare again" % args.data})
            continue
        qs = [p[field] for p in rec["pairs"]]
        r = {"n": len(qs)}
        if args.mh_rounds:
            off, on, pulls = mh_round(m, st, rec["pairs"], hay, qs)
            r.update({"interleave_off": off[0], "interleave_on": on[0], "latency_off_s": off[1],
                      "latency_on_s": on[1],
                      "abstained_on": sum(norm_answer(o).lower() == mmd.ABSTAIN for o in on[2]),
                      "examples": [{"q": q, "want": w, "got": o}
                                   for q, w, o in list(zip(qs, want, on[2]))[::20]]})
            r.update(pulls)
        for rounds in range(2, args.mh_rounds + 1):
            r["interleave_%d" % rounds] = run_qs(m, st, qs, want, interleave=rounds,
                                                 followups=0)[0]
        # follow-up questions (a model declaring msadb.followup), no interleave
        r.update(followup_figures(m, st, rec["pairs"], qs, every=args.followup_examples))
        res[cell] = r
        log({"event": "multihop", "cell": cell,
             "figures": {k: v for k, v in r.items() if k != "examples"}})
    m.close_store(st)
    shutil.rmtree(path, ignore_errors=True)
    return res


def cmd_cpu(args):
    from .clib import Msadb
    rec = json.load(open(os.path.join(args.data, "heldout.json")))
    docs = mmd.read_docs(os.path.join(args.data, "heldout_docs.txt"))
    lens, qs = rec["doc_tokens"], rec["questions"]
    m = Msadb(args.lib)
    m.open_model(args.model, args.segment)
    m.top_k = args.top_k
    m.summary = args.summary
    m.score = args.score

    def log(d):
        print(json.dumps(d), flush=True)

    out = {"command": "memmodel.heldout cpu " + " ".join(sys.argv[2:]), "model": args.model,
           "prepare": rec["command"], "load": os.getloadavg(), "sizes": {}}
    if os.path.exists(args.out):
        prev = json.load(open(args.out))
        out["sizes"] = prev.get("sizes", {})
        for k in ("no_memory", "multihop"):
            if k in prev:
                out[k] = prev[k]
    marker = os.path.join(args.store_dir, "heldout_docs_ingested")
    if not args.reuse:
        shutil.rmtree(args.store_dir, ignore_errors=True)
    os.makedirs(args.store_dir, exist_ok=True)
    st = m.create_store(os.path.join(args.store_dir, "store"))
    have = int(open(marker).read()) if args.reuse and os.path.exists(marker) else 0
    if "none" in args.what:
        outs, lat, _ = ask_all(m, st, qs, no_memory=True)
        out["no_memory"] = dict(score(qs, outs), latency_s=round(lat, 4))
        log({"event": "no_memory", "cells": out["no_memory"]["cells"]})
    if "mh" in args.what.split(","):
        out["multihop"] = cpu_multihop(args, m, log)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    for name in [s for s in args.sizes.split(",") if s]:
        have = grow_store(m, st, docs, lens, have, SIZES[name], log)
        with open(marker, "w") as f:
            f.write(str(have))
        sel = [q for q in qs if q["doc"] < have]
        ids = m.doc_ids(st)  # every part of a document longer than the window
        doc_ids = [ids["heldout-%06d" % i] for i in range(have)]
        outs, lat, routed = ask_all(m, st, sel, doc_ids=doc_ids, exact=args.exact)
        r = dict(score(sel, outs, routed), latency_s=round(lat, 4), docs=have,
                 tokens=int(sum(lens[:have])),
                 examples=[{"q": q["question"], "want": q["answer"], "got": o, "cell": q["cell"]}
                           for q, o in list(zip(sel, outs))[::25]])
        if args.abstain_retry:
            r["abstain_retry"] = abstain_retry(m, st, sel, outs, exact=args.exact)
        out["sizes"][name] = r
        log({"event": "size", "size": name, "cells": r["cells"], "latency_s": r["latency_s"]})
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    m.close_store(st)
    if not args.keep:
        shutil.rmtree(args.store_dir, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


# --------------------------------------------------------------------------
# diagnose: which part of a needle document makes reading fail
# --------------------------------------------------------------------------

VARIANTS = ["needle document", "needle document, exact", "needle document, by paragraph",
            "needle document, joined", "the fact alone",
            "the document's facts only", "gcide haystack, no other fact",
            "the fact first, then the gcide haystack", "training text as haystack"]


def diagnose_docs(q, doc, others, train_text):
    """The documents of cmd_diagnose's VARIANTS for question q (in order;
    the exact, by-paragraph and joined variants reuse the needle document): doc its needle
    document, others the other facts in it, train_text a training-side
    text to use as haystack."""
    fact = q["fact"]
    hay = doc
    for o in others:
        hay = hay.replace(o + "\n\n", "").replace("\n\n" + o, "")
    rest = hay.replace(fact + "\n\n", "").replace("\n\n" + fact, "")
    # the training text cut to the haystack's length, the fact at the same share of it
    at = hay.index(fact) / max(1, len(hay))
    tt = (train_text * (1 + len(hay) // max(1, len(train_text))))[:len(hay)]
    cut = tt.rfind("\n", 0, int(at * len(tt))) + 1 if at else 0
    own = sorted(others + [fact], key=doc.index)
    return [doc, doc, doc, doc, fact, "\n\n".join(own), hay, fact + "\n\n" + rest,
            tt[:cut] + ("\n\n" if cut else "") + fact + "\n\n" + tt[cut:]]


def cmd_diagnose(args):
    """Every question of --cell asked from a store holding one document, in
    each of VARIANTS: the needle document as the evaluation stores it (and
    attended whole: exact; ingested by paragraph: msadb.segment
    "paragraph"; and in one pass, tokenized by paragraph: "joined"), the
    fact alone, the document's facts without
    the gcide text, the gcide text without the other facts, the fact put
    first, and the fact in training-side text (DATA/text's SOURCES_TRAIN)
    at the same place.  Reading that fails in the needle document but not
    alone points at what surrounds the fact, not at the fact's words."""
    from .clib import Msadb
    rec = json.load(open(os.path.join(args.data, "heldout.json")))
    docs = mmd.read_docs(os.path.join(args.data, "heldout_docs.txt"))
    train = [d for n in mmd.SOURCES_TRAIN
             for d in mmd.read_docs(os.path.join(args.data, "text", n + ".txt")) if len(d) > 3000]
    m = Msadb(args.lib)
    m.open_model(args.model, args.segment)
    m.top_k = args.top_k
    own_segment = m.model.segment
    qs = [q for q in rec["questions"] if q["cell"] == args.cell]
    facts_of = {}
    for q in rec["questions"]:
        if q["cell"] in ("tpl", "f_para"):
            facts_of.setdefault(q["doc"], []).append(q["fact"])
    res = {v: {"n": 0, "correct": 0, "abstained": 0, "by_kind": {}} for v in VARIANTS}
    for i, q in enumerate(qs):
        others = [f for f in dict.fromkeys(facts_of[q["doc"]]) if f != q["fact"]]
        texts = diagnose_docs(q, docs[q["doc"]], others, train[(q["doc"] * 7919) % len(train)])
        for v, text in zip(VARIANTS, texts):
            shutil.rmtree(args.store_dir, ignore_errors=True)
            os.makedirs(args.store_dir)
            st = m.create_store(os.path.join(args.store_dir, "store"))
            m.model.segment = ("paragraph" if v.endswith("by paragraph") else
                               "joined" if v.endswith("joined") else own_segment)
            m.ingest(st, "needle", text)
            o = norm_answer(m.ask(st, q["question"], exact=v.endswith("exact")))
            m.close_store(st)
            for c in (res[v], res[v]["by_kind"].setdefault(q["kind"], {"n": 0, "correct": 0,
                                                                        "abstained": 0})):
                c["n"] += 1
                c["correct"] += int(o == q["answer"])
                c["abstained"] += int(o.lower() == mmd.ABSTAIN)
        print("%d/%d" % (i + 1, len(qs)), file=sys.stderr, flush=True)
    shutil.rmtree(args.store_dir, ignore_errors=True)
    out = {"command": "memmodel.heldout diagnose " + " ".join(sys.argv[2:]), "model": args.model,
           "load": os.getloadavg(), "variants": res}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    for v in VARIANTS:
        r = res[v]
        print("| %s | %s | %d |" % (v, pct(r), r["abstained"]))


def pct(c):
    return "%d%% (%d/%d)" % (round(100 * c["correct"] / c["n"]), c["correct"], c["n"]) if c else "-"


def cmd_table(args):
    """Markdown tables of cpu runs (--json, one per model): cells by size,
    then kinds and needle positions at the largest size every run has."""
    runs = [(os.path.basename(p), json.load(open(p))) for p in args.json]
    cells = ["tpl", "q_para", "f_para", "unans"]
    print("| model | memory | " + " | ".join(cells) + " | answerable abstained | latency |")
    print("| --- | --- | " + " | ".join("---" for _ in cells) + " | --- | --- |")
    for name, r in runs:
        rows = [("none", r.get("no_memory"))] + list(r["sizes"].items())
        for size, v in rows:
            if not v:
                continue
            c = v["cells"]
            ans = [c[k] for k in ("tpl", "q_para", "f_para") if k in c]
            ab = sum(x["abstained"] for x in ans), sum(x["n"] for x in ans)
            print("| %s | %s | %s | %d%% | %d ms |" % (
                name, size, " | ".join(pct(c.get(k)) for k in cells),
                round(100 * ab[0] / max(1, ab[1])), round(1000 * v["latency_s"])))
    common = [s for s in runs[0][1]["sizes"] if all(s in r["sizes"] for _, r in runs)]
    if not common:
        return
    size = common[-1]
    for tab, title in (("by_kind", "kind"), ("by_pos", "needle position (tokens)")):
        keys = sorted({k for _, r in runs for k in r["sizes"][size][tab]})
        print("\n| %s at %s | " % (title, size) + " | ".join(n for n, _ in runs) + " |")
        print("| --- | " + " | ".join("---" for _ in runs) + " |")
        for k in keys:
            print("| %s | " % k + " | ".join(pct(r["sizes"][size][tab].get(k)) for _, r in runs) + " |")


PROBE_SLOTS = {"train": mmd.TRAIN_SLOTS, "held-adj": dict(mmd.TRAIN_SLOTS, adj=mmd.HELD_ADJ),
               "held-attr": dict(mmd.TRAIN_SLOTS, code_attr=mmd.HELD_CODE_ATTRS,
                                 room_attr=mmd.HELD_ROOM_ATTRS),
               "held": mmd.HELD_SLOTS}


def probe_pairs(seed, slots, n):
    """n two-hop pairs on held-out nouns, names and numbers with the slot
    words of PROBE_SLOTS[slots]: facts, answer, the multi-hop question and
    the second hop asked alone (a training roomcode template)."""
    g = mmd.FactGen(seed, "held", slots=PROBE_SLOTS[slots])
    out = []
    for _ in range(n):
        ex = g.example("multihop")
        b = g._hops[1]["d"]
        out.append({"facts": ex["facts"], "answer": ex["answer"], "question": ex["question"],
                    "second": mmd.QUESTION_T["roomcode"][0].format(attr=b["attr"], room=b["room"])})
    return out


def cmd_probe_mh(args):
    """Which slot words break a two-hop question: --mh-pairs pairs drawn with
    the slot words --probe-slots names, each fact at a paragraph boundary of
    one of the first documents of DATA/heldout_mh_docs.txt (the held-out
    pairs' own facts taken out), in a store of those documents alone.  Counts
    right: one interleave round (and where it goes), the second hop asked
    alone, and the multi-hop question with the first fact, the fact and its
    neighbouring paragraphs, or its whole document put before it."""
    from .clib import Msadb
    from .evaluate import norm_answer
    rec = json.load(open(os.path.join(args.data, "heldout_mh.json")))
    hay = mmd.read_docs(os.path.join(args.data, "heldout_mh_docs.txt"))
    held_facts = [f for p in rec["pairs"] for f in p["facts"]]
    pairs = probe_pairs(args.seed, args.probe_slots, args.mh_pairs)
    rng = np.random.default_rng(args.seed)
    docs = []
    for k, f in enumerate(f for p in pairs for f in p["facts"]):
        paras = [x for x in hay[k].split("\n\n") if x not in held_facts]
        i = int(rng.integers(0, len(paras) + 1))
        docs.append(paras[:i] + [f] + paras[i:])
    m = Msadb(args.lib)
    m.open_model(args.model, args.segment)
    texts = ["\n\n".join(d) for d in docs]
    st, path = mh_store(m, args, "probe-mh", texts)
    res = {"command": "memmodel.heldout probe-mh " + " ".join(sys.argv[2:]), "model": args.model,
           "slots": args.probe_slots, "pairs": len(pairs), "example": pairs[0]}
    right = lambda q, w: norm_answer(m.ask(st, q)) == w
    _, on, pulls = mh_round(m, st, pairs, texts, [p["question"] for p in pairs])
    res["interleave_on"] = sum(norm_answer(o) == p["answer"] for o, p in zip(on[2], pairs))
    res.update(pulls)
    res["second_hop_alone"] = sum(right(p["second"], p["answer"]) for p in pairs)
    ctx = {"fact": [], "neighbours": [], "document": []}
    for k, p in enumerate(pairs):
        d = docs[2 * k]
        i = d.index(p["facts"][0])
        ctx["fact"].append(p["facts"][0])
        ctx["neighbours"].append("\n\n".join(d[max(0, i - 1):i + 2]))
        ctx["document"].append(texts[2 * k])
    for name, texts in ctx.items():
        res["context_" + name] = sum(right(t + "\n\n" + p["question"], p["answer"])
                                     for t, p in zip(texts, pairs))
    m.close_store(st)
    shutil.rmtree(path, ignore_errors=True)
    print(json.dumps({k: v for k, v in res.items() if k != "example"}))
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["prepare", "arrays", "cpu", "table", "diagnose", "probe-mh"])
    ap.add_argument("--probe-slots", choices=sorted(PROBE_SLOTS), default="held",
                    help="probe-mh: the slot words of its pairs (held: the held-out ones; "
                         "held-adj, held-attr: only the adjectives, only the code names held out)")
    ap.add_argument("--mh-pairs", type=int, default=40, help="probe-mh: pairs to draw")
    ap.add_argument("--cell", default="tpl", help="diagnose: the cell whose questions to ask")
    ap.add_argument("--json", action="append", default=[], help="table: a cpu run's --out")
    ap.add_argument("--data", default=os.path.join(mmd.ROOT, ".train-data"))
    ap.add_argument("--seed", type=int, default=2718)
    ap.add_argument("--max-size", default="10M", choices=list(SIZES))
    ap.add_argument("--model", default=os.path.join(mmd.ROOT, "models", "msadb-mem.gguf"))
    ap.add_argument("--lib", default=os.path.join(mmd.ROOT, "build", "libmsadb", "libmsadb.so"))
    ap.add_argument("--sizes", default="16K,128K,1M")
    ap.add_argument("--what", default="none",
                    help="cpu: comma-separated; none adds the no-memory run, mh the multi-hop "
                         "pairs in their own store (heldout_mh.json)")
    ap.add_argument("--mh-rounds", type=int, default=1,
                    help="cpu --what mh: also ask with 2..N interleave rounds (0: no "
                         "interleave measurement, follow-up questions only)")
    ap.add_argument("--followup-examples", type=int, default=20, metavar="N",
                    help="cpu --what mh: keep every Nth question of a cell with the follow-ups it "
                         "asked and its answer (1: every question, for reading the failures)")
    ap.add_argument("--abstain-retry", action="store_true",
                    help="cpu: ask every question answered ABSTAIN again with one "
                         "interleave round (abstain_retry)")
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--segment", choices=["document", "paragraph", "joined"], default=None,
                    help="cpu, diagnose, arrays: how ingest reads a document (default: the "
                         "model's msadb.segment; arrays: document or joined)")
    ap.add_argument("--score", choices=["cosine", "dot", "dot-centred"], default=None,
                    help="cpu: how a question meets the mean summary (default: the model's "
                         "own, msadb.routing.score)")
    ap.add_argument("--summary", choices=["mean", "minmax", "reps"], default=None,
                    help="cpu: the summary routing scores (default: the model's own, "
                         "msadb.routing.summary)")
    ap.add_argument("--store-dir", default="/tmp/msadb-heldout")
    ap.add_argument("--exact", action="store_true",
                    help="cpu: attend every block (no routing), to tell routing from reading")
    ap.add_argument("--keep", action="store_true", help="keep the store (for --reuse)")
    ap.add_argument("--reuse", action="store_true",
                    help="go on growing the kept store instead of starting again")
    ap.add_argument("--out", default="/tmp/msadb-heldout.json")
    args = ap.parse_args(argv)
    if args.followup_examples < 1:
        raise SystemExit("memmodel.heldout: --followup-examples %d: keep every Nth question, N "
                         "at least 1 (1 keeps every question)" % args.followup_examples)
    if args.cmd == "prepare":
        cmd_prepare(args)
    elif args.cmd == "arrays":
        cmd_arrays(args)
    elif args.cmd == "table":
        cmd_table(args)
    elif args.cmd == "diagnose":
        cmd_diagnose(args)
    elif args.cmd == "probe-mh":
        cmd_probe_mh(args)
    else:
        cmd_cpu(args)


if __name__ == "__main__":
    main(sys.argv[1:])
