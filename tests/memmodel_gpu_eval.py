#!/usr/bin/env python3
"""memmodel_gpu_eval.py -- the training side of the held-out evaluation.

memmodel.gpu_eval.heldout_gpu (memmodel.train --eval-heldout) on made-up
arrays and a tiny model (CPU): at each haystack size it asks exactly the
questions whose needle document is in memory plus the unanswerable ones,
and scores generated tokens as heldout.score does (the answer's tokens
right, the abstain form an abstention); generation is replaced by fixed
outputs so the scoring is what is checked.  And memmodel.train's
window_shape: with --doc-lens, window lengths from the list and batches of
about --doc-len x --mem-batch memory tokens.  Skips (77) without numpy or
torch.
"""
import argparse
import json
import os
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError:
    print("numpy or torch missing: skipped")
    sys.exit(77)

from memmodel import gpu_eval, net
from memmodel.data import ragged
from memmodel.train import window_shape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklist import check, done  # noqa: E402

ABST = [7, 8, 9]
# questions: (cell, kind, document, answer tokens); documents 0..2, sizes A (1 doc), B (3)
QS = [("tpl", "code", 0, [40, 41]), ("q_para", "code", 0, [40, 41]),
      ("tpl", "pet", 2, [50]), ("f_para", "room", 1, [60, 61]),
      ("unans", "code", -1, ABST), ("unans", "pet", -1, ABST)]
# what "generation" answers to each question, by index
GEN = {0: [40, 41], 1: ABST, 2: [50], 3: [60], 4: ABST, 5: [3]}

with tempfile.TemporaryDirectory() as d:
    rng = np.random.default_rng(1)
    docs = [rng.integers(10, 200, n) for n in (70, 130, 64)]
    qtok = [[1, 20 + i, 21] for i in range(len(QS))]

    arr = {}
    for name, lists in (("doc", docs), ("q", qtok), ("a", [q[3] for q in QS])):
        arr[name + "_tok"], arr[name + "_off"] = ragged(lists)
    np.savez(os.path.join(d, "heldout_gpu.npz"), **arr, abstain=np.array(ABST),
             size_names=np.array(["A", "B"]), size_docs=np.array([1, 3]), eos=np.array(2))
    with open(os.path.join(d, "heldout.json"), "w") as f:
        json.dump({"questions": [{"cell": c, "kind": k, "doc": doc, "pos": 0 if doc >= 0 else -1,
                                  "answer": "not in memory" if c == "unans" else "v%d" % i,
                                  "question": "q%d" % i}
                                 for i, (c, k, doc, _) in enumerate(QS)]}, f)
    asked, top_ks = [], []

    def fake_generate(model, qs, pools, dev, eos, **kw):
        idx = [qtok.index(list(q)) for q in qs]
        asked.append((pools is not None, idx))
        top_ks.append(kw.get("top_k", 16))
        return [list(GEN[i]) for i in idx]

    gpu_eval.generate = fake_generate
    c = net.Config()
    c.n_layers, c.d, c.ffn, c.n_heads, c.n_kv, c.hd, c.vocab = 2, 32, 64, 2, 1, 16, 256
    torch.manual_seed(0)
    res = gpu_eval.heldout_gpu(net.Model(c).eval(), os.path.join(d, "heldout_gpu.npz"),
                               torch.device("cpu"), deadline=1e18, log=lambda x: None)

    # the same arrays through main(): a GGUF file on its own, result as JSON
    from memmodel import make_test_model
    make_test_model.main([os.path.join(d, "m.gguf"), "--vocab", "300"])
    gpu_eval.main(["--model", os.path.join(d, "m.gguf"), "--arrays", os.path.join(d, "heldout_gpu.npz"),
                   "--out", os.path.join(d, "r.json"), "--top-k", "32"])
    with open(os.path.join(d, "r.json")) as f:
        rm = json.load(f)
    check(rm["sizes"]["B"]["cells"] == res["sizes"]["B"]["cells"] and rm["model_file"] == "m.gguf",
          "main: the evaluation of the GGUF file, as JSON (%s)" % rm.get("sizes"))
    check(top_ks[3:] == [16, 32, 32] and "top-32" in rm["mode"],
          "main --top-k: memory questions select 32 blocks (%s, %s)" % (top_ks[3:], rm["mode"]))
    asked[3:] = []

check(asked[0] == (False, [0, 1, 2, 3, 4, 5]), "no memory: every question asked (%s)" % (asked[0],))
check(asked[1] == (True, [0, 1, 4, 5]),
      "size A: the questions of document 0 and the unanswerable ones (%s)" % (asked[1],))
check(asked[2] == (True, [0, 1, 2, 3, 4, 5]), "size B: all of them (%s)" % (asked[2],))
b = res["sizes"]["B"]["cells"]
check(b["tpl"]["correct"] == 2 and b["tpl"]["n"] == 2, "tpl: both answers right (%s)" % b["tpl"])
check(b["q_para"]["correct"] == 0 and b["q_para"]["abstained"] == 1,
      "q_para: the abstention counted as such, not right (%s)" % b["q_para"])
check(b["f_para"]["correct"] == 0, "f_para: a partial answer is wrong (%s)" % b["f_para"])
check(b["unans"]["correct"] == 1 and b["unans"]["abstained"] == 1,
      "unans: the abstention right, another answer wrong (%s)" % b["unans"])
check(res["sizes"]["A"]["by_pos"]["tpl/0-511"]["n"] == 1, "scored per needle position")

args = argparse.Namespace(doc_len=1024, mem_batch=96, decoys=384, doc_lens="512,4096")
shapes = {window_shape(args, np.random.default_rng(s)) for s in range(40)}
check(shapes == {(512, 192, 384), (4096, 24, 384)},
      "--doc-lens: lengths from the list, ~98K memory tokens per batch (%s)" % sorted(shapes))
args.doc_lens = ""
check(window_shape(args, np.random.default_rng(0)) == (1024, 96, 384),
      "without --doc-lens: --doc-len, --mem-batch, --decoys")
done()
