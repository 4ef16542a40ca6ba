#!/usr/bin/python3
"""msadb.transformers without transformers (CI has PyTorch only): a small
llama-shaped PyTorch model whose attention layers call msadb_attention the
way transformers' layers call a registered attention function.  Checks
that ingest stores the keys (after RoPE, at document-wise positions) and
values of every document, chunked or not, and that generating with memory
in exact mode -- and in sparse mode when the selection covers every block,
with the merge on the host or on the tensors' device -- gives the logits of
the same model with the documents in its KV cache.  Skips (77) without
PyTorch."""
import os
import sys

import pyenv
import numpy as np

try:
    import torch
except ImportError:
    print("SKIP: PyTorch is not installed (Debian: python3-torch)")
    sys.exit(77)

import msadb
import msadb.transformers as mt


class Cfg:
    num_hidden_layers = 3
    num_attention_heads = 4
    num_key_value_heads = 2
    hidden_size = 32
    head_dim = 8
    vocab_size = 64
    _attn_implementation = "eager"


def rope(x, pos):
    """Halves convention (transformers' Llama): x [B, H, n, D], pos [n]."""
    D = x.shape[-1]
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = pos.double()[:, None] * inv[None]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()
    rot = torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
    return x * cos + rot * sin


class Attn(torch.nn.Module):
    def __init__(self, cfg, i):
        super().__init__()
        self.config, self.layer_idx = cfg, i
        H, KV, D, E = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.q = torch.nn.Linear(E, H * D, bias=False)
        self.k = torch.nn.Linear(E, KV * D, bias=False)
        self.v = torch.nn.Linear(E, KV * D, bias=False)
        self.o = torch.nn.Linear(H * D, E, bias=False)

    def forward(self, x, pos, past):
        B, n, _ = x.shape
        c = self.config
        q = self.q(x).view(B, n, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k(x).view(B, n, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v(x).view(B, n, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = rope(q, pos), rope(k, pos)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        if c._attn_implementation == mt.ATTN_NAME:
            o, _ = mt.msadb_attention(self, q, k, v, None, scaling=c.head_dim ** -0.5)
        else:  # the model's own attention: plain causal softmax
            o, _ = mt.local_attention(q, k, v, None, c.head_dim ** -0.5)
            o = o.transpose(1, 2)
        return self.o(o.reshape(B, n, -1)), (k, v)


class Out:
    def __init__(self, logits, past):
        self.logits, self.past_key_values = logits, past


class TinyLM(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.emb = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = torch.nn.ModuleList(Attn(cfg, i) for i in range(cfg.num_hidden_layers))
        self.head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids, position_ids, past_key_values=None, use_cache=False):
        x = self.emb(input_ids)
        new = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(x / (x.norm(dim=-1, keepdim=True) + 1e-6) * 4, position_ids[0],
                          past_key_values[i] if past_key_values else None)
            x = x + h
            new.append(kv)
        return Out(self.head(x), new if use_cache else None)


def greedy(model, ids, steps, past=None):
    """Greedy decoding with the model's own cache; question at positions 0.."""
    logits, out = [], list(ids)
    inp, pos = torch.tensor([ids]), torch.arange(len(ids))[None]
    for s in range(steps):
        r = model(inp, pos, past_key_values=past, use_cache=True)
        past = r.past_key_values
        lg = r.logits[0, -1]
        logits.append(lg.detach().numpy().copy())
        t = int(lg.argmax())
        out.append(t)
        inp, pos = torch.tensor([[t]]), torch.tensor([[len(ids) + s]])
    return np.array(logits), out


def setup(path, memory_layers, docs, chunk=0):
    torch.manual_seed(0)
    model = TinyLM(Cfg()).eval()
    sig = mt.signature_for(model, memory_layers=memory_layers, dtype="f32", block_size=8)
    st = msadb.Store.create(path, sig)
    with torch.no_grad():
        ids = mt.ingest(model, st, [{"ids": d, "title": "d%d" % i} for i, d in enumerate(docs)], chunk=chunk)
    return model, st, ids


DOCS = [list(np.random.default_rng(3).integers(0, 64, n)) for n in (20, 33, 13)]
QUESTION = [5, 9, 11, 2]


def test_ingest_stores_post_rope_kv():
    d = pyenv.tmpdir("msadb-torch-")
    model, st, ids = setup(os.path.join(d, "a"), [1, 2], DOCS)
    _, st2, ids2 = setup(os.path.join(d, "b"), [1, 2], DOCS, chunk=7)
    assert model.config._attn_implementation == "eager"  # restored
    with st.snapshot() as s, st2.snapshot() as s2, torch.no_grad():
        for i, doc in zip(ids, DOCS):
            r = model(torch.tensor([doc]), torch.arange(len(doc))[None], use_cache=True)
            for mi, layer in enumerate([1, 2]):
                k, v = r.past_key_values[layer]
                for g in range(2):
                    sk, sv = s.kv(i, mi * 2 + g)
                    assert np.allclose(sk, k[0, g].numpy(), atol=1e-6) and np.allclose(sv, v[0, g].numpy(), atol=1e-6)
                    ck, cv = s2.kv(i, mi * 2 + g)
                    assert np.allclose(ck, sk, atol=1e-5) and np.allclose(cv, sv, atol=1e-5)
            assert s.document(i).n_tokens == len(doc)
            assert np.array_equal(s.tokens(i)[0], doc)
    st.close()
    st2.close()


def test_generate_with_memory_equals_context():
    d = pyenv.tmpdir("msadb-torch-")
    model, st, ids = setup(os.path.join(d, "s"), [0, 1, 2], DOCS)
    with torch.no_grad():
        past = None
        for doc in DOCS:  # the documents in the KV cache, each at positions 0..T-1
            r = model(torch.tensor([doc]), torch.arange(len(doc))[None], use_cache=True)
            past = r.past_key_values if past is None else [
                (torch.cat([a[0], b[0]], 2), torch.cat([a[1], b[1]], 2)) for a, b in zip(past, r.past_key_values)]
        ref, ref_toks = greedy(model, QUESTION, 6, past)
        plain, _ = greedy(model, QUESTION, 6)
        assert np.abs(plain - ref).max() > 1e-2  # memory changes the logits
        for kw, device_merge in (({"exact": True}, None), ({"exact": True}, True),
                                 ({"top_k": 1000}, None), ({"top_k": 1000}, True)):
            with mt.MemoryAttention(model, st, **kw) as mem:
                mem.merge_on_device = device_merge
                got, toks = greedy(model, QUESTION, 6)
            diff = np.abs(got - ref).max()
            assert diff <= 1e-4 and toks == ref_toks, (kw, device_merge, diff)
            total_blocks = st.stat().n_blocks
            assert mem.blocks_read >= total_blocks * 2 * 3, (mem.blocks_read, total_blocks)
            assert mem.calls == 3 * 6 and mem.transfer_ms >= 0 and mem.store_ms > 0
            sp = mem.spans()
            assert {s.doc for s in sp} == set(ids)
        assert model.config._attn_implementation == "eager"


def test_key_layout_pairs():
    """Keys stored in GGUF's RoPE order: each head's dims reordered, and
    attention through the same reorder of the queries unchanged."""
    d = pyenv.tmpdir("msadb-torch-")
    model, st, ids = setup(os.path.join(d, "a"), [0, 1, 2], DOCS)
    torch.manual_seed(0)
    sig = mt.signature_for(model, memory_layers=[0, 1, 2], dtype="f32", block_size=8)
    st2 = msadb.Store.create(os.path.join(d, "b"), sig)
    with torch.no_grad():
        ids2 = mt.ingest(model, st2, [{"ids": x} for x in DOCS], key_layout="pairs")
    D = sig.head_dim
    with st.snapshot() as s, st2.snapshot() as s2:
        k, _ = s.kv(ids[0], 1)
        k2, _ = s2.kv(ids2[0], 1)
        assert np.array_equal(k2[:, 0::2], k[:, :D // 2]) and np.array_equal(k2[:, 1::2], k[:, D // 2:])
    with torch.no_grad():
        with mt.MemoryAttention(model, st, exact=True):
            a, _ = greedy(model, QUESTION, 3)
        with mt.MemoryAttention(model, st2, exact=True, key_layout="pairs"):
            b, _ = greedy(model, QUESTION, 3)
        with mt.MemoryAttention(model, st2, exact=True):  # layouts mixed up: other scores
            c, _ = greedy(model, QUESTION, 3)
    assert np.abs(a - b).max() <= 1e-5 and np.abs(a - c).max() > 1e-3
    try:
        mt.MemoryAttention(model, st2, key_layout="rows")
        raise AssertionError("unknown key layout accepted")
    except msadb.InvalidArgument:
        pass
    st.close()
    st2.close()


def test_sparse_routes_once():
    d = pyenv.tmpdir("msadb-torch-")
    model, st, ids = setup(os.path.join(d, "s"), [1, 2], DOCS)
    with torch.no_grad(), mt.MemoryAttention(model, st, top_k=1) as mem:
        greedy(model, QUESTION, 1)
        first = {k: v.copy() for k, v in mem.hits.items()}
        read0 = mem.blocks_read
        assert all(len(h) == 2 for h in first.values())  # top 1 block per kv head
        # decoding steps attend the same blocks (no routing)
        r = model(torch.tensor([QUESTION]), torch.arange(4)[None], use_cache=True)
        model(torch.tensor([[3]]), torch.tensor([[4]]), past_key_values=r.past_key_values, use_cache=True)
        for layer, h in first.items():
            assert np.array_equal(mem.hits[layer]["block_id"], h["block_id"])
        assert mem.blocks_read > read0
    # a store of another shape is refused
    sig = msadb.Signature(3, 2, 4, 16)
    with msadb.Store.create(os.path.join(d, "other"), sig) as other:
        for fn in (lambda: mt.MemoryAttention(model, other), lambda: mt.ingest(model, other, [[1, 2]])):
            try:
                fn()
                raise AssertionError("other signature accepted")
            except msadb.SignatureMismatch:
                pass
    try:
        mt.ingest(model, st, ["text"])
        raise AssertionError("text without a tokenizer accepted")
    except msadb.InvalidArgument:
        pass
    assert st.stat().n_documents == 3


class CharTokenizer:
    """A tokenizer with transformers' call shape: one token per character,
    offsets in characters."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        ids = [ord(c) % 60 + 3 for c in text]
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out


def test_text_ingest_and_batch_rows():
    """Text through a tokenizer: byte spans from character offsets (cited
    text right with non-ASCII characters); a batch of two rows gets the
    memory each row would get alone."""
    d = pyenv.tmpdir("msadb-torch-")
    torch.manual_seed(0)
    model = TinyLM(Cfg()).eval()
    sig = mt.signature_for(model, memory_layers=[1, 2], dtype="f32", block_size=4)
    text = "Café crème, naïve façade: 42 ünïcödé bytes."
    with msadb.Store.create(os.path.join(d, "s"), sig) as st:
        with torch.no_grad():
            (i,) = mt.ingest(model, st, [text], tokenizer=CharTokenizer(), titles=["t"])
        with st.snapshot() as s:
            assert s.text(i) == text and s.document(i).n_tokens == len(text)
            assert s.cite(i, 0, 4) == "Café" and s.cite(i, 12, 17) == "naïve"
        q = torch.tensor([QUESTION, QUESTION[::-1]])
        pos = torch.arange(4)[None]
        with torch.no_grad(), mt.MemoryAttention(model, st, top_k=2) as mem:
            both = model(q, pos).logits
            one = model(q[:1], pos).logits
            two = model(q[1:], pos).logits
        assert torch.allclose(both[0], one[0], atol=1e-5) and torch.allclose(both[1], two[0], atol=1e-5)
        assert mem.calls == 2 * 2 + 2 * 1 * 2


class PrefixTokenizer(CharTokenizer):
    """CharTokenizer with a word-start token (id 1, zero-width) opening every
    call, as SentencePiece's dummy prefix does: a text tokenized whole and
    paragraph by paragraph then differ."""

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        out = super().__call__(text, add_special_tokens, return_offsets_mapping)
        out["input_ids"] = [1] + out["input_ids"]
        if return_offsets_mapping:
            out["offset_mapping"] = [(0, 0)] + out["offset_mapping"]
        return out


def test_joined_text_ingest():
    """segment "joined": each paragraph tokenized on its own (the C runtime's
    cut, the same as memmodel.data.paragraphs), spans of the whole text; the
    default is the model's own msadb_source.segment; "paragraph" is refused
    with the store unchanged."""
    d = pyenv.tmpdir("msadb-torch-")
    torch.manual_seed(0)
    text = "Ünï one.\n\n\nTwo\r\nlines.\n\n\r\nmore\n\nThree é.\n\n"
    cuts = mt._paragraph_starts(text)
    from memmodel import data as mmd  # tools/ on PYTHONPATH (meson); checked against C there
    paras = mmd.paragraphs(text)
    assert [text[a:b] for a, b in zip(cuts, cuts[1:] + [len(text)])] == paras, (cuts, paras)
    assert cuts == [0, 11, 32], cuts  # no cut before "\r" after a blank line
    tok = PrefixTokenizer()
    joined = [t for a, b in zip(cuts, cuts[1:] + [len(text)]) for t in tok(text[a:b])["input_ids"]]
    whole = tok(text)["input_ids"]
    assert joined != whole and len(joined) == len(whole) + 2  # two more word starts
    cfg = type("JoinedCfg", (Cfg,), {"msadb_source": {"segment": "joined"}})
    model = TinyLM(cfg()).eval()
    sig = mt.signature_for(model, memory_layers=[1, 2], dtype="f32", block_size=4)
    with msadb.Store.create(os.path.join(d, "s"), sig) as st:
        assert mt.model_segment(model) == "joined" and mt.model_segment(TinyLM(Cfg())) == "document"
        a, = mt.ingest(model, st, [text], tokenizer=tok)
        b, = mt.ingest(model, st, [text], tokenizer=tok, segment="document")
        for bad in ("paragraph", "whole"):
            try:  # the first document is fine: the batch leaves the store unchanged
                mt.ingest(model, st, [[5, 6, 7], text], tokenizer=tok, segment=bad)
                raise AssertionError("segment %s accepted" % bad)
            except msadb.InvalidArgument as e:
                assert bad in str(e), e
        assert st.stat().n_documents == 2
        # a model that declares paragraph still takes token ids
        pcfg = type("ParaCfg", (Cfg,), {"msadb_source": {"segment": "paragraph"}})
        mt.ingest(TinyLM(pcfg()).eval(), st, [[5, 6, 7]])
        assert st.stat().n_documents == 3
        with st.snapshot() as s:
            ids, spans = s.tokens(a)
            assert ids.tolist() == joined and s.tokens(b)[0].tolist() == whole
            # the second paragraph's first character: its byte span in the whole text
            i = len(tok(text[:cuts[1]])["input_ids"]) + 1
            lo = len(text[:cuts[1]].encode("utf-8"))
            assert spans[i].tolist() == [lo, lo + 1] and s.cite(a, i, i + 3) == "Two"
            assert s.cite(a, 1, 4) == "Ünï"


def test_local_attention_and_merge():
    torch.manual_seed(1)
    q = torch.randn(2, 4, 3, 8)
    k = torch.randn(2, 2, 5, 8)
    v = torch.randn(2, 2, 5, 8)
    out, lse = mt.local_attention(q, k, v, None, 0.3)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) * 0.3
    s = s.masked_fill(~torch.ones(3, 5, dtype=torch.bool).tril(2), float("-inf"))
    assert torch.allclose(lse, torch.logsumexp(s, -1), atol=1e-5)
    assert torch.allclose(out, torch.softmax(s, -1) @ vv, atol=1e-5)
    # merging two halves of the keys gives the whole
    o1, l1 = mt.local_attention(q[:, :, -1:], k[:, :, :2], v[:, :, :2], None, 0.3)
    o2, l2 = mt.local_attention(q[:, :, -1:], k[:, :, 2:], v[:, :, 2:], None, 0.3)
    o, l = mt.lse_merge_torch(o1, l1, o2, l2)
    assert torch.allclose(o, out[:, :, -1:], atol=1e-5) and torch.allclose(l, lse[:, :, -1:], atol=1e-5)
    on, ln = msadb.lse_merge(o1.numpy(), l1.numpy(), o2.numpy(), l2.numpy())
    assert np.allclose(on, o.numpy(), atol=1e-6) and np.allclose(ln, l.numpy(), atol=1e-6)
    # an empty side leaves the other
    o3, l3 = mt.lse_merge_torch(o1, l1, o2, torch.full_like(l2, float("-inf")))
    assert torch.equal(o3, o1) and torch.allclose(l3, l1)


if __name__ == "__main__":
    pyenv.run_tests(globals())
