#!/usr/bin/python3
"""End-to-end test of the msadb program: usage /usr/bin/python3 cli_e2e.py PATH_TO_msadb

Drives the built binary through init, ingest (safetensors with several
documents, F16/BF16 inputs, .npy pairs, several spaces), query (exact output
against a dense attention computed here with numpy, needles found by sparse
selection, cited text), rm, verify, compact, dump and load (identical query
results), encryption keys, and every class of bad input, checking the exit
status, the message and that the store is unchanged afterwards.  Tensors are
written with a small safetensors writer below (numpy + json + struct).
"""
import json
import resource
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

MSADB = os.path.abspath(sys.argv[1])
TMP = tempfile.mkdtemp(prefix="msadb-cli-e2e-")
FAILS = []

L, MEM, H, Q, D, BLOCK = 4, [2, 3], 2, 4, 16, 16
SIG = ["--layers", str(L), "--kv-heads", str(H), "--q-heads", str(Q), "--head-dim", str(D),
       "--memory-layers", "2-3", "--block", str(BLOCK)]
rng = np.random.default_rng(1234)


def p(*parts):
    return os.path.join(TMP, *parts)


# --------------------------------------------------------------------------
# running the program
# --------------------------------------------------------------------------

def run(*args, expect=0, env=None, msg=None):
    e = dict(os.environ)
    e.pop("MSADB_PW", None)
    if env:
        e.update(env)
    r = subprocess.run([MSADB, *args], capture_output=True, text=True, env=e, timeout=120)
    where = "msadb " + " ".join(os.path.basename(a) if a.startswith(TMP) else a for a in args)
    if r.returncode != expect:
        raise AssertionError(f"{where}: exit {r.returncode}, expected {expect}\n"
                             f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
    if msg is not None and msg not in r.stderr:
        raise AssertionError(f"{where}: stderr lacks {msg!r}:\n{r.stderr}")
    if expect != 0 and not r.stderr.startswith("msadb: "):
        raise AssertionError(f"{where}: error message not prefixed 'msadb: ': {r.stderr!r}")
    return r


def jrun(*args, **kw):
    r = run(*args, "--json", **kw)
    return json.loads(r.stdout)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def state(db, env=None, extra=()):
    """What must not change when a command fails."""
    ls = jrun("ls", db, *extra, env=env)
    st = jrun("stat", db, *extra, env=env)
    for k in ("map_size", "map_used", "live_bytes", "readers", "oldest_reader_lag"):
        st.pop(k, None)
    return json.dumps([ls, st], sort_keys=True)


# --------------------------------------------------------------------------
# safetensors and .npy writing/reading
# --------------------------------------------------------------------------

from memmodel.safetensors_io import to_bf16, from_bf16, st_write, st_read


# --------------------------------------------------------------------------
# documents and the reference attention
# --------------------------------------------------------------------------

class Doc:
    def __init__(self, T, text=None, space="default", scale=1.0):
        self.T = T
        self.k = (rng.standard_normal((len(MEM), H, T, D)) * scale).astype(np.float32)
        self.v = rng.standard_normal((len(MEM), H, T, D)).astype(np.float32)
        self.space = space
        self.text = text
        self.id = None
        self.title = None


def words_text(T, tag):
    words = [f"{tag}{i}" for i in range(T)]
    text = " ".join(words).encode()
    spans, pos = [], 0
    for w in words:
        spans.append([pos, pos + len(w)])
        pos += len(w) + 1
    return text, np.array(spans, dtype=np.int64)


def multi_doc_file(path, docs, kv_dtype="F32", with_text=True):
    K = np.concatenate([d.k for d in docs], axis=2)
    V = np.concatenate([d.v for d in docs], axis=2)
    t = {}
    if kv_dtype == "F16":
        t["keys"], t["values"] = K.astype(np.float16), V.astype(np.float16)
        for d in docs:
            d.k, d.v = d.k.astype(np.float16).astype(np.float32), d.v.astype(np.float16).astype(np.float32)
    elif kv_dtype == "BF16":
        t["keys"], t["values"] = to_bf16(K), to_bf16(V)
        for d in docs:
            d.k, d.v = from_bf16(to_bf16(d.k)), from_bf16(to_bf16(d.v))
    else:
        t["keys"], t["values"] = K, V
    if len(docs) > 1:
        t["doc_lengths"] = np.array([d.T for d in docs], dtype=np.int64)
    t["tokens"] = np.arange(K.shape[2], dtype=np.int32)
    if with_text:
        texts, spans, off = [], [], 0
        for i, d in enumerate(docs):
            txt, sp = words_text(d.T, f"w{os.path.basename(path)[0]}{i}_")
            d.text = txt
            texts.append(txt)
            spans.append(sp + off)
            off += len(txt)
        t["text"] = np.frombuffer(b"".join(texts), dtype=np.uint8)
        t["token_spans"] = np.concatenate(spans)
    return st_write(path, t)


def ref_attend(q, docs, layer):
    """Dense softmax attention over the documents' K/V; q [n,Q,D]."""
    li = MEM.index(layer)
    n = q.shape[0]
    out = np.zeros((n, Q, D))
    lse = np.full((n, Q), -np.inf)
    if not docs:
        return out, lse
    K = np.concatenate([d.k[li] for d in docs], axis=1).astype(np.float64)  # [H,T,D]
    V = np.concatenate([d.v[li] for d in docs], axis=1).astype(np.float64)
    g = Q // H
    for i in range(n):
        for h in range(Q):
            s = K[h // g] @ q[i, h].astype(np.float64) / np.sqrt(D)
            m = s.max()
            w = np.exp(s - m)
            lse[i, h] = m + np.log(w.sum())
            out[i, h] = (w / w.sum()) @ V[h // g]
    return out, lse


def query_out(db, qfile, layer, *extra, env=None):
    o = p("out.safetensors")
    if os.path.exists(o):
        os.unlink(o)
    run("query", db, "--q", qfile, "--layer", str(layer), "--out", o, "--quiet", *extra, env=env)
    r = st_read(o)
    check(r["out"].dtype == np.float32 and r["lse"].dtype == np.float32, "out/lse are F32")
    return r["out"].astype(np.float64), r["lse"].astype(np.float64)


def close(a, b, tol, what):
    err = np.max(np.abs(a - b)) if a.size else 0.0
    check(err <= tol, f"{what}: max error {err:g} > {tol:g}")


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

def test_usage():
    run(expect=2, msg="missing COMMAND")
    run("frobnicate", expect=2, msg="unknown command 'frobnicate'")
    run("init", p("u"), "--layers", "4", expect=2, msg="missing --kv-heads")
    run("init", p("u"), *SIG, "--bogus", expect=2, msg="unknown option '--bogus'")
    run("init", p("u"), "--layers", "4", "--kv-heads", "2", "--q-heads", "3", "--head-dim", "8",
        expect=2, msg="not a multiple")
    run("init", p("u"), "--layers", "4", "--kv-heads", "2", "--q-heads", "4", "--head-dim", "8",
        "--memory-layers", "2,7", expect=2, msg="layer 7 is out of range")
    run("init", p("u"), "--layers", "4", "--kv-heads", "2", "--q-heads", "4", "--head-dim", "8",
        "--memory-layers", "2,2", expect=2, msg="listed twice")
    run("init", p("u"), *SIG, "--dtype", "f8", expect=2, msg="--dtype: expected")
    run("init", p("u"), *SIG, "--summary", "median", expect=2, msg="--summary")
    run("init", p("u"), *SIG, "--layers", "4", expect=2, msg="given twice")
    run("init", p("u"), *SIG, "--key-file", "k", "--passphrase-env", "X", expect=2, msg="not both")
    run("ls", p("u"), "--layer", "2", expect=2, msg="does not apply")
    run("query", p("u"), "--layer", "2", expect=2, msg="missing --q")
    run("query", p("u"), "--q", "x", "--layer", "2", "--top-k", "0", expect=2, msg="--top-k")
    run("query", p("u"), "--q", "x", "--layer", "2", "--select", "all", expect=2, msg="--select")
    run("rm", p("u"), "abc", expect=2, msg="not a document id")
    run("space", p("u"), "rename", "x", expect=2, msg="unknown action")
    run("space", p("u"), "create", "bad name!", expect=2, msg="invalid space name")
    run("ingest", p("u"), expect=2, msg="missing FILE")
    check(not os.path.exists(p("u")), "a usage error created a store")
    r = run("help", "query")
    check("--per-token" in r.stdout, "help query lists --per-token")
    r = run("ingest", "--help")
    check("usage: msadb ingest" in r.stdout, "ingest --help")
    check(run("--version").stdout.startswith("msadb "), "--version")


def init_store():
    """A store of SIG with f32 storage and spaces alpha and beta; init and
    space refusals."""
    db = p("db")
    run("init", db, *SIG, "--dtype", "f32")
    run("init", db, *SIG, expect=1, msg="already exists")
    sig = jrun("stat", db)["signature"]
    check(sig["memory_layers"] == MEM and sig["dtype"] == "f32" and sig["block"] == BLOCK, f"signature {sig}")
    run("space", db, "create", "alpha")
    run("space", db, "create", "beta")
    run("space", db, "create", "alpha", expect=1, msg="already exists")
    names = [s["name"] for s in jrun("space", db, "ls")["spaces"]]
    check(sorted(names) == ["alpha", "beta", "default"], f"spaces {names}")
    return db


def ingest_inputs(db):
    """A three-document F32 file and the needle's file into alpha, an .npy
    pair and an F16 file into beta, a BF16 file into default: ids, titles,
    spaces, ls.  The needle: block 2 (tokens 32..47) of a document, keys
    along u_h per kv head.  Returns the documents, the needle and u."""
    a_docs = [Doc(40), Doc(25), Doc(50)]
    fa = multi_doc_file(p("a.safetensors"), a_docs)
    needle = Doc(64, scale=0.3)
    u = rng.standard_normal((len(MEM), H, D)).astype(np.float32)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    needle.k[:, :, 32:48, :] = 6.0 * u[:, :, None, :] + 0.05 * rng.standard_normal((len(MEM), H, 16, D))
    needle.k = needle.k.astype(np.float32)
    fn = multi_doc_file(p("needle.safetensors"), [needle])
    b_doc = Doc(33)
    fb = multi_doc_file(p("b16.safetensors"), [b_doc], kv_dtype="F16", with_text=False)
    c_doc = Doc(20)
    np.save(p("c.keys.npy"), c_doc.k)
    np.save(p("c.values.npy"), c_doc.v)
    d_doc = Doc(17)
    fd = multi_doc_file(p("dbf.safetensors"), [d_doc], kv_dtype="BF16", with_text=False)

    r = run("ingest", db, "--space", "alpha", fa, fn, "--json")
    check(r.stderr == "", f"ingest wrote to stderr off a terminal: {r.stderr!r}")
    got = json.loads(r.stdout)["documents"]
    check([g["tokens"] for g in got] == [40, 25, 50, 64], f"ingest result {got}")
    check(all(g["space"] == "alpha" for g in got), "spaces of ingested documents")
    for d, g in zip(a_docs + [needle], got):
        d.id, d.space, d.title = g["id"], "alpha", g["title"]
    check(got[0]["title"] == "a #1" and got[3]["title"] == "needle", f"titles {got}")
    got = jrun("ingest", db, "--space", "beta", "--title", "npy doc", p("c.keys.npy"), p("c.values.npy"), fb)["documents"]
    check(len(got) == 2 and got[0]["title"] == "npy doc", f"npy ingest {got}")
    c_doc.id, c_doc.space, b_doc.id, b_doc.space = got[0]["id"], "beta", got[1]["id"], "beta"
    r = run("ingest", db, fd, "--quiet")
    check(r.stdout == "", "--quiet ingest prints nothing")
    d_doc.id = jrun("ls", db, "--space", "default")["documents"][0]["id"]
    docs = a_docs + [needle, c_doc, b_doc, d_doc]
    ls = jrun("ls", db)["documents"]
    check(sorted(x["id"] for x in ls) == sorted(d.id for d in docs), "ls lists every document")
    check(len({d.id for d in docs}) == len(docs), "ids are distinct")
    check(len(jrun("ls", db, "--space", "beta")["documents"]) == 2, "ls --space beta")
    run("ls", db, "--space", "nope", expect=1, msg="no space 'nope'")
    return docs, needle, u


def exact_queries(db, docs):
    """Exact queries equal dense attention over the stored f32 K/V (every
    memory layer, two spaces, F16 and BF16 queries).  Returns the queries
    and their file."""
    qs = rng.standard_normal((3, Q, D)).astype(np.float32)
    qf = st_write(p("q.safetensors"), {"queries": qs})
    for layer in MEM:
        out, lse = query_out(db, qf, layer, "--exact")
        ro, rl = ref_attend(qs, docs, layer)
        close(out, ro, 1e-4, f"exact out, layer {layer}")
        close(lse, rl, 1e-4, f"exact lse, layer {layer}")
    out, lse = query_out(db, qf, 3, "--exact", "--space", "alpha", "--space", "default")
    ro, rl = ref_attend(qs, [d for d in docs if d.space in ("alpha", "default")], 3)
    close(out, ro, 1e-4, "exact out over two spaces")
    close(lse, rl, 1e-4, "exact lse over two spaces")
    # F16 and BF16 queries are read too
    out16, _ = query_out(db, st_write(p("q16.safetensors"), {"queries": qs.astype(np.float16)}), 2, "--exact")
    close(out16, ref_attend(qs.astype(np.float16).astype(np.float32), docs, 2)[0], 1e-4, "F16 queries")
    outbf, _ = query_out(db, st_write(p("qbf.safetensors"), {"queries": to_bf16(qs)}), 2, "--exact")
    close(outbf, ref_attend(from_bf16(to_bf16(qs)), docs, 2)[0], 1e-4, "BF16 queries")
    return qs, qf


def sparse_needle(db, needle, u):
    """Sparse selection (blocks and documents) finds the needle and cites
    its text; the sparse output is dense attention over the selection."""
    for layer in MEM:
        li = MEM.index(layer)
        qn = np.repeat(u[li], Q // H, axis=0)[None].astype(np.float32) * 4.0  # [1,Q,D]
        qnf = st_write(p("qn.safetensors"), {"queries": qn})
        for select in ("blocks", "documents"):
            res = jrun("query", db, "--q", qnf, "--layer", str(layer), "--top-k", "1", "--select", select)
            check(res["layer"] == layer and len(res["selected"]) == H, f"selected per kv head: {res}")
            check("timing_ms" in res and "total" in res["timing_ms"], "timing_ms")
            for e in res["selected"]:
                blocks = e["blocks"]
                hit = [b for b in blocks if b["doc"] == needle.id and b["token_start"] == 32]
                check(hit, f"layer {layer}, {select}: needle block not selected for kv head {e['kv_head']}: {blocks}")
                if select == "blocks":
                    check(len(blocks) == 1 and hit[0]["token_end"] == 48, f"top-1 block {blocks}")
                    want = needle.text[hit[0]["byte_start"]:hit[0]["byte_end"]].decode()
                    check(hit[0]["text"] == want and want.startswith("wn0_32 "), f"cited text {hit[0]}")
                else:
                    check({b["doc"] for b in blocks} == {needle.id} and len(blocks) == 4,
                          f"documents selection returns the needle's 4 blocks: {blocks}")
        # sparse output equals dense attention over the selected tokens
        out, lse = query_out(db, qnf, layer, "--top-k", "1")
        sel = Doc(16)
        sel.k, sel.v = needle.k[:, :, 32:48], needle.v[:, :, 32:48]
        ro, rl = ref_attend(qn, [sel], layer)
        close(out, ro, 1e-4, "sparse output over the selected block")
        close(lse, rl, 1e-4, "sparse lse over the selected block")


def per_token_and_table(db, needle, u, qs, qf):
    """Per-token selection (one entry per query token and kv head) and the
    table form of the selection."""
    qp = np.concatenate([np.repeat(u[0], Q // H, axis=0)[None] * 4.0, qs[:1]]).astype(np.float32)
    res = jrun("query", db, "--q", st_write(p("qp.safetensors"), {"queries": qp}), "--layer", "2",
               "--top-k", "2", "--per-token")
    check(len(res["selected"]) == 2 * H and all("query" in e for e in res["selected"]), "per-token entries")
    for e in res["selected"]:
        if e["query"] == 0:
            check(any(b["doc"] == needle.id and b["token_start"] == 32 for b in e["blocks"]),
                  f"per-token needle for query 0: {e}")
    # the table form (not a terminal: tab-separated with a header line)
    r = run("query", db, "--q", qf, "--layer", "2", "--top-k", "2")
    check(r.stdout.splitlines()[0].split("\t")[:3] == ["kv_head", "doc", "block"], f"table header {r.stdout[:200]}")


def test_main():
    db = init_store()
    docs, needle, u = ingest_inputs(db)
    qs, qf = exact_queries(db, docs)
    sparse_needle(db, needle, u)
    per_token_and_table(db, needle, u, qs, qf)
    return db, docs, qs, qf, needle


def refuse(db, files, msg, extra=()):
    run("ingest", db, *extra, *files, expect=1, msg=msg)


def bad_tensor_contents(db, ok):
    """Shapes, dtypes, non-finite values, lengths, tokens, spans and tensor
    names that do not fit the store."""
    k, v = ok.k, ok.v
    refuse(db, [st_write(p("e1.st"), {"keys": k[:1], "values": v[:1]})],
           "keys: shape [1,2,20,16] but the store has 2 memory layers")
    refuse(db, [st_write(p("e2.st"), {"keys": k[:, :1], "values": v[:, :1]})], "but the store has 2 kv heads")
    refuse(db, [st_write(p("e3.st"), {"keys": k[..., :8], "values": v[..., :8]})], "but the store has head dim 16")
    refuse(db, [st_write(p("e4.st"), {"keys": k.astype(np.int32), "values": v})], "keys: dtype I32, expected F32, F16 or BF16")
    refuse(db, [st_write(p("e5.st"), {"keys": k, "values": v[:, :, :10]})], "values: shape [2,2,10,16] differs from keys")
    refuse(db, [st_write(p("e6.st"), {"keys": k})], "no tensor 'values'")
    kn = v.copy()
    kn[1, 0, 3, 5] = np.nan
    refuse(db, [st_write(p("e7.st"), {"keys": k, "values": kn})], "values: NaN or Inf at [1,0,3,5]")
    ki = k.astype(np.float16)
    ki[0, 1, 2, 3] = np.inf
    refuse(db, [st_write(p("e8.st"), {"keys": ki, "values": v.astype(np.float16)})], "keys: NaN or Inf")
    refuse(db, [st_write(p("e9.st"), {"keys": k[:, :, :0], "values": v[:, :, :0]})], "holds no tokens")
    refuse(db, [st_write(p("e10.st"), {"keys": k, "values": v, "doc_lengths": np.array([10, 5], np.int64)})],
           "doc_lengths: the lengths sum to 15 but keys have T = 20")
    refuse(db, [st_write(p("e11.st"), {"keys": k, "values": v, "doc_lengths": np.array([20, 0], np.int64)})],
           "at least 1 token")
    refuse(db, [st_write(p("e12.st"), {"keys": k, "values": v, "tokens": np.zeros(19, np.int32)})], "tokens: I32 [19], expected I32 [T]")
    txt = np.frombuffer(b"hello", np.uint8)
    refuse(db, [st_write(p("e13.st"), {"keys": k, "values": v, "text": txt,
                                   "token_spans": np.tile(np.array([[0, 9]], np.int64), (20, 1))})],
           "token_spans: token 0 has span [0,9]")
    refuse(db, [st_write(p("e14.st"), {"keys": k, "values": v, "token_spans": np.zeros((20, 2), np.int64)})],
           "token_spans given without a 'text' tensor")
    refuse(db, [st_write(p("e15.st"), {"keys": k, "values": v, "kees": k})], "unknown tensor 'kees'")


def bad_safetensors_headers(db, ok, good):
    """Lying and truncated safetensors headers (good: ok's file)."""
    k, v = ok.k, ok.v
    raw = open(good, "rb").read()
    open(p("t1.st"), "wb").write(raw[:-7])
    refuse(db, [p("t1.st")], "past the end of the data")
    open(p("t2.st"), "wb").write(struct.pack("<Q", 1 << 40) + raw[8:])
    refuse(db, [p("t2.st")], "header length 1099511627776 exceeds the limit")
    open(p("t3.st"), "wb").write(struct.pack("<Q", len(raw)) + raw[8:])
    refuse(db, [p("t3.st")], "exceeds the")
    open(p("t4.st"), "wb").write(raw + b"\0" * 8)
    refuse(db, [p("t4.st")], "trailing bytes")
    n = k.nbytes
    hdr = {"keys": {"dtype": "F32", "shape": list(k.shape), "data_offsets": [0, n]},
           "values": {"dtype": "F32", "shape": list(k.shape), "data_offsets": [n // 2, n // 2 + n]}}
    h = json.dumps(hdr).encode()
    open(p("t5.st"), "wb").write(struct.pack("<Q", len(h)) + h + k.tobytes() + v.tobytes()[: n // 2])
    refuse(db, [p("t5.st")], "overlap")
    h = (b'{"keys":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
         b'"keys":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')
    open(p("t6.st"), "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 8)
    refuse(db, [p("t6.st")], "duplicate")
    h = b'{"keys":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}'
    open(p("t7.st"), "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 4)
    refuse(db, [p("t7.st")], "unknown dtype 'F33'")
    h = b'{"keys":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}'
    open(p("t8.st"), "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 4)
    refuse(db, [p("t8.st")], "needs 8 bytes but data_offsets [0,4] hold 4")
    open(p("t9.st"), "wb").write(b"")
    refuse(db, [p("t9.st")], "empty")
    refuse(db, [p("missing.st")], "missing.st: cannot open")


def bad_npy_inputs(db, ok):
    """.npy pairs: Fortran order, a missing half, big-endian, a lone file,
    a truncated file."""
    k, v = ok.k, ok.v
    np.save(p("f.keys.npy"), np.asfortranarray(k))
    np.save(p("f.values.npy"), v)
    refuse(db, [p("f.keys.npy")], "fortran_order")
    np.save(p("g.keys.npy"), k)
    refuse(db, [p("g.keys.npy")], "g.values.npy: cannot open")
    np.save(p("g.values.npy"), v.astype(">f4"))
    refuse(db, [p("g.keys.npy")], "'descr' is '>f4'")
    np.save(p("h.npy"), k)
    refuse(db, [p("h.npy")], "X.keys.npy and X.values.npy")
    raw = open(p("c.keys.npy"), "rb").read()
    open(p("i.keys.npy"), "wb").write(raw[:-4])
    shutil.copy(p("c.values.npy"), p("i.values.npy"))
    refuse(db, [p("i.keys.npy")], "needs")


def bad_queries_and_commands(db, docs):
    """Query, rm, space and stat errors."""
    qf = st_write(p("qbad1.st"), {"queries": np.zeros((2, Q - 1, D), np.float32)})
    run("query", db, "--q", qf, "--layer", "2", expect=1, msg="queries: shape [2,3,16] but the store has 4 q heads")
    qf = st_write(p("qbad2.st"), {"q": np.zeros((2, Q, D), np.float32)})
    run("query", db, "--q", qf, "--layer", "2", expect=1, msg="no tensor 'queries'")
    qn = np.zeros((1, Q, D), np.float32)
    qn[0, 1, 2] = np.nan
    qf = st_write(p("qbad3.st"), {"queries": qn})
    run("query", db, "--q", qf, "--layer", "2", expect=1, msg="queries: NaN or Inf at [0,1,2]")
    qf = st_write(p("qok.st"), {"queries": np.ones((1, Q, D), np.float32)})
    run("query", db, "--q", qf, "--layer", "1", expect=1, msg="--layer 1 is not a memory layer")
    run("query", db, "--q", qf, "--layer", "2", "--space", "nope", expect=1, msg="--space nope: no such space")
    run("rm", db, "999999", expect=1, msg="no document 999999")
    run("rm", db, str(docs[0].id), "999999", expect=1, msg="nothing was deleted")
    run("space", db, "drop", "nope", expect=1, msg="no space 'nope'")
    run("stat", p("nowhere"), expect=1, msg="nowhere")


def bad_inputs(db, docs):
    """Every bad input is refused with exit 1, a message naming the problem, and no change."""
    before = state(db)
    ok = Doc(20)
    good = st_write(p("good.safetensors"), {"keys": ok.k, "values": ok.v})
    bad_tensor_contents(db, ok)
    bad_safetensors_headers(db, ok, good)
    bad_npy_inputs(db, ok)
    # a good file followed by a bad one: the whole command is refused
    refuse(db, [good, p("e7.st")], "NaN or Inf")
    refuse(db, [good], "no space 'nope'", extra=("--space", "nope"))
    check(state(db) == before, "bad input changed the store")
    bad_queries_and_commands(db, docs)
    check(state(db) == before, "failed commands changed the store")


def test_rm_verify_dump_load(db, docs, qs, qf, needle):
    victim = docs[1]
    run("rm", db, str(victim.id))
    docs = [d for d in docs if d is not victim]
    check(victim.id not in [x["id"] for x in jrun("ls", db)["documents"]], "rm removed the document")
    out, lse = query_out(db, qf, 2, "--exact")
    ro, rl = ref_attend(qs, docs, 2)
    close(out, ro, 1e-4, "exact after rm")
    close(lse, rl, 1e-4, "exact lse after rm")
    res = jrun("verify", db)
    check(res["sound"] is True and res["problems"] == [], f"verify {res}")
    run("compact", db)
    check(jrun("verify", db)["sound"], "verify after compact")
    close(query_out(db, qf, 2, "--exact")[0], ro, 1e-4, "exact after compact")

    # dump -> load into a fresh path -> the same documents and identical answers
    dump = p("dump.safetensors")
    run("dump", db, dump)
    db2 = p("db2")
    loaded = jrun("load", db2, dump)["documents"]
    check(jrun("stat", db2)["signature"] == jrun("stat", db)["signature"], "load kept the signature")
    old = {x["id"]: x for x in jrun("ls", db)["documents"]}
    new = {x["id"]: x for x in jrun("ls", db2)["documents"]}
    idmap = {x["old_id"]: x["id"] for x in loaded}
    check(sorted(idmap) == sorted(old), "load restored every document")
    for o, n in idmap.items():
        a, b = old[o], new[n]
        for f in ("space", "tokens", "title", "blocks", "text_bytes", "has_tokens", "has_spans"):
            check(a[f] == b[f], f"document {o}: {f} {a[f]!r} != {b[f]!r}")
    check(sorted(s["name"] for s in jrun("space", db2, "ls")["spaces"]) ==
          sorted(s["name"] for s in jrun("space", db, "ls")["spaces"]), "load restored the spaces")
    for layer in MEM:
        for extra in (["--exact"], ["--top-k", "2"], ["--top-k", "1", "--select", "documents"]):
            o1, l1 = query_out(db, qf, layer, *extra)
            o2, l2 = query_out(db2, qf, layer, *extra)
            close(o1, o2, 1e-6, f"dump/load query {extra}")
            close(l1, l2, 1e-6, f"dump/load lse {extra}")
    s1 = jrun("query", db, "--q", qf, "--layer", "3", "--top-k", "3")["selected"]
    s2 = jrun("query", db2, "--q", qf, "--layer", "3", "--top-k", "3")["selected"]
    for e1, e2 in zip(s1, s2):
        check([(idmap[b["doc"]], b["token_start"], b.get("text")) for b in e1["blocks"]] ==
              [(b["doc"], b["token_start"], b.get("text")) for b in e2["blocks"]], "dump/load selection")
    # a second dump of the loaded store holds the same tensors
    run("dump", db2, p("dump2.safetensors"))
    t1, t2 = st_read(dump), st_read(p("dump2.safetensors"))
    for name in ("keys", "values", "tokens", "token_spans", "text", "doc_lengths", "text_lengths"):
        check(np.array_equal(t1[name], t2[name]), f"dump of the loaded store: {name} differs")
    # load refuses a signature mismatch and a non-dump, leaving the store as it was
    before = state(db2)
    other = p("other")
    run("init", other, "--layers", "4", "--kv-heads", "2", "--q-heads", "4", "--head-dim", "8")
    run("load", other, dump, expect=1, msg="signature differs")
    run("load", db2, p("a.safetensors"), expect=1, msg="not an msadb dump")
    raw = bytearray(open(dump, "rb").read())
    open(p("cut.safetensors"), "wb").write(raw[:-100])
    run("load", db2, p("cut.safetensors"), expect=1, msg="past the end")
    check(state(db2) == before, "failed loads changed the store")
    # the dump is also an ingest input: the documents are added again
    got = jrun("ingest", db2, dump)["documents"]
    check(len(got) == len(loaded), "a dump can be ingested")
    return docs


def test_quantized_roundtrip():
    """dump/load of f16, int8 and q4 stores re-quantizes to identical values.

    Every dtype is tried before reporting, so one failure names all."""
    bad = []
    for dtype in ("f16", "int8", "q4"):
        db = p(f"q_{dtype}")
        run("init", db, *SIG, "--dtype", dtype)
        ds = [Doc(37), Doc(50)]
        run("ingest", db, multi_doc_file(p(f"q_{dtype}.safetensors"), ds), "--quiet")
        qf = st_write(p("qq.safetensors"), {"queries": rng.standard_normal((2, Q, D)).astype(np.float32)})
        o1, l1 = query_out(db, qf, 2, "--exact")
        if dtype == "f16":
            for d in ds:
                d.k = d.k.astype(np.float16).astype(np.float32)
                d.v = d.v.astype(np.float16).astype(np.float32)
            ro, rl = ref_attend(st_read(qf)["queries"], ds, 2)
            close(o1, ro, 2e-3, "f16 store exact output")
        run("dump", db, p(f"q_{dtype}.dump"))
        run("load", p(f"q_{dtype}_2"), p(f"q_{dtype}.dump"), "--quiet")
        o2, l2 = query_out(p(f"q_{dtype}_2"), qf, 2, "--exact")
        run("dump", p(f"q_{dtype}_2"), p(f"q_{dtype}_2.dump"))
        t1, t2 = st_read(p(f"q_{dtype}.dump")), st_read(p(f"q_{dtype}_2.dump"))
        for name in ("keys", "values"):
            diff = t1[name] != t2[name]
            if diff.any():
                bad.append(f"{dtype}: {int(diff.sum())} of {diff.size} stored {name} differ after "
                           f"dump/load (max {np.abs(t1[name] - t2[name]).max():g}): re-quantizing "
                           f"dequantized values is not idempotent")
        err = max(np.abs(o1 - o2).max(), np.abs(l1 - l2).max())
        if err > 1e-6:
            bad.append(f"{dtype}: exact query output differs by {err:g} after dump/load")
    check(not bad, "; ".join(bad))


def test_encryption():
    env = {"MSADB_PW": "correct horse battery staple"}
    db = p("enc")
    run("init", db, *SIG, "--passphrase-env", "MSADB_PW", "--dtype", "f32", env=env)
    check(jrun("stat", db, "--passphrase-env", "MSADB_PW", env=env)["encrypted"] is True, "encrypted store")
    d = Doc(30)
    f = multi_doc_file(p("enc.safetensors"), [d])
    run("ingest", db, f, "--passphrase-env", "MSADB_PW", "--quiet", env=env)
    before = state(db, env=env, extra=("--passphrase-env", "MSADB_PW"))
    run("ls", db, expect=1, msg="encrypted")
    run("ingest", db, f, expect=1, msg="encrypted")
    run("ingest", db, f, "--passphrase-env", "MSADB_PW", expect=1, env={"MSADB_PW": "wrong"}, msg="missing or wrong")
    run("ls", db, "--passphrase-env", "NO_SUCH_VARIABLE_X", expect=1, msg="NO_SUCH_VARIABLE_X: the environment variable is not set")
    check(state(db, env=env, extra=("--passphrase-env", "MSADB_PW")) == before, "wrong keys changed the store")
    qs = rng.standard_normal((2, Q, D)).astype(np.float32)
    qf = st_write(p("qe.safetensors"), {"queries": qs})
    out, _ = query_out(db, qf, 3, "--exact", "--passphrase-env", "MSADB_PW", env=env)
    close(out, ref_attend(qs, [d], 3)[0], 1e-4, "exact query of an encrypted store")
    # key files
    key = p("key.hex")
    open(key, "w").write(os.urandom(32).hex() + "\n")
    wrong = p("wrong.hex")
    open(wrong, "w").write(os.urandom(32).hex() + "\n")
    bad = p("bad.key")
    open(bad, "w").write("not a key\n")
    db2 = p("enc2")
    run("init", db2, *SIG, "--key-file", key)
    run("ingest", db2, f, "--key-file", key, "--quiet")
    run("ls", db2, "--key-file", wrong, expect=1, msg="missing or wrong")
    run("ls", db2, "--key-file", bad, expect=1, msg="--key-file")
    run("ls", db2, expect=1, msg="encrypted")
    check(len(jrun("ls", db2, "--key-file", key)["documents"]) == 1, "ls with the key")
    # dump an encrypted store, load into a new encrypted store
    run("dump", db2, p("enc2.dump"), "--key-file", key)
    run("load", p("enc3"), p("enc2.dump"), "--key-file", wrong, "--quiet")
    check(jrun("stat", p("enc3"), "--key-file", wrong)["encrypted"] is True, "loaded store is encrypted")
    run("ls", p("enc3"), "--key-file", key, expect=1, msg="missing or wrong")


def test_verify_detects_damage(db):
    """verify reports a damaged block and exits 1."""
    copy = p("damaged")
    shutil.copytree(db, copy)
    data = [os.path.join(copy, f) for f in os.listdir(copy) if f.endswith(".mdb") and "lock" not in f]
    check(data, "store has a data file")
    raw = bytearray(open(data[0], "rb").read())
    pos = raw.find(b"MSB1")
    check(pos >= 0, "an encoded block is visible in the data file")
    raw[pos + 30] ^= 0xFF
    open(data[0], "wb").write(raw)
    r = run("verify", copy, expect=1, msg="not sound")
    check(r.stdout.strip() != "", "verify lists the problems on stdout")


def many_docs_file(path, n, T):
    """n documents of T tokens each, without text."""
    k = rng.standard_normal((len(MEM), H, n * T, D)).astype(np.float32)
    v = rng.standard_normal((len(MEM), H, n * T, D)).astype(np.float32)
    return st_write(path, {"keys": k, "values": v, "doc_lengths": np.full(n, T, np.int64)})


def test_streaming():
    """--commit-every, resuming without duplicates, 'already in memory', an
    interrupted ingest (SIGINT) and progress on a terminal."""
    import pty
    import signal
    import time
    db = p("sdb")
    run("init", db, *SIG, "--dtype", "int8")
    f = many_docs_file(p("many.safetensors"), 30, 8)
    j = jrun("ingest", db, "--commit-every", "4d", f)
    check(j["added"] == 30 and j["already_in_memory"] == 0 and not j["interrupted"], f"first ingest {j}")
    check(all(d["status"] == "added" for d in j["documents"]), "status added")
    ids = [d["id"] for d in j["documents"]]
    check(ids == sorted(ids) and len(set(ids)) == 30, f"ids {ids}")
    # the same command again: a no-op that says so
    j = jrun("ingest", db, "--commit-every", "4d", f)
    check(j["added"] == 0 and j["already_in_memory"] == 30, f"second ingest {j}")
    check([d["id"] for d in j["documents"]] == ids, "already in memory names the stored documents")
    check(all(d["status"] == "already in memory" for d in j["documents"]), "status already")
    rows = run("ingest", db, f).stdout.splitlines()
    check(rows[0].split("\t") == ["id", "space", "tokens", "title", "status"], f"table header {rows[0]}")
    check(rows[1].split("\t")[4] == "already in memory" and len(rows) == 31, f"table rows {rows[:2]}")
    check(jrun("stat", db)["documents"] == 30, "no duplicates")
    run("verify", db)
    # usage errors, verbatim
    r = run("ingest", db, "--commit-every", "10x", f, expect=2)
    check(r.stderr.startswith("msadb: --commit-every: expected a count and a unit, e.g. 100000t (tokens) "
                              "or 500d (documents), got '10x'\n"), f"message: {r.stderr!r}")
    run("ingest", db, "--commit-every", "0t", f, expect=2, msg="got '0t'")
    run("ingest", db, "--commit-every", "t", f, expect=2, msg="got 't'")
    run("ingest", db, "--binary-ok", f, expect=2,
        msg=f"msadb: ingest: --binary-ok applies to text files; {f} is a tensor file")
    run("ingest", db, "--segment", "joined", f, expect=2,
        msg=f"msadb: ingest: --segment applies to text files read by a model; {f} is a tensor file")
    # tokens as the unit
    j = jrun("ingest", db, "--space", "default", "--commit-every", "20t", many_docs_file(p("t.safetensors"), 7, 8))
    check(j["added"] == 7, f"--commit-every 20t {j}")

    # SIGINT: stops at a document boundary, commits what it holds, says how
    # many documents are in and how to resume; the rerun completes the set
    db2 = p("sdb2")
    run("init", db2, *SIG, "--dtype", "f16")
    big = many_docs_file(p("big.safetensors"), 600, 4)
    proc = subprocess.Popen([MSADB, "ingest", db2, "--commit-every", "1d", big, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        st = subprocess.run([MSADB, "stat", db2, "--json"], capture_output=True, text=True)
        if st.returncode == 0 and json.loads(st.stdout)["documents"] > 0:
            break
        time.sleep(0.02)
    check(proc.poll() is None, "the ingest ended before it could be interrupted (make the input larger)")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    check(proc.returncode == 130, f"interrupted ingest: exit {proc.returncode}, stderr {err!r}")
    n = jrun("stat", db2)["documents"]
    check(0 < n < 600, f"{n} documents after the interrupt")
    check(err == f"msadb: ingest: interrupted by SIGINT: {n} documents committed to {db2}; run the same "
                 "command again to resume (documents already in the store are skipped)\n", f"message {err!r}")
    j = json.loads(out)
    check(j["interrupted"] and j["added"] == n and len(j["documents"]) == n, f"interrupted summary {j['added']}")
    run("verify", db2)
    j = jrun("ingest", db2, "--commit-every", "1d", big)
    check(j["added"] == 600 - n and j["already_in_memory"] == n, f"resume: {j['added']} + {j['already_in_memory']}")
    check(jrun("stat", db2)["documents"] == 600, "the rerun completed the set")
    run("verify", db2)

    # progress on a terminal: total, percent and ETA on stderr
    master, slave = pty.openpty()
    r = subprocess.run([MSADB, "ingest", db, many_docs_file(p("tty.safetensors"), 5, 8)],
                       stdout=subprocess.PIPE, stderr=slave, timeout=120)
    os.close(slave)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    os.close(master)
    check(r.returncode == 0, "ingest on a terminal")
    text = tty.decode(errors="replace")
    check("40/40 tokens (100%)" in text and "ETA" in text, f"progress line: {text!r}")
    r = run("ingest", db, many_docs_file(p("notty.safetensors"), 5, 8))
    check(r.stderr == "", "no progress off a terminal")


def test_edges(db, dump):
    """Bounded, honest edges: size caps on inputs that are not regular files,
    FIFOs without a writer, limits shared with the library, titles, manifest
    fields, file size limits, file modes."""
    before = state(db)
    # /dev/zero and stdin are read only up to the input limit
    run("ingest", db, "/dev/zero", expect=1, env={"MSADB_INPUT_MAX": "1000000"},
        msg="input larger than 1000000 bytes")
    r = subprocess.run(f"head -c 3000000 /dev/zero | MSADB_INPUT_MAX=1000000 {MSADB} ingest {db} -",
                       shell=True, capture_output=True, text=True, timeout=60)
    check(r.returncode == 1 and "input larger than" in r.stderr, f"stdin past the limit: {r.stderr}")
    # a FIFO that nobody writes to: a clear error, not a hang (run() times out)
    fifo = p("fifo")
    os.mkfifo(fifo)
    run("ingest", db, fifo, expect=1, msg="no data")
    # --top-k beyond the library's limit is a usage error
    run("query", db, "--q", p("q.safetensors"), "--layer", "2", "--top-k", "65537", expect=2,
        msg="--top-k")
    # titles: not empty when given, UTF-8
    f1 = multi_doc_file(p("edge1.safetensors"), [Doc(5)])
    run("ingest", db, f1, "--title", "", expect=2, msg="--title: empty")
    run("ingest", db, f1, "--title", b"caf\xe9".decode("utf-8", "surrogateescape"), expect=2,
        msg="not valid UTF-8")
    # magnitudes an f16 store cannot hold are refused, not clamped or made infinite
    big = Doc(5)
    big.k[0, 0, 0, 0] = 1e6
    run("ingest", db, multi_doc_file(p("big.safetensors"), [big]), expect=1, msg="65504")
    check(state(db) == before, "refused edge inputs changed the store")
    # load checks every manifest field: text_bytes that is not the file's
    t = st_read(dump)
    t.pop("__metadata__")
    m = json.loads(bytes(t["manifest"]).decode())
    m["documents"][0]["text_bytes"] += 1
    t["manifest"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
    bad = st_write(p("bad_manifest.dump"), t, meta={"format": "msadb-dump", "format_version": "1"})
    run("load", p("edge_load"), bad, expect=1, msg="text_bytes")
    m["documents"][0]["text_bytes"] = False
    t["manifest"] = np.frombuffer(json.dumps(m).encode(), dtype=np.uint8)
    st_write(bad, t, meta={"format": "msadb-dump", "format_version": "1"})
    run("load", p("edge_load"), bad, expect=1, msg="text_bytes")
    # a store, and a dump, are readable by their owner only
    for path in (os.path.join(db, "data.mdb"), dump):
        check(os.stat(path).st_mode & 0o077 == 0, f"{path} is mode {os.stat(path).st_mode & 0o777:o}")
    # past RLIMIT_FSIZE: "File size limit exceeded", not "Input/output error"
    fsz = p("fsize")
    run("init", fsz, *SIG)
    limit = os.path.getsize(os.path.join(fsz, "data.mdb")) + 200000
    r = subprocess.run([MSADB, "ingest", fsz, multi_doc_file(p("fsz.safetensors"), [Doc(900), Doc(900)])],
                       capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    check(r.returncode == 1 and "File size limit exceeded" in r.stderr, f"RLIMIT_FSIZE: {r.stderr}")
    check(jrun("verify", fsz)["sound"], "the store is sound after the refused commit")
    st = jrun("stat", db)
    check(st["readers"] == 0 and st["oldest_reader_lag"] == 0 and 0 < st["live_bytes"] <= st["map_used"],
          f"stat readers and space: {st}")


def test_documents():
    """--meta, --where, --ttl (under the test clock MSADB_TEST_NOW), show,
    ls, update, expire and rm by filter."""
    db = p("docs")
    run("init", db, *SIG, "--dtype", "f32")
    t0 = 2000000000
    at = lambda t: {"MSADB_TEST_NOW": str(t)}
    red, blue, plain = Doc(24), Doc(30), Doc(20)
    fr = multi_doc_file(p("red.safetensors"), [red])
    fb = multi_doc_file(p("blue.safetensors"), [blue])
    fp = multi_doc_file(p("plain.safetensors"), [plain])
    red.id = jrun("ingest", db, fr, "--meta", "team=red", "--meta", "lang=en", env=at(t0))["documents"][0]["id"]
    plain.id = jrun("ingest", db, fp, env=at(t0))["documents"][0]["id"]
    check(jrun("stat", db)["format_version"] == 3, "no expiry yet: format 3")
    blue.id = jrun("ingest", db, fb, "--meta", "team=blue", "--ttl", "1h", env=at(t0))["documents"][0]["id"]
    check(jrun("stat", db)["format_version"] == 4, "a document with an expiry: format 4")

    ls = {x["id"]: x for x in jrun("ls", db, env=at(t0))["documents"]}
    check(ls[red.id]["meta"] == {"team": "red", "lang": "en"} and ls[red.id]["expires"] is None, f"ls {ls}")
    check(ls[blue.id]["expires"] == t0 + 3600 and ls[plain.id]["meta"] is None, f"ls {ls}")
    check([x["id"] for x in jrun("ls", db, "--where", "team=red", env=at(t0))["documents"]] == [red.id],
          "ls --where")
    check(jrun("ls", db, "--where", "team=red", "--where", "lang=fr", env=at(t0))["documents"] == [],
          "--where terms are ANDed")
    sh = jrun("show", db, str(blue.id), env=at(t0))
    check(sh["expires"] == t0 + 3600 and sh["metadata"] == {"team": "blue"}, f"show {sh}")
    r = run("show", db, str(red.id), env=at(t0))
    check("meta     team=red\nmeta     lang=en\n" in r.stdout and "expires  never" in r.stdout, r.stdout)

    # a filtered query attends the matching documents only: exact output
    # equals dense attention over them
    qs = rng.standard_normal((2, Q, D)).astype(np.float32)
    qf = st_write(p("dq.safetensors"), {"queries": qs})
    for where, docs in ((["--where", "team=red"], [red]), ([], [red, plain, blue])):
        out, lse = query_out(db, qf, 2, "--exact", *where, env=at(t0))
        ro, rl = ref_attend(qs, docs, 2)
        close(out, ro, 1e-4, f"query --exact {where}")
        close(lse, rl, 1e-4, f"query --exact {where} lse")

    # past blue's expiry: every read ignores it at once, before any purge
    later = at(t0 + 3600)
    check(sorted(x["id"] for x in jrun("ls", db, env=later)["documents"]) == sorted([red.id, plain.id]),
          "ls skips the expired document")
    run("show", db, str(blue.id), env=later, expect=1,
        msg=f"msadb: {db}: no document {blue.id} (msadb ls {db} lists them)")
    out, lse = query_out(db, qf, 2, "--exact", env=later)
    ro, rl = ref_attend(qs, [red, plain], 2)
    close(out, ro, 1e-4, "query skips the expired document")
    check(jrun("expire", db, env=later) == {"purged": 1}, "expire purges it")
    check(jrun("expire", db, env=later) == {"purged": 0}, "expire again: nothing")
    run("show", db, str(blue.id), env=at(t0), expect=1, msg="no document")
    r = run("expire", db, env=later)
    check(r.stdout == "purged 0 expired documents\n", f"expire output {r.stdout!r}")

    # update: a new id, the old one deleted, metadata kept unless given
    red2 = Doc(28)
    f2 = multi_doc_file(p("red2.safetensors"), [red2])
    u = jrun("update", db, str(red.id), f2)
    check(u["replaced"] == red.id and len(u["documents"]) == 1 and u["documents"][0] != red.id, f"update {u}")
    old_id, red2.id = red.id, u["documents"][0]
    run("show", db, str(old_id), expect=1, msg="no document")
    check(jrun("show", db, str(red2.id))["metadata"] == {"team": "red", "lang": "en"}, "update keeps --meta")
    out, lse = query_out(db, qf, 2, "--exact", "--where", "team=red")
    ro, rl = ref_attend(qs, [red2], 2)
    close(out, ro, 1e-4, "query after update")
    u = jrun("update", db, str(red2.id), f2, "--meta", "team=green", "--ttl", "2d", env=at(t0))
    red2.id = u["documents"][0]
    sh = jrun("show", db, str(red2.id), env=at(t0))
    check(sh["metadata"] == {"team": "green"} and sh["expires"] == t0 + 2 * 86400, f"update --meta --ttl {sh}")
    before = state(db, env=at(t0))
    run("update", db, "999", f2, expect=1, msg=f"msadb: {db}: no document 999 (msadb ls {db} lists them); "
        "nothing was changed")
    two = multi_doc_file(p("two.safetensors"), [Doc(5), Doc(6)])
    run("update", db, str(red2.id), two, expect=1,
        msg=f"msadb: {two}: holds 2 documents; update replaces one document with one (use ingest and rm for more)")
    check(state(db, env=at(t0)) == before, "failed updates change nothing")
    run("update", db, str(red2.id), expect=2,
        msg="msadb: update: give the new content as FILE or as --text TEXT (one of them)")

    # rm by filter, alone and with --space
    check(jrun("rm", db, "--where", "team=nobody")["deleted"] == [], "rm --where with no match")
    check(jrun("rm", db, "--where", "team=green", "--space", "default", env=at(t0))["deleted"] == [red2.id],
          "rm --where --space")
    check([x["id"] for x in jrun("ls", db)["documents"]] == [plain.id], "rm --where left the others")
    run("verify", db)

    # bad values, verbatim
    run("ingest", db, fp, "--meta", "team", expect=2,
        msg="msadb: --meta: expected KEY=VALUE (KEY: 1..64 letters, digits and ._-:@/; VALUE: up to 1024 "
            "bytes, no newline), got 'team'")
    run("ingest", db, fp, "--meta", "a=1", "--meta", "a=2", expect=2, msg="msadb: --meta: key 'a' given twice")
    run("ingest", db, fp, "--ttl", "3w", expect=2,
        msg="msadb: --ttl: expected a duration such as 90s, 45m, 12h or 30d (at most 36600d), got '3w'")
    run("ls", db, "--where", "x", expect=2, msg="msadb: --where: expected KEY=VALUE")
    run("rm", db, "1", "--where", "a=b", expect=2,
        msg="msadb: rm: give DOC ids or a filter (--where K=V), not both")
    run("ingest", db, fp, "--where", "a=b", expect=2,
        msg="msadb: ingest: option --where does not apply to this command")


def test_tenants():
    """--space as a scope: ls, rm, show, update, query and search given one
    space reach nothing of another; refused ids change nothing."""
    db = p("tenants")
    run("init", db, *SIG, "--dtype", "f32")
    run("space", db, "create", "A")
    run("space", db, "create", "B")
    a1, a2, b1 = Doc(16), Doc(20), Doc(24)
    for d, sp in ((a1, "A"), (a2, "A"), (b1, "B")):
        f = multi_doc_file(p(f"t{id(d)}.safetensors"), [d])
        d.id = jrun("ingest", db, f, "--space", sp)["documents"][0]["id"]
    check([x["id"] for x in jrun("ls", db, "--space", "A")["documents"]] == [a1.id, a2.id], "ls --space A")
    before = state(db)
    run("rm", db, "--space", "A", str(a2.id), str(b1.id), expect=1,
        msg=f"msadb: {db}: document {b1.id} is not in space 'A' (--space limits 'msadb rm' to that space); "
            "nothing was deleted")
    check(state(db) == before, "a refused rm changes nothing")
    run("show", db, "--space", "A", str(b1.id), expect=1, msg=f"document {b1.id} is not in space 'A'")
    f = multi_doc_file(p("tnew.safetensors"), [Doc(8)])
    run("update", db, str(b1.id), f, "--space", "A", expect=1, msg=f"document {b1.id} is not in space 'A'")
    run("ls", db, "--space", "nope", expect=1, msg="no space 'nope'")
    check(state(db) == before, "refused show and update change nothing")
    qs = rng.standard_normal((1, Q, D)).astype(np.float32)
    qf = st_write(p("tq.safetensors"), {"queries": qs})
    out, lse = query_out(db, qf, 2, "--exact", "--space", "A")
    ro, rl = ref_attend(qs, [a1, a2], 2)
    close(out, ro, 1e-4, "query --space A attends A alone")
    hits = jrun("query", db, "--q", qf, "--layer", "2", "--space", "A", "--top-k", "64")
    ids = {b["doc"] for e in hits["selected"] for b in e["blocks"]}
    check(ids == {a1.id, a2.id}, f"query --space A selects {ids}")
    check(jrun("rm", db, "--space", "A", str(a2.id))["deleted"] == [a2.id], "rm --space A DOC of A")
    check([x["id"] for x in jrun("ls", db)["documents"]] == [a1.id, b1.id], "rm deleted a2 alone")
    run("verify", db)

    # a space with its own key, in an encrypted store: the store key alone
    # reaches nothing of it; a wrong key is refused; the right one works
    db = p("tenants-keyed")
    sk, bk, wk = p("store.key"), p("b.key"), p("wrong.key")
    for f in (sk, bk, wk):
        open(f, "w").write(os.urandom(32).hex() + "\n")
    K = ("--key-file", sk)
    run("init", db, *SIG, "--dtype", "f32", *K)
    run("space", db, "create", "A", *K)
    run("space", db, "create", "B", *K, "--space-key-file", bk)
    run("space", p("tenants"), "create", "C", "--space-key-file", bk, expect=1,
        msg="a space with its own key needs an encrypted store")
    spaces = {x["name"]: x for x in jrun("space", db, "ls", *K)["spaces"]}
    check(spaces["B"]["keyed"] and not spaces["A"]["keyed"], f"space ls {spaces}")
    ka, kb1 = Doc(16), Doc(24)
    ka.id = jrun("ingest", db, multi_doc_file(p("ka.safetensors"), [ka]), "--space", "A", *K)["documents"][0]["id"]
    fb = multi_doc_file(p("kb.safetensors"), [kb1])
    run("ingest", db, fb, "--space", "B", *K, expect=1, msg="space 'B' has its own key")
    run("ingest", db, fb, "--space", "B", *K, "--space-key-file", wk, expect=1, msg="wrong key for space 'B'")
    BK = ("--space", "B", "--space-key-file", bk)
    kb1.id = jrun("ingest", db, fb, *K, *BK)["documents"][0]["id"]
    check([x["id"] for x in jrun("ls", db, *K)["documents"]] == [ka.id], "ls without B's key: A's documents")
    before = state(db, extra=K)
    run("ls", db, "--space", "B", *K, expect=1, msg="space 'B' has its own key")
    run("show", db, str(kb1.id), *K, expect=1, msg="is in a space with its own key")
    run("rm", db, str(kb1.id), *K, expect=1, msg="is in a space with its own key")
    run("rm", db, "--space", "B", *K, expect=1, msg="space 'B' has its own key")
    run("space", db, "drop", "B", *K, expect=1, msg="has its own key")
    run("query", db, "--q", qf, "--layer", "2", "--space", "B", *K, expect=1, msg="space 'B' has its own key")
    run("rm", db, "--space", "B", str(kb1.id), *K, "--space-key-file", wk, expect=1, msg="wrong key for space 'B'")
    check(state(db, extra=K) == before, "refused commands change nothing")
    check([x["id"] for x in jrun("ls", db, *K, *BK)["documents"]] == [kb1.id], "ls with B's key")
    out, lse = query_out(db, qf, 2, "--exact", *K, *BK)
    ro, rl = ref_attend(qs, [kb1], 2)
    close(out, ro, 1e-4, "query --space B with its key")
    out, lse = query_out(db, qf, 2, "--exact", *K)
    ro, rl = ref_attend(qs, [ka], 2)
    close(out, ro, 1e-4, "a query without B's key attends A alone")
    run("rm", db, str(ka.id), *K, *BK, expect=1, msg=f"document {ka.id} is not in space 'B'")
    run("dump", db, p("keyed.dump"), *K, expect=1, msg="the store has spaces with their own key")
    run("split", db, p("keyed-split"), "--shards", "2", *K, expect=1, msg="has spaces with their own key")
    check(not os.path.exists(p("keyed.dump")), "a refused dump writes nothing")
    check(jrun("rm", db, str(kb1.id), *K, *BK)["deleted"] == [kb1.id], "rm with B's key")
    run("space", db, "drop", "B", *K, "--space-key-file", bk)
    run("verify", db, *K)


def main():
    try:
        test_tenants()
        test_usage()
        test_streaming()
        db, docs, qs, qf, needle = test_main()
        bad_inputs(db, docs)
        docs = test_rm_verify_dump_load(db, docs, qs, qf, needle)
        test_verify_detects_damage(db)
        test_edges(db, p("dump.safetensors"))
        test_encryption()
        test_quantized_roundtrip()
        test_documents()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        print(f"(files kept in {TMP})", file=sys.stderr)
        return 1
    shutil.rmtree(TMP, ignore_errors=True)
    print("cli_e2e: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
