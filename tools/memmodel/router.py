"""router.py -- a learned routing key for a trained model (MSA's router;
issue 17 item 3): per memory layer and kv head an hd x hd matrix R that a
question's query passes through before it meets the blocks' mean keys, so a
block scores max over the prompt's tokens and the group's q heads of
(q R) . mean(block keys).  The mean is linear in the keys, so this equals
q . mean(R k), every key mapped by R and then pooled: the store's mean
summary would serve unchanged, and only the query side is new.

Trained with the model frozen, from R = identity (the model's own routing),
on memory batches of the training side (memmodel.train's Batcher over a
`memmodel.data build` directory, whose forms and slot words are kept apart
from the held-out evaluation's): the loss is the prompt's routing loss of
memmodel.net (each block holding the answer's value against every other
block of the batch and of the last --bank batches, a softplus of the
log-sum-exp margin).  Unanswerable questions have no gold block and are left
out of the loss.

  python3 -m memmodel.router train --model M.gguf --data TRAIN --out DIR
      [--time 240] [--heldout heldout_gpu.npz]

writes DIR/router.npy ([memory layers, kv, hd, hd] f32), DIR/log.jsonl, and
with --heldout the held-out evaluation of the model with and without the
router in one run (DIR/heldout-mean.json, DIR/heldout-router.json; routing
recall per cell: a block of the needle document in the last memory layer's
selection).

It is a measurement, not a part of msadb: it did not beat the mean key on
the held-out evaluation (docs/model.md section 10), so no GGUF file or store
holds a router."""
import argparse
import collections
import json
import math
import os
import queue
import sys
import threading
import time

import numpy as np


def _capture_queries(model):
    """Wraps model.route_scores so each call's (layer, query) is kept in
    the returned dict (the queries as forward_query computed them, with the
    selection of the router in force)."""
    seen = {}
    orig = model.route_scores

    def rec(q, means, m=None):
        seen[m] = q.detach()
        return orig(q, means, m)
    model.route_scores = rec
    return seen


def routing_loss_p(model, q, means, m, plen, gold, keep):
    """The prompt's routing loss of one memory layer with the router
    (memmodel.net's prompt margin, over the questions kept), and its recall
    at 16 (a gold block among any kv head's top 16 prompt scores, over every
    block given)."""
    import torch
    from . import net
    s = model.route_scores(q, means, m)  # [B, kv, T, P]
    T = s.shape[2]
    sp = net.prompt_scores(s, torch.arange(T, device=s.device)[None, :] < plen[:, None])
    w = keep.float()
    loss = (net.prompt_margin(sp, gold, model.c.hd) * w).sum() / w.sum().clamp(min=1)
    top = sp.topk(min(16, sp.shape[-1]), -1).indices  # [B, kv, 16]
    hit = (top[..., None] == gold[:, None, None, :]).flatten(1).any(1)
    rec = float(((hit.float() * w).sum() / w.sum().clamp(min=1)).item())
    return loss, rec


def cmd_train(args):
    import torch
    from . import gpu_eval, net, train as tr
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "log.jsonl"), "a")

    def log(d):
        print(json.dumps(d), flush=True)
        logf.write(json.dumps(d) + "\n")
        logf.flush()

    model = net.torch_from_gguf(args.model).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    c = model.c
    nm = len(c.mem_layers())
    R = torch.eye(c.hd, device=dev).repeat(nm, c.n_kv, 1, 1).contiguous().requires_grad_(True)
    eye = torch.eye(c.hd, device=dev)
    seen = _capture_queries(model)

    lm = np.fromfile(os.path.join(args.data, "train_lm.u16"), dtype=np.uint16)
    facts = tr.Facts(os.path.join(args.data, "facts_train.npz"))
    n_val = 2000
    batcher = tr.Batcher(lm, facts, facts.n - n_val, args.seed, Ld=1024, dense=args.dense)
    val_batcher = tr.Batcher(lm, facts, facts.n, args.seed + 1, Ld=1024, dense=args.dense)
    qb = queue.Queue(maxsize=6)
    stop = {"now": False}

    def producer():
        rng = np.random.default_rng(args.seed + 99)
        while not stop["now"]:
            Ld, nq, nd = tr.window_shape(args, rng)
            qb.put(batcher.mem_batch(nq, nq, nd, Ld=Ld))

    threading.Thread(target=producer, daemon=True).start()
    vrng = np.random.default_rng(args.seed + 98)
    val_batches = []
    for _ in range(args.val_batches):
        Ld, nq, nd = tr.window_shape(args, vrng)
        val_batches.append(val_batcher.mem_batch(nq, nq, nd, lo=facts.n - n_val, Ld=Ld))

    def step_loss(b, bank, grad):
        bd = tr.to_dev(b, dev)
        with torch.no_grad(), net.amp(dev):
            _, caps = model.forward_plain(bd["docs"], capture=True)
            pools = net.build_pools(model, caps)
            model.forward_query(bd["tok"], bd["valid"], bd["plen"], pools, 16)
        keep = ~bd["unans"]
        loss, recs = 0.0, []
        with torch.set_grad_enabled(grad):
            for m in range(nm):
                means = pools[m].means.half().float()  # stored in f16, as msadb's summaries
                allm = torch.cat([means] + list(bank[m]), 1) if bank else means
                lm_, rc = routing_loss_p(model, seen[m], allm, m, bd["plen"], bd["gold_p"], keep)
                loss = loss + lm_ / nm
                recs.append(rc)
        return loss, recs, [p.means.half().float().detach() for p in pools]

    def validate():
        model.router = R.detach()
        tot, recs = 0.0, []
        vbank = [collections.deque(maxlen=args.bank) for _ in range(nm)]
        for b in val_batches:
            loss, rc, means = step_loss(b, vbank if vbank[0] else None, False)
            tot += float(loss)
            recs.append(rc)
            for m in range(nm):
                vbank[m].append(means[m])
        return tot / len(val_batches), np.mean(recs, 0).round(4).tolist()

    model.router = None
    v0 = validate()
    log({"event": "start", "model": os.path.basename(args.model), "val_loss": v0[0],
         "val_recall16": v0[1], "args": vars(args)})
    opt = torch.optim.Adam([R], lr=args.lr)
    bank = [collections.deque(maxlen=args.bank) for _ in range(nm)]
    t0, step = time.time(), 0
    while time.time() - t0 < args.time:
        b = qb.get()
        model.router = R
        frac = (time.time() - t0) / args.time
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
        loss, recs, means = step_loss(b, bank if bank[0] else None, True)
        loss = loss + args.reg * ((R - eye) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for m in range(nm):
            bank[m].append(means[m])
        step += 1
        if step % 25 == 0:
            log({"event": "step", "step": step, "loss": round(float(loss.detach()), 4),
                 "recall16": [round(r, 3) for r in recs], "seconds": round(time.time() - t0, 1)})
        if step % 200 == 0:
            vl, vr = validate()
            log({"event": "val", "step": step, "val_loss": vl, "val_recall16": vr})
    stop["now"] = True
    vl, vr = validate()
    log({"event": "end", "steps": step, "seconds": round(time.time() - t0, 1), "val_loss": vl,
         "val_recall16": vr, "dist_from_identity": [round(float((R[m] - eye).norm()), 3)
                                                     for m in range(nm)]})
    np.save(os.path.join(args.out, "router.npy"), R.detach().float().cpu().numpy())
    del model.route_scores  # the class's own again
    if args.heldout:
        for name, r in (("mean", None), ("router", R.detach())):
            model.router = r
            with torch.no_grad():
                res = gpu_eval.heldout_gpu(model, args.heldout, dev, deadline=time.time() + 400,
                                           log=log)
            res.update(model_file=os.path.basename(args.model), router=name)
            with open(os.path.join(args.out, "heldout-%s.json" % name), "w") as f:
                json.dump(res, f, indent=1)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="a learned routing key for a trained model")
    ap.add_argument("cmd", choices=["train"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a memmodel.data build directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout", default="", help="heldout_gpu.npz to evaluate on after")
    ap.add_argument("--time", type=float, default=240, help="seconds of training")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--reg", type=float, default=0.0, help="weight of |R - I|^2")
    ap.add_argument("--bank", type=int, default=8, help="earlier batches' blocks as negatives")
    ap.add_argument("--mem-batch", type=int, default=96,
                    help="questions of a 1024-token window batch (train.window_shape)")
    ap.add_argument("--doc-lens", default="512,1024,2048,4096")
    ap.add_argument("--decoys", type=int, default=384)
    ap.add_argument("--dense", type=float, default=0.5)
    ap.add_argument("--val-batches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1270)
    ap.set_defaults(doc_len=1024)
    args = ap.parse_args(argv)
    return cmd_train(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
