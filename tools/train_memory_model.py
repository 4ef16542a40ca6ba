#!/usr/bin/env python3
"""train_memory_model.py -- trains msadb's own memory model (PyTorch, GPU).

    python3 tools/train_memory_model.py --data .train-data --out OUTDIR \
        [--seed 1234] [--time-a 60 --time-b 120 --time-c 180] \
        [--steps-a N --steps-b N --steps-c N]   (fixed step counts instead of seconds)
        [--qa-frac F --qa-frac-mem F] [--resume CKPT_DIR]
        [--eval-gpu .train-data/eval_gpu.npz] [--stop-after SECONDS]
    python3 tools/train_memory_model.py --continue OUTDIR --out OUTDIR2 --data DIR
        (goes on from a command ended by --stop-after, with its options)

The shipped model's exact commands are in docs/model.md.

Inputs are the arrays tools/make_memory_data.py writes (tokens only; no
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
gold block's routing score above all others.  Memory K/V keep their
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
import sys
import threading
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK = 64


class Config:
    vocab = 8192
    n_layers = 8
    d = 256
    n_heads = 4
    n_kv = 2
    hd = 64
    ffn = 768
    ctx = 1024
    theta = 10000.0
    eps = 1e-5

    def mem_layers(self):
        return list(range(self.n_layers // 2, self.n_layers))

    def to_dict(self):
        return {k: getattr(self, k) for k in dir(self)
                if not k.startswith("_") and not callable(getattr(self, k))}


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def sdpa(q, k, v, attn_mask=None, is_causal=False):
    """F.scaled_dot_product_attention (PyTorch >= 2.0) or the same in plain
    operations (the development machine's PyTorch 1.13)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if is_causal:
        T, S = q.shape[-2], k.shape[-2]
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype)


def amp(dev):
    """bf16 autocast on the GPU, nothing elsewhere."""
    import contextlib
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rms(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w).to(x.dtype)


class Rope:
    def __init__(self, hd, theta, max_pos, device):
        i = torch.arange(0, hd, 2, dtype=torch.float64, device=device)
        inv = theta ** (-i / hd)
        p = torch.arange(max_pos, dtype=torch.float64, device=device)
        ang = p[:, None] * inv[None, :]
        self.cos = torch.cos(ang).float()
        self.sin = torch.sin(ang).float()

    def __call__(self, x, pos):
        """x [B, h, T, hd]; pos [T] or [B, T]: pairs (2i, 2i+1) rotated."""
        c, s = self.cos[pos], self.sin[pos]
        if c.dim() == 2:
            c, s = c[None, None], s[None, None]
        else:
            c, s = c[:, None], s[:, None]
        xf = x.float()
        xe, xo = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack([xe * c - xo * s, xe * s + xo * c], dim=-1).flatten(-2)
        return out.to(x.dtype)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = nn.Parameter(torch.ones(c.d))
        self.ffn_norm = nn.Parameter(torch.ones(c.d))
        self.wq = nn.Linear(c.d, c.n_heads * c.hd, bias=False)
        self.wk = nn.Linear(c.d, c.n_kv * c.hd, bias=False)
        self.wv = nn.Linear(c.d, c.n_kv * c.hd, bias=False)
        self.wo = nn.Linear(c.n_heads * c.hd, c.d, bias=False)
        self.w_gate = nn.Linear(c.d, c.ffn, bias=False)
        self.w_up = nn.Linear(c.d, c.ffn, bias=False)
        self.w_down = nn.Linear(c.ffn, c.d, bias=False)


class Pool:
    """Memory blocks of one memory layer: K, V [kv, P, 64, hd]; valid [P, 64];
    means [kv, P, hd] (f32, over valid tokens); doc [P] (document index)."""

    def __init__(self, K, V, valid, doc=None):
        self.K, self.V, self.valid, self.doc = K, V, valid, doc
        w = valid.float()
        self.means = (K.float() * w[None, :, :, None]).sum(2) / w.sum(1).clamp(min=1)[None, :, None]

    @property
    def P(self):
        return self.K.shape[1]


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.tok = nn.Embedding(c.vocab, c.d)
        self.layers = nn.ModuleList([Layer(c) for _ in range(c.n_layers)])
        self.out_norm = nn.Parameter(torch.ones(c.d))
        self.mem = set(c.mem_layers())
        self.rope = None
        self.reset_parameters()

    def reset_parameters(self):
        std = 0.02
        nn.init.normal_(self.tok.weight, std=std)
        for l in self.layers:
            for m in (l.wq, l.wk, l.wv, l.w_gate, l.w_up):
                nn.init.normal_(m.weight, std=std)
            for m in (l.wo, l.w_down):
                nn.init.normal_(m.weight, std=std / math.sqrt(2 * self.c.n_layers))

    def _rope(self, device):
        if self.rope is None:
            self.rope = Rope(self.c.hd, self.c.theta, 8192, device)
        return self.rope

    def qkv(self, l, x, pos):
        c = self.c
        B, T, _ = x.shape
        h = rms(x, l.attn_norm, c.eps)
        q = l.wq(h).view(B, T, c.n_heads, c.hd).transpose(1, 2)
        k = l.wk(h).view(B, T, c.n_kv, c.hd).transpose(1, 2)
        v = l.wv(h).view(B, T, c.n_kv, c.hd).transpose(1, 2)
        r = self._rope(x.device)
        return r(q, pos), r(k, pos), v

    def finish(self, l, x, o):
        B, H, T, hd = o.shape
        x = x + l.wo(o.transpose(1, 2).reshape(B, T, H * hd))
        h = rms(x, l.ffn_norm, self.c.eps)
        return x + l.w_down(F.silu(l.w_gate(h)) * l.w_up(h))

    def logits(self, x):
        return F.linear(rms(x, self.out_norm, self.c.eps), self.tok.weight)

    def forward_plain(self, tok, capture=False):
        """Causal forward, positions 0..T-1 (documents, LM).  Returns hidden
        states and, with capture, [(k, v)] of the memory layers, each
        [B, kv, T, hd] after RoPE."""
        c = self.c
        B, T = tok.shape
        pos = torch.arange(T, device=tok.device)
        x = self.tok(tok)
        caps = []
        G = c.n_heads // c.n_kv
        for i, l in enumerate(self.layers):
            q, k, v = self.qkv(l, x, pos)
            if capture and i in self.mem:
                caps.append((k, v))
            o = sdpa(q, k.repeat_interleave(G, 1),
                                               v.repeat_interleave(G, 1), is_causal=True)
            x = self.finish(l, x, o)
        return x, caps

    def forward_query(self, tok, valid, plen, pools, top_k, gold_p=None, gold_a=None,
                      oracle=False, aux=False, detach_pool=False):
        """Question side.  tok/valid [B, T] (right padded), plen [B] prompt
        lengths, pools: one Pool per memory layer, or None (no memory).
        gold_p [B, n] / gold_a [B, m]: pool block indexes of the gold blocks
        (prompt / answer tokens), padded by repeating the first.
        Returns (hidden, aux_loss, info)."""
        c = self.c
        B, T = tok.shape
        pos = torch.arange(T, device=tok.device)
        x = self.tok(tok)
        G = c.n_heads // c.n_kv
        scale = 1.0 / math.sqrt(c.hd)
        t_idx = torch.arange(T, device=tok.device)
        is_prompt = t_idx[None, :] < plen[:, None]
        lens = valid.sum(1)
        is_ans_in = (~is_prompt) & (t_idx[None, :] < (lens - 1)[:, None])
        causal = torch.ones(T, T, dtype=torch.bool, device=tok.device).tril()
        aux_loss = x.new_zeros((), dtype=torch.float32)
        info = {"recall": [], "best_block": None}
        mi = 0
        for i, l in enumerate(self.layers):
            q, k, v = self.qkv(l, x, pos)
            if pools is None or i not in self.mem:
                o = sdpa(q, k.repeat_interleave(G, 1),
                                                   v.repeat_interleave(G, 1), is_causal=True)
                x = self.finish(l, x, o)
                continue
            pool = pools[mi]
            mi += 1
            means = pool.means.detach() if detach_pool else pool.means
            Kp = pool.K.detach() if detach_pool else pool.K
            Vp = pool.V.detach() if detach_pool else pool.V
            P = pool.P
            kk = min(top_k, P)
            qg = q.float().view(B, c.n_kv, G, T, c.hd)
            s = None
            with (torch.autocast("cuda", enabled=False) if q.is_cuda else amp(q.device)):
                for g in range(G):  # max over the group's q heads (f32, as msadb)
                    sg = torch.einsum("bktd,kpd->bktp", qg[:, :, g], means.float())
                    s = sg if s is None else torch.maximum(s, sg)
            # [B, kv, T, P]
            neg = torch.finfo(s.dtype).min
            sp = s.masked_fill(~is_prompt[:, None, :, None], neg).amax(2)  # [B, kv, P]
            with torch.no_grad():
                sp_sel, s_sel = sp.detach(), s.detach()
                if oracle and gold_p is not None:
                    sp_sel = sp_sel.clone()
                    sp_sel.scatter_(2, gold_p[:, None, :].expand(B, c.n_kv, -1), float("inf"))
                    s_sel = s_sel.clone()
                    s_sel.scatter_(3, gold_a[:, None, None, :].expand(B, c.n_kv, T, -1),
                                   float("inf"))
                sel_p = sp_sel.topk(kk, dim=-1).indices
                vis_p = torch.zeros(B, c.n_kv, P, dtype=torch.bool, device=tok.device)
                vis_p.scatter_(2, sel_p, True)
                sel_t = s_sel.topk(kk, dim=-1).indices
                vis = torch.zeros(B, c.n_kv, T, P, dtype=torch.bool, device=tok.device)
                vis.scatter_(3, sel_t, True)
                vis = torch.where(is_prompt[:, None, :, None], vis_p[:, :, None, :], vis)
                vis &= valid[:, None, :, None]
                union = vis.any(2)
                nu = int(union.sum(-1).max().item())
                nu = max(nu, 1)
                idx_u = union.float().topk(nu, dim=-1).indices  # [B, kv, nu]
                valid_u = union.gather(2, idx_u)
                vis_u = vis.gather(3, idx_u[:, :, None, :].expand(B, c.n_kv, T, nu))
                vis_u &= valid_u[:, :, None, :]
                bv = pool.valid[idx_u]  # [B, kv, nu, 64]
                mmask = (vis_u[..., None] & bv[:, :, None, :, :]).reshape(B, c.n_kv, T, nu * BLOCK)
                if gold_p is not None:
                    info["recall"].append(
                        (sel_p == gold_p[:, None, :1]).any(-1).float().mean().item())
                if mi == len(pools):
                    flat = sp.detach().reshape(B, -1).argmax(-1)
                    info["best_block"] = flat % P
            ar = torch.arange(c.n_kv, device=tok.device)[None, :, None]
            Ks = Kp[ar, idx_u].reshape(B, c.n_kv, nu * BLOCK, c.hd).to(k.dtype)
            Vs = Vp[ar, idx_u].reshape(B, c.n_kv, nu * BLOCK, c.hd).to(v.dtype)
            K_all = torch.cat([Ks, k], 2).repeat_interleave(G, 1)
            V_all = torch.cat([Vs, v], 2).repeat_interleave(G, 1)
            mask = torch.cat([mmask, causal[None, None].expand(B, c.n_kv, T, T)], 3)
            mask = mask.repeat_interleave(G, 1)
            o = sdpa(q, K_all, V_all, attn_mask=mask)
            x = self.finish(l, x, o)
            if aux and gold_p is not None:
                lp = sp * scale
                gm = torch.zeros(B, P, dtype=torch.bool, device=tok.device)
                gm.scatter_(1, gold_p, True)
                lse = torch.logsumexp(lp.masked_fill(gm[:, None], neg), -1)
                lg = lp.gather(2, gold_p[:, None, :].expand(B, c.n_kv, -1))
                loss_p = F.softplus(lse[..., None] - lg).mean()
                la = s * scale
                gma = torch.zeros(B, P, dtype=torch.bool, device=tok.device)
                gma.scatter_(1, gold_a, True)
                lsea = torch.logsumexp(la.masked_fill(gma[:, None, None], neg), -1)  # [B,kv,T]
                lga = la.gather(3, gold_a[:, None, None, :].expand(B, c.n_kv, T, -1))
                w = is_ans_in[:, None, :, None].float()
                loss_a = (F.softplus(lsea[..., None] - lga) * w).sum() / (
                    w.sum() * c.n_kv * gold_a.shape[1]).clamp(min=1)
                aux_loss = aux_loss + loss_p + loss_a
        return x, aux_loss, info


def build_pools(model, caps, valid=None, doc=None):
    """Pools from captured [(k, v)] with k [N, kv, L, hd], L a multiple of 64."""
    pools = []
    for k, v in caps:
        N, kv, L, hd = k.shape
        nb = L // BLOCK
        K = k.reshape(N, kv, nb, BLOCK, hd).permute(1, 0, 2, 3, 4).reshape(kv, N * nb, BLOCK, hd)
        V = v.reshape(N, kv, nb, BLOCK, hd).permute(1, 0, 2, 3, 4).reshape(kv, N * nb, BLOCK, hd)
        vb = (valid.reshape(N * nb, BLOCK) if valid is not None
              else torch.ones(N * nb, BLOCK, dtype=torch.bool, device=k.device))
        pools.append(Pool(K, V, vb, doc))
    return pools


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

class Facts:
    def __init__(self, path):
        z = np.load(path)
        self.__dict__.update({k: z[k] for k in z.files})
        self.n = len(self.q_off) - 1
        self.first_fact = np.concatenate([[0], np.cumsum(self.n_facts.astype(np.int64))])

    def example(self, i):
        f0 = self.first_fact[i]
        facts = [(self.fact_tok[self.fact_off[j]:self.fact_off[j + 1]].astype(np.int64),
                  int(self.fact_vstart[j])) for j in range(f0, f0 + self.n_facts[i])]
        q = self.q_tok[self.q_off[i]:self.q_off[i + 1]].astype(np.int64)
        a = self.a_tok[self.a_off[i]:self.a_off[i + 1]].astype(np.int64)
        return facts, q, a, set(int(h) for h in self.key_hash[i] if h)


class Batcher:
    """Builds memory batches on the CPU (numpy), in a background thread."""

    def __init__(self, lm, facts, n_train_ex, seed, Ld=256):
        self.lm, self.facts, self.n_ex, self.Ld = lm, facts, n_train_ex, Ld
        self.rng = np.random.default_rng(seed)

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
                _, q, a, _ = exs[i]
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

    def mem_batch(self, B, n_docs, n_decoy, context=False, lo=0, hi=None, single_only=False):
        """A batch of B questions over a shared pool of n_docs documents.
        context: put 1-2 documents (the gold one among them) before the
        question; multi-hop examples then get the first-hop document in the
        context and the second hop only in memory (interleave)."""
        rng, Ld = self.rng, self.Ld
        hi = hi or self.n_ex
        used, exs = set(), []
        while len(exs) < B:
            e = self.facts.example(int(rng.integers(lo, hi)))
            if e[3] & used or (single_only and len(e[0]) > 1):
                continue
            used |= e[3]
            exs.append(e)
        decoys = []
        tries = 0
        while len(decoys) < n_decoy and tries < 4 * n_decoy:
            tries += 1
            e = self.facts.example(int(rng.integers(lo, hi)))
            if e[3] & used:
                continue
            used |= e[3]
            decoys += e[0]
        # place facts: (fact ids, vstart, owner example or -1, hop index)
        items = []
        for bi, e in enumerate(exs):
            for hop, (f, vs) in enumerate(e[0]):
                items.append((f, vs, bi, hop))
        for f, vs in decoys:
            items.append((f, vs, -1, 0))
        docs_items = [[] for _ in range(n_docs)]
        where = {}
        for it in items:
            for _ in range(20):
                d = int(rng.integers(n_docs))
                tot = sum(len(x[0]) for x in docs_items[d]) + len(it[0])
                # the two hops of one question go to different documents
                if tot <= Ld // 2 and not (it[2] >= 0 and any(x[2] == it[2] for x in docs_items[d])):
                    docs_items[d].append(it)
                    break
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
                f, vs, owner, hop = its[j]
                nv = 0
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
        # question sequences
        seqs, plens, gp, ga, ctx_docs = [], [], [], [], []
        for bi, e in enumerate(exs):
            facts, q, a, _ = e
            nh = len(facts)
            gold_all = sorted({b for h in range(nh) if (bi, h) in where for b in where[(bi, h)][1]})
            gold_ans = where.get((bi, nh - 1), (0, []))[1]
            if not gold_all or not gold_ans:
                gold_all = gold_all or [0]
                gold_ans = gold_ans or gold_all
            prompt = [q]
            if context:
                hop_doc = where.get((bi, 0), (None,))[0]
                cds = [hop_doc] if hop_doc is not None else []
                for _ in range(int(rng.integers(0, 2))):
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
                "context": context}


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
    ok = ((pred == tgt) | ~m).all(1).float().mean()
    return loss, ok


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
    al, acc = answer_loss(model, x, b["tok"], b["valid"], b["plen"])
    loss = al + args.lm_weight * lm + args.aux_weight * aux
    return loss, {"ans": al.item(), "acc": acc.item(), "lm": lm.item(), "aux": float(aux.detach()),
                  "recall": float(np.mean(info["recall"])) if info["recall"] else -1}


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
# Checkpoints
# --------------------------------------------------------------------------

PART_BYTES = 15 << 20  # each checkpoint file under the 16 MB transfer limit


def save_ckpt(model, out, meta, dtype="fp32"):
    """The state in files ckpt_0.pt .. ckpt_{n-1}.pt of at most 15 MB each
    (whole tensors, in state order), meta["parts"] = n; dtype "bf16" halves
    the bytes (for models whose fp32 state would need too many files)."""
    td = torch.bfloat16 if dtype == "bf16" else torch.float32
    sd = {k: v.detach().to(td).cpu() for k, v in model.state_dict().items()}
    parts, cur, size = [], {}, 0
    for k, v in sd.items():
        nb = v.numel() * v.element_size()
        if cur and size + nb > PART_BYTES:
            parts.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += nb
    parts.append(cur)
    for i, p in enumerate(parts):
        torch.save(p, os.path.join(out, "ckpt_%d.pt" % i))
    meta = dict(meta, parts=len(parts), ckpt_dtype=dtype)
    with open(os.path.join(out, "ckpt_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def load_state(path_dir):
    """(state dict in fp32, meta) of a checkpoint directory.  Checkpoints
    written before the part count was recorded have three parts."""
    with open(os.path.join(path_dir, "ckpt_meta.json")) as f:
        meta = json.load(f)
    sd = {}
    for i in range(int(meta.get("parts", 3))):
        sd.update(torch.load(os.path.join(path_dir, "ckpt_%d.pt" % i), map_location="cpu"))
    return {k: v.float() for k, v in sd.items()}, meta


def config_of(meta):
    c = Config()
    for k, v in meta["config"].items():
        setattr(c, k, v)
    return c


def load_ckpt(path_dir, device="cpu"):
    sd, meta = load_state(path_dir)
    m = Model(config_of(meta))
    m.load_state_dict(sd)
    return m.to(device), meta


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main():
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
    ap.add_argument("--ctx-frac", type=float, default=0.25)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument("--lm-weight", type=float, default=0.3)
    ap.add_argument("--aux-weight", type=float, default=0.2)
    ap.add_argument("--detach-memory", action="store_true")
    ap.add_argument("--eval-gpu", default="")
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
    ap.add_argument("--val-questions", type=int, default=64,
                    help="questions of each validation batch at a phase end")
    args = ap.parse_args()
    state = None
    if args.cont:
        state = torch.load(os.path.join(args.cont, "state.pt"), map_location="cpu",
                           weights_only=False)
        mine = {k: getattr(args, k) for k in ("out", "cont", "stop_after", "stop_after_steps",
                                              "eval_gpu", "eval_time", "data")}
        args = argparse.Namespace(**dict(state["args"], **mine))
    segment = state["segment"] + 1 if state else 0
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    logf = open(os.path.join(args.out, "train_log.jsonl"), "a" if state else "w")

    def log(d):
        d["t"] = round(time.time() - t_start, 1)
        s = json.dumps(d)
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    # the shape: a continued run's or a checkpoint's own, else the options'; prior: the
    # steps, tokens and seconds of a --resume checkpoint or an --init-gguf file
    prior = None
    if state:
        c = config_of(state)
    elif args.resume:
        sd_resume, prior = load_state(args.resume)
        c = config_of(prior)
    elif args.init_gguf:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import eval_memory
        g = eval_memory.torch_from_gguf(args.init_gguf)
        c = g.c
        info = json.loads(g.gguf_meta.get("msadb.training", "{}"))
        prior = {"steps": info.get("steps") or 0, "tokens": info.get("tokens"),
                 "train_seconds": info.get("gpu_train_seconds") or 0.0}
    else:
        c = Config()
        if args.tiny:
            c.n_layers, c.d, c.ffn = 2, 64, 128
        for k in ("n_layers", "d", "ffn", "n_heads", "n_kv"):
            if getattr(args, k):
                setattr(c, k, getattr(args, k))
        if c.d % c.n_heads or c.n_heads % c.n_kv:
            raise SystemExit("--d must be a multiple of --n-heads, --n-heads of --n-kv")
        c.hd = c.d // c.n_heads
    lm = np.fromfile(os.path.join(args.data, "train_lm.u16"), dtype=np.uint16)
    val = np.fromfile(os.path.join(args.data, "val_lm.u16"), dtype=np.uint16)
    facts = Facts(os.path.join(args.data, "facts_train.npz"))
    n_val_ex = 2000
    n_train_ex = facts.n - n_val_ex
    model = Model(c)
    if state:
        model.load_state_dict(state["model"])
    elif args.resume:
        model.load_state_dict(sd_resume)
    elif args.init_gguf:
        model.load_state_dict(g.state_dict())
    model = model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log({"event": "continue" if state else "start", "segment": segment, "params": n_params,
         "config": c.to_dict(), "args": vars(args), "lm_tokens": int(len(lm)),
         "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"})
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            **({"fused": True} if dev.type == "cuda" else {}))
    if state:
        opt.load_state_dict(state["opt"])
    fixed = args.steps_a > 0 or args.steps_b > 0 or args.steps_c > 0
    budget = [args.time_a, args.time_b, args.time_c]
    steps_fixed = [args.steps_a, args.steps_b, args.steps_c]
    total_time = sum(budget)
    batcher = Batcher(lm, facts, n_train_ex, args.seed + 7919 * segment, Ld=args.doc_len)
    val_batcher = Batcher(val if len(val) > 4096 else lm, facts, facts.n, args.seed + 1, Ld=args.doc_len)

    # background batch construction
    qb = queue.Queue(maxsize=6)
    phase_box = {"phase": "a", "stop": False}

    def producer():
        rng = np.random.default_rng(args.seed + 99 + 7919 * segment)
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
                if rng.random() < args.ctx_frac:
                    use = bool(rng.random() < 0.5)
                    b = batcher.mem_batch(16, 64, 64, context=True, single_only=not use)
                    b["use_memory"] = use
                else:
                    b = batcher.mem_batch(args.mem_batch, args.mem_batch * args.docs_per_q,
                                          args.decoys)
                    b["use_memory"] = True
            b["phase"] = ph
            qb.put(b)

    tokens_seen = {"lm": 0, "mem_docs": 0, "question": 0}
    step = 0
    hist = []
    t_train0 = time.time()
    pi0, in_ph_steps, in_ph_seconds = 0, 0, 0.0
    # warm0, sched0: the step and training second this optimizer started at (the warm-up
    # and the schedule count from them); a resumed checkpoint's totals carry forward
    warm0, sched0 = 0, 0.0
    if prior:
        step = warm0 = int(prior.get("steps") or 0)
        tokens_seen = dict(prior.get("tokens") or tokens_seen)
        sched0 = float(prior.get("train_seconds") or 0.0)
        t_train0 -= sched0
    if state:
        warm0, sched0 = state.get("warm0", 0), state.get("sched0", 0.0)
        tokens_seen, step, hist = state["tokens"], state["step"], state["hist"]
        t_train0 -= state["train_seconds"]
        pi0, in_ph_steps = state["phase"], state["in_phase_steps"]
        in_ph_seconds = state["in_phase_seconds"]
    phase_box["phase"] = "abc"[pi0]
    # the schedule's clock: this run's training time (a continued run's includes its earlier commands)
    t_run0 = t_train0 + sched0
    th = threading.Thread(target=producer, daemon=True)
    th.start()
    step0 = step

    def stop_now():
        return ((args.stop_after > 0 and time.time() - t_start >= args.stop_after)
                or (args.stop_after_steps > 0 and step - step0 >= args.stop_after_steps))

    stopped = False
    for pi, ph in enumerate("abc"):
        if pi < pi0:
            continue
        phase_box["phase"] = ph
        # drop batches made for the previous phase
        t_ph = time.time()
        n_ph = 0
        if pi == pi0:
            t_ph -= in_ph_seconds
            n_ph = in_ph_steps
        while True:
            if fixed:
                if n_ph >= steps_fixed[pi]:
                    break
            elif time.time() - t_ph >= budget[pi]:
                break
            b = qb.get()
            if b["phase"] != ph:
                continue
            # learning rate: warmup 200 steps, cosine to 10% over the whole run
            if fixed:
                frac = (step - warm0) / max(1, sum(steps_fixed))
            else:
                frac = (time.time() - t_run0) / total_time
            lr = args.lr * min(1.0, (step - warm0 + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
            for gopt in opt.param_groups:
                gopt["lr"] = lr
            bd = to_dev(b, dev)
            with amp(dev):
                if b["kind"] in ("lm", "qa"):
                    loss, st = lm_step(model, bd)
                    tokens_seen["lm"] += b["x"].size
                else:
                    loss, st = mem_step(model, bd, args, oracle=(ph == "b"), use_memory=b["use_memory"])
                    tokens_seen["mem_docs"] += b["docs"].size
                    tokens_seen["question"] += int(b["valid"].sum())
                    st["ctx"] = int(b["context"])
                    st["mem"] = int(b["use_memory"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            n_ph += 1
            st.update({"step": step, "phase": ph, "loss": loss.item(), "lr": lr, "gnorm": gn.item()})
            hist.append(st)
            if step % 25 == 0 or n_ph == 1:
                log(st)
            if stop_now():
                stopped = True
                break
        if stopped:
            # the whole state, for --continue; the phase goes on there
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "args": vars(args),
                        "config": c.to_dict(), "step": step, "phase": pi,
                        "in_phase_steps": n_ph, "in_phase_seconds": time.time() - t_ph,
                        "train_seconds": time.time() - t_train0, "tokens": tokens_seen,
                        "hist": hist, "segment": segment, "warm0": warm0,
                        "sched0": sched0},
                       os.path.join(args.out, "state.pt"))
            phase_box["stop"] = True
            log({"event": "stopped", "phase": ph, "steps_in_phase": n_ph, "total_steps": step,
                 "train_seconds": round(time.time() - t_train0, 1)})
            return
        if n_ph == 0:
            continue  # a phase given no time (a resumed run's phase c alone)
        # end of phase: validation and checkpoint
        model.eval()
        v = val_lm(model, val, dev)
        mv = {}
        with torch.no_grad():
            for ctx in (False, True):
                accs = []
                for r in range(2):
                    nq = args.val_questions
                    vb = val_batcher.mem_batch(nq if not ctx else max(1, nq // 4),
                                               2 * nq if not ctx else nq, 2 * nq, context=ctx,
                                               lo=n_train_ex, hi=facts.n)
                    vbd = to_dev(vb, dev)
                    with amp(dev):
                        _, st = mem_step(model, vbd, args, oracle=False, use_memory=True)
                    accs.append(st)
                mv["ctx" if ctx else "mem"] = {k: float(np.mean([a[k] for a in accs])) for k in ("acc", "ans", "recall")}
        model.train()
        log({"event": "phase_end", "phase": ph, "steps": n_ph, "total_steps": step,
             "val_lm_loss": v, "val_mem": mv, "tokens": dict(tokens_seen),
             "train_seconds": round(time.time() - t_train0, 1)})
        save_ckpt(model, args.out, {"config": c.to_dict(), "params": n_params, "steps": step,
                                    "phase": ph, "tokens": dict(tokens_seen), "seed": args.seed,
                                    "train_seconds": round(time.time() - t_train0, 1),
                                    "started_from": {"steps": warm0, "train_seconds": sched0},
                                    "args": vars(args)}, dtype=args.ckpt_dtype)
    phase_box["stop"] = True
    try:
        while True:
            qb.get_nowait()
    except queue.Empty:
        pass
    with open(os.path.join(args.out, "train_hist.json"), "w") as f:
        json.dump(hist, f)
    if args.eval_gpu:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import eval_memory
        model.eval()
        res = eval_memory.gpu_eval(model, args.eval_gpu, dev, deadline=time.time() + args.eval_time,
                                   log=log)
        with open(os.path.join(args.out, "eval_gpu.json"), "w") as f:
            json.dump(res, f, indent=1)
    log({"event": "done", "wall": round(time.time() - t_start, 1)})


if __name__ == "__main__":
    main()
