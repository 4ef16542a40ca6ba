#!/usr/bin/env python3
"""memmodel_gpu_eval.py -- the training side of the held-out evaluation.

memmodel.gpu_eval.heldout_gpu (memmodel.train --eval-heldout) on made-up
arrays and a tiny model (CPU): at each haystack size it asks exactly the
questions whose needle document is in memory plus the unanswerable ones,
and scores generated tokens as heldout.score does (the answer's tokens
right, the abstain form an abstention); generation is replaced by fixed
outputs so the scoring is what is checked; the routing recall generate()
reports (needle, routed), --interleave, --context-needle and --abstain-bias
(a pass per bias, scored per cell; generate()'s bias on one token's first
logit and the margins it records, on a tiny model).  And the
learned router of memmodel.router: with R the identity the model's own
scores, otherwise q . mean(R k) (the keys mapped, then pooled).  And memmodel.train's
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

from memmodel import gpu_eval, net, router
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
    asked, top_ks, prompts, inter = [], [], [], []

    def fake_generate(model, qs, pools, dev, eos, **kw):
        # a question is known by its last two tokens (a context may stand before them)
        idx = [qtok.index([1] + list(q[-2:])) for q in qs]
        asked.append((pools is not None, idx))
        top_ks.append(kw.get("top_k", 16))
        prompts.append([list(q) for q in qs])
        inter.append(kw.get("interleave"))
        if kw.get("routed") is not None:
            # "routed" when the needle is document 0
            kw["routed"] += [n == 0 if n >= 0 else None for n in kw["needle"]]
        if kw.get("margins") is not None:
            kw["margins"] += [1.0 if GEN[i] == ABST else -1.0 for i in idx]
        if kw.get("bias") is not None and kw["bias"][1] > 0:   # abstain pushed: all abstain
            return [list(ABST) for _ in idx]
        if kw.get("bias") is not None and kw["bias"][1] < 0:   # abstain held back: answers
            return [list(QS[i][3]) if QS[i][0] != "unans" else [3] for i in idx]
        return [list(GEN[i]) for i in idx]

    real_generate = gpu_eval.generate
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
    b_routed = res["sizes"]["B"]["cells"]

    n0 = len(prompts)
    rc = gpu_eval.heldout_gpu(net.Model(c).eval(), os.path.join(d, "heldout_gpu.npz"),
                              torch.device("cpu"), deadline=1e18, log=lambda x: None,
                              context_needle=True)
    want = [[1] + list(docs[QS[i][2]]) + qtok[i][1:] if QS[i][2] >= 0 else qtok[i]
            for i in range(len(QS))]
    check(prompts[n0 + 2] == want and prompts[n0] == [list(q) for q in qtok]
          and "needle document" in rc["mode"],
          "--context-needle: each memory question has its needle document after BOS, "
          "none without memory")
    n0 = len(prompts)
    ri = gpu_eval.heldout_gpu(net.Model(c).eval(), os.path.join(d, "heldout_gpu.npz"),
                              torch.device("cpu"), deadline=1e18, log=lambda x: None,
                              interleave=True)
    check(inter[n0] is None and len(inter[n0 + 2]) == 3 and "interleave" in ri["mode"],
          "--interleave: memory questions get the haystack documents to pull from")

    # --abstain-bias: each bias a further pass at every size, with the bias on the
    # abstain answer's first token; the unbiased margins summarized per cell
    n0 = len(prompts)
    rb = gpu_eval.heldout_gpu(net.Model(c).eval(), os.path.join(d, "heldout_gpu.npz"),
                              torch.device("cpu"), deadline=1e18, log=lambda x: None,
                              abstain_biases=[-3, 4])
    cb = rb["sizes"]["B"]["abstain_bias"]
    check(rb["sizes"]["B"]["cells"] == b_routed and len(prompts) == n0 + 1 + 2 * 3,
          "--abstain-bias: the unbiased pass as before, then one pass per bias and size")
    check(cb["4"]["unans"]["abstained"] == 2 and cb["4"]["tpl"]["abstained"] == 2
          and cb["-3"]["tpl"]["correct"] == 2 and cb["-3"]["f_para"]["correct"] == 1
          and cb["-3"]["unans"]["abstained"] == 0,
          "--abstain-bias: each bias's answers scored per cell (%s)" % cb)
    check(rb["sizes"]["B"]["abstain_margin"]["q_para"] == [1.0] * 5
          and rb["sizes"]["B"]["abstain_margin"]["tpl"] == [-1.0] * 5,
          "--abstain-bias: margin quantiles per cell (%s)" % rb["sizes"]["B"]["abstain_margin"])

    # generate() itself on the tiny model: routing recall of the last memory layer
    pdocs = [list(rng.integers(10, 200, 64)) for _ in range(3)]
    model = net.Model(c).eval()
    kvs, valid, doc = gpu_eval.encode_pool(model, pdocs, torch.device("cpu"))
    pools = gpu_eval._pools(kvs, valid, doc, 3, {})
    for k, expect in ((3, [True, True, True, None]), (1, None)):
        routed = []
        real_generate(model, [[1, 20, 21]] * 4, pools, torch.device("cpu"), 2, top_k=k,
                      max_new=1, needle=[0, 1, 2, -1], routed=routed)
        if expect:
            check(routed == expect, "routed: every needle routed when all blocks are selected, "
                  "None without a needle (%s)" % routed)
        else:
            check(sum(routed[:3]) == 1 and routed[3] is None,
                  "routed: one block selected routes exactly one needle (%s)" % routed)

    # generate()'s bias and margins on the tiny model: the margin of a token is its
    # first-step logit minus the best other; > 0 exactly where it is drawn unbiased,
    # and a bias larger than -margin makes it the first answer token
    qq = [[1, 20, 21], [1, 30, 31, 32], [1, 5]]
    plain = real_generate(model, qq, pools, torch.device("cpu"), 2, max_new=1)
    t = plain[0][0] if plain[0] else 2
    mg = []
    same = real_generate(model, qq, pools, torch.device("cpu"), 2, max_new=1, bias=(t, 0.0), margins=mg)
    check(same == plain and len(mg) == 3 and mg[0] > 0
          and all((m > 0) == (o[:1] == [t]) for m, o in zip(mg, plain)),
          "generate: margin > 0 exactly where the token is drawn (%s, %s)" % (mg, plain))
    pushed = real_generate(model, qq, pools, torch.device("cpu"), 2, max_new=1,
                           bias=(t, -min(mg) + 0.01))
    held = real_generate(model, qq, pools, torch.device("cpu"), 2, max_new=1,
                         bias=(t, -mg[0] - 0.01))
    check(all(o == [t] for o in pushed) and held[0] != [t],
          "generate: a bias past the margin makes the token first, one below it keeps it out "
          "(%s, %s)" % (pushed, held))

    # the learned router: identity = the model's own scores; R = q . mean(R k)
    q = torch.randn(2, c.n_heads, 3, c.hd)
    K = torch.randn(c.n_kv, 5, 64, c.hd)
    means = K.mean(2)
    s0 = model.route_scores(q, means, 0)
    model.router = torch.eye(c.hd).repeat(len(c.mem_layers()), c.n_kv, 1, 1)
    check(torch.allclose(model.route_scores(q, means, 0), s0), "router = identity: same scores")
    R = torch.randn(len(c.mem_layers()), c.n_kv, c.hd, c.hd)
    model.router = R
    s1 = model.route_scores(q, means, 0)
    model.router = None
    mapped = torch.einsum("kpbd,ked->kpbe", K, R[0]).mean(2)
    check(torch.allclose(s1, model.route_scores(q, mapped), atol=1e-4) and not torch.allclose(s1, s0),
          "router R: scores equal the plain scores of the keys mapped by R, then pooled")

    # router.routing_loss_p: the gold block made the best of 20 gives recall 1 and a
    # smaller loss than the gold made the worst; rows not kept do not count
    q1 = torch.randn(2, c.n_heads, 3, c.hd)
    mb = torch.randn(c.n_kv, 20, c.hd) * 0.1
    best = mb.clone()
    best[:, 0] = q1[0, :, :2].mean(1).reshape(c.n_kv, -1, c.hd).mean(1) * 50
    worst = mb.clone()
    worst[:, 0] = -best[:, 0]
    plen, gold = torch.tensor([2, 2]), torch.tensor([[0], [0]])
    keep = torch.tensor([True, False])
    lb, rb = router.routing_loss_p(model, q1, best, 0, plen, gold, keep)
    lw, rw = router.routing_loss_p(model, q1, worst, 0, plen, gold, keep)
    l0, r0 = router.routing_loss_p(model, q1, best, 0, plen, gold, torch.tensor([False, False]))
    check(rb == 1.0 and rw == 0.0 and float(lb) < float(lw) and float(l0) == 0.0,
          "routing_loss_p: recall and loss follow the gold block's rank, kept rows only "
          "(%.3f %.3f / %.3f %.3f)" % (float(lb), rb, float(lw), rw))

    # net.grow (memmodel.train --grow): the deeper model answers as the old one, memory
    # included, until its new layers are trained; a new layer is wired in (its output
    # maps, once not zero, change the answer); layouts that move a memory layer out of
    # the latter half, or reorder the old layers, are refused
    g = net.Config()
    g.n_layers, g.d, g.n_heads, g.n_kv, g.hd, g.ffn, g.vocab = 2, 64, 4, 2, 16, 96, 64
    torch.manual_seed(3)
    small = net.Model(g).eval()
    big = net.grow(small, net.parse_layout("0,new,1,new")).eval()
    gdocs, gq = torch.randint(3, 64, (2, 128)), torch.randint(3, 64, (2, 6))

    def answers(m):
        with torch.no_grad():
            xd, caps = m.forward_plain(gdocs, capture=True)
            x, _, _ = m.forward_query(gq, torch.ones(2, 6, dtype=torch.bool), torch.tensor([4, 4]),
                                      net.build_pools(m, caps), 2)
            return torch.cat([m.logits(xd).flatten(), m.logits(x).flatten()])

    a_small, a_big = answers(small), answers(big)
    check(big.c.n_layers == 4 and big.c.mem_layers() == [2, 3]
          and torch.allclose(a_small, a_big, atol=1e-5),
          "grow: 2 -> 4 layers, the same logits for documents and for questions over memory "
          "(max diff %.2e)" % float((a_small - a_big).abs().max()))
    for j, name in ((1, "wo"), (3, "w_down")):
        with torch.no_grad():
            getattr(big.layers[j], name).weight.normal_(std=0.5)
        check(not torch.allclose(answers(big), a_small, atol=1e-3),
              "grow: new layer %d's %s, once not zero, changes the answer" % (j, name))
        with torch.no_grad():
            getattr(big.layers[j], name).weight.zero_()
    for bad in ("0,1,new,new", "1,0,new,new", "0,new,new"):
        try:
            net.grow(small, net.parse_layout(bad))
            check(False, "grow: layout %s refused" % bad)
        except ValueError:
            pass

    # net.widen (memmodel.train --widen): the wider model (more dimensions, kv heads with
    # their q heads, FFN units) answers as the old one, memory and routing included, until
    # trained; its new parts are wired in (the new dimensions' embedding columns, the new
    # kv heads' output columns, new FFN units' output columns: each, once not zero, changes
    # the answer); shapes that shrink or regroup are refused
    wide = net.widen(small, net.parse_shape("d=128,n_heads=8,n_kv=4,ffn=160")).eval()
    a_wide = answers(wide)
    check(wide.c.d == 128 and wide.c.n_heads == 8 and wide.c.n_kv == 4 and wide.c.ffn == 160
          and torch.allclose(a_small, a_wide, atol=1e-5),
          "widen: d 64 -> 128, 4 -> 8 q heads, 2 -> 4 kv heads, ffn 96 -> 160, the same logits "
          "for documents and for questions over memory (max diff %.2e)"
          % float((a_small - a_wide).abs().max()))
    hd = g.hd
    for what, param, idx in (("new dimensions' embedding", wide.tok.weight, (slice(None), slice(64, None))),
                             ("the new kv heads' output", wide.layers[1].wo.weight,
                              (slice(None), slice(4 * hd, 8 * hd))),
                             ("new FFN units' output", wide.layers[0].w_down.weight,
                              (slice(None), slice(96, None)))):
        keep = param.detach().clone()
        with torch.no_grad():
            param[idx] = torch.randn_like(param[idx]) * 0.5
        check(not torch.allclose(answers(wide), a_small, atol=1e-3),
              "widen: %s, once not zero, changes the answer" % what)
        with torch.no_grad():
            param.copy_(keep)
    for bad in ("d=32,n_heads=2,n_kv=1", "d=128,n_heads=8", "d=144,n_heads=9,n_kv=3",
                "d=128,n_heads=4", "ffn=64", "depth=3"):
        try:
            net.widen(small, net.parse_shape(bad))
            check(False, "widen: shape %s refused" % bad)
        except ValueError:
            pass

check(asked[0] == (False, [0, 1, 2, 3, 4, 5]), "no memory: every question asked (%s)" % (asked[0],))
check(asked[1] == (True, [0, 1, 4, 5]),
      "size A: the questions of document 0 and the unanswerable ones (%s)" % (asked[1],))
check(asked[2] == (True, [0, 1, 2, 3, 4, 5]), "size B: all of them (%s)" % (asked[2],))
b = res["sizes"]["B"]["cells"]
check(b["tpl"]["correct"] == 2 and b["tpl"]["n"] == 2, "tpl: both answers right (%s)" % b["tpl"])
check(b_routed["tpl"]["routed"] == 1 and b_routed["q_para"]["routed"] == 1
      and "routed" not in b_routed["unans"],
      "routing recall per cell from generate's routed, none for unanswerable (%s)" % b_routed)
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
