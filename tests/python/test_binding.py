#!/usr/bin/python3
"""The msadb package against the library and numpy: struct mirrors
(compiler layout and *_init defaults), exact attention against numpy dense
attention, round trips of every call, and every error path raising its
exception class."""
import ctypes
import os
import subprocess

import pyenv
import numpy as np

import msadb
from msadb import _lib, errors

RNG = np.random.default_rng(7)


def dense(q, K, V, scale=None):
    """Softmax attention of q [n, H, D] over K, V [T, D] per q head (float64)."""
    q, K, V = (np.asarray(x, np.float64) for x in (q, K, V))
    s = np.einsum("nhd,td->nht", q, K) * (scale or 1 / np.sqrt(q.shape[-1]))
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    z = e.sum(-1, keepdims=True)
    return np.einsum("nht,td->nhd", e / z, V), (m + np.log(z))[..., 0]


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def make_store(path, dtype="f32", kv=2, qh=4, d=16, layers=4, mem=(2, 3), block=16, **kw):
    sig = msadb.Signature(layers, kv, qh, d, memory_layers=list(mem), block_size=block, dtype=dtype,
                          summaries=["mean", "minmax", "reps"])
    return msadb.Store.create(path, sig, **kw)


def random_docs(st, n_docs, lengths=(40, 100), space=None):
    sig = st.signature
    docs = []
    with st.batch() as b:
        for i in range(n_docs):
            T = int(RNG.integers(*lengths))
            K = RNG.standard_normal((len(sig.memory_layers), sig.n_kv_heads, T, sig.head_dim)).astype(np.float32)
            V = RNG.standard_normal(K.shape).astype(np.float32)
            text = " ".join("w%d" % j for j in range(T))
            starts = [0]
            for w in text.split(" ")[:-1]:
                starts.append(starts[-1] + len(w) + 1)
            spans = np.array([(s, s + len(w)) for s, w in zip(starts, text.split(" "))], np.int64)
            b.add(K, V, space=space, title="doc %d" % i, text=text, spans=spans,
                  token_ids=np.arange(T, dtype=np.int32), meta=b"meta%d" % i)
            docs.append((K, V, text))
    return dict(zip(b.ids, docs))


def test_mirrors_defaults():
    header = open(os.path.join(pyenv.ROOT, "include", "msadb.h")).read()
    assert msadb.check_mirrors(header) == [], msadb.check_mirrors(header)


def test_mirrors_compiler_layout():
    """sizeof and offsetof of every field of every public struct, as the C
    compiler lays them out, against the ctypes mirrors."""
    d = pyenv.tmpdir("msadb-layout-")
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "msadb.h"', "int main(void) {"]
    for name, cls in _lib.MIRRORS.items():
        lines.append('printf("%s size %%zu\\n", sizeof(%s));' % (name, name))
        for f, _ in cls._fields_:
            lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (name, f, name, f))
    lines.append("return 0; }")
    src = os.path.join(d, "layout.c")
    open(src, "w").write("\n".join(lines))
    exe = os.path.join(d, "layout")
    subprocess.run(["cc", "-std=c11", "-I", os.path.join(pyenv.ROOT, "include"), src, "-o", exe], check=True)
    got = {}
    for line in subprocess.run([exe], capture_output=True, text=True, check=True).stdout.splitlines():
        s, f, v = line.split()
        got[(s, f)] = int(v)
    for name, cls in _lib.MIRRORS.items():
        assert got[(name, "size")] == ctypes.sizeof(cls), (name, got[(name, "size")], ctypes.sizeof(cls))
        for f, _ in cls._fields_:
            assert got[(name, f)] == getattr(cls, f).offset, (name, f)
    hit = msadb.HIT_DTYPE
    for f, _ in _lib.Hit_._fields_:
        assert hit.fields[f][1] == got[("msadb_hit", f)]
    assert hit.itemsize == got[("msadb_hit", "size")]


def test_exact_attention_matches_numpy():
    d = pyenv.tmpdir("msadb-py-")
    for dtype in ("f32", "f16", "int8"):
        with make_store(os.path.join(d, dtype), dtype=dtype) as st:
            docs = random_docs(st, 5)
            sig = st.signature
            G = sig.n_q_heads // sig.n_kv_heads
            with st.snapshot() as s:
                for mi, layer in enumerate(sig.memory_layers):
                    q = RNG.standard_normal((3, sig.n_q_heads, sig.head_dim)).astype(np.float32)
                    a = s.attend(layer, q, exact=True)
                    for g in range(sig.n_kv_heads):
                        # ground truth: the stored (dequantized) K/V of this plane
                        kv = [s.kv(i, mi * sig.n_kv_heads + g) for i in sorted(docs)]
                        K = np.concatenate([k for k, _ in kv])
                        V = np.concatenate([v for _, v in kv])
                        if dtype == "f32":
                            orig = np.concatenate([docs[i][0][mi, g] for i in sorted(docs)])
                            assert np.array_equal(K, orig)
                        o, l = dense(q[:, g * G:(g + 1) * G], K, V)
                        assert rel(a.out[:, g * G:(g + 1) * G], o) <= 1e-5, (dtype, rel(a.out[:, g * G:(g + 1) * G], o))
                        assert rel(a.lse[:, g * G:(g + 1) * G], l) <= 1e-5
                    assert a.stats.tokens_attended == sum(v[0].shape[2] for v in docs.values()) * sig.n_kv_heads
                    # the hits: every block of every document, per kv head
                    assert len(a.hits) == st.stat().n_blocks * sig.n_kv_heads
                    # a custom scale
                    b = s.attend(layer, q, exact=True, scale=0.05)
                    kv = [s.kv(i, mi * sig.n_kv_heads) for i in sorted(docs)]
                    o, l = dense(q[:, :G], np.concatenate([k for k, _ in kv]),
                                 np.concatenate([v for _, v in kv]), scale=0.05)
                    assert rel(b.out[:, :G], o) <= 1e-5 and rel(b.lse[:, :G], l) <= 1e-5


def test_attend_merge_and_lse_merge():
    d = pyenv.tmpdir("msadb-py-")
    with make_store(os.path.join(d, "s")) as st:
        docs = random_docs(st, 3)
        sig = st.signature
        G = sig.n_q_heads // sig.n_kv_heads
        layer = sig.memory_layers[0]
        q = RNG.standard_normal((2, sig.n_q_heads, sig.head_dim)).astype(np.float32)
        # local context: 7 keys per kv head
        Kl = RNG.standard_normal((sig.n_kv_heads, 7, sig.head_dim)).astype(np.float32)
        Vl = RNG.standard_normal(Kl.shape).astype(np.float32)
        out = np.empty((2, sig.n_q_heads, sig.head_dim), np.float32)
        lse = np.empty((2, sig.n_q_heads), np.float32)
        for g in range(sig.n_kv_heads):
            o, l = dense(q[:, g * G:(g + 1) * G], Kl[g], Vl[g])
            out[:, g * G:(g + 1) * G], lse[:, g * G:(g + 1) * G] = o, l
        local = (out.copy(), lse.copy())
        with st.snapshot() as s:
            a = s.attend_merge(layer, q, out, lse, exact=True)
            assert a.out is out and a.lse is lse  # in place
            mem = s.attend(layer, q, exact=True)
        for g in range(sig.n_kv_heads):
            K = np.concatenate([Kl[g]] + [docs[i][0][0, g] for i in sorted(docs)])
            V = np.concatenate([Vl[g]] + [docs[i][1][0, g] for i in sorted(docs)])
            o, l = dense(q[:, g * G:(g + 1) * G], K, V)
            assert rel(out[:, g * G:(g + 1) * G], o) <= 1e-5
            assert rel(lse[:, g * G:(g + 1) * G], l) <= 1e-5
        # lse_merge of the local and memory results is the same union
        o2, l2 = msadb.lse_merge(local[0], local[1], mem.out, mem.lse)
        assert rel(o2, out) <= 1e-6 and rel(l2, lse) <= 1e-6
        # in place, and an empty side (-inf) leaves the other unchanged
        o1, l1 = local[0].copy(), local[1].copy()
        msadb.lse_merge(o1, l1, mem.out, np.full_like(mem.lse, -np.inf), out=o1, lse_out=l1)
        assert np.array_equal(o1, local[0]) and np.array_equal(l1, local[1])


def test_sparse_selection_and_blocks():
    d = pyenv.tmpdir("msadb-py-")
    with make_store(os.path.join(d, "s"), dtype="f16") as st:
        random_docs(st, 8)
        sig = st.signature
        layer = sig.memory_layers[-1]
        q = RNG.standard_normal((4, sig.n_q_heads, sig.head_dim)).astype(np.float32)
        with st.snapshot() as s:
            for kw in ({}, {"select": "documents", "top_k": 2}, {"summary": "mean", "score": "dot"},
                       {"summary": "minmax"}, {"per_token": True, "top_k": 3}):
                a = s.attend(layer, q, **kw)
                r = s.retrieve(layer, q, **kw)
                assert np.array_equal(a.hits, r), kw
                if "select" not in kw:
                    per = kw.get("top_k", 16) * (4 if kw.get("per_token") else 1)
                    assert len(r) == min(per, st.stat().n_blocks * (4 if kw.get("per_token") else 1)) * sig.n_kv_heads
                if not kw.get("per_token"):
                    # attending the same blocks again without routing: same result
                    b = s.attend_blocks(layer, q, a.hits)
                    assert rel(b.out, a.out) <= 1e-6 and rel(b.lse, a.lse) <= 1e-6
            # best first per kv head
            h = s.retrieve(layer, q, top_k=5)
            for g in range(sig.n_kv_heads):
                sc = h[h["kv_head"] == g]["score"]
                assert np.all(sc[:-1] >= sc[1:])
            # only some spaces
            assert s.attend(layer, q, spaces=["default"]).hits.size > 0
            # hits_cap smaller than the selection
            assert len(s.attend(layer, q, top_k=4, hits_cap=3).hits) == 3


def test_round_trips():
    d = pyenv.tmpdir("msadb-py-")
    p = os.path.join(d, "s")
    with make_store(p, dtype="f32") as st:
        assert st.signature.memory_layers == [2, 3] and st.signature.dtype == "f32"
        assert st.signature.summaries == ["mean", "minmax", "reps"]
        assert st.create_space("agent-1") == 1
        assert [x.name for x in st.spaces()] == ["agent-1", "default"]
        docs = random_docs(st, 3, space="agent-1")
        one = random_docs(st, 1)
        assert st.space("agent-1").n_documents == 3
        assert st.space("default").n_tokens == sum(v[0].shape[2] for v in one.values())
        stat = st.stat()
        assert stat.n_documents == 4 and 3 <= stat.format_version <= msadb.FORMAT_VERSION  # the lowest its contents need
        assert not st.encrypted and not stat.encrypted
        with st.snapshot() as s:
            assert [x.id for x in s.documents("agent-1")] == sorted(docs)
            assert len(s.documents()) == 4
            for i, (K, V, text) in docs.items():
                info = s.document(i)
                assert info.space == "agent-1" and info.title.startswith("doc ")
                assert info.n_tokens == K.shape[2] and info.has_tokens and info.has_spans
                assert s.text(i) == text and s.meta(i).startswith(b"meta")
                ids, sp = s.tokens(i)
                assert np.array_equal(ids, np.arange(K.shape[2]))
                assert s.cite(i, 1, 3) == " ".join(text.split(" ")[1:3])
                for plane in range(4):
                    k, v = s.kv(i, plane)
                    assert np.array_equal(k, K[plane // 2, plane % 2])
                    assert np.array_equal(v, V[plane // 2, plane % 2])
        # float16 input is stored as given; add() is its own transaction
        K = RNG.standard_normal((2, 2, 20, 16)).astype(np.float16)
        did = st.add(K, K, title="half")
        with st.snapshot() as s:
            assert np.array_equal(s.kv(did, 3)[0], K[1, 1].astype(np.float32))
            assert s.tokens(did) and True
        # capture: two chunks per layer, then committed
        T = 30
        Kc = RNG.standard_normal((4, 2, T, 16)).astype(np.float32)
        with st.capture() as cap:
            for first, n in ((0, 20), (20, 10)):
                for layer in range(4):
                    cap.kv(layer, first, Kc[layer, :, first:first + n], Kc[layer, :, first:first + n] * 2)
            cid = cap.commit(T, title="captured", text="abc", meta="x")
        with st.snapshot() as s:
            k, v = s.kv(cid, 1)  # memory layer index 0 (layer 2), kv head 1
            assert np.array_equal(k, Kc[2, 1]) and np.array_equal(v, Kc[2, 1] * 2)
            assert s.document(cid).title == "captured" and s.text(cid) == "abc"
        # a capture joining a batch with another document
        with st.batch() as b:
            cap = st.capture()
            for layer in (2, 3):
                cap.kv(layer, 0, Kc[layer], Kc[layer])
            cap.add_to(b, T, title="in batch")
            b.add(Kc[2:], Kc[2:], title="plain")
            assert len(b) == 2
        assert len(b.ids) == 2
        st.delete(list(docs)[:2])
        with st.snapshot() as s:
            assert [x.id for x in s.documents("agent-1")] == sorted(docs)[2:]
        st.compact()
        st.drop_space("agent-1")
        assert [x.name for x in st.spaces()] == ["default"]
        assert st.verify() == []
    # open again, with the signature, read-only, and open_or_create
    sig = msadb.Signature(4, 2, 4, 16, memory_layers=[2, 3], block_size=16, dtype="f32",
                          summaries=["mean", "minmax", "reps"])
    with msadb.Store.open(p, sig, read_only=True) as st:
        assert st.stat().n_documents == 5
        try:
            st.create_space("x")
            raise AssertionError("write on a read-only store")
        except msadb.ReadOnly as e:
            assert e.code == errors.EREADONLY
    with msadb.Store.open_or_create(p, sig) as st:
        assert st.stat().n_documents == 5
    with msadb.Store.open_or_create(os.path.join(d, "new"), sig, no_sync=True) as st:
        assert st.stat().n_documents == 0


def test_threads():
    """Readers in threads, each with its own snapshot, while the main thread
    commits batches: every reader sees its snapshot's state throughout; a
    snapshot shared by two threads serializes their calls."""
    import threading
    d = pyenv.tmpdir("msadb-py-")
    with make_store(os.path.join(d, "s")) as st:
        random_docs(st, 3)
        q = RNG.standard_normal((2, 4, 16)).astype(np.float32)
        failures = []

        def reader(snap, rounds):
            try:
                first = snap.attend(2, q, exact=True)
                n = len(snap.documents())
                for _ in range(rounds):
                    a = snap.attend(2, q, exact=True)
                    assert np.array_equal(a.out, first.out) and len(snap.documents()) == n
            except Exception as e:  # reported by the main thread
                failures.append(e)
        snaps = [st.snapshot() for _ in range(3)]
        shared = st.snapshot()
        threads = [threading.Thread(target=reader, args=(s, 30)) for s in snaps]
        threads += [threading.Thread(target=reader, args=(shared, 30)) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(3):
            random_docs(st, 2)
        for t in threads:
            t.join()
        assert not failures, failures
        for s in snaps + [shared]:
            assert len(s.documents()) == 3
            s.renew()
            assert len(s.documents()) == 9
            s.close()


def test_encryption():
    d = pyenv.tmpdir("msadb-py-")
    key = bytes(range(32))
    kf = os.path.join(d, "key")
    open(kf, "w").write(key.hex() + "\n")
    assert msadb.read_key_file(kf) == key
    with make_store(os.path.join(d, "k"), key=key) as st:
        random_docs(st, 2)
        assert st.encrypted
    with make_store(os.path.join(d, "p"), passphrase="correct horse") as st:
        random_docs(st, 1)
    with msadb.Store.open(os.path.join(d, "k"), key=key) as st:
        assert st.stat().n_documents == 2 and st.verify() == []
    with msadb.Store.open(os.path.join(d, "p"), passphrase="correct horse") as st:
        assert st.stat().n_documents == 1
    for kw in ({}, {"key": bytes(32)}, {"passphrase": "wrong"}):
        try:
            msadb.Store.open(os.path.join(d, "k" if "passphrase" not in kw else "p"), **kw)
            raise AssertionError("opened without the right key: %r" % kw)
        except msadb.KeyRequired as e:
            assert e.code == errors.EKEY and "key" in str(e)


def test_tenants():
    """Store.scope and keyed spaces through the package."""
    d = pyenv.tmpdir("msadb-py-")
    key, bkey = bytes(range(32)), bytes(range(1, 33))
    with make_store(os.path.join(d, "t"), key=key) as st:
        st.create_space("A")
        assert st.create_space_keyed("B", key=bkey) > 0
        random_docs(st, 1, space="A")
        random_docs(st, 1, space="B")
        assert [s.keyed for s in st.spaces()] == [False, True, False]
        for bad in ({}, {"key": bkey, "passphrase": "x"}, {"key": b"short"}):
            expect(msadb.InvalidArgument, errors.EINVAL, st.create_space_keyed, "C", **bad)
    with msadb.Store.open(os.path.join(d, "t"), key=key) as st:
        assert {s.name: s.locked for s in st.spaces()} == {"A": False, "B": True, "default": False}
        assert len(st.snapshot().documents()) == 1
        expect(msadb.KeyRequired, errors.EKEY, st.unlock_space, "B", key=key)
        st.unlock_space("B", key=bkey)
        st.scope("B")
        expect(msadb.OutOfScope, errors.ESCOPE, st.space, "A")
        docs = st.snapshot().documents()
        assert len(docs) == 1 and docs[0].space == "B"
    with make_store(os.path.join(d, "plain")) as st:
        expect(msadb.InvalidArgument, errors.EINVAL, st.create_space_keyed, "B", passphrase="pw")


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), continuing from crc, as the block format's."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def damaged_store(d, name, kw, change):
    """A store of one short document with its first encoded block changed by
    change(block bytes) in the data file."""
    path = os.path.join(d, name)
    with make_store(path, dtype="f32", **kw) as st:
        random_docs(st, 1, lengths=(20, 21))
    data = os.path.join(path, "data.mdb")
    raw = bytearray(open(data, "rb").read())
    pos = raw.find(b"MSB1")
    assert pos >= 0, "an encoded block is visible in the data file"
    n = 24 + int.from_bytes(raw[pos + 16:pos + 20], "little")  # header + payload
    blk = raw[pos:pos + n]
    assert crc32c(blk[24:], crc32c(blk[:20])) == int.from_bytes(blk[20:24], "little")
    change(blk)
    raw[pos:pos + n] = blk
    open(data, "wb").write(raw)
    return path


def test_damage_and_tampering():
    """A damaged block: verify lists the problem and attention over it
    raises Corrupt; a block of a newer format version raises
    VersionMismatch; a sealed payload changed (with a valid checksum) raises
    AuthenticationFailed."""
    d = pyenv.tmpdir("msadb-py-")
    key = {"key": bytes(range(32))}

    def flip(blk):
        blk[30] ^= 0xFF

    def newer(blk):
        blk[4] = 2

    def tamper(blk):
        blk[24 + (len(blk) - 24) // 2] ^= 0x01
        blk[20:24] = crc32c(blk[24:], crc32c(blk[:20])).to_bytes(4, "little")
    for name, kw, change, exc, code in (("plain", {}, flip, msadb.Corrupt, errors.ECORRUPT),
                                        ("newer", {}, newer, msadb.VersionMismatch, errors.EVERSION),
                                        ("sealed", key, tamper, msadb.AuthenticationFailed, errors.EAUTH)):
        path = damaged_store(d, name, kw, change)
        with msadb.Store.open(path, **kw) as st:
            problems = st.verify()
            assert problems and all(isinstance(p, str) and p for p in problems), (name, problems)
            with st.snapshot() as s:
                expect(exc, code, s.attend, 2, np.ones((1, 4, 16), np.float32), exact=True)


def expect(exc, code, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except exc as e:
        assert isinstance(e, msadb.Error) and e.code == code, (e, e.code, code)
        assert e.reason == msadb.strerror(code) and e.reason in str(e)
        return e
    raise AssertionError("%s not raised by %s" % (exc.__name__, getattr(fn, "__name__", fn)))


def test_error_paths():
    d = pyenv.tmpdir("msadb-py-")
    p = os.path.join(d, "s")
    st = make_store(p)
    random_docs(st, 2)
    sig = st.signature
    E = errors
    expect(msadb.AlreadyExists, E.EEXIST, make_store, p)
    expect(msadb.AlreadyExists, E.EEXIST, st.create_space, "default")
    expect(msadb.InvalidArgument, E.EINVAL, st.create_space, "bad name!")
    expect(msadb.NotFound, E.ENOTFOUND, st.drop_space, "nope")
    expect(msadb.NotFound, E.ENOTFOUND, st.space, "nope")
    expect(msadb.NotFound, E.ENOTFOUND, st.delete, [999])
    expect(msadb.InvalidArgument, E.EINVAL, st.delete, [])
    assert msadb.Signature(4, 1, 2, 8, memory_layers=[3]).resolved().memory_layers == [3]
    expect(msadb.InvalidArgument, E.EINVAL, msadb.Signature(0, 1, 1, 8).to_c)
    expect(msadb.InvalidArgument, E.EINVAL, msadb.Signature(2, 2, 3, 8).to_c)
    expect(msadb.InvalidArgument, E.EINVAL, msadb.Signature(2, 1, 1, 8, dtype="f8").to_c)
    expect(msadb.InvalidArgument, E.EINVAL, msadb.Signature(2, 1, 1, 8, memory_layers=[1, 0]).to_c)
    expect(msadb.NotAStore, E.ENOTSTORE, msadb.Store.open, d)
    other = msadb.Signature(4, 2, 4, 32)
    expect(msadb.SignatureMismatch, E.ESIGNATURE, msadb.Store.open, p, other)
    expect(msadb.SignatureMismatch, E.ESIGNATURE, msadb.Store.open_or_create, p, other)
    expect(msadb.InvalidArgument, E.EINVAL, make_store, os.path.join(d, "x"), key=b"short")
    expect(msadb.InvalidArgument, E.EINVAL, make_store, os.path.join(d, "x"), key=bytes(32), passphrase="p")
    e = expect(msadb.IOFailure, 2, msadb.read_key_file, os.path.join(d, "missing"))
    assert isinstance(e, OSError) and e.errno == 2
    K = np.zeros((2, 2, 5, 16), np.float32)
    expect(msadb.InvalidArgument, E.EINVAL, st.add, K[:1], K[:1])  # wrong shape
    bad = K.copy()
    bad[0, 0, 0, 0] = np.nan
    expect(msadb.NonFinite, E.ENONFINITE, st.add, bad, K)
    expect(msadb.NotFound, E.ENOTFOUND, st.add, K, K, space="nope")
    expect(msadb.InvalidArgument, E.EINVAL, st.add, K, K, spans=np.zeros((4, 2)))
    expect(msadb.LimitExceeded, E.ELIMIT, st.add, K, K, title="t" * 300)
    with st.batch() as b:  # a failed add leaves the batch usable
        expect(msadb.NonFinite, E.ENONFINITE, b.add, bad, K)
        b.add(K, K, title="ok")
    assert len(b.ids) == 1
    # an exception inside the with block aborts the batch: nothing written
    n = st.stat().n_documents
    try:
        with st.batch() as b:
            b.add(K, K)
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert st.stat().n_documents == n
    expect(msadb.WrongState, E.ESTATE, b.add, K, K)  # finished batch
    with st.snapshot() as s:
        q = np.zeros((1, sig.n_q_heads, sig.head_dim), np.float32)
        expect(msadb.NotFound, E.ENOTFOUND, s.document, 999)
        expect(msadb.NotFound, E.ENOTFOUND, s.text, 999)
        expect(msadb.InvalidArgument, E.EINVAL, s.attend, 0, q)  # not a memory layer
        expect(msadb.InvalidArgument, E.EINVAL, s.attend, 2, q[:, :, :8])
        expect(msadb.NotFound, E.ENOTFOUND, s.attend, 2, q, spaces=["nope"])
        expect(msadb.NonFinite, E.ENONFINITE, s.attend, 2, q + np.inf)
        expect(msadb.InvalidArgument, E.EINVAL, s.attend, 2, q, select="pages")
        expect(msadb.InvalidArgument, E.EINVAL, s.attend, 2, q, summary="median")
        expect(msadb.InvalidArgument, E.EINVAL, s.attend, 2, q, score="l2")
        expect(msadb.InvalidArgument, E.EINVAL, s.attend_merge, 2, q, np.zeros((1, 4, 16)),
               np.zeros((1, 4), np.float32))  # float64 out
        expect(msadb.InvalidArgument, E.EINVAL, s.kv, 1, 99)
        hits = s.retrieve(2, q)
        hits["kv_head"][0] = 9
        expect(msadb.InvalidArgument, E.EINVAL, s.attend_blocks, 2, q, hits)
    expect(msadb.InvalidArgument, E.EINVAL, msadb.lse_merge, np.zeros((2, 3)), np.zeros(2),
           np.zeros((2, 4)), np.zeros(2))
    cap = st.capture()
    expect(msadb.InvalidArgument, E.EINVAL, cap.kv, 2, 5, K[0], K[0])  # a gap
    expect(msadb.InvalidArgument, E.EINVAL, cap.commit, 5)  # nothing captured
    expect(msadb.WrongState, E.ESTATE, cap.commit, 5)
    snap = st.snapshot()
    st.close()  # ends the snapshot it still had open
    assert snap.closed and st.closed
    expect(msadb.WrongState, E.ESTATE, st.stat)
    expect(msadb.WrongState, E.ESTATE, snap.document, 1)
    # strerror of the LMDB and errno ranges
    assert issubclass(errors.error_class(-30792), msadb.LMDBError)  # MDB_MAP_FULL
    assert "No such file" in msadb.strerror(2)


def test_model_errors():
    d = pyenv.tmpdir("msadb-py-")
    assert errors.error_class(errors.ENOTSUP) is msadb.NotSupported
    if os.environ.get("MSADB_RUNTIME") == "0":  # a library built with -Druntime=disabled
        expect(msadb.NotSupported, errors.ENOTSUP, msadb.Model, pyenv.MODEL)
        return
    expect(msadb.IOFailure, 2, msadb.Model, os.path.join(d, "missing.gguf"))
    junk = os.path.join(d, "junk.gguf")
    open(junk, "wb").write(b"not a gguf file at all" * 10)
    expect(msadb.Corrupt, errors.ECORRUPT, msadb.Model, junk)
    with msadb.Model(pyenv.MODEL) as m:
        assert m.abstain_answer == "not in memory"  # the bundled model declares one
        default = m.segment
        assert default == "joined"  # the bundled model declares it (msadb.segment)
        m.segment = "paragraph"
        assert m.segment == "paragraph"
        try:
            m.segment = "sentence"
            raise AssertionError("segment 'sentence' accepted")
        except ValueError as e:
            assert "sentence" in str(e)
        assert m.segment == "paragraph"
        with m.open_store(os.path.join(d, "seg")) as st:
            # the same text in the other mode is another document (other keys/values)
            a = m.ingest(st, "One line.\n\nThe PIN of the lamp is 1234.")
            m.segment = "document"
            b = m.ingest(st, "One line.\n\nThe PIN of the lamp is 1234.")
            assert len(a) == len(b) == 1 and a != b and st.stat().n_documents == 2
        m.segment = default
        with make_store(os.path.join(d, "other")) as st:
            expect(msadb.SignatureMismatch, errors.ESIGNATURE, m.ingest, st, "text")
            expect(msadb.SignatureMismatch, errors.ESIGNATURE, m.ask, st, "question")
        with m.open_store(os.path.join(d, "m")) as st:
            expect(msadb.InvalidArgument, errors.EINVAL, m.ingest, st, "")
            expect(msadb.InvalidArgument, errors.EINVAL, m.ask, st, "q", temperature=-1)
            expect(msadb.InvalidArgument, errors.EINVAL, m.ask, st, "q", interleave=9)
            expect(msadb.InvalidArgument, errors.EINVAL, m.ask, st, "q", followups=9)
            expect(msadb.NotFound, errors.ENOTFOUND, m.ingest, st, "text", space="nope")
            assert st.stat().n_documents == 0
    expect(msadb.WrongState, errors.ESTATE, m.tokenize, "x")


def test_documents():
    """Metadata dicts, where filters (routing and listing), expiry under
    the test clock, Batch.delete (replace), Store.expire."""
    st = make_store(os.path.join(pyenv.tmpdir("msadb-py-docs-"), "s"))
    sig = st.signature
    t0 = 2000000000
    os.environ["MSADB_TEST_NOW"] = str(t0)
    try:
        assert msadb.time_now() == t0
        shape = (len(sig.memory_layers), sig.n_kv_heads, 32, sig.head_dim)
        kv = [(RNG.standard_normal(shape).astype(np.float32), RNG.standard_normal(shape).astype(np.float32))
              for _ in range(3)]
        red = st.add(*kv[0], meta={"team": "red"})
        blue = st.add(*kv[1], meta={"team": "blue"}, expires=t0 + 60)
        other = st.add(*kv[2], meta=b"\x00opaque")
        with st.snapshot() as snap:
            assert [d.id for d in snap.documents(where={"team": "red"})] == [red]
            assert [d.id for d in snap.documents(where=["team=blue"])] == [blue]
            assert snap.document(blue).expires == t0 + 60
            assert msadb.parse_meta(snap.meta(red)) == {"team": "red"}
            assert msadb.parse_meta(snap.meta(other)) is None
            q = RNG.standard_normal((2, sig.n_q_heads, sig.head_dim)).astype(np.float32)
            a = snap.attend(2, q, exact=True, where={"team": "red"})
            assert set(a.hits["doc_id"]) == {red}
            K0, V0 = kv[0][0][0], kv[0][1][0]  # memory layer 2 = index 0
            g = sig.n_q_heads // sig.n_kv_heads
            for h in range(sig.n_q_heads):
                o, l = dense(q[:, h:h + 1], K0[h // g], V0[h // g])
                assert rel(a.out[:, h:h + 1], o) < 1e-5
            hits = snap.retrieve(2, q, top_k=1000, where={"team": "blue"})
            assert len(hits) and set(hits["doc_id"]) == {blue}
            os.environ["MSADB_TEST_NOW"] = str(t0 + 60)
            assert len(snap.retrieve(2, q, top_k=1000, where={"team": "blue"})) == 0
            assert [d.id for d in snap.documents()] == [red, other]
            try:
                snap.document(blue)
                raise AssertionError("an expired document was read")
            except msadb.NotFound:
                pass
        assert st.expire() == 1
        # replace: the new document added, the old deleted, in one commit
        with st.batch() as b:
            b.add(*kv[1], meta={"team": "red", "v": "2"})
            b.delete(red)
        new = b.ids[0]
        with st.snapshot() as snap:
            assert [d.id for d in snap.documents(where={"team": "red"})] == [new]
        b = st.batch()
        b.add(*kv[2])
        b.delete([12345])
        try:
            b.commit()
            raise AssertionError("a missing id was deleted")
        except msadb.NotFound:
            pass
        with st.snapshot() as snap:
            assert [d.id for d in snap.documents()] == [other, new]
        for bad in ({"sp ace": "x"}, {"k": "a\nb"}):
            try:
                st.add(*kv[0], meta=bad)
                raise AssertionError("bad metadata accepted")
            except msadb.InvalidArgument:
                pass
        assert st.verify() == []
    finally:
        os.environ.pop("MSADB_TEST_NOW", None)
        st.close()


if __name__ == "__main__":
    pyenv.run_tests(globals())
