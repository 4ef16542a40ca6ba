#!/usr/bin/env python3
"""memmodel_splits.py -- the held-out evaluation stays held out.

memmodel.heldout measures the bundled model on fact forms, question
wordings and slot words that training never draws.  This checks that the
training generators (FactGen with the training lists, ComposedGen with
composed and narrative forms, near neighbours, open vocabularies, either side
of the tuning split) cannot produce them: no held-out fact or question form
equals a composed or narrative one, no narrative form shares four plain words
in a row with a held-out fact form, no held-out adjective, animal or
attribute word appears in thousands of generated training examples, the
unanswerable examples answer memmodel.data.ABSTAIN and never store the
asked key, and the held-out facts use held-out slots only.  It also checks
heldout.score() on a hand-made case (abstentions, per-position and routed counts),
and the held-out multi-hop pairs: held-out slots, hops that chain, the
held-out wording's forms, each fact at a paragraph boundary of its own
document; and the composed multi-hop questions share no three words in a
row with a held-out multi-hop wording.  Needs numpy, sentencepiece and
/usr/share/dict/words (wamerican); exit 77 without them.
"""
import argparse
import importlib.util
import json
import os
import re
import sys
import tempfile

if (importlib.util.find_spec("numpy") is None or importlib.util.find_spec("sentencepiece") is None
        or not os.path.exists("/usr/share/dict/words")):
    print("skip: needs python3-numpy, python3-sentencepiece and wamerican")
    sys.exit(77)

from memmodel import data as mmd
from memmodel import heldout

fails = []


def check(cond, what):
    if not cond:
        fails.append(what)


check(mmd.heldout_clash() == [], "composed forms equal held-out ones: %s" % mmd.heldout_clash())
held_words = set(mmd.HELD_ADJ) | set(mmd.HELD_ANIMALS) | {
    w for a in mmd.HELD_CODE_ATTRS + mmd.HELD_ROOM_ATTRS for w in a.split()}
# attribute words shared with training attributes ("code", "number") are not slot words
held_words -= {w for a in mmd.CODE_ATTRS + mmd.ROOM_ATTRS for w in a.split()}
check(not set(mmd.HELD_ADJ) & set(mmd.ADJ), "held-out adjectives among the training ones")
check(not set(mmd.HELD_ANIMALS) & set(mmd.ANIMALS), "held-out animals among the training ones")

# the written forms: each kind has its own, every slot of the kind in each
# fact form ({val} once), no held-out slot word, and the held-out rules drop
# what breaks them (a form made of a held-out one is refused)
SLOTS = {"code": ("ent", "attr"), "lives": ("per",), "pet": ("per", "animal"),
         "room": ("ent",), "roomcode": ("room", "attr")}
wf, wq = mmd.written_forms()
for kind, need in SLOTS.items():
    check(len(wf[kind]) >= 50 and len(wq[kind]) >= 30,
          "written forms of %s: %d facts, %d questions" % (kind, len(wf[kind]), len(wq[kind])))
    for t in wf[kind] + wq[kind]:
        names = set(re.findall(r"\{(\w+)\}", t.replace("{Ent}", "{ent}")))
        want = set(need) | ({"val"} if t in wf[kind] else set())
        check(names == want, "written %s form %r: slots %s, not %s" % (kind, t, names, want))
    check(all(t.count("{val}") == 1 for t in wf[kind]), "a written %s form without one {val}" % kind)
    check(not held_words & set(re.findall(r"[a-z]+", " ".join(wf[kind] + wq[kind]).lower())),
          "a held-out slot word in the written %s forms" % kind)
mh = wq["multihop"]
check(len(mh) >= 30 and all(set(re.findall(r"\{(\w+)\}", t.replace("{Ent}", "{ent}")))
                            == {"ent", "attr"} for t in mh),
      "written multi-hop questions: %d, each with {ent} and {attr}" % len(mh))
g = mmd.ComposedGen(13, split="train", written=0.8)
check(all(any(r.match(ex["question"]) for r in [re.compile("^" + re.escape(t).replace(
    r"\{attr\}", ".+").replace(r"\{ent\}", ".+") + "$") for t in mmd.QUESTION_T["multihop"]])
          for ex in (g.example("multihop") for _ in range(50))),
      "--written alone keeps the multi-hop questions (builds before --written-multihop)")
g = mmd.ComposedGen(13, split="train", written_mh=0.8)
mh_re = [re.compile("^" + re.escape(t).replace(r"\{attr\}", ".+").replace(r"\{ent\}", ".+") + "$")
         for t in mmd.QUESTION_T["multihop"]]
qs = [ex["question"] for ex in (g.example("multihop") for _ in range(200))]
check(sum(not any(r.match(q) for r in mh_re) for q in qs) > 100,
      "--written draws multi-hop questions from the written forms: %r" % qs[:3])
# --composed-multihop: composed multi-hop questions, every frame, the code
# name and the entity filled in, no three words in a row of a held-out
# multi-hop wording, the two sides of the tuning split disjoint
cmh = mmd.composed_multihop_forms()
held3 = set().union(*(mmd._ngrams(t, 3) for t in mmd.HELD_QUESTION_T["multihop"]))
check(len(cmh) == len(mmd.MH_FRAMES) and min(map(len, cmh)) >= 200,
      "composed multi-hop frames: %s" % [len(f) for f in cmh])
for f in cmh:
    for t in f:
        check(set(re.findall(r"\{(\w+)\}", t.replace("{Ent}", "{ent}"))) == {"ent", "attr"}
              and not re.search(r"\b(C?R|V|ROOM|IMPW?|ASKW?)\b", t)
              and not mmd._ngrams(t, 3) & held3, "composed multi-hop form %r" % t)
gt = mmd.ComposedGen(16, split="train", composed_mh=1.0)
gu = mmd.ComposedGen(16, split="tune", composed_mh=1.0)
check(not {t for f in gt.cmh for t in f} & {t for f in gu.cmh for t in f}
      and min(map(len, gu.cmh)) > 0, "composed multi-hop forms on both sides of the tuning split")
qs = []
for _ in range(300):
    ex = gt.example("multihop")
    a, b = gt._hops
    qs.append(ex["question"])
    check(b["d"]["attr"] in ex["question"] and a["d"]["ent"].split(" ")[-1] in ex["question"]
          and ex["followup"] == mmd.followup_answer(b["d"]["attr"], a["val"]),
          "a composed multi-hop question without its code name, entity or follow-up: %r" % ex)
check(len(set(qs)) > 290 and sum(not any(r.match(q) for r in mh_re) for q in qs) > 290,
      "--composed-multihop 1 draws composed questions only: %r" % qs[:3])
# --composed-multihop-wide: the wide frames after the plain ones (which stay
# as they were, so that earlier builds draw the same), every one non-empty,
# no three words in a row of any held-out multi-hop wording (mh_new's too),
# and drawn: the code name away from "the ... of" (after a link phrase, at
# the end, after the entity's sentence)
held3n = held3 | set().union(*(mmd._ngrams(t, 3) for t in mmd.HELD_MH_NEW))
cmw = mmd.composed_multihop_forms(wide=True)
check(cmw[:len(cmh)] == cmh and len(cmw) == len(mmd.MH_FRAMES) + len(mmd.MH_FRAMES_WIDE)
      and min(map(len, cmw)) >= 14, "wide multi-hop frames: %s" % [len(f) for f in cmw])
for f in cmw[len(cmh):]:
    for t in f:
        check(set(re.findall(r"\{(\w+)\}", t.replace("{Ent}", "{ent}"))) == {"ent", "attr"}
              and not re.search(r"\b([CW]?R|V|ROOM|LINK|IMPW?|ASKW?)\b", t)
              and not mmd._ngrams(t, 3) & held3n, "wide multi-hop form %r" % t)
wide = {t for f in cmw[len(cmh):] for t in f}
gw = mmd.ComposedGen(17, split="train", composed_mh=1.0, mh_wide_frames=True)
pick, forms = gw.composed_mh_form, []
gw.composed_mh_form = lambda: forms.append(pick()) or forms[-1]
for _ in range(400):
    ex = gw.example("multihop")
    a, b = gw._hops
    check(b["d"]["attr"] in ex["question"] and ex["followup"] == mmd.followup_answer(b["d"]["attr"], a["val"]),
          "a wide multi-hop question without its code name or follow-up: %r" % ex)
tails = {t[1:] for t in wide} | {t[1:].replace("Ent}", "ent}", 1) for t in wide}
n_wide = sum(any(f.startswith(lead) and f[len(lead) + 1:] in tails for lead in [""] + mmd.MH_LEADS)
             for f in forms)
check(len(forms) > 150 and n_wide > len(forms) // 4,
      "--composed-multihop-wide draws the wide frames: %d of %d" % (n_wide, len(forms)))
# --mh-filler: filler words before the code name (never after it, never
# inside a slot), in about the share asked for; none a word of a held-out
# two-hop wording; no draw at 0 (earlier builds stay the same)
held_mh_words = {w.strip("?.,:;!—'").lower() for t in mmd.HELD_QUESTION_T["multihop"] +
                 mmd.HELD_MH_NEW + mmd.HELD_MH_FRESH for w in t.split()}
check(not {w for f in mmd.MH_FILLERS for w in f.split()} & held_mh_words,
      "a filler word is a word of a held-out two-hop wording: %s"
      % sorted({w for f in mmd.MH_FILLERS for w in f.split()} & held_mh_words))
gf = mmd.ComposedGen(19, split="train", composed_mh=1.0, written_mh=0.5, filler=0.5)
pick_f, fforms = gf.filler_form, []
gf.filler_form = lambda f: fforms.append((f, pick_f(f))) or fforms[-1][1]
for _ in range(400):
    ex = gf.example("multihop")
    a, b = gf._hops
    check(b["d"]["attr"] in ex["question"] and a["d"]["ent"] in ex["question"].replace("The ", "the ", 1)
          and ex["followup"] == mmd.followup_answer(b["d"]["attr"], a["val"]),
          "--mh-filler: a question without its code name, entity or follow-up: %r" % ex)
n_fill = 0
for f, g2 in fforms:
    if f == g2:
        continue
    n_fill += 1
    pre, post = g2.split("{attr}", 1)
    added = [w for w in pre.split() if w not in f.split("{attr}")[0].split()]
    check(post == f.split("{attr}", 1)[1] and 1 <= len(g2.split()) - len(f.split()) <= 6
          and " ".join(added) and all(any(w in x.split() for x in mmd.MH_FILLERS) for w in added),
          "--mh-filler: %r from %r" % (g2, f))
check(len(fforms) > 300 and 0.35 < n_fill / len(fforms) < 0.65,
      "--mh-filler 0.5 puts fillers into %d of %d forms" % (n_fill, len(fforms)))
# a share of 0 draws nothing: the same examples as with the step left out
g0 = mmd.ComposedGen(19, split="train", composed_mh=1.0, written_mh=0.5)
g1 = mmd.ComposedGen(19, split="train", composed_mh=1.0, written_mh=0.5)
g1.filler_form = g1.bare_question = lambda x: x
check([g0.example() for _ in range(200)] == [g1.example() for _ in range(200)],
      "--mh-filler 0 or --bare-questions 0 draws from the generator")
# a share outside 0-1 is refused with a message, before anything is written
for opt in ("--mh-filler", "--bare-questions"):
    out_dir = os.path.join(tempfile.mkdtemp(), "never")
    try:
        mmd.main(["build", "--out", out_dir, "--composed", opt, "1.5"])
        check(False, "%s 1.5 accepted" % opt)
    except SystemExit as e:
        check(opt in str(e) and "from 0 to 1" in str(e) and not os.path.exists(out_dir),
              "%s 1.5: %s" % (opt, e))
# --bare-questions: questions of every kind without closing punctuation, some
# starting in lower case, the answer and follow-up unchanged
gb, n_bare, n_low, kinds = mmd.ComposedGen(23, split="train", composed_mh=1.0, bare=0.5), 0, 0, set()
for _ in range(600):
    ex = gb.example()
    q = ex["question"]
    if q[-1] not in "?.!":
        n_bare += 1
        n_low += q[0].islower()
        kinds.add(ex["kind"])
        check(q == q.strip() and (ex["kind"] != "multihop" or gb._hops[1]["d"]["attr"] in q),
              "--bare-questions: %r" % q)
check(0.4 < n_bare / 600 < 0.6 and 0.3 < n_low / max(n_bare, 1) < 0.7 and len(kinds) == len(mmd.KINDS),
      "--bare-questions 0.5: %d of 600 bare, %d lower-case, kinds %s" % (n_bare, n_low, sorted(kinds)))
# --mh-attr: multi-hop room code names from wide open compounds, in the room
# fact and the question alike; heads that are no held-out word or held-side noun
held_nouns = set(mmd.Vocab("held").noun)
check(not (set(mmd.WIDE_HEADS) & (held_words | held_nouns)),
      "a wide head is a held-out word: %s" % sorted(set(mmd.WIDE_HEADS) & (held_words | held_nouns)))
g = mmd.ComposedGen(14, split="train", written_mh=0.5, mh_attr=1.0)
attrs = set()
for _ in range(300):
    ex = g.example("multihop")
    attr = g._hops[1]["d"]["attr"]
    attrs.add(attr)
    check(attr not in mmd.ROOM_ATTRS and attr.split(" ")[-1] in mmd.WIDE_HEADS
          and 2 <= len(attr.split(" ")) <= 3, "--mh-attr 1: code name %r" % attr)
    check(attr in ex["question"] and attr in ex["facts"][1],
          "--mh-attr: %r not in both the room code fact and the question: %r" % (attr, ex))
check(len(attrs) > 250, "--mh-attr: %d code names of 300" % len(attrs))
check(not g._mh_wide and g.fact("roomcode")["d"]["attr"] is not None, "mh_attr state leaks")
n_list = sum(g.fact("roomcode")["d"]["attr"] in mmd.ROOM_ATTRS for _ in range(400))
check(100 < n_list < 300, "--mh-attr leaves single-hop room codes alone: %d of 400 from the list"
      % n_list)
# a share of mh_attr: about 5/9 of the wide names have a head no other name has
for share, lo, hi in ((0.5, 0.15, 0.42), (0.0, -1, 0)):
    g, n_mh, n_wide = mmd.ComposedGen(15, split="train", mh_attr=share), 0, 0
    for _ in range(2000):
        ex = g.example()
        if ex["kind"] == "multihop":
            n_mh += 1
            n_wide += g._hops[1]["d"]["attr"].split(" ")[-1] in mmd.WIDE_HEADS[4:]
    check(n_mh > 200 and lo < n_wide / n_mh <= hi,
          "--mh-attr %g: %d of %d multi-hop code names with a wide head" % (share, n_wide, n_mh))
import json, tempfile
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"facts": {"lives": [mmd.HELD_FACT_T["lives"][0], "Yes, " + mmd.HELD_FACT_T["lives"][1],
                                   "{per} lives in {val}, a quiet town.", "{per} lives in {val}.",
                                   "{val} {val} {per}."]},
               "questions": {"lives": [mmd.HELD_QUESTION_T["lives"][1], "Where does {per} live?"]}}, f)
twf, twq = mmd.written_forms(f.name)
os.unlink(f.name)
check(twf["lives"] == ["{per} lives in {val}."] and twq["lives"] == ["Where does {per} live?"],
      "the held-out rules on written forms: %r %r" % (twf["lives"], twq["lives"]))

# the shipped model's generator: its slots (adjective, animal, attribute) are training lists
g = mmd.FactGen(7, "train")
for _ in range(2000):
    d = g.fact(mmd.KINDS[int(g.rng.integers(5))])["d"]
    for slot, held in (("ent", mmd.HELD_ADJ), ("animal", mmd.HELD_ANIMALS),
                       ("attr", mmd.HELD_CODE_ATTRS + mmd.HELD_ROOM_ATTRS)):
        if slot in d:
            w = d[slot].split(" ")[1] if slot == "ent" else d[slot]
            check(w not in held, "FactGen drew the held-out %s %r" % (slot, w))

# the composed generator: no held-out word anywhere in its text
for name, g in (("ComposedGen", mmd.ComposedGen(7)),
                ("ComposedGen (narrative, near, training split)",
                 mmd.ComposedGen(8, narrative=0.5, near=0.5, split="train")),
                ("ComposedGen (tuning split)", mmd.ComposedGen(9, narrative=0.5, split="tune")),
                ("ComposedGen (wide narrative)",
                 mmd.ComposedGen(10, narrative=0.8, split="train", wide=True)),
                ("ComposedGen (written forms)",
                 mmd.ComposedGen(12, narrative=0.5, near=0.5, split="train", wide=True,
                                 written=0.8)),
                ("ComposedGen (wide multi-hop code names)",
                 mmd.ComposedGen(14, narrative=0.5, near=0.5, split="train", wide=True,
                                 written=0.35, written_mh=0.5, mh_attr=1.0))):
    n_unans = 0
    for _ in range(4000):
        ex = g.example()
        text = " ".join(ex["facts"] + ex.get("dists", []) + [ex["question"]])
        bad = held_words & set(re.findall(r"[a-z]+", text))
        check(not bad, "%s drew held-out words %s: %r" % (name, sorted(bad), text))
        if ex["answer"] == mmd.ABSTAIN:
            n_unans += 1
            check(len(ex["facts"]) <= 1, "%s: an unanswerable example stores %d facts"
                  % (name, len(ex["facts"])))
            check(ex["keys"][0] not in ex["keys"][1:], "%s: the asked key is stored" % name)
        else:
            check(all(v in t for v, t in zip(ex["vals"], ex["facts"])),
                  "%s: a fact without its value: %r" % (name, ex))
    check(200 < n_unans < 800, "%s: %d unanswerable of 4000 (share 0.12)" % (name, n_unans))

# the tuning split's own slot words (--tune-vocab): training never draws one,
# the tuning split draws no other word-list word or number
# (the fixed training lists and the attribute suffixes are not split)
fixed_words = set(mmd.ADJ) | set(mmd.ANIMALS) | {"code", "number", "combination", "PIN"} | {
    w for a in mmd.CODE_ATTRS + mmd.ROOM_ATTRS for w in a.split()}
words = (set(mmd.Vocab("train").noun) | set(mmd.Vocab("train").proper) | set(mmd.FIRST)) - fixed_words
for side in ("train", "tune"):
    g = mmd.ComposedGen(10, narrative=0.5, near=0.5, split=side, vocab=side, num_mix=0.25,
                        open_first=0.5)
    lengths = set()
    for _ in range(3000):
        d = g.fact(mmd.KINDS[int(g.rng.integers(5))])["d"]
        if side == "tune" and "per" in d:
            check(d["per"].split(" ")[0] not in mmd.FIRST,
                  "the tuning split drew the fixed first name of %r" % d["per"])
        slot_words = [w for k in ("ent", "per", "animal", "attr", "val")
                      for w in str(d.get(k, "")).split(" ") if w in words]
        nums = [d[k] for k in ("room", "val") if k in d and d[k].isdigit()]
        lengths |= {len(n) for n in nums}
        # 3- and 4-digit numbers come from the pools; other lengths are num_mix's
        nums = [n for n in nums if len(n) in (3, 4) and not (len(n) == 4 and "room" in d
                                                             and d["room"] == n)]
        for w in set(slot_words + nums):
            check(mmd._tune_word(w) == (side == "tune"),
                  "ComposedGen (vocab %s) drew %r of the other side" % (side, w))
        if side == "tune":
            for k, fixed in (("ent", mmd.ADJ), ("animal", mmd.ANIMALS),
                             ("attr", mmd.CODE_ATTRS + mmd.ROOM_ATTRS)):
                w = d.get(k, "").split(" ")[1] if k == "ent" and k in d else d.get(k)
                check(w not in fixed, "the tuning split drew the training list's %s %r" % (k, w))
    check(lengths >= {2, 3, 4, 5}, "num_mix 0.25: number lengths %s" % sorted(lengths))

# the open first-name list (--open-first): first names from the word list's
# proper nouns, and no held-out first name in any slot of a training example
held_first = set(mmd.Vocab("held").first)
g = mmd.ComposedGen(11, narrative=0.5, near=0.5, split="train", open_first=0.5)
n_open = n_per = 0
for _ in range(4000):
    ex = g.example()
    text = " ".join(ex["facts"] + ex.get("dists", []) + [ex["question"]])
    bad = held_first & set(re.findall(r"[A-Z][a-z]+", text))
    check(not bad, "open_first: held-out first names %s in %r" % (sorted(bad), text))
    d = g._last["d"]
    if "per" in d:
        n_per += 1
        n_open += d["per"].split(" ")[0] in g.open.first
check(0.4 < n_open / max(n_per, 1) < 0.6,
      "open_first 0.5: %d of %d first names from the open list" % (n_open, n_per))

facts, used = heldout.draw_facts(2718)
for cell, fs in facts.items():
    check(len(fs) == heldout.N_PER_KIND * len(heldout.KINDS), "%s: %d facts" % (cell, len(fs)))
    for f in fs:
        d = f["d"]
        if "ent" in d:
            check(d["ent"].split(" ")[1] in mmd.HELD_ADJ, "training adjective in %r" % f["text"])
        if "animal" in d:
            check(d["animal"] in mmd.HELD_ANIMALS, "training animal in %r" % f["text"])
        if "attr" in d:
            check(d["attr"] in mmd.HELD_CODE_ATTRS + mmd.HELD_ROOM_ATTRS,
                  "training attribute in %r" % f["text"])
unans = heldout.draw_unanswerable(2718, facts, set(used))
stored = {f["key"] for fs in facts.values() for f in fs}
check(all(f["key"] not in stored for f in unans), "an unanswerable question's fact is stored")

# the held-out multi-hop pairs: held-out slots, new keys, two hops that chain,
# the mh_para wording from the held-out multi-hop forms only
def form_re(form):
    return re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(form)))


pairs = heldout.draw_multihop(2718, set(used))
check(len(pairs) == heldout.N_MH, "multihop: %d pairs" % len(pairs))
rooms = set()
for p in pairs:
    a, b = p["facts"]
    room = b.split("oom ")[1][:3]
    check(room in a and p["answer"] in b and p["answer"] not in a, "multihop: hops %r" % p)
    rooms.add(room)
    check(any(w in mmd.HELD_ADJ for w in a.lower().split()), "multihop: training adjective %r" % a)
    check(any(form_re(t).fullmatch(p["question"]) for t in mmd.QUESTION_T["multihop"])
          and any(form_re(t).fullmatch(p["question_para"])
                  for t in mmd.HELD_QUESTION_T["multihop"])
          and any(form_re(t).fullmatch(p["question_new"]) for t in mmd.HELD_MH_NEW)
          and p["question_new"] == mmd.HELD_MH_NEW[[form_re(t).fullmatch(p["question_new"])
                                                    is not None for t in mmd.HELD_MH_NEW].index(True)
                                                   ].format(**p["slots"]),
          "multihop: wordings %r" % p)
check(len({p["question_new"].split(p["slots"]["attr"])[0][:12] for p in pairs}) >= 6,
      "multihop: cell mh_new draws most of its wordings")
check(all(p["question_fresh"] == mmd.HELD_MH_FRESH[[form_re(t).fullmatch(p["question_fresh"])
                                                     is not None for t in mmd.HELD_MH_FRESH].index(True)
                                                    ].format(**p["slots"]) for p in pairs)
      and len({p["question_fresh"].split(p["slots"]["attr"])[0][:12] for p in pairs}) >= 8,
      "multihop: cell mh_fresh draws the fresh wordings")
check(len(rooms) == len(pairs), "multihop: a room shared by two pairs")
check(not any(p["facts"][0] in f["text"] or p["facts"][1] in f["text"]
              for fs in facts.values() for f in fs), "multihop: a fact of the main set")
with tempfile.TemporaryDirectory() as tmp:
    hay = ["Entry %d, first paragraph.\n\nEntry %d, second paragraph." % (i, i)
           for i in range(2 * heldout.N_MH + 3)]
    docs = ["needle one", "needle two"] + hay
    keep, heldout.MH_SIZE = heldout.MH_SIZE, 1 << 30
    try:
        info = heldout.prepare_multihop(argparse.Namespace(data=tmp, seed=2718), mmd.load_sp(),
                                        docs, [12] * len(docs), 2, set(used))
    finally:
        heldout.MH_SIZE = keep
    rec = json.load(open(os.path.join(tmp, "heldout_mh.json")))
    out = mmd.read_docs(os.path.join(tmp, "heldout_mh_docs.txt"))
    check(info["mh_pairs"] == heldout.N_MH and len(out) == len(hay), "multihop haystack %r" % info)
    placed = [d for p in rec["pairs"] for d in p["docs"]]
    check(len(set(placed)) == len(placed), "multihop: two facts in one document")
    for p in rec["pairs"]:
        for f, d in zip(p["facts"], p["docs"]):
            check(f in out[d].split("\n\n") and out[d].replace(f + "\n\n", "").replace(
                "\n\n" + f, "") == hay[d], "multihop: %r not at a paragraph boundary of %d" % (f, d))
    check(all(out[i] == hay[i] for i in set(range(len(hay))) - set(placed)),
          "multihop: a document without a fact changed")

qs = [{"cell": "tpl", "kind": "code", "answer": "1234", "pos": 10},
      {"cell": "tpl", "kind": "code", "answer": "5678", "pos": 700},
      {"cell": "unans", "kind": "room", "answer": mmd.ABSTAIN, "pos": -1},
      {"cell": "unans", "kind": "room", "answer": mmd.ABSTAIN, "pos": -1}]
r = heldout.score(qs, ["1234", "not in memory", "Not in memory", "123"])
check(r["cells"]["tpl"]["correct"] == 1 and r["cells"]["tpl"]["abstained"] == 1,
      "score: tpl %r" % r["cells"]["tpl"])
check(r["cells"]["unans"]["correct"] == 1, "score: unans %r" % r["cells"]["unans"])
check(r["by_pos"]["tpl/0-511"]["correct"] == 1 and r["by_pos"]["tpl/512-1023"]["correct"] == 0,
      "score: by position %r" % r["by_pos"])
r = heldout.score(qs, ["1234", "not in memory", "Not in memory", "123"], [True, True, None, None])
check(r["cells"]["tpl"]["routed"] == 2 and r["cells"]["tpl"]["right_routed"] == 1
      and "routed" not in r["cells"]["unans"], "score: routed counts %r" % r["cells"])
r = heldout.score(qs, ["1234", "not in memory", "Not in memory", "123"],
                  [(True, True, 0.5), (True, True, 0.25), (None, None, 1.0), (None, None, 0.0)])
check(r["cells"]["tpl"]["answer_read"] == 2 and r["cells"]["tpl"]["abstained_answer_read"] == 1
      and r["cells"]["tpl"]["first_blocks"] == 0.75 and r["cells"]["unans"]["first_blocks"] == 1.0
      and "answer_read" not in r["cells"]["unans"], "score: answer blocks read %r" % r["cells"])

# heldout diagnose's documents: each variant holds what its name says
fact, other = "The PIN of the mossy kettle is 1234.", "The PIN of the faded lamp is 9876."
hay_a, hay_b = "Alpha entry.\nMore of it.", "Beta entry, the last."
doc = "\n\n".join([hay_a, other, fact, hay_b])
train_text = "line one of training text\nline two\nline three\n" * 3
v = dict(zip(heldout.VARIANTS, heldout.diagnose_docs({"fact": fact}, doc, [other], train_text)))
check(v["needle document"] == doc == v["needle document, exact"] == v["needle document, by paragraph"]
      == v["needle document, joined"],
      "diagnose: needle doc")
check(v["the fact alone"] == fact, "diagnose: the fact alone %r" % v["the fact alone"])
check(v["the document's facts only"] == other + "\n\n" + fact,
      "diagnose: the facts in document order %r" % v["the document's facts only"])
check(v["gcide haystack, no other fact"] == "\n\n".join([hay_a, fact, hay_b]),
      "diagnose: no other fact %r" % v["gcide haystack, no other fact"])
check(v["the fact first, then the gcide haystack"] == fact + "\n\n" + hay_a + "\n\n" + hay_b,
      "diagnose: the fact first %r" % v["the fact first, then the gcide haystack"])
t = v["training text as haystack"]
check(fact in t and other not in t and hay_a not in t and t.replace(fact, "").strip()
      and t.index(fact) > 0, "diagnose: the fact inside the training text %r" % t)

# the added training texts (--more-text): dictd entries without the header
# and licence paragraphs
import gzip, tempfile  # noqa: E401,E402
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "t.dict.dz")
    with gzip.open(path, "wt") as f:
        f.write("00-database-short\n   A test dictionary\n\nThe original data is here.\n\n"
                "Copyright 1999 Somebody\n\nkettle\n\n   A pot for boiling water.\n\n"
                "lamp\n\n   A device that gives light.\n")
    got = mmd._dictd_docs(path, chars=10)
    check(got == ["kettle\n\n   A pot for boiling water.", "lamp\n\n   A device that gives light."],
          "_dictd_docs: %r" % got)
check(not set(mmd.SOURCES_MORE) & set(mmd.SOURCES_HELD), "a held-out text among the added ones")

for f in sorted(set(fails)):
    print("FAIL:", f)
print("%d checks failed" % len(fails) if fails else "held-out splits hold")
sys.exit(1 if fails else 0)
