#!/usr/bin/python3
"""The package and the msadb program on the same stores: sparse attention
(selected blocks, output and LSE) equal to `msadb query --q`, answers and
cited spans equal to `msadb query --model`, and the Memory API (add,
search, get, delete) over the bundled model."""
import json
import os
import subprocess

import pyenv
import numpy as np

import msadb
from memmodel import data as mmd, safetensors_io  # tools/ on PYTHONPATH (meson)

RNG = np.random.default_rng(11)


def cli(*args):
    r = subprocess.run([pyenv.CLI, *args], capture_output=True, text=True)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def test_sparse_equals_cli():
    d = pyenv.tmpdir("msadb-parity-")
    db = os.path.join(d, "s")
    sig = msadb.Signature(4, 2, 4, 32, block_size=16, dtype="int8")
    with msadb.Store.create(db, sig) as st:
        with st.batch() as b:
            for i in range(12):
                T = int(RNG.integers(20, 90))
                K = RNG.standard_normal((2, 2, T, 32)).astype(np.float32)
                b.add(K, RNG.standard_normal(K.shape).astype(np.float32), title="d%d" % i)
        q = RNG.standard_normal((3, 4, 32)).astype(np.float32)
        qf = safetensors_io.st_write(os.path.join(d, "q.st"), {"queries": q})
        for opts, kw in (([], {}), (["--top-k", "3"], {"top_k": 3}),
                         (["--select", "documents", "--top-k", "2"], {"select": "documents", "top_k": 2}),
                         (["--summary", "mean"], {"summary": "mean"}),
                         (["--per-token", "--top-k", "2"], {"per_token": True, "top_k": 2}),
                         (["--exact"], {"exact": True})):
            out = os.path.join(d, "out.st")
            j = json.loads(cli("query", db, "--q", qf, "--layer", "3", "--json", "--out", out, *opts))
            with st.snapshot() as s:
                a = s.attend(3, q, **kw)
            want = [(sel.get("query", 0), sel["kv_head"], b["doc"], b["block"], b["token_start"],
                     b["token_end"]) for sel in j["selected"] for b in sel["blocks"]]
            got = [(int(h["query"]), int(h["kv_head"]), int(h["doc_id"]), int(h["block_id"]),
                    int(h["token_start"]), int(h["token_end"])) for h in a.hits]
            assert sorted(want) == sorted(got), opts
            # scores as printed (JSON rounds): close
            ws = sorted(b["score"] for sel in j["selected"] for b in sel["blocks"])
            assert np.allclose(ws, sorted(a.hits["score"]), rtol=1e-5, atol=1e-5), opts
            r = safetensors_io.st_read(out)
            assert np.array_equal(r["out"], a.out) and np.array_equal(r["lse"], a.lse), opts
            assert j["blocks_read"] == a.stats.blocks_read


def test_ask_equals_cli():
    d = pyenv.tmpdir("msadb-parity-")
    db = os.path.join(d, "m")
    demo = os.path.join(pyenv.ROOT, "tools", "scripts", "demo", "memory")
    files = sorted(os.path.join(demo, f) for f in os.listdir(demo) if f.endswith(".txt") and f != "questions.txt")
    with msadb.Model(pyenv.MODEL) as m, m.open_store(db) as st:
        ids = m.ingest(st, [(os.path.basename(f), open(f, encoding="utf-8").read()) for f in files])
        assert len(ids) == len(files)
        with st.snapshot() as s:
            assert [s.document(i).title for i in ids] == [os.path.basename(f) for f in files]
            assert s.text(ids[0]) == open(files[0], encoding="utf-8").read()
            tok, sp = s.tokens(ids[0])
            # the bundled model reads a text joined: each paragraph tokenized on its own
            assert m.segment == "joined"
            paras = [p.encode() for p in mmd.paragraphs(s.text(ids[0]))]
            starts = np.cumsum([0] + [len(p) for p in paras[:-1]])
            parts = [m.tokenize(p) for p in paras]
            ids0 = np.concatenate([p[0] for p in parts])
            sp0 = np.concatenate([p[1] + a for p, a in zip(parts, starts)])
            assert len(parts) > 1 and np.array_equal(tok, ids0) and np.array_equal(sp, sp0)
            assert "".join(m.detokenize(p[0]) for p in parts) == s.text(ids[0])
        for line in open(os.path.join(demo, "questions.txt"), encoding="utf-8"):
            if not line.strip():
                continue
            question, expected = line.rstrip("\n").split("\t")
            pieces = []
            ans = m.ask(st, question, top_k=4, max_tokens=16, on_text=pieces.append)
            j = json.loads(cli("query", db, "--model", pyenv.MODEL, "--max-tokens", "16", "--top-k", "4",
                               "--json", question))
            assert ans.text == j["answer"] and "".join(pieces) == ans.text, (ans.text, j["answer"])
            assert expected in ans.text
            got = [(s.doc, s.token_start, s.token_end, s.title, s.text) for s in ans.spans]
            want = [(s["doc"], s["token_start"], s["token_end"], s["title"], s.get("text")) for s in j["spans"]]
            assert got == want, question
            # streamed through a generator: same pieces, then the answer
            items = list(m.ask_stream(st, question, top_k=4, max_tokens=16))
            assert "".join(items[:-1]) == ans.text and items[-1].text == ans.text
            # without memory the model does not know
            plain = m.ask(None, question, max_tokens=16)
            assert expected not in plain.text and plain.spans == []
        # stopping early: on_text returning True ends generation
        first = []
        short = m.ask(st, "Where does Walter Bennett live?", top_k=4, on_text=lambda p: first.append(p) or True)
        assert short.text == first[0]
        # an exception raised in on_text stops generation and propagates
        try:
            m.ask(st, "Where does Walter Bennett live?", on_text=lambda p: 1 / 0)
            raise AssertionError("no exception")
        except ZeroDivisionError:
            pass


def test_memory_api():
    d = pyenv.tmpdir("msadb-memory-")
    demo = os.path.join(pyenv.ROOT, "tools", "scripts", "demo", "memory")
    with msadb.Memory(os.path.join(d, "mem"), pyenv.MODEL) as mem:
        facts = open(os.path.join(demo, "neighbours.txt"), encoding="utf-8").read()
        tools = open(os.path.join(demo, "harbor-workshop.txt"), encoding="utf-8").read()
        a = mem.add(facts, user_id="alice", metadata={"source": "neighbours"})
        b = mem.add([tools], user_id="bob", metadata={"source": "workshop"})
        assert [r["memory"] for r in a] == [facts] and [r["memory"] for r in b] == [tools]
        g = mem.get(a[0]["id"])
        assert g["metadata"] == {"source": "neighbours"} and g["user_id"] == "alice"
        assert [r["id"] for r in mem.get_all(user_id="alice")] == [a[0]["id"]]
        assert len(mem.get_all()) == 2
        hits = mem.search("Where does Walter Bennett live?", user_id="alice", limit=3)
        assert hits and hits[0]["id"] == a[0]["id"] and "Walter Bennett" in hits[0]["cited"]
        assert mem.search("anything", user_id="nobody") == []
        # bob's memories are not alice's
        assert all(h["user_id"] == "bob" for h in mem.search("amber toolbox", user_id="bob"))
        assert "Dublin" in mem.ask("Where does Walter Bennett live?", user_id="alice", max_tokens=8).text
        other = mem.model.ingest(mem.store, "Written by another program.", space="alice", meta=b"\x00raw")
        assert mem.get(other[0])["metadata"] == {"bytes": b"\x00raw"}
        mem.delete(other)
        mem.delete(a[0]["id"])
        try:
            mem.get(a[0]["id"])
            raise AssertionError("deleted memory still there")
        except msadb.NotFound:
            pass
        mem.delete_all(user_id="bob")
        assert mem.get_all() == []
        assert mem.store.verify() == []


if __name__ == "__main__":
    pyenv.run_tests(globals())
