#!/usr/bin/python3
"""tools/bench/plot.py against real benchmark output: usage

    bench_plot.py SOURCE_ROOT BENCH_QUERY BENCH_INGEST

Runs bench_query --route-scale at two tiny sizes, bench_query --json
--scan-dims and bench_ingest --stream --json on tiny inputs, plots them, and
checks each SVG: well-formed XML, the series and the number of points the
JSON implies, each point's value as the JSON has it and its place on the
axis, axis labels and ticks, the target lines.  Then bad input: a missing
file, a file that is not JSON, JSON of a kind plot.py does not draw (real
bench_query --scan-only output), a hand-written file without its "source",
and no arguments: a message naming the cause and a non-zero exit, nothing
written.  Last, docs/plots/*.svg must be what docs/bench-data/*.json draws.
"""
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

SRC, BENCH_QUERY, BENCH_INGEST = sys.argv[1:4]
PLOT = os.path.join(SRC, "tools", "bench", "plot.py")
NS = {"s": "http://www.w3.org/2000/svg"}
sys.path.insert(0, os.path.join(SRC, "tools", "bench"))
import plot  # noqa: E402  (for plot.fmt, the label format of a value)

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL " + what)
    return cond


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def bench(out_path, args):
    r = run(args)
    if r.returncode != 0:
        sys.exit("%s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
    with open(out_path, "w") as f:
        f.write(r.stdout)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def series_of(svg_path):
    """{series name: [(tooltip, cx, cy)]} and the root of an SVG."""
    root = ET.parse(svg_path).getroot()  # raises on malformed XML
    out = {}
    for g in root.iter("{%s}g" % NS["s"]):
        if g.get("class") != "series":
            continue
        pts = out.setdefault(g.get("data-name"), [])
        for c in g.findall("s:circle", NS) + g.findall("s:rect", NS):
            t = c.find("s:title", NS)
            pts.append((t.text if t is not None else None, float(c.get("cx", c.get("width", 0))),
                        float(c.get("cy", c.get("y", 0)))))
    return out, root


def texts(root, cls):
    return [t.text for t in root.iter("{%s}text" % NS["s"]) if cls in (t.get("class") or "").split()]


def main():
    tmp = tempfile.mkdtemp(prefix="msadb-plot-")
    rs = [bench(os.path.join(tmp, "rs-%d.json" % n), [BENCH_QUERY, "--route-scale", str(n), "--dim", "64"])[0]
          for n in (100000, 300000)]
    sd = bench(os.path.join(tmp, "sd.json"), [BENCH_QUERY, "--json", "--scan-dims", "30000"])[0]
    ing = bench(os.path.join(tmp, "ingest.json"),
                [BENCH_INGEST, "--stream", os.path.join(tmp, "stores"), "--dim", "32", "--planes", "2",
                 "--no-sync", "--json", "8192,20000"])
    out = os.path.join(tmp, "out")
    inputs = [os.path.join(tmp, f) for f in ("rs-100000.json", "rs-300000.json", "sd.json", "ingest.json")]
    r = run([sys.executable, PLOT, "--out", out] + inputs)
    check(r.returncode == 0, "plot.py on good input exits 0 (%d: %s)" % (r.returncode, r.stderr))
    written = sorted(os.path.basename(l) for l in r.stdout.split())
    check(written == ["ingest.svg", "routing-latency.svg", "sd.svg"], "charts written: %s" % written)

    # routing-latency.svg: scan and index x 1 and 2 threads, one point per size
    ser, root = series_of(os.path.join(out, "routing-latency.svg"))
    check(len(ser) == 4, "routing-latency: 4 series, got %s" % sorted(ser))
    for route in ("scan", "index"):
        for th in (1, 2):
            name = "%s p50, d 64, %d thread%s" % ("exhaustive scan" if route == "scan" else "routing index", th,
                                                   "" if th == 1 else "s")
            pts = ser.get(name, [])
            if not check(len(pts) == 2, "routing-latency: %r has 2 points, got %d" % (name, len(pts))):
                continue
            vals = [next(x for x in rec["results"] if x["threads"] == th)[route + "_p50_ms"] for rec in rs]
            want = sorted("%s: %s, %s" % (name, plot.fmt(rec["tokens"]), plot.fmt(v)) for rec, v in zip(rs, vals))
            check(sorted(p[0] for p in pts) == want, "routing-latency: %r points %s, want %s"
                  % (name, [p[0] for p in pts], want))
            by_x = sorted(pts, key=lambda p: p[1])  # larger memory further right, larger ms higher up
            if vals[0] != vals[1]:
                check((by_x[0][2] > by_x[1][2]) == (vals[0] < vals[1]), "routing-latency: %r y placement" % name)
    check(texts(root, "x-label") == ["memory size (tokens per plane)"], "routing-latency: x label")
    check(texts(root, "y-label") == ["ms to route one question"], "routing-latency: y label")
    ticks = texts(root, "tick")
    check("100K" in ticks and "1M" in ticks, "routing-latency: log ticks 100K and 1M, got %s" % ticks)
    sub = " ".join(texts(root, "subtitle"))
    check("machine: %s, %d cores" % (rs[0]["cpu"], rs[0]["cores"]) in sub, "routing-latency: the machine: %r" % sub)
    loads = [x[k] for x in rs for k in ("loadavg_start", "loadavg")]
    lo, hi = min(loads), max(loads)
    want = "load average " + ("%.2f" % lo if hi - lo < 0.005 else "%.2f-%.2f" % (lo, hi))
    check(want in sub, "routing-latency: %r in the subtitle %r" % (want, sub))

    # sd.svg: GB/s per GQA group (and the previous kernel) against 5 head dims, two panels, target lines
    ser, root = series_of(os.path.join(out, "sd.svg"))
    groups = sorted({x["gqa"] for x in sd["results"]})
    check(groups == [1, 2, 4, 8], "scan-dims JSON holds GQA 1, 2, 4, 8")
    for g in groups:
        pts = ser.get("GQA %d" % g, [])
        check(len(pts) == 10, "sd: GQA %d has 5 points in each of 2 panels, got %d" % (g, len(pts)))
        gb = [x["gb_s_2t"] for x in sd["results"] if x["gqa"] == g]
        got = {p[0] for p in pts}
        for x, v in zip([x for x in sd["results"] if x["gqa"] == g], gb):
            check("GQA %d: %s, %s" % (g, plot.fmt(x["d"]), plot.fmt(v)) in got, "sd: GQA %d d %d point" % (g, x["d"]))
        check(len(ser.get("GQA %d, previous kernel" % g, [])) == 10, "sd: GQA %d previous kernel" % g)
    check(len(root.findall(".//s:line[@class='reference']", NS)) == 2, "sd: a 20 GB/s line in each panel")
    check(texts(root, "x-label") == ["head dim", "head dim"], "sd: x labels")
    check(set(["64", "80", "96", "128", "256"]) <= set(texts(root, "tick")), "sd: head dim ticks")

    # ingest.svg: streamed at 2 sizes, the one-batch and one-thread baselines at the first
    ser, root = series_of(os.path.join(out, "ingest.svg"))
    check(len(ing) == 4 and all(x.get("mode") == "stream" for x in ing), "bench_ingest --stream --json: 4 records")
    check([x["run"] for x in ing] == ["one-batch", "one-thread", "streamed", "streamed"] and ing[1]["threads"] == 1,
          "bench_ingest --stream --json: runs and threads %s" % [(x["run"], x["threads"]) for x in ing])
    want = {"streamed, wall": 2, "streamed, per CPU s": 2, "streamed": 2, "one batch (baseline), wall": 1,
            "one batch (baseline), per CPU s": 1, "one batch (baseline)": 1, "one-thread, wall": 1,
            "one-thread, per CPU s": 1, "one-thread": 1}
    check({k: len(v) for k, v in ser.items()} == want, "ingest: series and points %s" % ser)
    got = {p[0] for p in ser.get("streamed", [])}
    for x in ing[2:]:
        check("streamed: %s, %s" % (plot.fmt(x["tokens"]), plot.fmt(x["peak_rss_mib"])) in got,
              "ingest: the peak RSS at %d tokens in %s" % (x["tokens"], got))
    check("throughput, int8 d 32, 2 planes" in texts(root, "panel-title"), "ingest: the store's shape")
    check(texts(root, "y-label") == ["token-planes per second", "peak RSS (MiB)"], "ingest: y labels")

    # a transcribed file: hollow points, "transcribed" in the title
    hand = os.path.join(tmp, "hand.json")
    with open(hand, "w") as f:
        json.dump({"source": "test: a table", "records": [dict(rs[0], tokens=10 ** 8)]}, f)
    r = run([sys.executable, PLOT, "--out", os.path.join(tmp, "out2"), inputs[0], hand])
    check(r.returncode == 0, "plot.py with a transcribed file exits 0 (%s)" % r.stderr)
    ser, root = series_of(os.path.join(tmp, "out2", "routing-latency.svg"))
    check("transcribed" in root.find("s:title", NS).text, "transcribed: named in the title")
    hollow = [c for c in root.iter("{%s}circle" % NS["s"]) if c.get("class") == "point" and c.get("fill") == "#fff"]
    check(len(hollow) == 4, "transcribed: 4 hollow points, got %d" % len(hollow))
    check(len(ser) == 8, "transcribed points are series of their own: %s" % sorted(ser))

    # bad input: clear message, non-zero exit, nothing written
    wrong = os.path.join(tmp, "scan-only.json")
    bench(wrong, [BENCH_QUERY, "--json", "--scan-only", "10000"])
    notjson = os.path.join(tmp, "notjson.json")
    with open(notjson, "w") as f:
        f.write("route-scale 1M: 3.2 ms\n")
    nosource = os.path.join(tmp, "nosource.json")
    with open(nosource, "w") as f:
        json.dump({"records": [rs[0]]}, f)
    missing = os.path.join(tmp, "missing.json")
    for args, rc, words in (([missing], 1, ["missing.json", "cannot read"]),
                            ([notjson], 1, ["notjson.json", "line 1 is not JSON"]),
                            ([wrong], 1, ["scan-only", "does not draw", "bench_query --route-scale"]),
                            ([nosource], 1, ["source", "transcribed from"]),
                            ([], 2, ["usage"])):
        bad_out = os.path.join(tmp, "bad-out")
        r = run([sys.executable, PLOT, "--out", bad_out, inputs[0]] + args if args else [sys.executable, PLOT])
        check(r.returncode == rc, "bad input %s: exit %d, got %d" % (args, rc, r.returncode))
        check(all(w in r.stderr for w in words), "bad input %s: message names %s: %r" % (args, words, r.stderr))
        check(not os.path.exists(bad_out), "bad input %s: nothing written" % args)

    # the committed charts are what the committed data draws
    data = os.path.join(SRC, "docs", "bench-data")
    files = sorted(os.path.join(data, f) for f in os.listdir(data) if f.endswith(".json"))
    fresh = os.path.join(tmp, "docs-plots")
    r = run([sys.executable, PLOT, "--out", fresh] + files)
    check(r.returncode == 0, "plot.py on docs/bench-data exits 0 (%s)" % r.stderr)
    committed = os.path.join(SRC, "docs", "plots")
    made = sorted(os.listdir(fresh)) if os.path.isdir(fresh) else []
    have = sorted(f for f in os.listdir(committed) if f.endswith(".svg"))
    check(made == have, "docs/plots holds the charts of docs/bench-data: %s vs %s" % (have, made))
    for f in made:
        same = open(os.path.join(fresh, f)).read() == open(os.path.join(committed, f)).read() \
            if f in have else False
        check(same, "docs/plots/%s is stale: run python3 tools/bench/plot.py --out docs/plots "
                    "docs/bench-data/*.json" % f)
    subprocess.run(["rm", "-rf", tmp])
    print("bench_plot: %d failures" % len(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
