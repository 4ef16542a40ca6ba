"""gpu_eval.py -- the held-out evaluation through the PyTorch model with
msadb's routing (mean-key score, max over the group's q heads and the
prompt's tokens, top-16 blocks per kv head; each generated token selects its
own), run on the GPU where 10M tokens of memory fit.  memmodel.train calls
gpu_eval() after training (--eval-gpu)."""
import json
import os
import time

import numpy as np

from . import net


def _ragged(z, name):
    t, o = z[name + "_tok"], z[name + "_off"]
    return [t[o[i]:o[i + 1]].astype(np.int64) for i in range(len(o) - 1)]


def encode_pool(model, docs, dev, batch_tokens=1 << 18):
    """Runs documents (token lists) through the model with document-wise
    positions; returns per memory layer (K, V) [kv, P, 64, hd] f16, block
    valid [P, 64], block -> document index [P], in document order."""
    import torch
    B = net.BLOCK
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
                # kept in f16 from the start (as msadb stores them): 10M tokens of six
                # memory layers fit an 80 GB card only so
                K = k.half().reshape(len(idx), kv, nb, B, hd).permute(1, 0, 2, 3, 4).reshape(kv, -1, B, hd)
                V = vv.half().reshape(len(idx), kv, nb, B, hd).permute(1, 0, 2, 3, 4).reshape(kv, -1, B, hd)
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
            # each layer's batches freed as soon as they are joined
            K = torch.cat(Ks[m], 1)
            Ks[m] = None
            K = K[:, perm]
            V = torch.cat(Vs[m], 1)
            Vs[m] = None
            out.append((K, V[:, perm]))
        return out, torch.cat(valids)[perm], doc[perm]


def _pools(kvs, valid, doc, nb, means_cache):
    pools = []
    for m, (K, V) in enumerate(kvs):
        if m not in means_cache:
            w = valid.float()
            # mean of the keys in f32, stored in f16 as msadb's summaries are
            means_cache[m] = ((K.float() * w[None, :, :, None]).sum(2) /
                              w.sum(1).clamp(min=1)[None, :, None]).half().float()
        p = net.Pool.__new__(net.Pool)
        p.K, p.V, p.valid, p.doc = K[:, :nb], V[:, :nb], valid[:nb], doc[:nb]
        p.means = means_cache[m][:, :nb]
        pools.append(p)
    return pools


def pad(seqs):
    """Token lists as (tokens [n, longest], valid mask), zero-padded."""
    tok = np.zeros((len(seqs), max(len(q) for q in seqs)), np.int64)
    val = np.zeros(tok.shape, bool)
    for i, q in enumerate(seqs):
        tok[i, :len(q)] = q
        val[i, :len(q)] = True
    return tok, val


def generate(model, qs, pools, dev, eos, top_k=16, max_new=10, batch=20, interleave=None,
             needle=None, routed=None, bias=None, margins=None):
    """Greedy answers (token lists) to questions qs (token lists with BOS).
    bias: (token, value) added to that token's logit for the first answer
    token only (msadb_ask_params.abstain_bias on the abstain answer's first
    token); margins (a list) gets, per question, that token's unbiased
    first-step logit minus the largest other logit (> 0: it would be drawn).
    interleave: (docs token lists) -> one round: the best document of the
    prompt pass (max routing score in the last memory layer) is put after
    BOS and routing runs again.  needle (each question's document index)
    and routed (a list): routed gets, per question, whether the last memory
    layer's selection for the prompt holds a block of that document."""
    import torch
    outs = []
    for s in range(0, len(qs), batch):
        chunk = [list(q) for q in qs[s:s + batch]]
        if interleave is not None and pools is not None:
            tok, val = pad(chunk)
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
        for step in range(max_new):
            tok, val = pad(seqs)
            with torch.no_grad():
                x, _, info = model.forward_query(torch.from_numpy(tok).to(dev), torch.from_numpy(val).to(dev),
                                                 torch.tensor(plen, device=dev), pools, top_k)
            if step == 0 and needle is not None and pools is not None:
                # the selection's documents [B, kv, k] against each question's needle
                sd = pools[-1].doc[info["sel_p"]]
                want = torch.tensor(needle[s:s + batch], device=dev)[:, None, None]
                routed += [bool(r) if n >= 0 else None for r, n in
                           zip((sd == want).flatten(1).any(1).tolist(), needle[s:s + batch])]
            with torch.no_grad():
                last = torch.tensor([len(q) - 1 for q in seqs], device=dev)
                h = x[torch.arange(len(seqs), device=dev), last]
                lg = model.logits(h[:, None])[:, 0].float()
                if step == 0 and (bias is not None or margins is not None):
                    bt = bias[0] if bias is not None else None
                    if margins is not None:
                        other = lg.clone()
                        other[:, bt] = -float("inf")
                        margins += (lg[:, bt] - other.max(-1).values).tolist()
                    if bias is not None:
                        lg[:, bt] += bias[1]
                nxt = lg.argmax(-1).cpu().numpy()
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


def gpu_eval(model, path, dev, deadline, log=print, top_k=16):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    z = np.load(path)
    eos = int(z["eos"])
    docs = _ragged(z, "doc")
    qs, ans = _ragged(z, "q"), _ragged(z, "a")
    res = {"mode": "pytorch-gpu, msadb routing (mean key, top-%d blocks/kv head), f16 K/V" % top_k,
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
        outs = generate(model, qs, pools, dev, eos, top_k=top_k)
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
        off = acc(generate(model, mq, pools, dev, eos, top_k=top_k), ma)
        on = acc(generate(model, mq, pools, dev, eos, top_k=top_k, interleave=mdocs), ma)
        res["multihop"] = {"interleave_off": off, "interleave_on": on, "pairs": len(mq)}
        log({"event": "eval", "multihop": res["multihop"]})
    return res


def margin_quantiles(cells, margins):
    """Per cell: quantiles (10/25/50/75/90%) of the abstain margins."""
    out = {}
    for c in sorted(set(cells)):
        m = np.array([x for k, x in zip(cells, margins) if k == c])
        out[c] = [round(float(v), 2) for v in np.quantile(m, [0.1, 0.25, 0.5, 0.75, 0.9])]
    return out


def heldout_gpu(model, path, dev, deadline, log=print, top_k=16, interleave=False,
                context_needle=False, abstain_biases=()):
    """memmodel.heldout's evaluation through PyTorch (the arrays `memmodel.heldout
    arrays` writes, heldout.json beside them): every question whose needle
    document is in memory at each size, and all of them with no memory,
    scored by heldout.score (per cell, kind and needle position).
    interleave: one interleave round (msadb_ask_params.interleave = 1);
    context_needle: a diagnosis, not a mode of msadb: each question gets its
    own needle document in front of it (memory still on), the most an
    interleave round that always pulls the right document could give.
    abstain_biases: at each size the questions are asked again with each of
    these values added to the first answer token's logit of the abstain
    answer (res["sizes"][size]["abstain_bias"][value]: the cells), and the
    unbiased margins of that token are summarized (quantiles per cell)."""
    import torch
    from . import heldout
    torch.backends.cuda.matmul.allow_tf32 = False
    z = np.load(path)
    with open(os.path.join(os.path.dirname(os.path.abspath(path)), "heldout.json")) as f:
        qs = json.load(f)["questions"]
    eos = int(z["eos"])
    docs = _ragged(z, "doc")
    qtok, atok = _ragged(z, "q"), _ragged(z, "a")
    abstain = [int(t) for t in z["abstain"]]

    def as_text(outs, sel):
        """Generated tokens as the C evaluation's strings: the answer, the
        abstain form, or the tokens themselves (wrong either way)."""
        return [qs[i]["answer"] if o == list(atok[i]) else
                heldout.mmd.ABSTAIN if o == abstain else "?" + " ".join(map(str, o))
                for o, i in zip(outs, sel)]

    res = {"mode": "pytorch-gpu, msadb routing (mean key%s, top-%d blocks/kv head), f16 K/V%s%s" % (
        ", learned router" if model.router is not None else "", top_k,
        ", one interleave round" if interleave else "",
        ", the needle document in the context" if context_needle else ""), "sizes": {}}
    allq = list(range(len(qs)))
    outs = generate(model, [qtok[i] for i in allq], None, dev, eos)
    res["no_memory"] = heldout.score(qs, as_text(outs, allq))
    log({"event": "heldout", "what": "no_memory", "cells": res["no_memory"]["cells"]})
    t0 = time.time()
    kvs, valid, doc = encode_pool(model, docs, dev)
    res["encode_seconds"] = round(time.time() - t0, 1)
    cum_blocks = np.cumsum(torch.bincount(doc, minlength=len(docs)).cpu().numpy())
    mc = {}
    for name, nd in zip(z["size_names"], z["size_docs"]):
        if time.time() > deadline:
            res["sizes"][str(name)] = "skipped: time"
            continue
        pools = _pools(kvs, valid, doc, int(cum_blocks[int(nd) - 1]), mc)
        sel = [i for i in allq if qs[i]["doc"] < int(nd)]
        routed = []
        qsel = [qtok[i] for i in sel]
        if context_needle:
            qsel = [[q[0]] + list(docs[qs[i]["doc"]]) + list(q[1:]) if qs[i]["doc"] >= 0 else q
                    for q, i in zip(qsel, sel)]
        margins = [] if abstain_biases else None
        outs = generate(model, qsel, pools, dev, eos, top_k=top_k,
                        interleave=docs if interleave else None,
                        needle=[qs[i]["doc"] for i in sel], routed=routed,
                        bias=(abstain[0], 0.0) if abstain_biases else None, margins=margins)
        r = heldout.score([qs[i] for i in sel], as_text(outs, sel), routed)
        res["sizes"][str(name)] = dict(r, docs=int(nd))
        log({"event": "heldout", "size": str(name), "cells": r["cells"]})
        if abstain_biases:
            res["sizes"][str(name)]["abstain_margin"] = margin_quantiles(
                [qs[i]["cell"] for i in sel], margins)
            curve = {}
            for b in abstain_biases:
                ob = generate(model, qsel, pools, dev, eos, top_k=top_k,
                              interleave=docs if interleave else None, bias=(abstain[0], float(b)))
                curve["%g" % b] = heldout.score([qs[i] for i in sel], as_text(ob, sel))["cells"]
                log({"event": "abstain_bias", "size": str(name), "bias": b, "cells": curve["%g" % b]})
            res["sizes"][str(name)]["abstain_bias"] = curve
    return res


def main(argv=None):
    """python3 -m memmodel.gpu_eval --model M.gguf --arrays NPZ --out RESULT.json
    [--time S]: an evaluation of a GGUF file on its own (the GPU when there is
    one), without a training run around it: heldout_gpu for `memmodel.heldout
    arrays`' heldout_gpu.npz, gpu_eval for `memmodel.evaluate prepare`'s
    eval_gpu.npz (the one with a multi-hop haystack, mh_tok)."""
    import argparse
    import torch
    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file (memmodel.export_gguf's layout)")
    ap.add_argument("--arrays", required=True, help="heldout_gpu.npz or eval_gpu.npz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--top-k", type=int, default=16,
                    help="blocks each kv head selects (msadb's default 16)")
    ap.add_argument("--interleave", action="store_true",
                    help="held-out: one interleave round (the best document before the question)")
    ap.add_argument("--context-needle", action="store_true",
                    help="held-out diagnosis: each question's needle document before it")
    ap.add_argument("--abstain-bias", default="",
                    help="held-out: comma-separated logit biases on the abstain answer's first "
                         "token, each a further pass at every size (e.g. -4,-2,0,2)")
    ap.add_argument("--time", type=float, default=540.0,
                    help="seconds after which the remaining sizes are skipped")
    args = ap.parse_args(argv)
    t0 = time.time()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = net.torch_from_gguf(args.model).to(dev).eval()
    with torch.no_grad():
        kw = {}
        if "mh_tok" in np.load(args.arrays).files:
            run = gpu_eval
        else:
            run = heldout_gpu
            kw = dict(interleave=args.interleave, context_needle=args.context_needle,
                      abstain_biases=[float(b) for b in args.abstain_bias.split(",") if b])
        res = run(model, args.arrays, dev, deadline=t0 + args.time,
                  log=lambda x: print(json.dumps(x), flush=True), top_k=args.top_k, **kw)
    res.update(model_file=os.path.basename(args.model), device=str(dev),
               seconds=round(time.time() - t0, 1))
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(dev)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
