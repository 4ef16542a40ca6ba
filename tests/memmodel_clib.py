#!/usr/bin/env python3
"""memmodel_clib.py -- memmodel.clib, through which the evaluations reach the
C library (the msadb package over the library at argv[1]): with the bundled
model, a store is created, a document holding a fact is ingested, and the
question about that fact is answered with its value; without memory it is
not; tokenize_len counts the model's tokens; a model that make_test_model
writes with --tokenizer-from the bundled one tokenizes as it does.  Skips
(77) without numpy.
"""
import importlib.util
import os
import sys
import tempfile

if importlib.util.find_spec("numpy") is None:
    print("skip: needs python3-numpy")
    sys.exit(77)

from memmodel.clib import ROOT, Msadb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklist import check, done  # noqa: E402

m = Msadb(sys.argv[1])
check(os.path.realpath(m.msadb.LIBRARY) == os.path.realpath(sys.argv[1]),
      "the msadb package runs the library given (%s)" % m.msadb.LIBRARY)
m.open_model(os.path.join(ROOT, "models", "msadb-mem.gguf"))
fact = "The password of the teal toolbox is 4378."
text = "Notes from the storeroom.\n\n" + fact + "\n\nNothing else was written down that day."
with tempfile.TemporaryDirectory() as d:
    st = m.create_store(os.path.join(d, "store"))
    m.ingest(st, "notes", text)
    check(st.stat().n_documents == 1, "one document ingested (%d)" % st.stat().n_documents)
    q = "What is the password of the teal toolbox?"
    a = m.ask(st, q).strip().rstrip(".")
    check(a == "4378", "the fact's value is answered from memory (%r)" % a)
    a0 = m.ask(st, q, no_memory=True).strip().rstrip(".")
    check(a0 != "4378", "without memory it is not (%r)" % a0)
    m.close_store(st)
# memmodel.heldout diagnose on a one-question data directory: every variant
# asked once, and the fact alone answered
from memmodel import data as mmd, heldout  # noqa: E402
import json  # noqa: E402
with tempfile.TemporaryDirectory() as d:
    other = "The password of the gray lamp is 9120."
    os.makedirs(os.path.join(d, "text"))
    for name in mmd.SOURCES_TRAIN:
        mmd._write_docs(os.path.join(d, "text", name + ".txt"),
                        ["In the beginning there was a line of text.\n" * 90])
    mmd._write_docs(os.path.join(d, "heldout_docs.txt"),
                    ["\n\n".join(["A kettle, n. A pot.", other, fact, "A lamp, n. A light."])])
    qs = [{"cell": "tpl", "kind": "code", "answer": "4378", "doc": 0, "pos": 10, "fact": fact,
           "question": "What is the password of the teal toolbox?"},
          {"cell": "tpl", "kind": "code", "answer": "9120", "doc": 0, "pos": 5, "fact": other,
           "question": "What is the password of the gray lamp?"}]
    with open(os.path.join(d, "heldout.json"), "w") as f:
        json.dump({"questions": qs}, f)
    out = os.path.join(d, "diag.json")
    heldout.main(["diagnose", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                  "--lib", sys.argv[1], "--store-dir", os.path.join(d, "st"), "--out", out])
    r = json.load(open(out))["variants"]
    check(sorted(r) == sorted(heldout.VARIANTS), "diagnose: the variants %s" % sorted(r))
    check(all(v["n"] == 2 and v["by_kind"]["code"]["n"] == 2 for v in r.values()),
          "diagnose: every question asked in every variant %r" % r)
    check(r["the fact alone"]["correct"] == 2, "diagnose: the facts alone answered %r"
          % r["the fact alone"])
    # heldout cpu on the same haystack and a document longer than the
    # model's window (stored in parts "T [k/n]"): answers, and routing
    # recall through the store's ids of the haystack's titles
    rec = json.load(open(os.path.join(d, "heldout.json")))
    hdocs = mmd.read_docs(os.path.join(d, "heldout_docs.txt"))
    hdocs.append("\n\n".join(["A lamp, n. A light that burns oil or gas."] * 500
                               + ["The password of the oak desk is 5531."]))
    mmd._write_docs(os.path.join(d, "heldout_docs.txt"), hdocs)
    rec.update(command="test", doc_tokens=[m.tokenize_len(t) for t in hdocs])
    check(rec["doc_tokens"][1] > 4096, "a document past the window (%d)" % rec["doc_tokens"][1])
    rec["questions"].append({"cell": "tpl", "kind": "code", "answer": "5531", "doc": 1, "pos": 1,
                             "question": "What is the password of the oak desk?"})
    rec["questions"].append({"cell": "unans", "kind": "code", "answer": mmd.ABSTAIN, "doc": -1,
                             "pos": -1, "question": "What is the password of the red chair?"})
    with open(os.path.join(d, "heldout.json"), "w") as f:
        json.dump(rec, f)
    heldout.main(["cpu", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                  "--lib", sys.argv[1], "--store-dir", os.path.join(d, "st"), "--sizes", "16K",
                  "--abstain-retry", "--out", out])
    c = json.load(open(out))["sizes"]["16K"]["cells"]
    # --abstain-retry: every question answered ABSTAIN asked again, per cell
    ar = json.load(open(out))["sizes"]["16K"]["abstain_retry"]
    check("unans" in ar and all(ar.get(k, {}).get("abstained", 0) == c[k]["abstained"] for k in c)
          and all(v["right_after"] <= v["abstained"] and v["abstained_after"] <= v["abstained"]
                  for k, v in ar.items() if k != "retry_s"),
          "heldout cpu --abstain-retry: %r against %r" % (ar, c))
    check(c["tpl"]["n"] == 3 and c["tpl"]["routed"] == 3 and c["tpl"]["right_routed"]
          == c["tpl"]["correct"] >= 1 and "routed" not in c["unans"],
          "heldout cpu: each question's document routed, the long one through its parts %r" % c)
    check(c["tpl"]["answer_read"] >= c["tpl"]["correct"] and "answer_read" not in c["unans"]
          and 0 < c["tpl"]["first_blocks"] <= 3,
          "heldout cpu: the blocks holding the answers read, first blocks counted %r" % c["tpl"])
    # --summary reaches every ask (and the scores come from the route it names)
    from memmodel import clib
    seen, orig = [], clib.Msadb.answer

    def answer(self, st, question, **kw):
        seen.append((self.summary, self.score))
        return orig(self, st, question, **kw)
    clib.Msadb.answer = answer
    heldout.main(["cpu", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                  "--lib", sys.argv[1], "--store-dir", os.path.join(d, "st"), "--sizes", "16K",
                  "--summary", "reps", "--out", out + ".reps"])
    cr = json.load(open(out + ".reps"))["sizes"]["16K"]["cells"]
    check(seen and set(seen) == {("reps", None)} and cr["tpl"]["n"] == 3,
          "heldout cpu --summary reps: every question routed with it %r" % (set(seen),))
    # --score likewise
    seen.clear()
    heldout.main(["cpu", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                  "--lib", sys.argv[1], "--store-dir", os.path.join(d, "st"), "--sizes", "16K",
                  "--score", "dot-centred", "--out", out + ".centred"])
    clib.Msadb.answer = orig
    cr = json.load(open(out + ".centred"))["sizes"]["16K"]["cells"]
    check(seen and set(seen) == {(None, "dot-centred")} and cr["tpl"]["n"] == 3,
          "heldout cpu --score dot-centred: every question routed with it %r" % (set(seen),))
    # heldout cpu --what mh: the two-hop pairs in their own store, both cells,
    # where the round goes, and the extra rounds --mh-rounds asks for
    pair = {"facts": ["The teal kettle is kept in room 318.", "The lock code of room 318 is 6604."],
            "answer": "6604", "docs": [0, 2],
            "question": "What is the lock code of the room where the teal kettle is kept?",
            "question_para": "Which lock code will get someone through to the teal kettle?",
            "question_new": "Tell me the lock code for the space that houses the teal kettle.",
            "question_fresh": "Tell me the lock code of the bay where the teal kettle is kept"}
    mmd._write_docs(os.path.join(d, "heldout_mh_docs.txt"),
                    ["A kettle, n. A pot.\n\n" + pair["facts"][0], "A lamp, n. A light.",
                     pair["facts"][1] + "\n\nA desk, n. A table."])
    with open(os.path.join(d, "heldout_mh.json"), "w") as f:
        json.dump({"pairs": [pair], "doc_tokens": [20, 10, 20]}, f)
    heldout.main(["cpu", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                  "--lib", sys.argv[1], "--store-dir", os.path.join(d, "st"), "--sizes", "",
                  "--what", "mh", "--mh-rounds", "2", "--out", out + ".mh"])
    heldout.main(["cpu", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                  "--lib", sys.argv[1], "--store-dir", os.path.join(d, "st"), "--sizes", "",
                  "--what", "mh", "--mh-rounds", "0", "--followup-examples", "1", "--out", out + ".mh0"])
    try:
        heldout.main(["cpu", "--data", d, "--followup-examples", "0", "--what", "mh"])
        check(False, "heldout cpu --followup-examples 0 accepted")
    except SystemExit as e:
        check("at least 1" in str(e), "heldout --followup-examples 0: %s" % e)
    mh0 = json.load(open(out + ".mh0"))["multihop"]
    check(all(mh0[c]["n"] == 1 and "followup_asked" in mh0[c] and "interleave_on" not in mh0[c]
              for c in ("mh", "mh_para", "mh_new", "mh_fresh")),
          "heldout cpu --what mh --mh-rounds 0: follow-ups only %r" % mh0)
    check(all(len(mh0[c]["followup_examples"]) == 1 and mh0[c]["followup_examples"][0]["q"] == pair[q]
              for c, q in (("mh", "question"), ("mh_fresh", "question_fresh"))),
          "heldout cpu --followup-examples 1: %r" % mh0)
    mh = json.load(open(out + ".mh"))["multihop"]
    for cell in ("mh", "mh_para", "mh_new", "mh_fresh"):
        r = mh[cell]
        check(mh["pairs"] == 1 and r["n"] == 1 and "interleave_2" in r
              and "interleave_3" not in r and r["first_hop_pulled"] in (0, 1)
              and r["right_when_pulled"] + r["right_when_not"] == round(r["interleave_on"]),
              "heldout cpu --what mh: %s %r" % (cell, r))
    # heldout probe-mh: pairs with the slot words it names, in the first documents
    heldout.main(["probe-mh", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                  "--lib", sys.argv[1], "--store-dir", os.path.join(d, "st"), "--mh-pairs", "1",
                  "--probe-slots", "held-attr", "--out", out + ".probe"])
    pr = json.load(open(out + ".probe"))
    counts = [pr[k] for k in ("interleave_on", "first_hop_pulled", "second_hop_alone",
                              "context_fact", "context_neighbours", "context_document")]
    check(pr["pairs"] == 1 and all(c in (0, 1) for c in counts)
          and any(a in pr["example"]["question"] for a in mmd.HELD_ROOM_ATTRS)
          and pr["example"]["facts"][0] not in pair["facts"],
          "heldout probe-mh: %r" % pr)
# memmodel.evaluate cpu --what multihop --sizes '': the pairs in their own
# store, made where no size run made the store folder first
from memmodel import evaluate  # noqa: E402
with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "eval.json"), "w") as f:
        json.dump({"needles": [], "multihop": [
            {"question": "What is the alarm code of the room where the grey piano is kept?",
             "answer": "2100", "facts": ["The grey piano is kept in room 568.",
                                         "The alarm code of room 568 is 2100."]}]}, f)
    mmd._write_docs(os.path.join(d, "eval_docs.txt"), [])
    mmd._write_docs(os.path.join(d, "eval_mh_docs.txt"),
                    ["A kettle, n. A pot.\n\nThe grey piano is kept in room 568.",
                     "A lamp, n. A light.\n\nThe alarm code of room 568 is 2100."])
    out = os.path.join(d, "mh.json")
    evaluate.main(["cpu", "--data", d, "--model", os.path.join(ROOT, "models", "msadb-mem.gguf"),
                   "--lib", sys.argv[1], "--sizes", "", "--what", "multihop", "--segment", "joined",
                   "--store-dir", os.path.join(d, "new", "st"), "--out", out])
    mh = json.load(open(out)).get("multihop", {})
    check(mh.get("pairs") == 1 and 0 <= mh["interleave_on"] <= 1,
          "evaluate cpu --what multihop into a new store folder: %r" % mh)
    check(mh.get("first_hop_pulled") in (0, 1) and mh["right_when_pulled"]
          + mh["right_when_not"] == round(mh["interleave_on"]) and "interleave_3" in mh,
          "evaluate cpu --what multihop: where the interleave round goes %r" % mh)
# the held-out arrays' joined tokens (SentencePiece, memmodel.data.joined_ids)
# are the tokens the C library stores with msadb.segment "joined"
sp = mmd.load_sp()
texts = [text, "A kettle, n.\n\n\n  A pot.\r\n\r\nLast line\n\n" + fact + "\n\n",
         "\n\nStarts blank.\n\nEnds\n\n\n"]
check(mmd.paragraphs(texts[1]) == ["A kettle, n.\n\n\n", "  A pot.\r\n\r\nLast line\n\n",
                                   fact + "\n\n"], "paragraphs: %r" % mmd.paragraphs(texts[1]))
m.model.segment = "joined"
with tempfile.TemporaryDirectory() as d:
    st = m.create_store(os.path.join(d, "store"))
    for t in texts:
        m.ingest(st, "t", t)
    with st.snapshot() as snap:
        got = [list(snap.tokens(i)[0]) for i in sorted(x.id for x in snap.documents())]
    m.close_store(st)
want = [mmd.joined_ids(sp, t) for t in texts]
check(got == want, "joined tokens: C %r, SentencePiece %r" % (got, want))
check(want[1] != sp.encode(texts[1]), "joined differs from the text tokenized whole")
check(mmd.tokenize_as(sp, texts, "joined") == want and mmd.tokenize_as(sp, texts, "document")
      == sp.encode(texts), "tokenize_as: the GPU arrays' tokens in both modes")
try:
    mmd.tokenize_as(sp, texts, "paragraph")
    check(False, "tokenize_as refuses paragraph (one pass per document in the arrays)")
except SystemExit as e:
    check("use document or joined" in str(e), "tokenize_as refuses paragraph: %s" % e)
check(mmd.model_segment(os.path.join(ROOT, "models", "msadb-mem.gguf")) == "joined",
      "model_segment reads the bundled model's mode (msadb.segment = joined)")
m.model.segment = "document"
n = m.tokenize_len(fact)
check(5 < n < 40, "tokenize_len counts the fact's tokens (%d)" % n)
# make_test_model --tokenizer-from: a model of another shape with the bundled
# model's tokenizer reads text into the same tokens
from memmodel import make_test_model  # noqa: E402
m.open_model(os.path.join(ROOT, "models", "msadb-mem.gguf"))
v4_tokens = list(m.model.tokenize(texts[1])[0])
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "shape.gguf")
    make_test_model.main([path, "--layers", "2", "--heads", "2", "--kv-heads", "1",
                          "--head-dim", "32", "--ffn", "64", "--tokenizer-from",
                          os.path.join(ROOT, "models", "msadb-mem.gguf")])
    m2 = Msadb(sys.argv[1])
    m2.open_model(path)
    got = list(m2.model.tokenize(texts[1])[0])
    check(got == v4_tokens and len(v4_tokens) > 10,
          "--tokenizer-from: the same tokens as the bundled model (%d)" % len(got))
    info = m2.model.info
    check(info.n_vocab == m.model.info.n_vocab and info.n_layers == 2,
          "--tokenizer-from: the bundled model's vocabulary size, the shape asked (%r)" % (info,))
done()
