#!/usr/bin/python3
"""faiss_baseline.py -- token-by-token FAISS baselines for bench_query.

bench_query --faiss tools/bench/faiss_baseline.py writes the memory's keys
(keys.f32, [n][d] float32) and the queries (queries.f32, [nq][g][d]) into a
work directory and runs this script, which builds

  - IndexIVFFlat (inner product, nlist ~ sqrt(n), trained on a sample), and
  - IndexHNSWFlat (inner product, M 16, efConstruction 64) when n <= --hnsw-max,

over the keys token by token, searches the g q heads of every query for k
tokens each (one search call per query, as an engine would), sweeps nprobe /
efSearch, and writes faiss_results.bin for bench_query to score:

  int32 n_configs, then per config: char[16] index name, int32 parameter,
  float32 build seconds, float32 median and p90 latency (ms per query),
  int64 ids [nq][g][k].

Debian packages: python3-faiss, python3-numpy (run with /usr/bin/python3).
Threads: 2 (the engine's scan uses both cores too).
"""
import argparse
import os
import struct
import sys
import time

import numpy as np
import faiss


def log(quiet, *a):
    if not quiet:
        print(*a, file=sys.stderr, flush=True)


def search_sweep(index, queries, k, set_param, params, name, build_s, quiet, out):
    for p in params:
        set_param(p)
        lat = np.empty(len(queries))
        ids = np.empty((len(queries), queries.shape[1], k), dtype=np.int64)
        # warm-up on a few queries (page in the index)
        for q in queries[: min(8, len(queries))]:
            index.search(q, k)
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            _, I = index.search(q, k)
            lat[i] = (time.perf_counter() - t0) * 1e3
            ids[i] = I
        med, p90 = float(np.median(lat)), float(np.percentile(lat, 90))
        log(quiet, f"  {name} {p}: {med:.3f} ms p50, {p90:.3f} ms p90")
        out.append((name, p, build_s, med, p90, ids))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--nq", type=int, required=True)
    ap.add_argument("--g", type=int, required=True)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--hnsw-max", type=int, default=2000000)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    faiss.omp_set_num_threads(2)
    keys = np.memmap(os.path.join(a.dir, "keys.f32"), dtype=np.float32, mode="r", shape=(a.n, a.d))
    queries = np.fromfile(os.path.join(a.dir, "queries.f32"), dtype=np.float32).reshape(a.nq, a.g, a.d)
    results = []

    # IVF-Flat, inner product
    nlist = 1 << max(6, min(11, int(round(np.log2(np.sqrt(a.n))))))
    t0 = time.perf_counter()
    quant = faiss.IndexFlatIP(a.d)
    ivf = faiss.IndexIVFFlat(quant, a.d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1)
    ns = min(a.n, 64 * nlist)
    sample = np.ascontiguousarray(keys[np.sort(rng.choice(a.n, ns, replace=False))])
    ivf.train(sample)
    del sample
    step = 1 << 20
    for s in range(0, a.n, step):
        ivf.add(np.ascontiguousarray(keys[s:s + step]))
    build = time.perf_counter() - t0
    log(a.quiet, f"IVFFlat nlist {nlist}: built in {build:.1f} s")
    search_sweep(ivf, queries, a.k, lambda p: setattr(ivf, "nprobe", p), [1, 2, 4, 8, 16, 32, 64],
                 "ivfflat", build, a.quiet, results)
    del ivf, quant

    # HNSW-Flat, inner product
    if a.n <= a.hnsw_max:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(a.d, 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 64
        for s in range(0, a.n, step):
            hnsw.add(np.ascontiguousarray(keys[s:s + step]))
        build = time.perf_counter() - t0
        log(a.quiet, f"HNSWFlat M 16: built in {build:.1f} s")
        search_sweep(hnsw, queries, a.k, lambda p: setattr(hnsw.hnsw, "efSearch", p),
                     [16, 32, 64, 128, 256, 512], "hnswflat", build, a.quiet, results)
        del hnsw
    else:
        log(a.quiet, f"HNSWFlat skipped: {a.n} keys > --hnsw-max {a.hnsw_max}")

    with open(os.path.join(a.dir, "faiss_results.bin"), "wb") as f:
        f.write(struct.pack("<i", len(results)))
        for name, p, build, med, p90, ids in results:
            f.write(name.encode()[:15].ljust(16, b"\0"))
            f.write(struct.pack("<ifff", p, build, med, p90))
            f.write(ids.astype("<i8").tobytes())


if __name__ == "__main__":
    main()
