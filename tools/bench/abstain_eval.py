#!/usr/bin/python3
"""Calibrates and measures abstaining ("not in memory") with a model and
the msadb program: usage

    /usr/bin/python3 tools/bench/abstain_eval.py --msadb build/cli/msadb \
        [--model models/msadb-mem.gguf] [--docs 12] [--out result.json]

Two question sets are generated from disjoint vocabularies (names, objects,
rooms, cities): a calibration set and an evaluation set, each with its own
memory (documents in the style of tools/scripts/demo/memory: a paragraph of
filler around short facts).  Each set has answerable questions (one per fact
in its memory) and unanswerable ones (the same templates about entities its
memory never mentions).  For every question `msadb search --json` gives the
best routing score; the threshold is chosen on the calibration set only
(best balanced accuracy, midway between two neighbouring scores) and then
applied to the evaluation set, which reports the precision and recall of
abstaining and how many answerable questions `msadb query` still answers
correctly.  Prints a table and writes JSON with --out.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ADJ = ["amber", "copper", "silver", "grey", "green", "scarlet", "ivory", "black", "golden",
       "blue", "white", "crimson", "violet", "bronze", "yellow", "pale"]
NOUNS = ["toolbox", "telescope", "kettle", "piano", "lantern", "trunk", "cabinet", "locker",
         "drawer", "suitcase", "chest", "safe", "crate", "violin", "bicycle", "clock", "radio",
         "typewriter", "camera", "compass", "barrel", "cupboard", "wardrobe", "basket"]
FIRST = ["Walter", "Harold", "Mary", "Susan", "Peter", "Alice", "George", "Helen", "Arthur",
         "Edith", "Frank", "Grace", "Henry", "Irene", "James", "Laura", "Oscar", "Ruth",
         "Victor", "Agnes", "Bernard", "Clara", "Dennis", "Flora"]
LAST = ["Bennett", "Lambert", "Kowalski", "Clark", "Hughes", "Fischer", "Moreau", "Novak",
        "Larsen", "Quinn", "Romero", "Sato", "Turner", "Ward", "Young", "Baker", "Cole",
        "Doyle", "Ellis", "Fox", "Grant", "Hale", "Irwin", "Jensen"]
CITIES = ["Dublin", "Cairo", "Lisbon", "Oslo", "Vienna", "Prague", "Madrid", "Quebec",
          "Lima", "Nairobi", "Krakow", "Porto", "Geneva", "Bergen", "Seville", "Tallinn"]
PETS = ["goldfish", "parrot", "cat", "dog", "rabbit", "tortoise"]
ATTRS = ["combination", "key number", "code", "serial number"]
FILLER = [
    "The corridor is long and the lights come on one after the other as you walk.",
    "Nobody remembers who painted the door, but everybody agrees it needs a new coat.",
    "On rainy days the windows rattle and the radiators knock like old neighbours.",
    "The notes below were written in a hurry and copied out again the next morning.",
    "Visitors are asked to sign the book by the entrance and to close the gate behind them.",
    "In winter the stove is lit early, and the kettle is always warm by eight o'clock.",
]


def half(xs, side):
    """The calibration (side 0) or evaluation (side 1) half of a list."""
    return xs[side::2]


class Gen:
    def __init__(self, side, seed):
        self.rng = random.Random(seed)
        self.adj, self.nouns = half(ADJ, side), half(NOUNS, side)
        self.first, self.last = half(FIRST, side), half(LAST, side)
        self.cities = half(CITIES, side)
        self.rooms = [str(n) for n in range(100 + side * 450, 550 + side * 450)]
        self.used = set()

    def fresh(self, make):
        while True:
            x = make()
            if x not in self.used:
                self.used.add(x)
                return x

    def entity(self):
        return self.fresh(lambda: "the %s %s" % (self.rng.choice(self.adj), self.rng.choice(self.nouns)))

    def person(self):
        return self.fresh(lambda: "%s %s" % (self.rng.choice(self.first), self.rng.choice(self.last)))

    def room(self):
        return self.fresh(lambda: self.rng.choice(self.rooms))

    def code(self):
        return "%04d" % self.rng.randrange(1000, 10000)

    def fact(self, kind):
        """(fact sentence, question, answer) of one kind, about a new entity."""
        r = self.rng
        if kind == "code":
            e, a, v = self.entity(), r.choice(ATTRS), self.code()
            return "The %s of %s is %s." % (a, e, v), "What is the %s of %s?" % (a, e), v
        if kind == "lives":
            p, c = self.person(), r.choice(self.cities)
            return "%s lives in %s." % (p, c), "Where does %s live?" % p, c
        if kind == "pet":
            p, k, n = self.person(), r.choice(PETS), r.choice(self.cities)
            return ("%s has a %s named %s." % (p, k, n),
                    "What is the name of %s's %s?" % (p, k), n)
        room, v = self.room(), self.code()
        return ("The alarm code of room %s is %s." % (room, v),
                "What is the alarm code of room %s?" % room, v)


KINDS = ["code", "lives", "pet", "roomcode"]


def make_set(side, n_docs, seed):
    """Documents, answerable [(q, answer)], unanswerable [q]."""
    g = Gen(side, seed)
    docs, answerable, unanswerable = [], [], []
    for d in range(n_docs):
        paras = [g.rng.choice(FILLER)]
        for k in range(3):
            sent, q, a = g.fact(KINDS[(d * 3 + k) % len(KINDS)])
            paras.append(sent)
            answerable.append((q, a))
        paras.append(g.rng.choice(FILLER))
        docs.append("\n\n".join(paras) + "\n")
    for i in range(len(answerable)):
        unanswerable.append(g.fact(KINDS[i % len(KINDS)])[1])  # never written to memory
    return docs, answerable, unanswerable


def msadb(exe, *args, ok=(0,)):
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode not in ok:
        sys.exit(f"msadb {' '.join(args)}: exit {r.returncode}: {r.stderr}")
    return r


def best_score(exe, db, q, blocks):
    j = json.loads(msadb(exe, "search", db, "--blocks", str(blocks), "--json", q).stdout)
    return j["spans"][0]["score"] if j["spans"] else float("-inf")


def run_set(exe, model, side, n_docs, seed, tmp, blocks, answers, split):
    docs, answerable, unanswerable = make_set(side, n_docs, seed)
    db = os.path.join(tmp, "set%d" % side)
    msadb(exe, "init", db, "--model", model)
    files = []
    for i, text in enumerate(docs):
        f = os.path.join(tmp, "set%d-doc%02d.txt" % (side, i))
        open(f, "w").write(text)
        files.append(f)
    msadb(exe, "ingest", db, *(["--split"] if split else []), *files)
    rows = []
    for q, a in [(q, a) for q, a in answerable] + [(q, None) for q in unanswerable]:
        row = {"question": q, "answerable": a is not None, "score": best_score(exe, db, q, blocks)}
        if answers:
            # exit 3: the model's own abstain answer (a model that declares msadb.abstain)
            r = msadb(exe, "query", db, "-n", "16", "--blocks", str(blocks), "--json", q, ok=(0, 3))
            j = json.loads(r.stdout)
            row["abstained"] = r.returncode == 3
            if a is not None:
                row["answer"] = a
                row["correct"] = a in j["answer"]
        rows.append(row)
    return rows


def calibrate(rows):
    """The threshold with the best balanced accuracy on rows."""
    scores = sorted({r["score"] for r in rows})
    cands = [scores[0] - 1] + [(a + b) / 2 for a, b in zip(scores, scores[1:])] + [scores[-1] + 1]
    def bal(t):
        ans = [r for r in rows if r["answerable"]]
        una = [r for r in rows if not r["answerable"]]
        return (sum(r["score"] >= t for r in ans) / len(ans) + sum(r["score"] < t for r in una) / len(una)) / 2
    return max(cands, key=bal)


def measure(rows, t):
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    abstained = [r for r in rows if r["score"] < t]
    right = [r for r in abstained if not r["answerable"]]
    m = {"threshold": round(t, 3), "answerable": len(ans), "unanswerable": len(una),
         "abstained": len(abstained),
         "abstain_precision": round(len(right) / len(abstained), 3) if abstained else None,
         "abstain_recall": round(len(right) / len(una), 3),
         "answerable_kept": round(sum(r["score"] >= t for r in ans) / len(ans), 3)}
    if all("abstained" in r for r in rows):
        # the model's own answer, with no threshold
        m["model_abstain_recall"] = round(sum(r["abstained"] for r in una) / len(una), 3)
        m["model_abstained_answerable"] = round(sum(r["abstained"] for r in ans) / len(ans), 3)
    if all("correct" in r for r in ans):
        m["answerable_correct"] = round(sum(r["correct"] for r in ans) / len(ans), 3)
        m["answerable_correct_kept"] = round(sum(r["correct"] and r["score"] >= t for r in ans) / len(ans), 3)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--msadb", required=True)
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                    "models", "msadb-mem.gguf"))
    ap.add_argument("--docs", type=int, default=12, help="documents per set (3 facts each)")
    ap.add_argument("--blocks", type=int, default=4, help="--blocks of search and query")
    ap.add_argument("--no-answers", action="store_true", help="skip generating answers")
    ap.add_argument("--split", action="store_true",
                    help="ingest with --split: one document per paragraph (each fact its own)")
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="msadb-abstain-")
    try:
        exe = os.path.abspath(a.msadb)
        model = os.path.abspath(a.model)
        calib = run_set(exe, model, 0, a.docs, 11, tmp, a.blocks, not a.no_answers, a.split)
        held = run_set(exe, model, 1, a.docs, 22, tmp, a.blocks, not a.no_answers, a.split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t = calibrate(calib)
    res = {"calibration": measure(calib, t), "evaluation": measure(held, t),
           "model": os.path.basename(a.model), "blocks": a.blocks, "docs": a.docs, "split": a.split}
    print("set          threshold  answerable  unanswerable  abstain precision  abstain recall  answerable kept  answerable correct (kept)")
    for name in ("calibration", "evaluation"):
        m = res[name]
        print("%-12s %9.3f  %10d  %12d  %17s  %14.3f  %15.3f  %s" % (
            name, m["threshold"], m["answerable"], m["unanswerable"], m["abstain_precision"],
            m["abstain_recall"], m["answerable_kept"],
            "%s (%s)" % (m.get("answerable_correct"), m.get("answerable_correct_kept"))))
        if "model_abstain_recall" in m:
            print("%-12s the model's own 'not in memory': %.3f of the unanswerable, %.3f of the "
                  "answerable" % ("", m["model_abstain_recall"], m["model_abstained_answerable"]))
    if a.out:
        res["rows"] = {"calibration": calib, "evaluation": held}
        json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
