"""Memory for Hugging Face transformers causal LMs (Llama, Mistral,
Qwen2, Qwen3 and other models whose attention layers call the attention
function registry of transformers 5.x).

    import msadb, msadb.transformers as mt
    sig = mt.signature_for(model, dtype="f16")
    with msadb.Store.open_or_create("memory.msadb", sig) as st:
        mt.ingest(model, st, ["some text", ...], tokenizer=tok)
        with mt.MemoryAttention(model, st, top_k=16) as mem:
            out = model.generate(**tok("question", return_tensors="pt"), max_new_tokens=20)
        print(mem.blocks_read, mem.spans())

How it works.  :func:`register` adds an attention function named
``"msadb"`` to transformers' ``AttentionInterface`` (and the eager mask
format to ``AttentionMaskInterface``).  The function receives each layer's
queries and keys after RoPE (and after any q/k norm), computes the local
attention together with its log-sum-exp (float32), and then:

- while :func:`ingest` runs, hands every layer's new keys and values to a
  :class:`msadb.Capture` (documents run one at a time at positions
  0..T-1: document-wise positions);
- inside a :class:`MemoryAttention` block, in the store's memory layers,
  asks the store for memory attention of the layer's queries and merges it
  with the local result by LSE (exactly one softmax over both key sets).
  The prompt's queries route (one selection per layer, kv head and batch
  row); each generated token then attends the same blocks
  (``msadb_attend_blocks``) unless ``route_each_token``; ``exact`` attends
  every block.

The store lives in host memory (LMDB).  Per memory layer and forward pass
the host receives the queries (float32 [n, q heads, head dim]) and, for
CUDA tensors, sends back the memory output and LSE; during ingest the new
keys and values go to the host once.  Tensors on the CPU are shared with
numpy where the layout allows (the merge runs in place in the library).
:attr:`MemoryAttention.transfer_ms` measures those copies.

This module imports torch; transformers itself only when :func:`register`
is called, so the attention function can also be driven directly.
"""
import time
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from . import errors
from .errors import invalid
from .runtime import Span, cited_spans
from .store import HIT_DTYPE, Signature, Store

ATTN_NAME = "msadb"

# the state of the models running with msadb attention, by id of their config
_ACTIVE: Dict[int, object] = {}


def _cfg(model_or_config):
    cfg = getattr(model_or_config, "config", model_or_config)
    return getattr(cfg, "get_text_config", lambda: cfg)()


def signature_for(model_or_config, *, memory_layers: Optional[Sequence[int]] = None,
                  block_size: int = 64, dtype: str = "f16",
                  summaries: Optional[Sequence[str]] = None) -> Signature:
    """The store signature of a transformers model (or its config): its
    layers, q and kv heads and head dim; memory in the latter half of the
    layers unless ``memory_layers`` says otherwise."""
    c = _cfg(model_or_config)
    H = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or H
    hd = getattr(c, "head_dim", None) or c.hidden_size // H
    return Signature(c.num_hidden_layers, kv, H, hd, memory_layers=memory_layers,
                     block_size=block_size, dtype=dtype, summaries=summaries)


def _check_shape(model, store: Store, what: str) -> Signature:
    """The store's signature, if it has the model's layers, heads and head
    dim (SignatureMismatch otherwise)."""
    sig = store.signature
    want = signature_for(model)
    if (sig.n_layers, sig.n_kv_heads, sig.n_q_heads, sig.head_dim) != \
            (want.n_layers, want.n_kv_heads, want.n_q_heads, want.head_dim):
        raise errors.SignatureMismatch(errors.ESIGNATURE, what, "the store was made for %d layers, "
                                       "%d kv / %d q heads, head dim %d; the model has %d, %d / %d, %d"
                                       % (sig.n_layers, sig.n_kv_heads, sig.n_q_heads, sig.head_dim,
                                          want.n_layers, want.n_kv_heads, want.n_q_heads, want.head_dim))
    return sig


def register() -> bool:
    """Registers the ``"msadb"`` attention function (and its mask format:
    eager's additive float mask) with transformers.  Idempotent.  Returns
    False when transformers is not installed (a host may still call
    :func:`msadb_attention` from its own attention layers)."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(ATTN_NAME, msadb_attention)
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
        AttentionMaskInterface.register(ATTN_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    except ImportError:  # older releases build the mask without a registry
        pass
    return True


def _set_impl(model, name: str) -> str:
    prev = model.config._attn_implementation
    try:
        model.set_attn_implementation(name)
    except Exception:  # a model without the method, or one that refuses the name
        model.config._attn_implementation = name
    return prev


def local_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Optional[torch.Tensor], scaling: float):
    """Softmax attention with its log-sum-exp, in float32: query [B, H, q, D],
    key/value [B, KV, k, D] (GQA: q head h reads kv head h // (H / KV)),
    mask additive float or boolean (True = attend) broadcastable to
    [B, H, q, k], or None (causal, the last q keys being the queries').
    Returns out [B, H, q, D] and lse [B, H, q] (-inf for a row that sees
    nothing)."""
    B, H, q, D = query.shape
    KV, k = key.shape[1], key.shape[2]
    G = H // KV
    qf = query.float().reshape(B, KV, G * q, D)
    s = torch.matmul(qf, key.float().transpose(-1, -2)).reshape(B, H, q, k) * scaling
    if attention_mask is not None:
        m = attention_mask[..., :k]
        if m.dtype == torch.bool:
            s = s.masked_fill(~m, float("-inf"))
        else:
            s = s + m.float()
    elif q > 1:
        causal = torch.ones(q, k, dtype=torch.bool, device=s.device).tril(k - q)
        s = s.masked_fill(~causal, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1).clamp(min=torch.finfo(torch.float32).min))
    p = torch.nan_to_num(p, nan=0.0)
    out = torch.matmul(p.reshape(B, KV, G * q, k), value.float()).reshape(B, H, q, D)
    return out, lse


def lse_merge_torch(o1, l1, o2, l2):
    """msadb_lse_merge on tensors (any device): o [..., D], l [...]."""
    m = torch.maximum(l1, l2)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
    z = w1 + w2
    zs = torch.where(z > 0, z, torch.ones_like(z))
    o = (w1.unsqueeze(-1) * o1 + w2.unsqueeze(-1) * o2) / zs.unsqueeze(-1)
    return o, m + torch.log(z)


def msadb_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function registered as ``"msadb"`` (transformers'
    signature: query [B, H, q, D], key/value [B, KV, k, D] after RoPE,
    returns (out [B, q, H, D], None)).  Without an active ingest or
    MemoryAttention it is plain attention."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise invalid("msadb attention", "sliding windows and logit soft-capping are not supported "
                      "(memory keys would escape them)")
    out, lse = local_attention(query, key, value, attention_mask, scaling)
    state = _ACTIVE.get(id(getattr(module, "config", None)))
    if state is not None:
        out = state.hook(module.layer_idx, query, key, value, out, lse, scaling)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


class _Capture:
    """Ingest state: the capture of the document running now."""

    def __init__(self):
        self.cap = None
        self.transfer_ms = 0.0

    def hook(self, layer, query, key, value, out, lse, scaling):
        if self.cap is not None:
            n = query.shape[2]
            t = time.perf_counter()
            kk = key[0, :, -n:, :]
            if self.index is not None:
                kk = kk[..., self.index.to(kk.device)]
            k = kk.float().cpu().numpy()
            v = value[0, :, -n:, :].float().cpu().numpy()
            self.transfer_ms += (time.perf_counter() - t) * 1e3
            first = self.first.get(layer, 0)
            self.cap.kv(layer, first, k, v)
            self.first[layer] = first + n
        return out


KEY_LAYOUTS = ("model", "pairs")


def _layout_index(key_layout: str, head_dim: int, device):
    """None for the model's own layout; for "pairs", the index that
    reorders each head's dims from transformers' RoPE layout (dim j rotates
    with dim j + D/2) to GGUF's (dims 2j and 2j+1 rotate together)."""
    if key_layout not in KEY_LAYOUTS:
        raise invalid("key_layout", "%r: one of %s" % (key_layout, ", ".join(KEY_LAYOUTS)))
    if key_layout == "model":
        return None
    return torch.arange(head_dim, device=device).view(2, head_dim // 2).t().reshape(-1)


def _paragraph_starts(text: str) -> List[int]:
    """Where msadb's ingest by paragraph and joined ingest cut a text (the
    C runtime's rule): at 0 and before each character that follows a blank
    line ("\\n\\n") and is neither "\\n" nor "\\r"; the line breaks stay
    with the paragraph before them.  Character offsets."""
    return [0] + [p for p in range(2, len(text))
                  if text[p - 2] == "\n" and text[p - 1] == "\n" and text[p] not in "\n\r"]


def _tokenize(tokenizer, text: str, segment: str = "document"):
    """(ids, byte spans or None) of text: tokenized whole ("document") or
    each paragraph on its own and joined ("joined")."""
    starts = _paragraph_starts(text) if segment == "joined" and text else [0]
    ids, off = [], []
    for a, e in zip(starts, starts[1:] + [len(text)]):
        enc = tokenizer(text[a:e], add_special_tokens=False, return_offsets_mapping=True)
        ids += list(enc["input_ids"])
        o = enc.get("offset_mapping")
        off = None if o is None or off is None else off + [(x + a, y + a) for x, y in o]
    spans = None
    if off is not None:
        # character offsets -> byte offsets of the UTF-8 text
        b = np.cumsum([0] + [len(ch.encode("utf-8")) for ch in text])
        spans = np.asarray([(b[a], b[e]) for a, e in off], np.int64).reshape(-1, 2)
    return np.asarray(ids, np.int32), spans


def model_segment(model) -> str:
    """How msadb's ingest reads a text for ``model``: the ``segment`` of the
    ``msadb_source`` entry of its config (written by
    tools/memmodel/hf_convert.py from the GGUF key msadb.segment), else
    "document"."""
    src = getattr(model.config, "msadb_source", None) or {}
    return (src.get("segment") if isinstance(src, dict) else None) or "document"


def ingest(model, store: Store, documents: Sequence[Union[str, Sequence[int], Dict]], *,
           tokenizer=None, space: Optional[str] = None, titles: Optional[Sequence[str]] = None,
           chunk: int = 0, key_layout: str = "model", stats: Optional[dict] = None,
           segment: Optional[str] = None) -> List[int]:
    """Runs each document through ``model`` on its own at positions 0..T-1
    and stores the keys (after RoPE) and values of the store's memory
    layers, all documents in one batch (all or nothing).  A document is a
    text (tokenized with ``tokenizer``, without special tokens; byte spans
    kept when the tokenizer gives offsets; ``segment`` "joined" tokenizes
    each paragraph on its own and joins the ids, as the built-in runtime's
    joined mode does, "document" the text whole, "paragraph" is refused
    for texts; default: the model's own, :func:`model_segment`), a
    sequence of token ids, or a
    dict with ``ids`` and optionally ``text``, ``spans`` (byte [start,
    end) per token), ``title``, ``meta``.  ``chunk`` > 0 runs long
    documents in chunks of that many tokens through the model's KV cache.
    ``key_layout="pairs"`` stores each head's key dims in GGUF's RoPE
    order (see :class:`MemoryAttention`).  Returns the new documents' ids."""
    register()
    sig = _check_shape(model, store, "ingest")
    segment = segment or model_segment(model)
    if segment not in ("document", "joined", "paragraph"):
        raise invalid("ingest", "segment %r: expected \"document\", \"joined\" or \"paragraph\""
                      % (segment,))
    dev = next(model.parameters()).device
    state = _Capture()
    state.index = _layout_index(key_layout, sig.head_dim, "cpu")
    key = id(model.config)
    prev = _set_impl(model, ATTN_NAME)
    _ACTIVE[key] = state
    try:
        with torch.no_grad(), store.batch() as batch:
            for i, d in enumerate(documents):
                if isinstance(d, dict):
                    item = dict(d)
                elif isinstance(d, str):
                    if tokenizer is None:
                        raise invalid("ingest", "text documents need a tokenizer")
                    if segment == "paragraph":
                        raise invalid("ingest", "document %d: segment \"paragraph\" runs each "
                                      "paragraph on its own, which transformers ingest does not "
                                      "do: pass each paragraph as a document, or give "
                                      "segment=\"joined\"" % i)
                    ids, spans = _tokenize(tokenizer, d, segment)
                    item = {"ids": ids, "text": d, "spans": spans}
                else:
                    item = {"ids": d}
                ids = np.asarray(item["ids"], np.int64)
                if ids.ndim != 1 or ids.size == 0:
                    raise invalid("ingest", "document %d: no tokens" % i)
                title = item.get("title") or (titles[i] if titles else None)
                state.cap = store.capture()
                state.first = {}
                T = ids.size
                step = chunk if chunk > 0 else T
                cache = None
                for a in range(0, T, step):
                    inp = torch.as_tensor(ids[a:a + step], device=dev)[None]
                    pos = torch.arange(a, a + inp.shape[1], device=dev)[None]
                    if step < T:
                        r = model(input_ids=inp, position_ids=pos, past_key_values=cache, use_cache=True)
                        cache = r.past_key_values
                    else:
                        model(input_ids=inp, position_ids=pos, use_cache=False)
                cap, state.cap = state.cap, None
                cap.add_to(batch, T, space=space, title=title, text=item.get("text"),
                           token_ids=ids.astype(np.int32), spans=item.get("spans"), meta=item.get("meta"))
    finally:
        if state.cap is not None:
            state.cap.close()
        _ACTIVE.pop(key, None)
        _set_impl(model, prev)
    if stats is not None:
        stats["transfer_ms"] = state.transfer_ms
    return batch.ids


class MemoryAttention:
    """Memory inside a model's attention, for the length of a ``with``
    block (or between :meth:`start` and :meth:`stop`): the model's attention
    implementation is switched to ``"msadb"`` and back.

    Options as :meth:`msadb.Snapshot.attend`: ``spaces``, ``top_k``,
    ``select``, ``summary``, ``score``, ``exact``; ``route_each_token``
    routes every generated token again (default: route on the prompt,
    attend the same blocks afterwards).  A forward pass of more than one
    token is a new prompt: it routes again.  ``key_layout="pairs"``
    reorders each head's query (and, at ingest, key) dims from
    transformers' RoPE layout to GGUF's, for a model converted from GGUF by
    tools/memmodel/hf_convert.py: the store is then the one msadb's built-in runtime
    fills and reads (attention scores do not change, since queries and keys
    are reordered alike).

    After (or during) generation: :attr:`blocks_read` (blocks read, all
    layers and steps), :attr:`tokens_attended`, :attr:`hits` (the last
    selection per memory layer: HIT_DTYPE array of batch row 0),
    :meth:`spans` (cited spans of the last memory layer's selection),
    :attr:`transfer_ms` (host<->device copies) and :attr:`store_ms`
    (time in the library)."""

    def __init__(self, model, store: Store, *, spaces=None, top_k: int = 16, select: str = "blocks",
                 summary: Optional[str] = None, score: Optional[str] = None, exact: bool = False,
                 route_each_token: bool = False, key_layout: str = "model"):
        self.model, self.store = model, store
        self.index = _layout_index(key_layout, store.signature.head_dim, "cpu")
        self.opts = dict(spaces=spaces, top_k=top_k, select=select, summary=summary, score=score)
        self.exact, self.route_each_token = exact, route_each_token
        sig = _check_shape(model, store, "MemoryAttention")
        self.memory_layers = set(sig.memory_layers)
        #: None: merge on the host for CPU tensors (in place, in the library)
        #: and on the device otherwise; True/False force one way
        self.merge_on_device = None
        self.snap = None
        self._prev = None
        self.reset_stats()

    def reset_stats(self) -> None:
        self.blocks_read = 0
        self.tokens_attended = 0
        self.transfer_ms = 0.0
        self.store_ms = 0.0
        self.calls = 0
        self.hits: Dict[int, np.ndarray] = {}
        self._sel: Dict[tuple, np.ndarray] = {}

    def start(self) -> "MemoryAttention":
        register()
        self.snap = self.store.snapshot()
        self._prev = _set_impl(self.model, ATTN_NAME)
        _ACTIVE[id(self.model.config)] = self
        return self

    def stop(self) -> None:
        _ACTIVE.pop(id(self.model.config), None)
        if self._prev is not None:
            _set_impl(self.model, self._prev)
            self._prev = None
        if self.snap is not None:
            self.snap.close()
            self.snap = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def renew(self) -> None:
        """Moves the snapshot to the newest commit and forgets the selections."""
        self.snap.renew()
        self._sel.clear()

    def hook(self, layer, query, key, value, out, lse, scaling):
        if layer not in self.memory_layers:
            return out
        B, H, n, D = query.shape
        cpu = not self.merge_on_device if self.merge_on_device is not None else query.device.type == "cpu"
        res = []
        for b in range(B):
            t0 = time.perf_counter()
            qb = query[b].detach()
            if self.index is not None:
                qb = qb[..., self.index.to(qb.device)]
            qh = qb.float().transpose(0, 1).contiguous()  # [n, H, D]
            qn = qh.cpu().numpy()
            if cpu:
                o = out[b].transpose(0, 1).contiguous()  # [n, H, D], merged in place
                l = lse[b].transpose(0, 1).contiguous()
                on, ln = o.numpy(), l.numpy()
            t1 = time.perf_counter()
            # for CUDA tensors this includes waiting for the layer's queued
            # GPU work (the copy synchronizes): an upper bound of the copy
            self.transfer_ms += (t1 - t0) * 1e3
            sel = self._sel.get((layer, b))
            if self.exact or sel is None or n > 1 or self.route_each_token:
                kw = dict(self.opts, exact=self.exact, scale=scaling)
                if cpu:
                    a = self.snap.attend_merge(layer, qn, on, ln, **kw)
                else:
                    a = self.snap.attend(layer, qn, **kw)
                if not self.exact:
                    self._sel[(layer, b)] = a.hits
            else:
                a = self.snap.attend_blocks(layer, qn, sel, scale=scaling)
                if cpu:
                    from .store import lse_merge
                    lse_merge(on, ln, a.out, a.lse, out=on, lse_out=ln)
            t2 = time.perf_counter()
            self.store_ms += (t2 - t1) * 1e3
            self.calls += 1
            self.blocks_read += a.stats.blocks_read
            self.tokens_attended += a.stats.tokens_attended
            if b == 0:
                self.hits[layer] = a.hits
            if cpu:
                res.append(o.transpose(0, 1))
            else:
                mo = torch.from_numpy(a.out).to(query.device, non_blocking=False).transpose(0, 1)
                ml = torch.from_numpy(a.lse).to(query.device).transpose(0, 1)
                self.transfer_ms += (time.perf_counter() - t2) * 1e3
                res.append(lse_merge_torch(out[b], lse[b], mo, ml)[0])
        return torch.stack(res)

    def spans(self, layer: Optional[int] = None) -> List[Span]:
        """The cited spans of the last selection of ``layer`` (default: the
        last memory layer), as :meth:`msadb.Model.ask` reports them."""
        layer = max(self.memory_layers) if layer is None else layer
        hits = self.hits.get(layer, np.zeros(0, HIT_DTYPE))
        if self.snap is not None:
            return cited_spans(self.snap, hits)
        with self.store.snapshot() as s:
            return cited_spans(s, hits)
