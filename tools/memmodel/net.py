"""net.py -- the memory model in PyTorch (the llama architecture exactly as
msadb's runtime runs it), its checkpoints, and the model a GGUF file holds.

Shared by memmodel.train (training) and memmodel.gpu_eval (evaluation through
PyTorch); memmodel.evaluate uses torch_from_gguf for its check command."""
import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import gguf


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
    means [kv, P, hd] (f32, over valid tokens); doc [P] (document index);
    nb: blocks per row (block p is block p % nb of its document)."""

    def __init__(self, K, V, valid, doc=None, nb=None):
        self.K, self.V, self.valid, self.doc = K, V, valid, doc
        self.nb = nb or K.shape[1]
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
        # a learned routing key (memmodel.router): [memory layers, kv, hd, hd],
        # the map a question's query goes through before it meets the mean keys
        self.router = None
        # route as msadb's MSADB_SCORE_DOT_CENTRED (centre_scores), not plain dot
        self.route_centred = False
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
        t_idx = torch.arange(T, device=tok.device)
        is_prompt = t_idx[None, :] < plen[:, None]
        is_ans_in = (~is_prompt) & (t_idx[None, :] < (valid.sum(1) - 1)[:, None])
        causal = torch.ones(T, T, dtype=torch.bool, device=tok.device).tril()
        aux_loss = x.new_zeros((), dtype=torch.float32)
        info = {"recall": [], "best_block": None}
        mi = 0
        for i, l in enumerate(self.layers):
            q, k, v = self.qkv(l, x, pos)
            if pools is None or i not in self.mem:
                o = sdpa(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=True)
                x = self.finish(l, x, o)
                continue
            pool = pools[mi]
            mi += 1
            s = self.route_scores(q, pool.means.detach() if detach_pool else pool.means, mi - 1)
            # the prompt's tokens share one selection: max over them [B, kv, P]
            sp = prompt_scores(s, is_prompt)
            if self.route_centred:
                s, sp = centre_scores(s, pool), centre_scores(sp, pool)
            sel_p, idx_u, mmask = self.select_blocks(s, sp, is_prompt, valid, pool,
                                                     min(top_k, pool.P),
                                                     (gold_p, gold_a) if oracle else None)
            if gold_p is not None:
                info["recall"].append((sel_p == gold_p[:, None, :1]).any(-1).float().mean().item())
            if mi == len(pools):
                info["best_block"] = sp.detach().reshape(B, -1).argmax(-1) % pool.P
                info["sel_p"] = sel_p
            o = self.memory_attention(q, k, v, pool, idx_u, mmask, causal, detach_pool)
            x = self.finish(l, x, o)
            if aux and gold_p is not None:
                aux_loss = aux_loss + self.routing_loss(s, sp, gold_p, gold_a, is_ans_in)
        return x, aux_loss, info

    def route_scores(self, q, means, m=None):
        """msadb's routing score of every (token, block) pair: per kv head, the
        max over the group's q heads of q . mean(block keys), in f32; with a
        learned router, of (q R[m, kv]) . mean.
        q [B, H, T, hd], means [kv, P, hd] -> [B, kv, T, P]."""
        c = self.c
        B, _, T, _ = q.shape
        G = c.n_heads // c.n_kv
        qg = q.float().view(B, c.n_kv, G, T, c.hd)
        s = None
        with (torch.autocast("cuda", enabled=False) if q.is_cuda else amp(q.device)):
            if self.router is not None and m is not None:
                qg = torch.einsum("bkgtd,kde->bkgte", qg, self.router[m].to(qg.device, torch.float32))
            for g in range(G):
                sg = torch.einsum("bktd,kpd->bktp", qg[:, :, g], means.float())
                s = sg if s is None else torch.maximum(s, sg)
        return s

    @torch.no_grad()
    def select_blocks(self, s, sp, is_prompt, valid, pool, kk, gold=None):
        """Top-kk blocks per kv head: one selection for the prompt's tokens
        (scores sp), one per answer token (scores s); gold = (gold_p, gold_a)
        forces the gold blocks in (oracle).  Returns the prompt's selection
        [B, kv, kk], the union of selected blocks idx_u [B, kv, nu] and the
        mask of the memory keys each token sees [B, kv, T, nu * 64]."""
        c = self.c
        B, _, T, P = s.shape
        dev = s.device
        sp_sel, s_sel = sp.detach(), s.detach()
        if gold is not None and gold[0] is not None:
            gold_p, gold_a = gold
            sp_sel = sp_sel.clone()
            sp_sel.scatter_(2, gold_p[:, None, :].expand(B, c.n_kv, -1), float("inf"))
            s_sel = s_sel.clone()
            s_sel.scatter_(3, gold_a[:, None, None, :].expand(B, c.n_kv, T, -1), float("inf"))
        sel_p = sp_sel.topk(kk, dim=-1).indices
        vis_p = torch.zeros(B, c.n_kv, P, dtype=torch.bool, device=dev)
        vis_p.scatter_(2, sel_p, True)
        sel_t = s_sel.topk(kk, dim=-1).indices
        vis = torch.zeros(B, c.n_kv, T, P, dtype=torch.bool, device=dev)
        vis.scatter_(3, sel_t, True)
        vis = torch.where(is_prompt[:, None, :, None], vis_p[:, :, None, :], vis)
        vis &= valid[:, None, :, None]
        union = vis.any(2)
        nu = max(int(union.sum(-1).max().item()), 1)
        idx_u = union.float().topk(nu, dim=-1).indices  # [B, kv, nu]
        valid_u = union.gather(2, idx_u)
        vis_u = vis.gather(3, idx_u[:, :, None, :].expand(B, c.n_kv, T, nu))
        vis_u &= valid_u[:, :, None, :]
        bv = pool.valid[idx_u]  # [B, kv, nu, 64]
        mmask = (vis_u[..., None] & bv[:, :, None, :, :]).reshape(B, c.n_kv, T, nu * BLOCK)
        return sel_p, idx_u, mmask

    def memory_attention(self, q, k, v, pool, idx_u, mmask, causal, detach_pool=False):
        """One softmax over the selected blocks' keys (mask mmask) and the
        question's own causal keys; the heads' outputs [B, H, T, hd]."""
        c = self.c
        B, _, T, _ = q.shape
        G = c.n_heads // c.n_kv
        nu = idx_u.shape[2]
        Kp = pool.K.detach() if detach_pool else pool.K
        Vp = pool.V.detach() if detach_pool else pool.V
        ar = torch.arange(c.n_kv, device=q.device)[None, :, None]
        Ks = Kp[ar, idx_u].reshape(B, c.n_kv, nu * BLOCK, c.hd).to(k.dtype)
        Vs = Vp[ar, idx_u].reshape(B, c.n_kv, nu * BLOCK, c.hd).to(v.dtype)
        K_all = torch.cat([Ks, k], 2).repeat_interleave(G, 1)
        V_all = torch.cat([Vs, v], 2).repeat_interleave(G, 1)
        mask = torch.cat([mmask, causal[None, None].expand(B, c.n_kv, T, T)], 3)
        return sdpa(q, K_all, V_all, attn_mask=mask.repeat_interleave(G, 1))

    def routing_loss(self, s, sp, gold_p, gold_a, is_ans_in):
        """softplus(logsumexp(non-gold scores) - gold score), for the prompt's
        shared selection and for each answer token, averaged."""
        c = self.c
        B, _, T, P = s.shape
        scale = 1.0 / math.sqrt(c.hd)
        neg = torch.finfo(s.dtype).min
        # every question has as many gold entries (padded by repeating), so the mean
        # of the per-question margins is the mean over all
        loss_p = prompt_margin(sp, gold_p, c.hd).mean()
        la = s * scale
        gma = torch.zeros(B, P, dtype=torch.bool, device=s.device)
        gma.scatter_(1, gold_a, True)
        lsea = torch.logsumexp(la.masked_fill(gma[:, None, None], neg), -1)  # [B, kv, T]
        lga = la.gather(3, gold_a[:, None, None, :].expand(B, c.n_kv, T, -1))
        w = is_ans_in[:, None, :, None].float()
        loss_a = (F.softplus(lsea[..., None] - lga) * w).sum() / (
            w.sum() * c.n_kv * gold_a.shape[1]).clamp(min=1)
        return loss_p + loss_a


def parse_layout(text):
    """A --grow layout ("0,1,2,3,new,new,4,5,6,7,new,new") as a list: an old
    layer's index, or -1 for a new layer."""
    out = []
    for w in text.split(","):
        w = w.strip()
        if w == "new":
            out.append(-1)
        elif w.isdigit():
            out.append(int(w))
        else:
            raise ValueError("--grow: %r is neither a layer index nor 'new'" % w)
    return out


def grow(model, layout):
    """A deeper model that computes what model computes: layout lists, per
    layer of the new model, the old layer it takes (its index) or -1 for a
    new one.  Every old layer is taken once, in order, and stays a memory
    layer or a non-memory layer under the new depth's rule (the latter
    half); a new layer starts with its two output maps (wo, w_down) at zero,
    so it adds nothing to the residual stream until it is trained.  The
    learned router, if any, is dropped.  Raises ValueError on a layout that
    breaks these rules."""
    import copy
    old = model.c
    kept = [i for i in layout if i >= 0]
    if kept != list(range(old.n_layers)):
        raise ValueError("--grow: the layout must take layers 0..%d once each, in order (got %s)"
                         % (old.n_layers - 1, kept))
    c = config_of({"config": old.to_dict()})
    c.n_layers = len(layout)
    new_mem, old_mem = set(c.mem_layers()), set(old.mem_layers())
    for j, i in enumerate(layout):
        if i >= 0 and ((i in old_mem) != (j in new_mem)):
            raise ValueError("--grow: old layer %d is %sa memory layer but would sit at %d, which "
                             "is %sone; put the new layers so that the latter half of %d layers "
                             "holds exactly the old memory layers and new ones"
                             % (i, "" if i in old_mem else "not ", j,
                                "" if j in new_mem else "not ", c.n_layers))
    m = Model(c)
    with torch.no_grad():
        m.tok.weight.copy_(model.tok.weight)
        m.out_norm.copy_(model.out_norm)
        for j, i in enumerate(layout):
            if i >= 0:
                m.layers[j] = copy.deepcopy(model.layers[i])
            else:
                m.layers[j].wo.weight.zero_()
                m.layers[j].w_down.weight.zero_()
    return m.to(model.tok.weight.device)


def parse_shape(text):
    """A --widen shape ("d=576,n_heads=9,ffn=1728") as a dict of Config fields."""
    out = {}
    for w in text.split(","):
        k, _, v = w.strip().partition("=")
        if k not in ("d", "n_heads", "n_kv", "ffn") or not v.isdigit():
            raise ValueError("--widen: %r is not d=N, n_heads=N, n_kv=N or ffn=N" % w)
        out[k] = int(v)
    return out


def widen(model, shape, std=0.02):
    """A wider model that computes what model computes: shape gives the new d,
    n_heads, n_kv and ffn (each at least the old; head size unchanged, so
    d = n_heads x hd; q heads per kv head unchanged: a new q head in an old
    group would join the max that routes the group, so new heads come with
    new kv heads).
    The new residual dimensions start at zero (zero embedding columns and
    zero output rows), the RMS norms' weights are scaled by sqrt(old d / new
    d) and their epsilon by old d / new d, so that they give the old values
    on the old dimensions exactly, new heads and
    new FFN units start with random input maps and zero output maps, and
    every input map gets random columns for the new dimensions (they meet
    zeros until the new dimensions are trained).  The learned router, if
    any, is dropped.  Raises ValueError on a shape that would shrink or
    regroup the model."""
    import copy
    old = model.c
    c = config_of({"config": old.to_dict()})
    for k, v in shape.items():
        setattr(c, k, v)
    G0, G = old.n_heads // old.n_kv, c.n_heads // max(c.n_kv, 1)
    if (c.d < old.d or c.ffn < old.ffn or c.n_kv < old.n_kv or c.n_heads % max(c.n_kv, 1)
            or G != G0 or c.d != c.n_heads * old.hd):
        raise ValueError("--widen: d, ffn and n_kv may only grow, q heads per kv head stay %d, "
                         "and d must be n_heads x %d (old: d %d, %d heads, %d kv, ffn %d; "
                         "asked %s)" % (G0, old.hd, old.d, old.n_heads, old.n_kv, old.ffn, shape))
    hd, d0 = old.hd, old.d
    # the mean over d of (old dims, zeros) is the old mean x d0/d: with eps scaled alike
    # every norm's rsqrt is the old one x sqrt(d/d0), which the weights' scale undoes
    c.eps = old.eps * d0 / c.d
    qrows = torch.arange(old.n_heads * hd)  # old heads keep their places; new kv heads follow
    scale = math.sqrt(d0 / c.d)
    m = Model(c)
    gen = torch.Generator().manual_seed(c.d * 131 + c.ffn)

    def rnd(*size):
        return torch.randn(*size, generator=gen) * std

    def norm_w(w):
        out = torch.full((c.d,), float(w.float().mean()) * scale)
        out[:d0] = w.float() * scale
        return out

    with torch.no_grad():
        m.tok.weight.zero_()
        m.tok.weight[:, :d0] = model.tok.weight.float().cpu()
        m.out_norm.copy_(norm_w(model.out_norm.cpu()))
        for lo, ln in zip(model.layers, m.layers):
            lo = copy.deepcopy(lo).float().cpu()
            ln.attn_norm.copy_(norm_w(lo.attn_norm))
            ln.ffn_norm.copy_(norm_w(lo.ffn_norm))
            for name, rows in (("wq", qrows), ("wk", None), ("wv", None),
                               ("w_gate", None), ("w_up", None)):
                w, wn = getattr(lo, name).weight, getattr(ln, name).weight
                wn.copy_(rnd(*wn.shape))
                if rows is None:
                    wn[:w.shape[0], :d0] = w
                else:
                    wn[rows, :d0] = w
            wo, wd = ln.wo.weight, ln.w_down.weight
            wo.zero_()
            wo[:d0, qrows] = lo.wo.weight
            wd.zero_()
            wd[:d0, :old.ffn] = lo.w_down.weight
    return m.to(model.tok.weight.device)


CENTRE_PRIOR = 16.0  # msadb's (libmsadb/query/query.c)


def centre_scores(s, pool):
    """msadb's position-centred routing score (MSADB_SCORE_DOT_CENTRED) of
    scores s [..., P] over the pool's blocks: less the mean score of the
    valid blocks at the same position (block index in the document),
    shrunk toward the mean over all valid blocks with CENTRE_PRIOR blocks'
    weight.  Blocks with no valid token count in no mean."""
    P = s.shape[-1]
    slot = torch.arange(P, device=s.device) % pool.nb
    vb = pool.valid.any(1).to(s.dtype)
    onehot = F.one_hot(slot, pool.nb).to(s.dtype) * vb[:, None]  # [P, nb]
    gm = (s * vb).sum(-1, keepdim=True) / vb.sum().clamp(min=1)
    bias = (s @ onehot + CENTRE_PRIOR * gm) / (onehot.sum(0) + CENTRE_PRIOR)
    return s - bias[..., slot]


def prompt_scores(s, is_prompt):
    """The prompt's shared routing scores: s [B, kv, T, P] at its best over
    the prompt's tokens (is_prompt [B, T]) -> [B, kv, P]."""
    return s.masked_fill(~is_prompt[:, None, :, None], torch.finfo(s.dtype).min).amax(2)


def prompt_margin(sp, gold_p, hd):
    """Per question [B]: softplus(logsumexp(non-gold scores) - gold score) of
    the prompt's scores sp [B, kv, P] / sqrt(hd), gold blocks gold_p [B, n],
    averaged over the kv heads and gold blocks."""
    B, kv, P = sp.shape
    lp = sp / math.sqrt(hd)
    gm = torch.zeros(B, P, dtype=torch.bool, device=sp.device)
    gm.scatter_(1, gold_p, True)
    lse = torch.logsumexp(lp.masked_fill(gm[:, None], torch.finfo(lp.dtype).min), -1)
    lg = lp.gather(2, gold_p[:, None, :].expand(B, kv, -1))
    return F.softplus(lse[..., None] - lg).mean((1, 2))


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
        pools.append(Pool(K, V, vb, doc, nb))
    return pools



# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------

PART_BYTES = 15 << 20  # each checkpoint file under the 16 MB transfer limit


def save_ckpt(model, out, meta, dtype="fp32"):
    """The model's state in files ckpt_0.pt .. ckpt_{n-1}.pt (save_state)."""
    save_state(model.state_dict(), out, meta, dtype)


def save_state(state, out, meta, dtype="fp32"):
    """A state dict in files ckpt_0.pt .. ckpt_{n-1}.pt of at most 15 MB each
    (whole tensors, in state order), meta["parts"] = n; dtype "bf16" halves
    the bytes (for models whose fp32 state would need too many files)."""
    td = torch.bfloat16 if dtype == "bf16" else torch.float32
    sd = {k: v.detach().to(td).cpu() for k, v in state.items()}
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




def torch_from_gguf(path):
    """The PyTorch model with the weights the GGUF file holds (dequantized);
    the file's metadata in its gguf_meta."""
    import torch
    r = gguf.GGUFReader(path)
    mt = r.meta
    c = Config()
    c.n_layers = mt["llama.block_count"]
    c.d = mt["llama.embedding_length"]
    c.ffn = mt["llama.feed_forward_length"]
    c.n_heads = mt["llama.attention.head_count"]
    c.n_kv = mt["llama.attention.head_count_kv"]
    c.hd = mt.get("llama.attention.key_length", c.d // c.n_heads)
    c.ctx = mt["llama.context_length"]
    c.theta = mt["llama.rope.freq_base"]
    c.eps = mt["llama.attention.layer_norm_rms_epsilon"]
    c.vocab = len(mt["tokenizer.ggml.tokens"])
    m = Model(c)
    sd = {"tok.weight": r.tensor_f32("token_embd.weight"), "out_norm": r.tensor_f32("output_norm.weight")}
    names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}
    for i in range(c.n_layers):
        sd["layers.%d.attn_norm" % i] = r.tensor_f32("blk.%d.attn_norm.weight" % i)
        sd["layers.%d.ffn_norm" % i] = r.tensor_f32("blk.%d.ffn_norm.weight" % i)
        for a, b in names.items():
            sd["layers.%d.%s.weight" % (i, a)] = r.tensor_f32("blk.%d.%s.weight" % (i, b))
    m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    m.gguf_meta = mt
    return m.eval()
