#!/usr/bin/python3
"""bench_query_plot.py -- plots latency and needle hit rate of the query
engine against memory size from bench_query --json outputs (one file per
memory size; --scan-only files add the scan-only latency points).

usage: bench_query_plot.py OUT.png RESULT.json [RESULT.json ...]
(a later file's point for the same method and memory size replaces an
earlier one: pass quality runs first, quiet-machine latency runs last)
Needs gnuplot (Debian: gnuplot-nox).  Exit status: 0, 1 error, 2 usage.
"""
import json
import os
import subprocess
import sys
import tempfile

# methods drawn (substrings of bench_query's method names)
KEEP = ("engine mean (cosine)", "engine minmax", "proposed reps", "engine mean (dot)")


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[4], file=sys.stderr)
        return 2
    out, files = sys.argv[1], sys.argv[2:]
    series = {}  # method -> {tokens: (p50 ms, hit1, hit4, hit16)}; later files win
    for fn in files:
        with open(fn) as f:
            r = json.load(f)
        if r.get("mode") == "scan-only":
            for m in r["results"]:
                series.setdefault("scan+select " + m["method"], {})[r["tokens"]] = (m["ms"], None, None, None)
            continue
        series.setdefault("dense OpenBLAS", {})[r["tokens"]] = (r["dense_ms"], None, None, None)
        ref = [m["lat_ms_p50"] for m in r["methods"] if m["method"] == "engine mean (cosine)"]
        faiss = {}
        for m in r["methods"]:
            name = m["method"]
            if name.startswith("faiss"):
                # FAISS: the setting whose latency is closest to the engine's
                best = faiss.get(name)
                if ref and (best is None or abs(m["lat_ms_p50"] - ref[0]) < abs(best["lat_ms_p50"] - ref[0])):
                    faiss[name] = m
                continue
            if not any(w in name for w in KEEP):
                continue
            series.setdefault(name, {})[r["tokens"]] = (m["lat_ms_p50"], m.get("hit1"), m.get("hit4"),
                                                        m.get("hit16"))
        for name, m in faiss.items():
            series.setdefault(name + " (matched latency)", {})[r["tokens"]] = (
                m["lat_ms_p50"], m.get("hit1"), m.get("hit4"), m.get("hit16"))
    tmp = tempfile.mkdtemp()
    lat_plots, hit_plots = [], []
    for i, (name, d) in enumerate(sorted(series.items())):
        pts = sorted((t,) + v for t, v in d.items())
        path = os.path.join(tmp, "s%d.dat" % i)
        with open(path, "w") as f:
            for t, ms, h1, h4, h16 in pts:
                f.write("%g %g %s %s %s\n" % (t, ms, h1 if h1 is not None else "?",
                                              h4 if h4 is not None else "?",
                                              h16 if h16 is not None else "?"))
        title = name.replace("_", " ")
        lat_plots.append("'%s' using 1:2 with linespoints title '%s'" % (path, title))
        if any(p[2] is not None for p in pts):
            hit_plots.append("'%s' using 1:3 with linespoints title '%s, 1-token'" % (path, title))
    script = """
set terminal pngcairo size 1400,600 font ',9'
set output '%s'
set multiplot layout 1,2
set logscale xy
set xlabel 'memory tokens'
set ylabel 'latency per query (ms)'
set key outside bottom center horizontal maxrows 6 font ',7'
set grid
plot %s
unset logscale y
set logscale x
set yrange [0:1.05]
set ylabel 'needle hit rate (1-token needles)'
plot %s
unset multiplot
""" % (out, ", ".join(lat_plots), ", ".join(hit_plots) if hit_plots else "0 notitle")
    try:
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print("bench_query_plot: gnuplot failed: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
