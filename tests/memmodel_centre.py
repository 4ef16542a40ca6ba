#!/usr/bin/env python3
"""memmodel_centre.py -- training's position-centred routing score
(memmodel.net.centre_scores, memmodel.train --route-centred) against the C
engine's (MSADB_SCORE_DOT_CENTRED), the library at argv[1] through the
msadb package.

Forty documents of one to four 64-token blocks, every first block's keys
shifted by a common vector (as RoPE favours the blocks near a question's
positions), go into a store and into a training pool (rows of four blocks,
the missing ones invalid).  For one query, every block's centred score from
msadb's retrieve (times sqrt(head dim): hits are scaled) must equal
centre_scores of the pool's dot scores to f16's rounding of the stored means,
and plain dot must rank a first block best while the centred score ranks the
planted block best.  Skips (77) without numpy or torch.
"""
import importlib.util
import os
import sys
import tempfile

if importlib.util.find_spec("numpy") is None or importlib.util.find_spec("torch") is None:
    print("skip: needs python3-numpy and python3-torch")
    sys.exit(77)

import numpy as np
import torch

from memmodel import net
from memmodel.clib import load_msadb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checklist import check, done  # noqa: E402

msadb = load_msadb(sys.argv[1])
HD, NB, BS = 16, 4, 64
rng = np.random.default_rng(5)
lens = [int(n) for n in rng.integers(1, NB + 1, 40)]  # blocks per document
lens[4] = 3
common = rng.standard_normal(HD).astype(np.float32)
planted = rng.standard_normal(HD).astype(np.float32)
q = (common + planted).astype(np.float32)
docs = []
for i, nb in enumerate(lens):
    k = 0.2 * rng.standard_normal((nb * BS, HD)).astype(np.float32)
    k[:BS] += common
    if i == 4:
        k[2 * BS:3 * BS] += 0.6 * planted  # document 4, its third block
    docs.append(k)

with tempfile.TemporaryDirectory() as d:
    sig = msadb.Signature(n_layers=1, n_kv_heads=1, n_q_heads=1, head_dim=HD, memory_layers=[0],
                          dtype="f32", summaries=["mean"])
    st = msadb.Store.create(os.path.join(d, "s"), sig)
    ids = [st.add(k[None, None], np.zeros_like(k)[None, None]) for k in docs]
    with st.snapshot() as snap:
        total = sum(lens)
        hits = {}
        for score in ("dot", "dot-centred"):
            h = snap.retrieve(0, q[None, None], top_k=total, summary="mean", score=score)
            check(len(h) == total, "%s: every block scored (%d)" % (score, len(h)))
            hits[score] = h
    st.close()

# the training pool: one row of NB blocks per document
K = torch.zeros(1, len(lens) * NB, BS, HD)
valid = torch.zeros(len(lens) * NB, BS, dtype=torch.bool)
for i, k in enumerate(docs):
    n = len(k) // BS
    K[0, i * NB:i * NB + n] = torch.from_numpy(k).view(n, BS, HD)
    valid[i * NB:i * NB + n] = True
pool = net.Pool(K, K.clone(), valid, nb=NB)
s = torch.einsum("d,pd->p", torch.from_numpy(q), pool.means[0])
cs = net.centre_scores(s[None], pool)[0]

doc_of = {did: i for i, did in enumerate(ids)}
worst = 0.0
for hit in hits["dot-centred"]:
    p = doc_of[int(hit["doc_id"])] * NB + int(hit["token_start"]) // BS
    worst = max(worst, abs(float(hit["score"]) * HD ** 0.5 - float(cs[p])))
check(worst < 0.02, "training's centred scores equal the engine's (largest difference %.4f)" % worst)
best = hits["dot"][0]
check(int(best["token_start"]) == 0, "plain dot ranks a first block best")
best = hits["dot-centred"][0]
check(doc_of[int(best["doc_id"])] == 4 and int(best["token_start"]) == 2 * BS,
      "the centred score ranks the planted block best")
check(int(cs.argmax()) == 4 * NB + 2, "so does training's")

# the wiring: a model with route_centred selects the prompt's blocks by the
# centred scores (net.centre_scores), one without it by the plain ones
c = net.Config()
c.n_layers, c.d, c.ffn, c.n_heads, c.n_kv, c.hd, c.vocab = 2, 32, 64, 2, 1, HD, 256
torch.manual_seed(0)
model = net.Model(c).eval()
seen = []
orig = net.centre_scores


def recording(x, p):
    out = orig(x, p)
    seen.append((x.shape, out))
    return out


net.centre_scores = recording
tok = torch.randint(4, 200, (2, 12))
valid = torch.ones(2, 12, dtype=torch.bool)
plen = torch.tensor([8, 10])
sel = {}
with torch.no_grad():
    for centred in (False, True):
        model.route_centred = centred
        seen.clear()
        _, _, info = model.forward_query(tok, valid, plen, [pool], top_k=4)
        sel[centred] = info["sel_p"]
        prompt = [o for shape, o in seen if len(shape) == 3]
        if not centred:
            check(not seen, "plain routing does not centre")
        else:
            check(len(prompt) == 1 and prompt[0].shape == (2, 1, pool.P),
                  "centred routing centres the prompt's scores %s" % [sh for sh, _ in seen])
            want = prompt[0].topk(4, -1).indices.sort(-1).values if prompt else None
            check(want is not None and torch.equal(sel[True].sort(-1).values, want),
                  "the prompt selects the 4 best centred blocks")
check(not torch.equal(sel[False].sort(-1).values, sel[True].sort(-1).values),
      "the two select different blocks here")
net.centre_scores = orig

# memmodel.export_gguf declares the routing a checkpoint was trained with
from memmodel import export_gguf, gguf  # noqa: E402
c.vocab = 8192  # the bundled tokenizer's
big = net.Model(c)
with tempfile.TemporaryDirectory() as d:
    for centred, want in ((True, "dot-centred"), (False, "dot")):
        ck = os.path.join(d, "ck%d" % centred)
        os.makedirs(ck)
        net.save_ckpt(big, ck, {"config": c.to_dict(), "steps": 1, "args": {"route_centred": centred}})
        export_gguf.main([ck, os.path.join(d, "m.gguf"), "--wtype", "f32"])
        kv = gguf.GGUFReader(os.path.join(d, "m.gguf")).meta
        check(kv.get("msadb.routing.score") == want,
              "a checkpoint trained %s exports msadb.routing.score %s (%s)"
              % ("centred" if centred else "plain", want, kv.get("msadb.routing.score")))
done()
