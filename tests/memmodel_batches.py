#!/usr/bin/env python3
"""memmodel_batches.py -- what a training batch is made of.

memmodel.data's composed examples with facts written as ordinary sentences
(--narrative), near neighbours (--near) and the tuning split of the forms
(--tune-split), tokenized with the bundled tokenizer, then memmodel.train's
Batcher over them (CPU, numpy): every near neighbour lands in its question's
own document, never one of another question; the batch's unanswerable flags
are the questions answered ABSTAIN; --unans-share resamples the drawn share
to the asked one (up and down); and the training and tuning sides of the
forms are disjoint and cover every form.  Skips (77) without numpy, torch
(memmodel.train imports it), sentencepiece or wamerican.
"""
import importlib.util
import os
import sys

for mod in ("numpy", "torch", "sentencepiece"):
    if importlib.util.find_spec(mod) is None:
        print("skip: needs %s" % mod)
        sys.exit(77)
if not os.path.exists("/usr/share/dict/words"):
    print("skip: needs wamerican")
    sys.exit(77)

import numpy as np

from memmodel import data as mmd
from memmodel.train import Batcher, Facts

fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
    print("ok   " if cond else "FAIL ", what)


# the two sides of the forms: disjoint, together every form
for kind in mmd.CORES:
    tr = mmd.ComposedGen(1, split="train")
    tu = mmd.ComposedGen(1, split="tune")
    fs, qs = mmd.composed_forms(kind)
    ns = mmd.narrative_forms(kind)
    check(not set(tr.fact_t[kind]) & set(tu.fact_t[kind])
          and sorted(tr.fact_t[kind] + tu.fact_t[kind]) == fs
          and sorted(tr.narr[kind] + tu.narr[kind]) == ns
          and sorted(tr.question_t[kind] + tu.question_t[kind]) == qs
          and tu.fact_t[kind] and tu.narr[kind],
          "%s: training and tuning forms are disjoint and cover all forms" % kind)

# the wider narrative forms: a superset of the others, split the same way,
# every wider core drawn in a sentence
for kind in mmd.CORES:
    tr = mmd.ComposedGen(1, split="train", wide=True)
    tu = mmd.ComposedGen(1, split="tune", wide=True)
    ws = mmd.narrative_forms(kind, wide=True)
    cores = mmd.wide_cores(kind)
    check(set(mmd.narrative_forms(kind)) < set(ws)
          and sorted(tr.narr[kind] + tu.narr[kind]) == ws
          and not set(tr.narr[kind]) & set(tu.narr[kind])
          and all(any(c.rstrip(",")[1:] in t for t in ws) for c in cores)
          and len(cores) >= 12,
          "%s: %d wider cores, %d wider forms, split in two" % (kind, len(cores), len(ws)))

g = mmd.ComposedGen(11, narrative=0.4, near=0.6, unans=0.1, split="train")
exs = [g.example() for _ in range(1500)]
narr = {t for k in mmd.CORES for t in g.narr[k]}
n_near = sum(1 for e in exs if e.get("dists"))
check(n_near > 300, "near neighbours drawn for %d of 1500 examples" % n_near)
ok = True
for e in exs:
    for t, k in zip(e.get("dists", []), e.get("dist_keys", [])):
        ok &= k not in e["keys"] and e["answer"] not in t.replace(".", " ").split()
check(ok, "a near neighbour never has the asked key or the asked value")

sp = mmd.load_sp()
arrays = mmd.pack_examples(sp, exs)
path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "memmodel_batches_%d.npz" % os.getpid())
np.savez(path, **arrays)
try:
    facts = Facts(path)
finally:
    os.unlink(path)
check(int(facts.n_dist.sum()) == sum(len(e.get("dists", [])) for e in exs),
      "the arrays hold every near neighbour")
check(all(bool(u) == (e["answer"] == mmd.ABSTAIN) for u, e in zip(facts.unans, exs)),
      "the arrays flag the unanswerable examples")

lm = np.random.default_rng(0).integers(3, 8000, size=200000).astype(np.uint16)
b = Batcher(lm, facts, facts.n, 5, Ld=4096)
placed, where_ok = 0, True
for r in range(4):
    sel, decoys, used = b.draw(24, 24, 0, facts.n, False)
    docs, where = b.write_docs(b.assign(sel, decoys, used, 24, 0, facts.n))
    for bi, e in enumerate(sel):
        if not e[5]:
            continue
        d = where[(bi, 0)][0]
        for f, _ in e[5]:
            s = docs[d].tolist()
            n = len(f)
            inside = any(s[i:i + n] == f.tolist() for i in range(len(s) - n + 1))
            where_ok &= inside
            placed += 1
check(placed > 10 and where_ok,
      "%d near neighbours, each inside its question's document" % placed)
i = int(np.flatnonzero(facts.unans)[0])
abst = int(facts.a_tok[facts.a_off[i]])  # the abstain answer's first token
qb = b.mem_batch(32, 32, 32)
check(all((qb["tok"][i, qb["plen"][i]] == abst) == qb["unans"][i] for i in range(32)),
      "a batch's unanswerable flags are its questions answered ABSTAIN")

# a multi-hop question's prompt gold (--mh-route): both hops' blocks, or
# staged: the first hop's without context, the second hop's with it
n_mh = 0
for route in ("both", "staged"):
    bm = Batcher(lm, facts, facts.n, 6, Ld=1024, mh_route=route)
    for context in (False, True):
        sel, decoys, used = bm.draw(24, 24, 0, facts.n, False)
        docs, where = bm.write_docs(bm.assign(sel, decoys, used, 24, 0, facts.n))
        qb = bm.questions(sel, docs, where, context)
        for bi, e in enumerate(sel):
            if len(e[0]) < 2 or (bi, 0) not in where or (bi, 1) not in where:
                continue
            n_mh += 1
            first, second = set(where[(bi, 0)][1]), set(where[(bi, 1)][1])
            want = first | second if route == "both" else second if context else first
            check(set(qb["gold_p"][bi].tolist()) == want and set(qb["gold_a"][bi].tolist())
                  == second, "--mh-route %s, context %s: prompt gold %s, first hop %s, second %s"
                  % (route, context, sorted(set(qb["gold_p"][bi].tolist())), sorted(first),
                     sorted(second)))
check(n_mh >= 8, "multi-hop questions in the --mh-route batches (%d)" % n_mh)
try:
    Batcher(lm, facts, facts.n, 6, mh_route="first")
    check(False, "an unknown --mh-route is refused")
except ValueError:
    pass

# --mh-followup: without context a multi-hop question answers its follow-up
# (the second hop as its own question, the room read from the first hop, which
# the answer's routing gold is), with the first hop's document in the context
# the value; single-hop questions answer their value either way
g2 = mmd.ComposedGen(12, split="train", kind_weights={"multihop": 1, "room": 1}, unans=0.0)
exs2 = [g2.example() for _ in range(200)]
mh2 = [e for e in exs2 if e["kind"] == "multihop"]
check(len(mh2) > 50
      and all(e["followup"].startswith(mmd.FOLLOWUP + " What is the ") and
              e["followup"].endswith(" of room %s?" % e["vals"][0]) and
              e["vals"][1] not in e["followup"] for e in mh2)
      and not any("followup" in e for e in exs2 if e["kind"] != "multihop"),
      "multi-hop examples carry a follow-up naming the first hop's room, not the answer")
path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "memmodel_batches_fu_%d.npz" % os.getpid())
np.savez(path, **mmd.pack_examples(sp, exs2))
try:
    facts2 = Facts(path)
finally:
    os.unlink(path)
n_fu = 0
for fu_on in (False, True):
    bf = Batcher(lm, facts2, facts2.n, 7, Ld=1024, mh_route="staged", mh_followup=fu_on)
    for context in (False, True):
        sel, decoys, used = bf.draw(24, 24, 0, facts2.n, False)
        docs, where = bf.write_docs(bf.assign(sel, decoys, used, 24, 0, facts2.n))
        qb = bf.questions(sel, docs, where, context)
        for bi, e in enumerate(sel):
            if (bi, 0) not in where or (len(e[0]) > 1 and (bi, 1) not in where):
                continue
            ans = qb["tok"][bi, qb["plen"][bi]:][qb["valid"][bi, qb["plen"][bi]:]].tolist()
            want = e[2].tolist()
            gold = set(where[(bi, len(e[0]) - 1)][1])
            if len(e[0]) > 1 and fu_on and not context:
                want, gold = e[7].tolist(), set(where[(bi, 0)][1])
                n_fu += 1
                check(sp.decode(want).startswith(mmd.FOLLOWUP), "the follow-up answer decodes "
                      "with its prefix: %r" % sp.decode(want))
            check(ans == want and set(qb["gold_a"][bi].tolist()) == gold,
                  "--mh-followup %s, context %s, %d hop(s): answer %r" % (
                      fu_on, context, len(e[0]), sp.decode(ans)))
check(n_fu >= 8, "multi-hop questions answered by their follow-up (%d)" % n_fu)

share = float(facts.unans.mean())
for want in (0.02, 0.3):
    bb = Batcher(lm, facts, facts.n, 9, Ld=512, unans_share=want)
    got = [bb.draw(64, 0, 0, facts.n, False)[0] for _ in range(30)]
    s = float(np.mean([e[6] for x in got for e in x]))
    check(abs(s - want) < 0.05, "--unans-share %.2f: drawn share %.3f (the data's %.3f)"
          % (want, s, share))

print("%d checks failed" % len(fails) if fails else "batches hold")
sys.exit(1 if fails else 0)
