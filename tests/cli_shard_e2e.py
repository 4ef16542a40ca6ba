#!/usr/bin/python3
"""End-to-end test of sharded stores in the msadb program (suite 'shard'):
usage cli_shard_e2e.py PATH_TO_msadb [PATH_TO_msadb-mpi]

One store and a 4-shard store get the same documents; exact query output
equals (and equals a dense attention computed here), sparse hits name the
same blocks, stat/ls/verify/rm/space work on the sharded one; split and
merge round trips; the --model commands refuse a sharded store with a
message naming 'msadb merge'.  With msadb-mpi and mpirun: the same commands
under mpirun -np 1, 2, 4 print exactly what msadb prints (--json), an
ingest through 2 ranks into a store made by 'mpirun -np 2 msadb-mpi init
--shards 4' gives the same attention, and more ranks than shards is a clear
error.  The commands of docs/distributed.md run here.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from memmodel.safetensors_io import st_read, st_write  # noqa: E402

MSADB = os.path.abspath(sys.argv[1])
MSADB_MPI = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
TMP = tempfile.mkdtemp(prefix="msadb-shard-e2e-")
L, MEM, H, Q, D, BLOCK = 4, [2, 3], 2, 4, 16, 16
SIG = ["--layers", str(L), "--kv-heads", str(H), "--q-heads", str(Q), "--head-dim", str(D),
       "--memory-layers", "2-3", "--block", str(BLOCK), "--dtype", "f32"]
rng = np.random.default_rng(77)


def p(*parts):
    return os.path.join(TMP, *parts)


def run(*args, expect=0, msg=None, exe=None, mpi=0):
    cmd = [exe or MSADB, *args]
    env = dict(os.environ)
    if mpi:
        cmd = ["mpirun", "--oversubscribe", "-np", str(mpi)] + (["--allow-run-as-root"] if os.geteuid() == 0 else []) + cmd
        env["MSADB_MPI_TIMEOUT"] = "30"
        env["ASAN_OPTIONS"] = "detect_leaks=0"  # Open MPI's start-up allocations stay
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if r.returncode != expect if expect != "nonzero" else r.returncode == 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {r.returncode}, expected {expect}\n"
                             f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}")
    if msg is not None and msg not in r.stderr:
        raise AssertionError(f"{' '.join(cmd)}: stderr lacks {msg!r}:\n{r.stderr}")
    return r


def jrun(*args, **kw):
    return json.loads(run(*args, "--json", **kw).stdout)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def docs_file(path, n_docs, seed):
    g = np.random.default_rng(seed)
    lens = [int(x) for x in g.integers(20, 90, n_docs)]
    T = sum(lens)
    K = g.standard_normal((len(MEM), H, T, D)).astype(np.float32)
    V = g.standard_normal((len(MEM), H, T, D)).astype(np.float32)
    words = [f"t{seed}_{i}" for i in range(T)]
    texts, spans, off = [], [], 0
    start = 0
    for n in lens:
        txt = " ".join(words[start:start + n]).encode()
        pos = 0
        for w in words[start:start + n]:
            spans.append([off + pos, off + pos + len(w)])
            pos += len(w) + 1
        texts.append(txt)
        off += len(txt)
        start += n
    st_write(path, {"keys": K, "values": V, "doc_lengths": np.array(lens, dtype=np.int64),
                    "text": np.frombuffer(b"".join(texts), dtype=np.uint8),
                    "token_spans": np.array(spans, dtype=np.int64)})
    return K, V


def dense(q, K, V, layer):
    li = MEM.index(layer)
    out = np.zeros((q.shape[0], Q, D))
    lse = np.zeros((q.shape[0], Q))
    g = Q // H
    for i in range(q.shape[0]):
        for h in range(Q):
            s = K[li, h // g].astype(np.float64) @ q[i, h].astype(np.float64) / np.sqrt(D)
            m = s.max()
            w = np.exp(s - m)
            lse[i, h] = m + np.log(w.sum())
            out[i, h] = (w / w.sum()) @ V[li, h // g]
    return out, lse


def query_out(db, qfile, *extra, exe=None, mpi=0):
    o = p("out.safetensors")
    if os.path.exists(o):
        os.unlink(o)
    run("query", db, "--q", qfile, "--layer", "3", "--out", o, "--quiet", *extra, exe=exe, mpi=mpi)
    r = st_read(o)
    return r["out"].astype(np.float64), r["lse"].astype(np.float64)


def close(a, b, tol, what):
    err = float(np.max(np.abs(a - b)))
    check(err <= tol, f"{what}: max error {err:g} > {tol:g}")


def hit_set(res, id_title):
    """The selection as (kv head, title, tokens): ids differ between stores."""
    return sorted((s["kv_head"], id_title[b["doc"]], b["token_start"])
                  for s in res["selected"] for b in s["blocks"])


def same_json(a, b):
    """msadb and msadb-mpi print the same, timings apart."""
    a, b = json.loads(a), json.loads(b)
    for x in (a, b):
        x.pop("timing_ms", None)
    return a == b


def titles(db, **kw):
    return {d["id"]: d["title"] for d in jrun("ls", db, **kw)["documents"]}


def docs_examples(one, qf):
    """The commands of docs/distributed.md, as written there (names relative
    to a working directory; the cluster's hostfile is localhost here)."""
    cwd = p("docs")
    os.makedirs(cwd)
    shutil.copytree(one, os.path.join(cwd, "memory"))
    shutil.copy(qf, os.path.join(cwd, "q.safetensors"))
    with open(os.path.join(cwd, "hosts"), "w") as f:
        f.write("localhost slots=4\n")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    lines = [
        "msadb split memory memory-4 --shards 4",
        "msadb stat memory-4",
        "msadb query memory-4 --q q.safetensors --layer 3",
        "mpirun -np 4 msadb-mpi query memory-4 --q q.safetensors --layer 3",
        "msadb merge memory-4 memory-again",
        "mpirun --hostfile hosts -np 4 msadb-mpi init data/memory-4 --shards 4 " + " ".join(SIG),
        "mpirun --hostfile hosts -np 4 msadb-mpi stat memory-4",
        "mpirun --hostfile hosts -np 4 msadb-mpi ingest data/memory-4 a.safetensors",
        "mpirun --hostfile hosts -np 4 msadb-mpi query memory-4 --q q.safetensors --layer 3",
    ]
    shutil.copy(p("a.safetensors"), os.path.join(cwd, "a.safetensors"))
    os.makedirs(os.path.join(cwd, "data"))
    for line in lines:
        argv = line.split()
        env = dict(os.environ)
        if argv[0] == "mpirun":
            argv = ["mpirun", "--oversubscribe", *root, *argv[1:]]
            env["ASAN_OPTIONS"] = "detect_leaks=0"
        argv = [MSADB if a == "msadb" else MSADB_MPI if a == "msadb-mpi" else a for a in argv]
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
        check(r.returncode == 0, f"docs/distributed.md: {line}: exit {r.returncode}\n{r.stderr[-2000:]}")
    check(jrun("stat", os.path.join(cwd, "data", "memory-4"))["documents"] == 7, "docs: ingest through 4 ranks")


def main():
    one, four = p("one"), p("four")
    # the commands of docs/distributed.md
    run("init", one, *SIG)
    run("init", four, *SIG, "--shards", "4")
    f1, f2 = p("a.safetensors"), p("b.safetensors")
    K1, V1 = docs_file(f1, 7, 1)
    K2, V2 = docs_file(f2, 6, 2)
    K, V = np.concatenate([K1, K2], axis=2), np.concatenate([V1, V2], axis=2)
    for db in (one, four):
        j = jrun("ingest", db, f1, f2)
        check(j["added"] == 13 and {d["id"]: d["title"] for d in j["documents"]} == titles(db),
              f"ingest lists the ids and titles ls shows ({db})")
    # bounded commits are for an ordinary store: a usage error, nothing written
    before = jrun("stat", four)
    r = run("ingest", four, "--commit-every", "2d", f1, expect=2)
    check(r.stderr == f"msadb: ingest: --commit-every works on an ordinary store only; {four} is sharded, and "
                      "its ingest is one batch (drop --commit-every, or 'msadb merge' it into one store first)\n",
          f"--commit-every on a sharded store: {r.stderr!r}")
    after = jrun("stat", four)
    check((after["documents"], after["tokens"]) == (before["documents"], before["tokens"]),
          "the refused ingest changed the sharded store")
    s1, s4 = jrun("stat", one), jrun("stat", four)
    for k in ("documents", "tokens", "blocks", "spaces", "signature", "format_version"):
        check(s1[k] == s4[k], f"stat {k}: {s1[k]} vs {s4[k]}")
    check(sorted(titles(one).values()) == sorted(titles(four).values()), "ls: same titles")
    ids4 = sorted(titles(four))
    check(len({i % 4 for i in ids4}) == 4, f"documents on every shard: ids {ids4}")
    run("verify", four)

    q = rng.standard_normal((2, Q, D)).astype(np.float32)
    qf = p("q.safetensors")
    st_write(qf, {"queries": q})
    o1, l1 = query_out(one, qf, "--exact")
    o4, l4 = query_out(four, qf, "--exact")
    ro, rl = dense(q, K, V, 3)
    close(o4, o1, 1e-5, "exact out, 4 shards vs one store")
    close(l4, l1, 1e-5, "exact lse, 4 shards vs one store")
    close(o4, ro, 1e-4, "exact out vs dense")
    t1, t4 = titles(one), titles(four)
    for sel in ("blocks", "documents"):
        h1 = jrun("query", one, "--q", qf, "--layer", "3", "--top-k", "3", "--select", sel)
        h4 = jrun("query", four, "--q", qf, "--layer", "3", "--top-k", "3", "--select", sel)
        check(hit_set(h1, t1) == hit_set(h4, t4), f"{sel}: the same selection")

    # rm by global id; an unknown id deletes nothing
    before = jrun("stat", four)["documents"]
    run("rm", four, str(ids4[0]), "999999", expect=1, msg="no document 999999")
    check(jrun("stat", four)["documents"] == before, "rm of an unknown id changed nothing")
    run("rm", four, str(ids4[0]))
    check(jrun("stat", four)["documents"] == before - 1, "rm removed one document")
    run("space", four, "create", "notes")
    check([s["name"] for s in jrun("space", four, "ls")["spaces"]] == ["default", "notes"], "space ls")

    # split and merge: the same attention
    three, back = p("three"), p("back")
    sp = jrun("split", one, three, "--shards", "3")
    check(len(sp["documents"]) == 13, "split copied every document")
    run("split", one, three, "--shards", "3", expect=1, msg="already exists")
    run("merge", three, back)
    for db in (three, back):
        o, l = query_out(db, qf, "--exact")
        close(o, o1, 1e-5, f"exact out of {os.path.basename(db)}")
        close(l, l1, 1e-5, f"exact lse of {os.path.basename(db)}")
    run("verify", three)
    run("verify", back)
    run("merge", one, p("x"), expect=1, msg="not a sharded msadb store")
    run("dump", four, p("d.safetensors"), expect=1, msg="msadb merge")

    if not MSADB_MPI or shutil.which("mpirun") is None:
        print("msadb-mpi or mpirun missing: the MPI part is skipped")
        return
    # the same output through 1, 2, 4 ranks (four has lost a document: its
    # own exact output is the reference)
    o4, l4 = query_out(four, qf, "--exact")
    for n in (1, 2, 4):
        for args in (("stat", four), ("ls", four), ("space", four, "ls"),
                     ("query", four, "--q", qf, "--layer", "3", "--top-k", "3")):
            a = run(*args, "--json").stdout
            b = run(*args, "--json", exe=MSADB_MPI, mpi=n).stdout
            check(same_json(a, b), f"msadb-mpi -np {n} {args[0]}: output differs\n{a}\n---\n{b}")
        o, l = query_out(four, qf, "--exact", exe=MSADB_MPI, mpi=n)
        close(o, o4, 1e-5, f"exact out through {n} ranks")
        close(l, l4, 1e-5, f"exact lse through {n} ranks")
        run("verify", four, exe=MSADB_MPI, mpi=n)
    # a store made and filled by the ranks
    m4 = p("made-by-mpi")
    run("init", m4, *SIG, "--shards", "4", exe=MSADB_MPI, mpi=2)
    run("ingest", m4, f1, f2, exe=MSADB_MPI, mpi=2)
    run("verify", m4)
    o, l = query_out(m4, qf, "--exact", exe=MSADB_MPI, mpi=4)
    close(o, o1, 1e-5, "exact out of the store ingested through MPI")
    ids = sorted(titles(m4))
    run("rm", m4, str(ids[-1]), exe=MSADB_MPI, mpi=4)
    check(jrun("stat", m4)["documents"] == 12, "rm through MPI")
    run("stat", three, exe=MSADB_MPI, mpi=4, expect="nonzero", msg="has 3 shards: run at most that many ranks")
    docs_examples(one, qf)
    print("ok: sharded CLI, with msadb-mpi on 1, 2, 4 ranks")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
