#!/usr/bin/env python3
"""memmodel.train -- trains msadb's own memory model (PyTorch, GPU).

    PYTHONPATH=tools python3 -m memmodel.train --data .train-data --out OUTDIR \
        [--seed 1234] [--time-a 60 --time-b 120 --time-c 180] \
        [--steps-a N --steps-b N --steps-c N]   (fixed step counts instead of seconds)
        [--qa-frac F --qa-frac-mem F] [--resume CKPT_DIR]
        [--eval-gpu .train-data/eval_gpu.npz] [--stop-after SECONDS]
    PYTHONPATH=tools python3 -m memmodel.train --continue OUTDIR --out OUTDIR2 --data DIR
        (goes on from a command ended by --stop-after, with its options)

The shipped model's exact commands are in docs/model.md.

Inputs are the arrays tools/memmodel/data.py writes (tokens only; no
tokenizer is needed here).  The model is the llama architecture exactly as
msadb's runtime runs it (docs/runtime.md): RMSNorm, RoPE on consecutive
pairs (2i, 2i+1) (GGUF-native, so weights export unpermuted), grouped-query
attention, SwiGLU, tied output embedding.

Phases (each ends by writing the checkpoint to OUTDIR):
 a  language modelling on natural text (1024-token windows), and/or
    (--qa-frac) dense in-context question answering: sequences holding 12
    facts among text chunks, then 8 questions with their answers (answer
    tokens get their own loss term): this is where a model this small
    learns to copy, which memory reading then reuses (docs/model.md);
 b  memory training with routing and the gold block forced into every
    selection ("oracle" inclusion): memory documents (512-token windows of
    natural text with facts inserted) are encoded by the model itself with
    document-wise positions (0..511); their memory-layer keys/values form
    one block pool shared by the whole batch (every question sees every
    document: the other examples' facts are hard distractors); the
    question's tokens attend to [their causal local keys] + [the keys of
    the selected memory blocks] under one softmax;
 c  the same without forcing: exactly msadb's selection (below).
Routing = msadb's default query (libmsadb/query/query.c): per memory layer and kv
head, a 64-token block's score is max over the group's q heads and the
query tokens of q . mean(block keys); the prompt's tokens share one top-k
selection (max over all prompt tokens: msadb_llm_ask runs the prompt in one
pass), each answer token selects its own top-k (generation runs one token
per pass).  The selection is not differentiable; gradient flows through
attention over the selected blocks, and an auxiliary loss (softplus of
logsumexp(non-gold scores) - gold score, per layer and kv head) pushes the
gold block's routing score above all others (for a multi-hop question's
prompt both hops' blocks, or with --mh-route staged the first hop's without
context and the second hop's with the first in context; with --mh-followup a
multi-hop question without context answers "ask: " and the second hop as its
own question, data.followup_answer).  Memory K/V keep their
gradient (end-to-end) unless --detach-memory.
Losses: answer tokens (+EOS) cross-entropy, LM on memory documents (weight
--lm-weight), routing (weight --aux-weight).  A fraction of the batches put
documents in the context before the question (1-2 windows, the gold one
among them; with or without memory), which is what RAG prompts, a
truncated-haystack prompt and msadb's interleave loop give the model.
"""
import argparse
import json
import math
import os
import queue
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from .gpu_eval import gpu_eval, heldout_gpu
from .net import (BLOCK, Config, Model, amp, build_pools, config_of, grow, load_state,
                  parse_shape, widen,
                  parse_layout, save_ckpt, torch_from_gguf)

# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

class Facts:
    def __init__(self, path):
        z = np.load(path)
        self.__dict__.update({k: z[k] for k in z.files})
        self.n = len(self.q_off) - 1
        self.first_fact = np.concatenate([[0], np.cumsum(self.n_facts.astype(np.int64))])
        # single-hop examples with one fact stored, by kind (dense distractors)
        one = self.n_facts == 1
        self.by_kind = {int(k): np.flatnonzero(one & (self.kind == k)) for k in np.unique(self.kind)}
        # near neighbours of an example's fact and unanswerable flags (absent from
        # the arrays of earlier builds: none)
        if "n_dist" not in z.files:
            self.n_dist = np.zeros(self.n, np.int8)
            self.dist_off, self.dist_keyh = np.zeros(1, np.int64), np.zeros(0, np.uint32)
        if "unans" not in z.files:
            self.unans = np.zeros(self.n, bool)
        # follow-up answers of multi-hop examples (data.followup_answer; absent
        # from the arrays of earlier builds: none)
        if "fu_off" not in z.files:
            self.fu_tok, self.fu_off = np.zeros(0, np.uint16), np.zeros(self.n + 1, np.int64)
        self.first_dist = np.concatenate([[0], np.cumsum(self.n_dist.astype(np.int64))])

    def dists(self, i):
        """Example i's near neighbours: (fact ids, vstart 0) and their key hashes."""
        j0, j1 = self.first_dist[i], self.first_dist[i + 1]
        fs = [(self.dist_tok[self.dist_off[j]:self.dist_off[j + 1]].astype(np.int64), 0)
              for j in range(j0, j1)]
        return fs, set(int(h) for h in self.dist_keyh[j0:j1])

    def followup(self, i):
        """Example i's follow-up answer tokens (+ EOS); empty for a single hop."""
        return self.fu_tok[self.fu_off[i]:self.fu_off[i + 1]].astype(np.int64)

    def example(self, i):
        f0 = self.first_fact[i]
        facts = [(self.fact_tok[self.fact_off[j]:self.fact_off[j + 1]].astype(np.int64),
                  int(self.fact_vstart[j])) for j in range(f0, f0 + self.n_facts[i])]
        q = self.q_tok[self.q_off[i]:self.q_off[i + 1]].astype(np.int64)
        a = self.a_tok[self.a_off[i]:self.a_off[i + 1]].astype(np.int64)
        return facts, q, a, set(int(h) for h in self.key_hash[i] if h), int(self.kind[i])


class Batcher:
    """Builds memory batches on the CPU (numpy), in a background thread."""

    def __init__(self, lm, facts, n_train_ex, seed, Ld=256, dense=0.0, unans_share=-1.0,
                 mh_route="both", mh_followup=False):
        """dense: the share of a memory batch's questions whose document
        also holds 2-4 other facts of the same kind (the distractors a
        dense haystack puts next to the answer).  unans_share: the share of
        unanswerable questions drawn (examples rejected to reach it; below 0:
        the data's own share).  An example's near neighbours (Facts.dists)
        always join its document.  mh_route: the gold blocks of a multi-hop
        question's prompt routing: "both" hops' blocks, or "staged": the
        first hop's without context (what an interleave round must pull) and
        the second hop's with the first hop's document in the context.
        mh_followup: a multi-hop question with no document in its context
        answers its follow-up (data.followup_answer: the second hop as a
        question, its room read from memory), and its answer tokens draw on
        the first hop's blocks; with the first hop's document in the context
        it answers the value, as before."""
        if mh_route not in ("both", "staged"):
            raise ValueError("mh_route: 'both' or 'staged', not %r" % (mh_route,))
        self.lm, self.facts, self.n_ex, self.Ld = lm, facts, n_train_ex, Ld
        self.dense, self.mh_route, self.mh_followup = dense, mh_route, mh_followup
        self.rng = np.random.default_rng(seed)
        self.keep = (1.0, 1.0)  # probability of keeping an (answerable, unanswerable) draw
        s = float(np.mean(facts.unans[:n_train_ex])) if n_train_ex else 0.0
        if unans_share >= 0 and 0 < s < 1:
            t = min(max(unans_share, 1e-6), 1 - 1e-6)
            r = t * (1 - s) / (s * (1 - t))
            self.keep = (1.0, r) if r <= 1 else (1.0 / r, 1.0)

    def dense_decoys(self, e, used, hi):
        """Facts of 2-4 other examples of e's kind (one stored fact, keys
        not in used, index below hi)."""
        out = []
        f0 = self.facts
        pool = f0.by_kind.get(e[4]) if len(e[0]) == 1 else None
        if pool is None or not len(pool):
            return out
        for _ in range(int(self.rng.integers(2, 5)) * 3):
            if len(out) >= 4:
                break
            i = int(pool[int(self.rng.integers(len(pool)))])
            if i >= hi:
                continue
            d = f0.example(i)
            if d[3] & used:
                continue
            used |= d[3]
            out += d[0]
        return out

    def window(self, n):
        o = int(self.rng.integers(0, len(self.lm) - n - 1))
        return self.lm[o:o + n].astype(np.int64)

    def lm_batch(self, B, T):
        o = self.rng.integers(0, len(self.lm) - T - 2, size=B)
        x = np.stack([self.lm[i:i + T + 1] for i in o]).astype(np.int64)
        return {"kind": "lm", "x": x}

    def qa_batch(self, B, T, n_ex=12, n_q=8):
        """Dense in-context question answering mixed into language modelling:
        each sequence is BOS, then natural-text chunks with the facts of
        n_ex examples among them, then questions about n_q of those facts,
        each followed by its answer and EOS and more text.  Returns tokens
        [B, T+1] and a mask of the answer tokens (targets)."""
        rng = self.rng
        x = np.zeros((B, T + 1), np.int64)
        am = np.zeros((B, T + 1), bool)
        for r in range(B):
            exs, used = [], set()
            while len(exs) < n_ex:
                e = self.facts.example(int(rng.integers(0, self.n_ex)))
                if e[3] & used:
                    continue
                used |= e[3]
                exs.append(e)
            segs = [f for e in exs for f, _ in e[0]]
            segs += [self.window(int(rng.integers(20, 50))) for _ in range(n_ex)]
            order = rng.permutation(len(segs))
            seq = [np.array([1], np.int64)] + [segs[i] for i in order]
            mask = [np.zeros(len(s), bool) for s in seq]
            for i in rng.choice(n_ex, n_q, replace=False):
                _, q, a, _, _ = exs[i]
                seq += [q[1:], a, self.window(int(rng.integers(5, 30)))]
                mask += [np.zeros(len(q) - 1, bool), np.ones(len(a), bool),
                         np.zeros(len(seq[-1]), bool)]
            s_ = np.concatenate(seq)[:T + 1]
            m_ = np.concatenate(mask)[:T + 1]
            x[r, :len(s_)] = s_
            am[r, :len(m_)] = m_
            if len(s_) < T + 1:  # pad with text
                x[r, len(s_):] = self.window(T + 1 - len(s_))
        return {"kind": "qa", "x": x, "amask": am}

    def mem_batch(self, B, n_docs, n_decoy, context=False, lo=0, hi=None, single_only=False,
                  Ld=None):
        """A batch of B questions over a shared pool of n_docs documents of
        Ld tokens (the batcher's own length by default).
        context: put 1-2 documents (the gold one among them) before the
        question; multi-hop examples then get the first-hop document in the
        context and the second hop only in memory (interleave)."""
        hi = hi or self.n_ex
        if Ld:
            self.Ld = Ld
        exs, decoys, used = self.draw(B, n_decoy, lo, hi, single_only)
        docs_items = self.assign(exs, decoys, used, n_docs, lo, hi)
        docs, where = self.write_docs(docs_items)
        return self.questions(exs, docs, where, context)

    def draw(self, B, n_decoy, lo, hi, single_only):
        """B examples and the facts of about n_decoy others, no key shared;
        (examples, decoy facts, keys used)."""
        rng = self.rng
        used, exs = set(), []
        while len(exs) < B:
            i = int(rng.integers(lo, hi))
            if rng.random() >= self.keep[int(self.facts.unans[i])]:
                continue
            e = self.facts.example(i)
            dists, dkeys = self.facts.dists(i)
            if (e[3] | dkeys) & used or (single_only and len(e[0]) > 1):
                continue
            used |= e[3] | dkeys
            exs.append(e + (dists, bool(self.facts.unans[i]), self.facts.followup(i)))
        decoys = []
        tries = 0
        while len(decoys) < n_decoy and tries < 4 * n_decoy:
            tries += 1
            e = self.facts.example(int(rng.integers(lo, hi)))
            if e[3] & used:
                continue
            used |= e[3]
            decoys += e[0]
        return exs, decoys, used

    def assign(self, exs, decoys, used, n_docs, lo, hi):
        """The facts each document holds: the examples' (two hops of one
        question in different documents), dense distractors in their
        example's document, decoys anywhere; at most half a window each."""
        rng, Ld = self.rng, self.Ld
        # place facts: (fact ids, vstart, owner example or -1, hop index, example
        # whose document a dense distractor joins or -1)
        items = []
        for bi, e in enumerate(exs):
            for hop, (f, vs) in enumerate(e[0]):
                items.append((f, vs, bi, hop, -1))
            items += [(f, vs, -1, 0, bi) for f, vs in e[5]]
            if self.dense and lo == 0 and rng.random() < self.dense:
                items += [(f, vs, -1, 0, bi) for f, vs in self.dense_decoys(e, used, hi)]
        for f, vs in decoys:
            items.append((f, vs, -1, 0, -1))
        docs_items = [[] for _ in range(n_docs)]
        doc_of = {}
        for it in items:
            for _ in range(20):
                d = doc_of.get(it[4], -1) if it[4] >= 0 else -1
                if d < 0:
                    d = int(rng.integers(n_docs))
                tot = sum(len(x[0]) for x in docs_items[d]) + len(it[0])
                # the two hops of one question go to different documents
                if tot <= Ld // 2 and not (it[2] >= 0 and any(x[2] == it[2] for x in docs_items[d])):
                    docs_items[d].append(it)
                    if it[2] >= 0 and it[3] == 0:
                        doc_of[it[2]] = d
                    break
                if it[4] >= 0:
                    break  # its example's document is full: leave the distractor out
        return docs_items

    def write_docs(self, docs_items):
        """Windows of natural text with each document's facts at random
        offsets; (docs [n, Ld], where[(example, hop)] = (doc, its value's
        pool blocks))."""
        rng, Ld, n_docs = self.rng, self.Ld, len(docs_items)
        where = {}
        docs = np.zeros((n_docs, Ld), np.int64)
        for d in range(n_docs):
            its = docs_items[d]
            tot = sum(len(x[0]) for x in its)
            base = self.window(Ld)
            cuts = np.sort(rng.integers(0, Ld - tot + 1, size=len(its)))
            order = rng.permutation(len(its))
            out, prev = [], 0
            for c, j in zip(cuts, order):
                out.append(base[prev:c])
                start = sum(len(x) for x in out)
                f, vs, owner, hop, _ = its[j]
                out.append(f)
                if owner >= 0:
                    # blocks holding the value's tokens (value up to the '.')
                    v0 = start + vs
                    v1 = start + len(f) - 2
                    where[(owner, hop)] = (d, sorted({(d * Ld + v0) // BLOCK,
                                                      (d * Ld + max(v0, v1)) // BLOCK}))
                prev = c
            out.append(base[prev:])
            docs[d] = np.concatenate(out)[:Ld]
        return docs, where

    def questions(self, exs, docs, where, context):
        """The batch: question (+ context documents) and answer sequences,
        their gold blocks."""
        rng, Ld, B, n_docs = self.rng, self.Ld, len(exs), len(docs)
        # question sequences
        seqs, plens, gp, ga = [], [], [], []
        for bi, e in enumerate(exs):
            facts, q, a = e[:3]
            nh = len(facts)
            gold_all = sorted({b for h in range(nh) if (bi, h) in where for b in where[(bi, h)][1]})
            gold_ans = where.get((bi, nh - 1), (0, []))[1]
            if nh > 1 and self.mh_route == "staged":
                gold_all = where.get((bi, nh - 1 if context else 0), (0, []))[1]
            if nh > 1 and self.mh_followup and not context and len(e[7]):
                a = e[7]
                gold_ans = where.get((bi, 0), (0, []))[1]
            if not gold_all or not gold_ans:
                gold_all = gold_all or [0]
                gold_ans = gold_ans or gold_all
            prompt = [q]
            if context:
                hop_doc = where.get((bi, 0), (None,))[0]
                cds = [hop_doc] if hop_doc is not None else []
                # a second document only while two fit the RoPE table (8192 positions)
                for _ in range(int(rng.integers(0, 2)) if 2 * Ld + 64 <= 4096 else 0):
                    cds.append(int(rng.integers(n_docs)))
                if nh > 1:
                    d2 = where.get((bi, 1), (None,))[0]
                    cds = [d for d in cds if d != d2]
                rng.shuffle(cds)
                ctx = [docs[d] for d in cds]
                prompt = [q[:1]] + ctx + [q[1:]]
            p = np.concatenate(prompt)
            seqs.append(np.concatenate([p, a]))
            plens.append(len(p))
            gp.append(gold_all)
            ga.append(gold_ans)
        T = max(len(s) for s in seqs)
        tok = np.zeros((B, T), np.int64)
        val = np.zeros((B, T), bool)
        for i, s in enumerate(seqs):
            tok[i, :len(s)] = s
            val[i, :len(s)] = True
        ng = max(len(g) for g in gp)
        nga = max(len(g) for g in ga)
        gpa = np.array([g + [g[0]] * (ng - len(g)) for g in gp], np.int64)
        gaa = np.array([g + [g[0]] * (nga - len(g)) for g in ga], np.int64)
        return {"kind": "mem", "docs": docs, "tok": tok, "valid": val,
                "plen": np.array(plens, np.int64), "gold_p": gpa, "gold_a": gaa,
                "context": context, "unans": np.array([e[6] for e in exs], bool)}


def to_dev(b, dev):
    return {k: (torch.from_numpy(v).to(dev, non_blocking=True) if isinstance(v, np.ndarray) else v)
            for k, v in b.items()}


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------

def answer_loss(model, x, tok, valid, plen):
    """CE on the answer tokens (+EOS): predictions at positions plen-1 .. len-2."""
    logits = model.logits(x).float()
    B, T = tok.shape
    t = torch.arange(T, device=tok.device)
    lens = valid.sum(1)
    m = (t[None, :] >= (plen - 1)[:, None]) & (t[None, :] < (lens - 1)[:, None])
    tgt = torch.roll(tok, -1, 1)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
    ce = ce.view(B, T)
    loss = (ce * m).sum() / m.sum()
    pred = logits.argmax(-1)
    okv = ((pred == tgt) | ~m).all(1)
    # each question's first answer token as predicted (abstentions, validate_tune)
    first = pred.gather(1, (plen - 1).clamp(min=0)[:, None])[:, 0]
    return loss, okv.float().mean(), {"ok": okv, "first": first}


def mem_step(model, b, args, oracle, use_memory=True):
    docs = b["docs"]
    xd, caps = model.forward_plain(docs, capture=True)
    lm = torch.zeros((), device=docs.device)
    if args.lm_weight > 0:
        # LM loss on a quarter of the documents (the output head is costly)
        n4 = max(1, docs.shape[0] // 4)
        lg = model.logits(xd[:n4, :-1]).float()
        lm = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), docs[:n4, 1:].reshape(-1))
    pools = build_pools(model, caps) if use_memory else None
    x, aux, info = model.forward_query(b["tok"], b["valid"], b["plen"], pools, args.top_k,
                                       b["gold_p"], b["gold_a"], oracle=oracle,
                                       aux=use_memory and args.aux_weight > 0,
                                       detach_pool=args.detach_memory)
    al, acc, per = answer_loss(model, x, b["tok"], b["valid"], b["plen"])
    loss = al + args.lm_weight * lm + args.aux_weight * aux
    return loss, {"ans": al.item(), "acc": acc.item(), "lm": lm.item(), "aux": float(aux.detach()),
                  "recall": float(np.mean(info["recall"])) if info["recall"] else -1,
                  "per": per}


def lm_step(model, b):
    x = b["x"]
    h, _ = model.forward_plain(x[:, :-1])
    lg = model.logits(h).float()
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
    loss = ce.mean()
    st = {"lm": loss.item()}
    if "amask" in b:
        m = b["amask"][:, 1:].reshape(-1).float()
        al = (ce * m).sum() / m.sum().clamp(min=1)
        ok = (lg.argmax(-1).reshape(-1) == x[:, 1:].reshape(-1)).float()
        st["qa_ans"] = al.item()
        st["qa_tok_acc"] = ((ok * m).sum() / m.sum().clamp(min=1)).item()
        loss = loss + al
    return loss, st


@torch.no_grad()
def val_lm(model, val, dev, T=1024):
    n = (len(val) - 1) // T
    if n == 0:
        return float("nan")
    x = torch.from_numpy(val[:n * T + 1].astype(np.int64))
    xs = torch.stack([x[i * T:(i + 1) * T + 1] for i in range(n)]).to(dev)
    tot = 0.0
    for i in range(0, n, 16):
        with amp(dev):
            h, _ = model.forward_plain(xs[i:i + 16, :-1])
            lg = model.logits(h).float()
        tot += F.cross_entropy(lg.reshape(-1, lg.shape[-1]), xs[i:i + 16, 1:].reshape(-1),
                               reduction="sum").item()
    return tot / (n * T)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def parse_args(argv=None):
    """The options; with --continue, the stopped command's own (this command's
    --out, --stop-after*, --eval-* and --data apply)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".train-data")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--time-a", type=float, default=60)
    ap.add_argument("--time-b", type=float, default=120)
    ap.add_argument("--time-c", type=float, default=180)
    ap.add_argument("--steps-a", type=int, default=0)
    ap.add_argument("--steps-b", type=int, default=0)
    ap.add_argument("--steps-c", type=int, default=0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lm-batch", type=int, default=96)
    ap.add_argument("--mem-batch", type=int, default=192)
    ap.add_argument("--docs-per-q", type=int, default=1)
    ap.add_argument("--doc-len", type=int, default=512)
    ap.add_argument("--decoys", type=int, default=384)
    ap.add_argument("--route-centred", action="store_true",
                    help="route as msadb's dot-centred score (net.centre_scores); export the "
                         "model with msadb.routing.score dot-centred")
    ap.add_argument("--doc-lens", default="",
                    help="memory window lengths drawn per batch (e.g. 512,1024,2048,4096), "
                         "each batch holding about --doc-len x --mem-batch tokens")
    ap.add_argument("--dense", type=float, default=0.0,
                    help="share of memory questions whose document also holds 2-4 facts of the "
                         "same kind")
    ap.add_argument("--qa-frac", type=float, default=0.0,
                    help="phase a: share of dense in-context QA batches")
    ap.add_argument("--qa-frac-mem", type=float, default=0.0,
                    help="phases b, c: share of dense in-context QA batches")
    ap.add_argument("--resume", default="",
                    help="checkpoint directory to start from (its shape; its steps, tokens and "
                         "seconds carry forward; a fresh optimizer warms up again)")
    ap.add_argument("--init-gguf", default="",
                    help="start from the weights and shape of a GGUF file (dequantized), e.g. the "
                         "shipped model; its msadb.training steps, tokens and seconds carry forward")
    ap.add_argument("--grow", default="",
                    help="deepen the --init-gguf or --resume model first: per new layer the old "
                         "layer it takes or 'new' (zero output maps), e.g. "
                         "0,1,2,3,new,new,4,new,5,new,6,7 (net.grow's rules)")
    ap.add_argument("--widen", default="",
                    help="widen the --init-gguf or --resume model (after --grow): its new d, "
                         "n_heads, n_kv and ffn, e.g. d=512,n_heads=8,n_kv=4,ffn=1536 (net.widen's "
                         "rules: the wider model answers as the old one until trained)")
    ap.add_argument("--ctx-frac", type=float, default=0.25)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--lm-weight", type=float, default=0.3)
    ap.add_argument("--aux-weight", type=float, default=0.2)
    ap.add_argument("--detach-memory", action="store_true")
    ap.add_argument("--eval-gpu", default="")
    ap.add_argument("--eval-heldout", default="",
                    help="memmodel.heldout's arrays (heldout_gpu.npz, heldout.json beside it): "
                         "the held-out evaluation through PyTorch at the end")
    ap.add_argument("--eval-time", type=float, default=150)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU smoke test)")
    ap.add_argument("--n-layers", type=int, default=0, help="model shape (default: Config's, "
                    "the first model's 8 layers, d 256, ffn 768, 4 heads, 2 kv heads; the "
                    "shipped model's options are in docs/model.md)")
    ap.add_argument("--d", type=int, default=0)
    ap.add_argument("--ffn", type=int, default=0)
    ap.add_argument("--n-heads", type=int, default=0)
    ap.add_argument("--n-kv", type=int, default=0)
    ap.add_argument("--ckpt-dtype", choices=["fp32", "bf16"], default="fp32",
                    help="checkpoint precision (bf16 for models above ~15M parameters: at most "
                         "4 files of 15 MB come back from the GPU machine with the logs)")
    ap.add_argument("--stop-after", type=float, default=0,
                    help="seconds: end this command at the first step boundary after them, "
                         "writing the whole training state to OUT/state.pt (model, optimizer, "
                         "schedule position) for --continue: a run longer than one device "
                         "call, as commands that each fit its limit")
    ap.add_argument("--stop-after-steps", type=int, default=0,
                    help="the same after this many steps of this command (tests)")
    ap.add_argument("--continue", dest="cont", default="",
                    help="the OUT of a command ended by --stop-after: go on from its state "
                         "with its options (this command's --out, --stop-after*, --eval-* "
                         "and --data apply)")
    ap.add_argument("--unans-share", type=float, default=None,
                    help="share of unanswerable questions in memory batches (examples of the "
                         "data rejected to reach it; default: the data's own share); a --continue "
                         "command may change it")
    ap.add_argument("--mh-route", choices=["both", "staged"], default="both",
                    help="gold blocks of a multi-hop question's prompt routing: both hops' "
                         "(default), or staged: the first hop's without context (the document an "
                         "interleave round must pull), the second hop's with the first in context")
    ap.add_argument("--mh-followup", action="store_true",
                    help="a multi-hop question with no document in its context answers its "
                         "follow-up question (\"ask: What is the X of room N?\", the room read "
                         "from memory), which the runtime asks next (msadb.followup); with the "
                         "first hop's document in the context, the value")
    ap.add_argument("--val-questions", type=int, default=64,
                    help="questions of each validation batch at a phase end")
    args = ap.parse_args(argv)
    state = None
    if args.cont:
        state = torch.load(os.path.join(args.cont, "state.pt"), map_location="cpu",
                           weights_only=False)
        mine = {k: getattr(args, k) for k in ("out", "cont", "stop_after", "stop_after_steps",
                                              "eval_gpu", "eval_heldout", "eval_time", "data")}
        if args.unans_share is not None:
            mine["unans_share"] = args.unans_share
        args = argparse.Namespace(**dict(state["args"], **mine))
    return args, state


class Run:
    """One command's training state: options, log, model, optimizer, data,
    counters.  A --continue command restores it from the stopped one's
    state.pt."""

    def __init__(self, args, state):
        self.args, self.state = args, state
        self.segment = state["segment"] + 1 if state else 0
        self.t_start = time.time()
        os.makedirs(args.out, exist_ok=True)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        self.logf = open(os.path.join(args.out, "train_log.jsonl"), "a" if state else "w")

    def log(self, d):
        d["t"] = round(time.time() - self.t_start, 1)
        s = json.dumps(d)
        print(s, flush=True)
        self.logf.write(s + "\n")
        self.logf.flush()


def model_shape(run):
    """(config, initial state dict or None, prior): the shape is a continued
    run's or a checkpoint's own, else the options'; prior holds the steps,
    tokens and seconds of a --resume checkpoint or an --init-gguf file."""
    args, state = run.args, run.state
    if state:
        return config_of(state), state["model"], None
    if args.resume:
        sd, prior = load_state(args.resume)
        return config_of(prior), sd, prior
    if args.init_gguf:
        g = torch_from_gguf(args.init_gguf)
        info = json.loads(g.gguf_meta.get("msadb.training", "{}"))
        prior = {"steps": info.get("steps") or 0, "tokens": info.get("tokens"),
                 "train_seconds": info.get("gpu_train_seconds") or 0.0}
        return g.c, g.state_dict(), prior
    c = Config()
    if args.tiny:
        c.n_layers, c.d, c.ffn = 2, 64, 128
    for k in ("n_layers", "d", "ffn", "n_heads", "n_kv"):
        if getattr(args, k):
            setattr(c, k, getattr(args, k))
    if c.d % c.n_heads or c.n_heads % c.n_kv:
        raise SystemExit("--d must be a multiple of --n-heads, --n-heads of --n-kv")
    c.hd = c.d // c.n_heads
    return c, None, None


def build_model(run):
    """Model, optimizer and data of the run (run.model, run.opt, run.c, ...)."""
    args, state = run.args, run.state
    c, sd, run.prior = model_shape(run)
    run.c = c
    run.lm = np.fromfile(os.path.join(args.data, "train_lm.u16"), dtype=np.uint16)
    run.val = np.fromfile(os.path.join(args.data, "val_lm.u16"), dtype=np.uint16)
    run.facts = Facts(os.path.join(args.data, "facts_train.npz"))
    n_val_ex = 2000
    run.n_train_ex = run.facts.n - n_val_ex
    model = Model(c)
    if sd is not None:
        model.load_state_dict(sd)
    # --grow, then --widen: a trained model made deeper or wider, answering as before
    for flag, key, does, change in (("grow", "layout", "deepens",
                                     lambda m: grow(m, parse_layout(args.grow))),
                                    ("widen", "shape", "widens",
                                     lambda m: widen(m, parse_shape(args.widen)))):
        if not getattr(args, flag, "") or state:
            continue
        if sd is None:
            raise SystemExit("--%s needs --init-gguf or --resume: it %s a trained model"
                             % (flag, does))
        try:
            model = change(model)
        except ValueError as e:
            raise SystemExit(str(e))
        run.c = c = model.c
        run.log({"event": flag, key: getattr(args, flag), "n_layers": c.n_layers, "d": c.d,
                 "n_heads": c.n_heads, "n_kv": c.n_kv, "ffn": c.ffn})
    model.route_centred = args.route_centred
    run.model = model = model.to(run.dev)
    run.n_params = sum(p.numel() for p in model.parameters())
    run.log({"event": "continue" if state else "start", "segment": run.segment,
             "params": run.n_params, "config": c.to_dict(), "args": vars(args),
             "lm_tokens": int(len(run.lm)),
             "device": torch.cuda.get_device_name() if run.dev.type == "cuda" else "cpu"})
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    run.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                                **({"fused": True} if run.dev.type == "cuda" else {}))
    if state:
        run.opt.load_state_dict(state["opt"])
    share = getattr(args, "unans_share", None)
    fu = bool(getattr(args, "mh_followup", False))
    run.batcher = Batcher(run.lm, run.facts, run.n_train_ex, args.seed + 7919 * run.segment,
                          Ld=args.doc_len, dense=getattr(args, "dense", 0.0),
                          unans_share=-1.0 if share is None else share,
                          mh_route=getattr(args, "mh_route", "both"), mh_followup=fu)
    val_text = run.val if len(run.val) > 4096 else run.lm
    run.val_batcher = Batcher(val_text, run.facts, run.facts.n, args.seed + 1, Ld=args.doc_len,
                              mh_followup=fu)
    # the tuning split (memmodel.data build --tune-split): forms training never draws
    tune = os.path.join(args.data, "facts_tune.npz")
    run.tune = None
    if os.path.exists(tune):
        run.tune = Facts(tune)
        run.tune_batcher = Batcher(val_text, run.tune, run.tune.n, args.seed + 2, Ld=args.doc_len,
                                   dense=getattr(args, "dense", 0.0), mh_followup=fu)


def window_shape(args, rng):
    """(window length, questions, decoy facts) of one memory batch: --doc-len
    and --mem-batch / --decoys, or with --doc-lens a length drawn from the
    list and the question count scaled to keep the batch's memory tokens at
    --doc-len x --mem-batch (the decoys stay --decoys: as many distractors
    per memory token whatever the length)."""
    if not getattr(args, "doc_lens", ""):
        return args.doc_len, args.mem_batch, args.decoys
    lens = [int(x) for x in args.doc_lens.split(",")]
    Ld = lens[int(rng.integers(len(lens)))]
    return Ld, max(8, args.doc_len * args.mem_batch // Ld), args.decoys


def start_producer(run):
    """Batches built in a background thread for the phase in run.phase_box."""
    args, c, batcher = run.args, run.c, run.batcher
    run.qb = qb = queue.Queue(maxsize=6)
    run.phase_box = phase_box = {"phase": "abc"[run.pi0], "stop": False}

    def producer():
        rng = np.random.default_rng(args.seed + 99 + 7919 * run.segment)
        while not phase_box["stop"]:
            ph = phase_box["phase"]
            r = rng.random()
            if ph == "a":
                if r < args.qa_frac:
                    b = batcher.qa_batch(args.lm_batch, c.ctx)
                else:
                    b = batcher.lm_batch(args.lm_batch, c.ctx)
            elif r < args.qa_frac_mem:
                b = batcher.qa_batch(args.lm_batch, c.ctx)
            else:
                Ld, nmem, ndec = window_shape(args, rng)
                if rng.random() < args.ctx_frac:
                    use = bool(rng.random() < 0.5)
                    # in-context batches: 16 questions over 512-token windows, fewer over
                    # longer ones (their prompts hold whole documents)
                    nq = max(2, 16 * 512 // Ld)
                    b = batcher.mem_batch(nq, 4 * nq, 4 * nq, context=True, single_only=not use,
                                          Ld=Ld)
                    b["use_memory"] = use
                else:
                    b = batcher.mem_batch(nmem, nmem * args.docs_per_q, ndec, Ld=Ld)
                    b["use_memory"] = True
            b["phase"] = ph
            qb.put(b)

    threading.Thread(target=producer, daemon=True).start()


def init_counters(run):
    """Steps, tokens, history and the schedule's clocks: zero, a resumed
    checkpoint's totals (carried forward), or a continued command's state."""
    state, prior = run.state, run.prior
    run.tokens_seen = {"lm": 0, "mem_docs": 0, "question": 0}
    run.step, run.hist = 0, []
    run.t_train0 = time.time()
    run.pi0, run.in_ph_steps, run.in_ph_seconds = 0, 0, 0.0
    # warm0, sched0: the step and training second this optimizer started at (the warm-up
    # and the schedule count from them)
    run.warm0, run.sched0 = 0, 0.0
    if prior:
        run.step = run.warm0 = int(prior.get("steps") or 0)
        run.tokens_seen = dict(prior.get("tokens") or run.tokens_seen)
        run.sched0 = float(prior.get("train_seconds") or 0.0)
        run.t_train0 -= run.sched0
    if state:
        run.warm0, run.sched0 = state.get("warm0", 0), state.get("sched0", 0.0)
        run.tokens_seen, run.step, run.hist = state["tokens"], state["step"], state["hist"]
        run.t_train0 -= state["train_seconds"]
        run.pi0, run.in_ph_steps = state["phase"], state["in_phase_steps"]
        run.in_ph_seconds = state["in_phase_seconds"]
    # the schedule's clock: this run's training time (a continued run's includes its
    # earlier commands)
    run.t_run0 = run.t_train0 + run.sched0
    run.step0 = run.step


def learning_rate(run):
    """Warm-up over 200 steps, cosine to 10% over the whole run (seconds, or
    the fixed step counts)."""
    args = run.args
    if run.fixed:
        frac = (run.step - run.warm0) / max(1, sum(run.steps_fixed))
    else:
        frac = (time.time() - run.t_run0) / run.total_time
    return args.lr * min(1.0, (run.step - run.warm0 + 1) / 200) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_step(run, b, ph, lr):
    """One optimizer step on batch b; its statistics."""
    model, opt, tokens_seen = run.model, run.opt, run.tokens_seen
    for gopt in opt.param_groups:
        gopt["lr"] = lr
    bd = to_dev(b, run.dev)
    with amp(run.dev):
        if b["kind"] in ("lm", "qa"):
            loss, st = lm_step(model, bd)
            tokens_seen["lm"] += b["x"].size
        else:
            loss, st = mem_step(model, bd, run.args, oracle=(ph == "b"), use_memory=b["use_memory"])
            st.pop("per")
            tokens_seen["mem_docs"] += b["docs"].size
            tokens_seen["question"] += int(b["valid"].sum())
            st["ctx"] = int(b["context"])
            st["mem"] = int(b["use_memory"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    run.step += 1
    st.update({"step": run.step, "phase": ph, "loss": loss.item(), "lr": lr, "gnorm": gn.item()})
    return st


def stop_now(run):
    args = run.args
    return ((args.stop_after > 0 and time.time() - run.t_start >= args.stop_after)
            or (args.stop_after_steps > 0 and run.step - run.step0 >= args.stop_after_steps))


def run_phase(run, pi, ph):
    """Phase ph's steps until its time or step count is spent; (steps done,
    phase start time, stopped by --stop-after*)."""
    run.phase_box["phase"] = ph
    t_ph = time.time()
    n_ph = 0
    if pi == run.pi0:
        t_ph -= run.in_ph_seconds
        n_ph = run.in_ph_steps
    while True:
        if run.fixed:
            if n_ph >= run.steps_fixed[pi]:
                break
        elif time.time() - t_ph >= run.budget[pi]:
            break
        b = run.qb.get()
        if b["phase"] != ph:
            continue  # a batch made for the previous phase
        st = train_step(run, b, ph, learning_rate(run))
        n_ph += 1
        run.hist.append(st)
        if run.step % 25 == 0 or n_ph == 1:
            run.log(st)
        if stop_now(run):
            return n_ph, t_ph, True
    return n_ph, t_ph, False


def save_state(run, pi, ph, n_ph, t_ph):
    """The whole state, for --continue (the phase goes on there)."""
    torch.save({"model": run.model.state_dict(), "opt": run.opt.state_dict(),
                "args": vars(run.args), "config": run.c.to_dict(), "step": run.step, "phase": pi,
                "in_phase_steps": n_ph, "in_phase_seconds": time.time() - t_ph,
                "train_seconds": time.time() - run.t_train0, "tokens": run.tokens_seen,
                "hist": run.hist, "segment": run.segment, "warm0": run.warm0,
                "sched0": run.sched0},
               os.path.join(run.args.out, "state.pt"))
    # the weights too, in files small enough to come back from the GPU machine (OUT/at_stop:
    # OUT's own checkpoint stays the last finished phase's)
    at_stop = os.path.join(run.args.out, "at_stop")
    os.makedirs(at_stop, exist_ok=True)
    save_ckpt(run.model, at_stop, ckpt_meta(run, ph), dtype=run.args.ckpt_dtype)
    run.phase_box["stop"] = True
    validate_tune(run)
    run.log({"event": "stopped", "phase": ph, "steps_in_phase": n_ph, "total_steps": run.step,
             "train_seconds": round(time.time() - run.t_train0, 1)})


def validate(run):
    """Validation LM loss and memory accuracies (question alone, in context)."""
    args, model, dev = run.args, run.model, run.dev
    model.eval()
    v = val_lm(model, run.val, dev)
    mv = {}
    with torch.no_grad():
        for ctx in (False, True):
            accs = []
            for r in range(2):
                nq = args.val_questions
                vb = run.val_batcher.mem_batch(nq if not ctx else max(1, nq // 4),
                                               2 * nq if not ctx else nq, 2 * nq, context=ctx,
                                               lo=run.n_train_ex, hi=run.facts.n)
                vbd = to_dev(vb, dev)
                with amp(dev):
                    _, st = mem_step(model, vbd, args, oracle=False, use_memory=True)
                accs.append(st)
            mv["ctx" if ctx else "mem"] = {k: float(np.mean([a[k] for a in accs]))
                                           for k in ("acc", "ans", "recall")}
    model.train()
    return v, mv


def validate_tune(run, n_batches=8):
    """Answers and abstentions on the tuning split's questions (memory
    batches of 64 questions over 512- to 4096-token windows): exact answers
    and abstentions (first answer token that of the abstain answer) of the
    answerable questions, abstentions of the unanswerable ones."""
    t, model, dev = run.tune, run.model, run.dev
    if t is None or not t.unans.any():
        return None
    i = int(np.flatnonzero(t.unans)[0])
    abst = int(t.a_tok[t.a_off[i]])
    lens = [int(x) for x in (getattr(run.args, "doc_lens", "") or str(run.args.doc_len)).split(",")]
    n = {"ans": 0, "ans_ok": 0, "ans_abst": 0, "unans": 0, "unans_abst": 0}
    model.eval()
    with torch.no_grad():
        for r in range(n_batches):
            Ld = lens[r % len(lens)]
            nq = max(8, 64 * 512 // Ld)
            vb = run.tune_batcher.mem_batch(nq, nq, 2 * nq, Ld=Ld)
            with amp(dev):
                _, st = mem_step(model, to_dev(vb, dev), run.args, oracle=False, use_memory=True)
            ok = st["per"]["ok"].cpu().numpy()
            ab = st["per"]["first"].cpu().numpy() == abst
            u = vb["unans"]
            n["ans"] += int((~u).sum())
            n["ans_ok"] += int((ok & ~u).sum())
            n["ans_abst"] += int((ab & ~u).sum())
            n["unans"] += int(u.sum())
            n["unans_abst"] += int((ab & u).sum())
    model.train()
    n["ans_acc"] = n["ans_ok"] / max(1, n["ans"])
    n["ans_abstained"] = n["ans_abst"] / max(1, n["ans"])
    n["unans_abstained"] = n["unans_abst"] / max(1, n["unans"])
    run.log({"event": "tune", "total_steps": run.step, **n})
    return n


def end_phase(run, ph, n_ph):
    """Validation and the checkpoint at the end of a phase."""
    v, mv = validate(run)
    validate_tune(run)
    run.log({"event": "phase_end", "phase": ph, "steps": n_ph, "total_steps": run.step,
             "val_lm_loss": v, "val_mem": mv, "tokens": dict(run.tokens_seen),
             "train_seconds": round(time.time() - run.t_train0, 1)})
    save_ckpt(run.model, run.args.out, ckpt_meta(run, ph), dtype=run.args.ckpt_dtype)


def ckpt_meta(run, ph):
    return {"config": run.c.to_dict(), "params": run.n_params, "steps": run.step,
            "phase": ph, "tokens": dict(run.tokens_seen), "seed": run.args.seed,
            "train_seconds": round(time.time() - run.t_train0, 1),
            "started_from": {"steps": run.warm0, "train_seconds": run.sched0},
            "args": vars(run.args)}


def finish(run):
    """Stops the producer, writes the history, runs the GPU evaluation."""
    args = run.args
    run.phase_box["stop"] = True
    try:
        while True:
            run.qb.get_nowait()
    except queue.Empty:
        pass
    with open(os.path.join(args.out, "train_hist.json"), "w") as f:
        json.dump(run.hist, f)
    run.model.eval()
    for path, evaluate, name in ((args.eval_gpu, gpu_eval, "eval_gpu.json"),
                                 (getattr(args, "eval_heldout", ""), heldout_gpu,
                                  "heldout_gpu.json")):
        if path:
            res = evaluate(run.model, path, run.dev, deadline=time.time() + args.eval_time,
                           log=run.log)
            with open(os.path.join(args.out, name), "w") as f:
                json.dump(res, f, indent=1)
    run.log({"event": "done", "wall": round(time.time() - run.t_start, 1)})


def main(argv=None):
    run = Run(*parse_args(argv))
    args = run.args
    build_model(run)
    run.fixed = args.steps_a > 0 or args.steps_b > 0 or args.steps_c > 0
    run.budget = [args.time_a, args.time_b, args.time_c]
    run.steps_fixed = [args.steps_a, args.steps_b, args.steps_c]
    run.total_time = sum(run.budget)
    init_counters(run)
    if not run.state:
        validate_tune(run)  # the starting weights on the tuning split
    start_producer(run)
    for pi, ph in enumerate("abc"):
        if pi < run.pi0:
            continue
        n_ph, t_ph, stopped = run_phase(run, pi, ph)
        if stopped:
            save_state(run, pi, ph, n_ph, t_ph)
            return
        if n_ph == 0:
            continue  # a phase given no time (a resumed run's phase c alone)
        end_phase(run, ph, n_ph)
    finish(run)


if __name__ == "__main__":
    main()
