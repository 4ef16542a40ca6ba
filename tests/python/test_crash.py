#!/usr/bin/python3
"""A Python process killed (SIGKILL) in the middle of its batches leaves
the store whole: verify passes, every batch is there entirely or not at
all, and every stored document holds exactly the K/V that was written.

The writer commits batches of BATCH documents forever, each document's
K/V derived from its title (batch number and index), so the reader can
recompute them.  It is killed at random moments (during adds, commits and
fsyncs) several times, and the store is checked after each kill."""
import os
import signal
import subprocess
import sys
import time

import pyenv
import numpy as np

import msadb

BATCH = 6
SIG = msadb.Signature(4, 2, 4, 32, block_size=16, dtype="f16")


def kv(title):
    seed = int(title.split()[1]) * 100 + int(title.split()[2])
    r = np.random.default_rng(seed)
    T = 30 + seed % 70
    K = r.standard_normal((2, 2, T, 32)).astype(np.float16)
    return K, (K * 0.5).astype(np.float16)


def writer(db, first_batch):
    st = msadb.Store.open_or_create(db, SIG)
    n = first_batch
    print("ready", flush=True)
    while True:
        with st.batch() as b:
            for i in range(BATCH):
                title = "batch %d %d" % (n, i)
                K, V = kv(title)
                b.add(K, V, title=title, text=title)
        n += 1


def check(db):
    with msadb.Store.open(db, SIG) as st:
        problems = st.verify()
        assert problems == [], problems
        with st.snapshot() as s:
            docs = s.documents()
            by_batch = {}
            for d in docs:
                by_batch.setdefault(int(d.title.split()[1]), []).append(d)
                K, V = kv(d.title)
                k, v = s.kv(d.id, 3)
                assert np.array_equal(k, K[1, 1].astype(np.float32)) and np.array_equal(v, V[1, 1].astype(np.float32))
                assert s.text(d.id) == d.title
            for n, ds in by_batch.items():
                assert sorted(int(d.title.split()[2]) for d in ds) == list(range(BATCH)), \
                    "batch %d partly stored: %s" % (n, [d.title for d in ds])
        return max(by_batch) + 1 if by_batch else 0, len(docs)


def test_sigkill_mid_batch():
    db = os.path.join(pyenv.tmpdir("msadb-crash-"), "s")
    rng = np.random.default_rng(5)
    next_batch, total = 0, 0
    for round_ in range(6):
        p = subprocess.Popen([sys.executable, __file__, "writer", db, str(next_batch)],
                             stdout=subprocess.PIPE, env=os.environ)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL
        next_batch, n = check(db)
        assert n >= total
        total = n
    assert total > 0, "the writer never committed a batch: the test proves nothing"
    print("%d documents in %d batches after 6 kills" % (total, next_batch))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        writer(sys.argv[2], int(sys.argv[3]))
    else:
        pyenv.run_tests(globals())
