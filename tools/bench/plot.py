#!/usr/bin/python3
"""plot.py -- draws the scale benchmarks' JSON results as SVG charts, with
nothing beyond Python 3's standard library (no gnuplot, no matplotlib).

usage: plot.py [--out DIR] RESULT.json [RESULT.json ...]

Each RESULT file holds what one benchmark run printed: one JSON object, or
one object per line (bench_scale, bench_ingest --stream --json).  A file
written by hand from a table of docs/benchmarks.md is an object
{"source": "WHERE IT WAS TRANSCRIBED FROM", "records": [RECORD, ...]} whose
records have the programs' own fields; its points are drawn hollow and the
titles of the charts holding them say "transcribed".

Charts written to DIR (default: the current directory), those the inputs
have records for:
  query-latency.svg    bench_scale --e2e: p50, p90 and CPU p50 per query
                       against memory size, exhaustive scan and routing
                       index, per head dim (every --e2e file together)
  routing-latency.svg  bench_query --route-scale with one plane: routing
                       p50 against memory size, scan and index, per head
                       dim and thread count (every such file together)
  ingest.svg           bench_ingest --stream --json: token-planes per
                       second and peak RSS against tokens (every file)
  NAME.svg             for the input NAME.json, one chart of one run:
                       bench_query --scan-dims (GB/s against head dim per
                       GQA group, the 20 GB/s target), bench_query
                       --route-scale --planes P>1 and bench_scale --planes
                       (routing cost per sharing mode), bench_scale --open
                       (open and first queries); NAME-KIND.svg when one
                       file holds several of these kinds
Every title names the machine ("cpu", "cores") and the load averages the
records carry.  It prints the path of each chart written.
Exit status: 0 success; 1 error (a file missing or unreadable, not JSON, a
record of a kind no chart draws or lacking a field); 2 usage.
"""
import json
import math
import os
import sys
from xml.sax.saxutils import escape

PROG = "plot.py"
KINDS_DRAWN = ("bench_query --route-scale, bench_query --json --scan-dims, bench_scale --e2e, "
               "bench_scale --open, bench_scale --planes, bench_ingest --stream --json")
LOAD_KEYS = ("loadavg", "loadavg_start", "loadavg_end", "load_end")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22")
DASHES = {"solid": "", "dash": "7,4", "dot": "2,3", "dashdot": "8,3,2,3"}


class PlotError(Exception):
    pass


# ---------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------

class Record(dict):
    """One JSON result object, with the file it came from and its source
    (None: printed by the program; a string: transcribed by hand)."""

    def __init__(self, obj, path, index, source):
        super().__init__(obj)
        self.path, self.index, self.source = path, index, source

    def need(self, key):
        if key not in self or self[key] is None:
            raise PlotError("%s: record %d (%s) lacks the field %r: pass the JSON the benchmark printed, "
                            "unedited" % (self.path, self.index, kind_of(self) or "?", key))
        return self[key]


def kind_of(rec):
    """The chart family of a record, or None."""
    mode = rec.get("mode")
    if mode in ("e2e", "open", "planes", "stream", "scan-dims"):
        return mode
    if mode == "route-scale":
        return "route-scale" if rec.get("planes", 1) == 1 else "route-planes"
    return None


def describe(rec):
    """What an undrawn record is, for the error message."""
    if rec.get("mode") == "scan-only":
        return "bench_query --scan-only output"
    if "methods" in rec:
        return "bench_query's workload run (\"methods\")"
    if "dtypes" in rec:
        return "bench_ingest's codec run (without --stream)"
    if "S" in rec and "route" in rec:
        return "bench_query --route-sweep output"
    if "mode" in rec:
        return "a record of mode %r" % rec["mode"]
    return "a JSON object with keys %s" % ", ".join(sorted(rec)[:6])


def load_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise PlotError("%s: cannot read it: %s" % (path, e.strerror or e))
    try:
        values = [json.loads(text)]
    except ValueError:
        values = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                values.append(json.loads(line))
            except ValueError as e:
                raise PlotError("%s: line %d is not JSON (%s): pass what a benchmark printed with its JSON "
                                "output (--json, or bench_scale's lines)" % (path, n, e))
    recs = []
    for v in values:
        source = None
        if isinstance(v, dict) and "records" in v:
            source = v.get("source")
            if not isinstance(source, str) or not source.strip():
                raise PlotError("%s: a file of records needs a \"source\" naming the table and section of "
                                "docs/benchmarks.md it was transcribed from" % path)
            v = v["records"]
        for obj in v if isinstance(v, list) else [v]:
            if not isinstance(obj, dict):
                raise PlotError("%s: expected JSON objects, found %s" % (path, type(obj).__name__))
            rec = Record(obj, path, len(recs) + 1, source)
            if kind_of(rec) is None:
                raise PlotError("%s: record %d is %s, which plot.py does not draw; it draws the output of %s"
                                % (path, rec.index, describe(rec), KINDS_DRAWN))
            recs.append(rec)
    if not recs:
        raise PlotError("%s: no JSON record in the file" % path)
    return recs


# ---------------------------------------------------------------------------
# Numbers and axes
# ---------------------------------------------------------------------------

def fmt(v):
    """A tick label: 1M, 250K, 0.5, 20."""
    if v == 0:
        return "0"
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "K")):
        if a >= div:
            div = div if div != 1e4 else 1e3
            return "%g%s" % (float("%.3g" % (v / div)), suffix)
    return "%g" % float("%.4g" % v)


class Axis:
    def __init__(self, values, label, log=False, zero=False, ticks=None):
        vals = [v for v in values if v is not None and (v > 0 or not log)]
        if not vals:
            vals = [1.0]
        lo, hi = min(vals), max(vals)
        self.label, self.log = label, log
        if ticks is not None:  # explicit ticks (head dims): the data's range, a little wider
            pad = (math.log10(hi / lo) if log else hi - lo) * 0.06 or 1.0
            self.lo, self.hi = (lo / 10 ** pad, hi * 10 ** pad) if log else (lo - pad, hi + pad)
        elif log:
            lo, hi = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
            if hi <= lo:
                hi = lo + 1
            pad = 0.03 * (hi - lo)  # a marker on a decade stays inside the frame
            self.lo, self.hi = 10.0 ** (lo - pad), 10.0 ** (hi + pad)
        else:
            if zero:
                lo, hi = min(lo, 0.0), max(hi, 0.0)
            if hi <= lo:
                hi = lo + (abs(lo) or 1.0)
            step = nice_step((hi - lo) / 5)
            self.lo, self.hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
            if ticks is None:
                n = int(round((self.hi - self.lo) / step))
                ticks = [self.lo + i * step for i in range(n + 1)]
        self.explicit = ticks

    def frac(self, v):
        if self.log:
            return (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (v - self.lo) / (self.hi - self.lo)

    def ticks(self):
        """(value, label or None for a minor tick)."""
        if not self.log or self.explicit is not None:
            return [(t, fmt(t)) for t in self.explicit if self.lo <= t <= self.hi]
        out = []
        d0, d1 = math.ceil(math.log10(self.lo)), math.floor(math.log10(self.hi))
        few = d1 - d0 <= 2
        for d in range(d0, d1 + 1):
            out.append((10.0 ** d, fmt(10.0 ** d)))
            if d < d1 and d1 - d0 <= 5:
                for m in range(2, 10):
                    out.append((m * 10.0 ** d, fmt(m * 10.0 ** d) if few and m in (2, 5) else None))
        return out


def nice_step(raw):
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


# ---------------------------------------------------------------------------
# SVG
# ---------------------------------------------------------------------------

def text(x, y, s, size=12, anchor="start", cls=None, rotate=None, weight=None, fill="#222"):
    attrs = ' x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" fill="%s"' % (x, y, size, anchor, fill)
    if cls:
        attrs += ' class="%s"' % cls
    if weight:
        attrs += ' font-weight="%s"' % weight
    if rotate is not None:
        attrs += ' transform="rotate(%d %.1f %.1f)"' % (rotate, x, y)
    return "<text%s>%s</text>" % (attrs, escape(s))


class Series:
    def __init__(self, name, color, dash="solid", points=None):
        self.name, self.color, self.dash = name, color, dash
        self.points = points if points is not None else []  # (x, y, hollow)


class Panel:
    """One chart area: a line chart (series of (x, y) points) or a
    horizontal bar chart (categories x series)."""
    W, PLOT_H = 640, 300

    def __init__(self, heading, xaxis, yaxis, series, refs=(), categories=None):
        if categories is None:
            series = split_transcribed(series)
        self.heading, self.x, self.y, self.series = heading, xaxis, yaxis, series
        self.refs = list(refs)  # (axis "x"/"y", value, label)
        self.categories = categories  # bar chart: category labels, top to bottom
        self.left = 76 if categories is None else 300

    @property
    def legend_rows(self):
        return self.legend_layout()[1] + (1 if any_hollow(self.series) else 0)

    def legend_layout(self):
        """(columns, rows) of the legend: two columns when the names fit."""
        names = [s.name for s in self.series] + [r[2] for r in self.refs]
        n = len(names)
        cols = 2 if max([len(x) for x in names] + [0]) * 6.4 + 40 <= (self.W - 40) / 2 else 1
        return cols, (n + cols - 1) // cols

    def height(self):
        bars = self.categories is not None
        plot_h = max(140, 30 + 22 * len(self.categories) * max(1, len(self.series))) if bars else self.PLOT_H
        return 30 + plot_h + 58 + 18 * self.legend_rows

    def render(self, ox, oy):
        bars = self.categories is not None
        plot_h = self.height() - 30 - 58 - 18 * self.legend_rows
        x0, y0, w, h = ox + self.left, oy + 30, self.W - self.left - 20, plot_h
        out = ['<g class="panel">', text(ox + self.W / 2, oy + 16, self.heading, 13, "middle", "panel-title",
                                          weight="bold")]
        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#fff" stroke="#444"/>'
                   % (x0, y0, w, h))
        vaxis = self.x  # the value axis runs along x in both kinds
        px = lambda v: x0 + vaxis.frac(v) * w  # noqa: E731
        py = lambda v: y0 + h - self.y.frac(v) * h  # noqa: E731
        for v, lab in vaxis.ticks():
            X = px(v)
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>'
                       % (X, y0, X, y0 + h, "#ddd" if lab else "#f0f0f0"))
            out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>'
                       % (X, y0 + h, X, y0 + h + (5 if lab else 3)))
            if lab:
                out.append(text(X, y0 + h + 18, lab, 11, "middle", "tick"))
        out.append(text(x0 + w / 2, y0 + h + 38, vaxis.label, 12, "middle", "axis-label x-label"))
        if not bars:
            for v, lab in self.y.ticks():
                Y = py(v)
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>'
                           % (x0, Y, x0 + w, Y, "#ddd" if lab else "#f0f0f0"))
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>'
                           % (x0 - (5 if lab else 3), Y, x0, Y))
                if lab:
                    out.append(text(x0 - 8, Y + 4, lab, 11, "end", "tick"))
            out.append(text(ox + 16, y0 + h / 2, self.y.label, 12, "middle", "axis-label y-label", rotate=-90))
            for s in self.series:
                out.extend(self.render_line(s, px, py))
        else:
            out.extend(self.render_bars(x0, y0, w, h, px))
        for axis, v, lab in self.refs:
            if axis == "y":
                Y = py(v)
                out.append('<line class="reference" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" '
                           'stroke-width="1.5" stroke-dasharray="4,3"/>' % (x0, Y, x0 + w, Y))
            else:
                X = px(v)
                out.append('<line class="reference" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" '
                           'stroke-width="1.5" stroke-dasharray="4,3"/>' % (X, y0, X, y0 + h))
        out.extend(self.render_legend(ox, y0 + h + 52))
        out.append("</g>")
        return out

    def render_line(self, s, px, py):
        pts = sorted(p for p in s.points if p[1] is not None and (p[1] > 0 or not self.y.log))
        out = ['<g class="series" data-name="%s">' % escape(s.name, {'"': "&quot;"})]
        if len(pts) > 1:
            dash = DASHES[s.dash]
            out.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>'
                       % (s.color, ' stroke-dasharray="%s"' % dash if dash else "",
                          " ".join("%.1f,%.1f" % (px(x), py(y)) for x, y, _ in pts)))
        for x, y, hollow in pts:
            out.append('<circle class="point" cx="%.1f" cy="%.1f" r="4" fill="%s" stroke="%s" stroke-width="2">'
                       '<title>%s: %s, %s</title></circle>'
                       % (px(x), py(y), "#fff" if hollow else s.color, s.color, escape(s.name), fmt(x), fmt(y)))
        out.append("</g>")
        return out

    def render_bars(self, x0, y0, w, h, px):
        out = []
        n_cat, n_ser = len(self.categories), max(1, len(self.series))
        band = h / n_cat
        bar = band * 0.8 / n_ser
        for ci, cat in enumerate(self.categories):
            cy = y0 + ci * band
            lines = wrap(cat, 44)
            for li, line in enumerate(lines):
                out.append(text(x0 - 8, cy + band / 2 + 4 + (li - (len(lines) - 1) / 2) * 13, line, 11, "end",
                                "category"))
            if ci:
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>' % (x0, cy, x0 + w, cy))
        for si, s in enumerate(self.series):
            out.append('<g class="series" data-name="%s">' % escape(s.name, {'"': "&quot;"}))
            for ci, v, hollow in s.points:
                if v is None or (self.x.log and v <= 0):
                    continue
                by = y0 + ci * band + band * 0.1 + si * bar
                x1 = px(v) if not self.x.log or v >= self.x.lo else x0
                start = px(self.x.lo) if self.x.log else px(max(self.x.lo, 0))
                out.append('<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" stroke="%s" '
                           'stroke-width="1.5"><title>%s: %s</title></rect>'
                           % (start, by, max(x1 - start, 1), bar * 0.9, "#f4f4f4" if hollow else s.color, s.color,
                              escape(s.name), fmt(v)))
                out.append(text(x1 + 4, by + bar * 0.45 + 4, fmt(v), 10, "start", "bar-value"))
            out.append("</g>")
        return out

    def render_legend(self, ox, ly):
        entries = [("series", s) for s in self.series] + [("ref", r) for r in self.refs]
        out = ['<g class="legend">']
        cols, rows = self.legend_layout()
        colw = (self.W - 40) / cols
        for i, (what, e) in enumerate(entries):  # top to bottom, then the second column
            lx, y = ox + 20 + (i // rows) * colw, ly + (i % rows) * 18
            if what == "series":
                dash = DASHES[e.dash]
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%d"%s/>'
                           % (lx, y - 4, lx + 26, y - 4, e.color, 2 if self.categories is None else 8,
                              ' stroke-dasharray="%s"' % dash if dash else ""))
                out.append(text(lx + 32, y, e.name, 11, cls="legend-entry"))
            else:
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000" stroke-width="1.5" '
                           'stroke-dasharray="4,3"/>' % (lx, y - 4, lx + 26, y - 4))
                out.append(text(lx + 32, y, e[2], 11, cls="legend-entry"))
        if any_hollow(self.series):
            y = ly + rows * 18
            out.append('<circle cx="%.1f" cy="%.1f" r="4" fill="#fff" stroke="#444" stroke-width="2"/>'
                       % (ox + 33, y - 4))
            out.append(text(ox + 52, y, "hollow: transcribed by hand from docs/benchmarks.md", 11,
                            cls="legend-entry"))
        out.append("</g>")
        return out


def split_transcribed(series):
    """A line joins measured points only: transcribed points of a series
    become a series of their own, named so."""
    out, hand = [], []
    for s in series:
        mine = [p for p in s.points if not p[2] and p[1] is not None]
        theirs = [p for p in s.points if p[2] and p[1] is not None]
        if mine:
            out.append(Series(s.name, s.color, s.dash, mine))
        if theirs:
            hand.append(Series(s.name + " (transcribed)", s.color, s.dash, theirs))
    return out + hand


def any_hollow(series):
    return any(p[2] for s in series for p in s.points)


def wrap(s, width):
    words, lines, cur = s.split(), [], ""
    for wd in words:
        if cur and len(cur) + 1 + len(wd) > width:
            lines.append(cur)
            cur = wd
        else:
            cur = (cur + " " + wd).strip()
    return lines + [cur] if cur else lines or [""]


def figure(title, records, panels, note=None):
    """The SVG text of a figure: a title, a line naming the machine and
    load, and its panels side by side."""
    lines = [machine_line(records)] + ([note] if note else [])
    if any(r.source for r in records):
        title += " (transcribed)" if all(r.source for r in records) else " (partly transcribed)"
        lines.append("hollow markers and bars: transcribed by hand from docs/benchmarks.md (each file's "
                     "\"source\" names the table)")
    head = 34 + 18 * len(lines)
    if len(panels) == 1:
        panels[0].W = 900
    width = sum(p.W for p in panels)
    height = head + max(p.height() for p in panels) + 10
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="DejaVu Sans, Arial, sans-serif">' % (width, height, width, height),
           "<title>%s</title>" % escape(title),
           '<rect width="100%" height="100%" fill="#fff"/>',
           text(width / 2, 22, title, 15, "middle", "title", weight="bold")]
    for i, line in enumerate(lines):
        out.append(text(width / 2, 42 + 18 * i, line, 12, "middle", "subtitle", fill="#444"))
    ox = 0
    for p in panels:
        out.extend(p.render(ox, head))
        ox += p.W
    out.append("</svg>")
    return "\n".join(out) + "\n"


def machine_line(records):
    machines = sorted({"%s, %s cores" % (r["cpu"], r["cores"]) if "cores" in r else str(r["cpu"])
                       for r in records if r.get("cpu")})
    m = "machine: " + ("; ".join(machines) if machines else "not recorded")
    parts = []
    for what, recs in (("measured", [r for r in records if not r.source]),
                       ("transcribed", [r for r in records if r.source])):
        loads = [r[k] for r in recs for k in LOAD_KEYS if isinstance(r.get(k), (int, float)) and r[k] >= 0]
        if loads:
            lo, hi = min(loads), max(loads)
            parts.append("%s%s" % ("%s: " % what if len(parts) or any(r.source for r in records) else "",
                                   "%.2f" % lo if hi - lo < 0.005 else "%.2f-%.2f" % (lo, hi)))
        elif recs:
            parts.append("%s: not recorded" % what)
    return m + "; load average " + ", ".join(parts)


# ---------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------

def palette(keys):
    return {k: COLORS[i % len(COLORS)] for i, k in enumerate(keys)}


def query_latency(recs):
    """bench_scale --e2e: latency per query against memory size."""
    dims = sorted({r.need("d") for r in recs})
    route_name = {"scan": "exhaustive scan", "index": "routing index"}
    keys = [(route, d) for d in dims for route in ("scan", "index")]
    col = palette(keys)
    series = []
    for route, d in keys:
        for stat, field, dash in (("p50", "p50_ms", "solid"), ("p90", "p90_ms", "dash"),
                                  ("CPU p50", "cpu_p50_ms", "dot")):
            pts = [(r.need("tokens"), r.get(field), bool(r.source)) for r in recs
                   if r.need("route") == route and r["d"] == d]
            if any(p[1] is not None for p in pts):
                series.append(Series("%s %s, d %d" % (route_name.get(route, route), stat, d), col[(route, d)], dash,
                                     pts))
    shape = sorted({"%s kv x %s q heads, %s, top-%s" % (r.get("kv_heads", "?"), r.get("q_heads", "?"),
                                                          r.get("dtype", "?"), r.get("top_k", "?")) for r in recs})
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    panel = Panel("msadb_attend, one query token: " + "; ".join(shape),
                  Axis(xs, "memory size (tokens per plane)", log=True), Axis(ys, "ms per query", log=True), series)
    return figure("Query latency vs memory size: exhaustive scan vs routing index", recs, [panel],
                  "bench_scale --e2e; CPU p50: the process's CPU time per query, scan threads included")


def routing_latency(recs):
    """bench_query --route-scale, one plane: routing cost against size."""
    keys, rows = [], []
    for r in recs:
        for res in r.need("results"):
            th = res.get("threads")
            for route in ("scan", "index"):
                key = (route, r.need("d"), th)
                if key not in keys:
                    keys.append(key)
                rows.append((key, r.need("tokens"), res.get(route + "_p50_ms"), bool(r.source)))
    keys.sort(key=lambda k: (k[1], k[0] != "scan", -(k[2] or 0)))
    col = palette(sorted({(k[0], k[1]) for k in keys}, key=lambda k: (k[1], k[0] != "scan")))
    series = []
    for key in keys:
        pts = [(t, v, h) for k, t, v, h in rows if k == key]
        name = "%s p50, d %d, %s thread%s" % ("exhaustive scan" if key[0] == "scan" else "routing index", key[1],
                                              key[2], "" if key[2] == 1 else "s")
        series.append(Series(name, col[(key[0], key[1])], "solid" if key[2] == 2 else "dash", pts))
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    panel = Panel("one plane, 4 q heads, top-16, summaries in RAM",
                  Axis(xs, "memory size (tokens per plane)", log=True),
                  Axis(ys, "ms to route one question", log=True), series)
    return figure("Routing cost vs memory size: exhaustive scan vs routing index", recs, [panel],
                  "bench_query --route-scale; index: coarse scan, then the blocks of the best 64 super-blocks")


def ingest(recs):
    """bench_ingest --stream: throughput and peak RSS against tokens."""
    groups = sorted({(r.need("run"), r.get("dtype", "?"), r.get("d", 0), r.get("planes", 0)) for r in recs})
    col = palette(groups)

    shapes = sorted({g[1:] for g in groups})

    def name(g):
        run = "one batch (baseline)" if g[0] == "one-batch" else g[0]
        return run if len(shapes) == 1 else "%s, %s d %s, %s planes" % (run, g[1], g[2], g[3])

    rate, cpu_rate, rss = [], [], []
    for g in groups:
        mine = [r for r in recs if (r["run"], r.get("dtype", "?"), r.get("d", 0), r.get("planes", 0)) == g]
        planes = g[3] or 1
        rate.append(Series(name(g) + ", wall", col[g], "solid",
                           [(r.need("tokens"), r.need("token_planes_per_s"), bool(r.source)) for r in mine]))
        pts = [(r["tokens"], r["tokens"] * planes / r["cpu_seconds"] if r.get("cpu_seconds") else None,
                bool(r.source)) for r in mine]
        if any(p[1] for p in pts):
            cpu_rate.append(Series(name(g) + ", per CPU s", col[g], "dot", pts))
        rss.append(Series(name(g), col[g], "solid", [(r["tokens"], r.need("peak_rss_mib"), bool(r.source))
                                                       for r in mine]))
    xs = [r["tokens"] for r in recs]
    thr = rate + cpu_rate
    shape = ", %s d %s, %s planes" % shapes[0] if len(shapes) == 1 else ""
    p1 = Panel("throughput" + shape, Axis(xs, "tokens ingested", log=True),
               Axis([p[1] for s in thr for p in s.points] + [1e6], "token-planes per second", log=True), thr,
               refs=[("y", 1e6, "target: 1M token-planes/s")])
    p2 = Panel("peak resident memory" + shape, Axis(xs, "tokens ingested", log=True),
               Axis([p[1] for s in rss for p in s.points] + [1024], "peak RSS (MiB)", zero=True), rss,
               refs=[("y", 1024, "target: 1 GiB")])
    return figure("Streaming ingest: throughput and peak RSS vs tokens", recs, [p1, p2],
                  "bench_ingest --stream --json; one batch committing in chunks; "
                  "per CPU s: tokens x planes per CPU second of the run")


def scan_dims(recs):
    """bench_query --scan-dims: GB/s against head dim per GQA group."""
    rows = [res for r in recs for res in r.need("results")]
    src = any(r.source for r in recs)
    blocks = recs[0].get("blocks")
    groups = sorted({res["gqa"] for res in rows})
    dims = sorted({res["d"] for res in rows})
    col = palette(groups)
    series, cpu_series = [], []
    for g in groups:
        mine = sorted((res for res in rows if res["gqa"] == g), key=lambda res: res["d"])
        series.append(Series("GQA %d" % g, col[g], "solid", [(res["d"], res.get("gb_s_2t"), src) for res in mine]))
        if any(res.get("old_gb_s_2t") for res in mine):
            series.append(Series("GQA %d, previous kernel" % g, col[g], "dot",
                                 [(res["d"], res.get("old_gb_s_2t"), src) for res in mine]))
        for field, suffix, dash in (("cpu_ms", "", "solid"), ("old_cpu_ms", ", previous kernel", "dot")):
            if blocks and any(res.get(field) for res in mine):
                cpu_series.append(Series("GQA %d%s" % (g, suffix), col[g], dash,
                                         [(res["d"], 3.0 * blocks * (res["d"] + 4) / res[field] / 1e6
                                           if res.get(field) else None, src) for res in mine]))
    tokens = recs[0].get("tokens")
    xl = "head dim"
    ys = [p[1] for s in series for p in s.points] + [20.0]
    panels = [Panel("2 threads, wall clock (best of 7)", Axis(dims, xl, log=True, ticks=dims),
                    Axis(ys, "GB/s of summary bytes", zero=True), series, refs=[("y", 20.0, "target: 20 GB/s")])]
    if cpu_series:
        ys = [p[1] for s in cpu_series for p in s.points] + [20.0]
        panels.append(Panel("1 thread, per CPU second (load-independent)", Axis(dims, xl, log=True, ticks=dims),
                            Axis(ys, "GB/s per CPU second", zero=True), cpu_series,
                            refs=[("y", 20.0, "20 GB/s")]))
    return figure("int8 summary scan throughput vs head dim, per GQA group", recs, panels,
                  "bench_query --scan-dims %s: exhaustive scan of 3 int8 representatives per block, top-16"
                  % (fmt(tokens) if tokens else "?"))


def route_planes(recs):
    """bench_query --route-scale --planes P: one question's routing."""
    cats, series = [], []
    r0 = recs[0]
    P, tokens = r0.need("planes"), r0.need("tokens")
    per_layer = P // 8 if P >= 8 else 1
    res0 = r0.need("results")
    mb = {k: next((x.get(k) for x in res0 if x.get(k) is not None), None) for k in ("scan_mb", "index_mb")}
    rows = [("%d planes, exhaustive scan" % P, "scan", mb["scan_mb"]),
            ("%d planes, routing index (per plane, the default)" % P, "index", mb["index_mb"]),
            ("%d planes, index (one routing head per layer)" % per_layer, "index_%d_planes" % per_layer, None),
            ("1 plane, index (one selection for the question)", "index_1_plane", None)]
    cats = ["%s%s" % (lab, ", %s MB scored" % fmt(m) if m else "") for lab, _, m in rows]
    threads = sorted({x.get("threads") for r in recs for x in r.need("results")})
    col = palette([(t, c) for t in threads for c in ("p50", "cpu")])
    for t in threads:
        res = [x for r in recs for x in r["results"] if x.get("threads") == t]
        tr = any(r.source for r in recs)
        pts = [(ci, next((x.get(key + "_p50_ms") for x in res if x.get(key + "_p50_ms") is not None), None), tr)
               for ci, (_, key, _) in enumerate(rows)]
        series.append(Series("wall p50, %s thread%s" % (t, "" if t == 1 else "s"), col[(t, "p50")], "solid", pts))
        cpu = [(ci, next((x.get(key + "_cpu_p50_ms") for x in res if x.get(key + "_cpu_p50_ms") is not None),
                         None), tr) for ci, (_, key, _) in enumerate(rows)]
        if any(p[1] for p in cpu):
            series.append(Series("CPU p50, %s thread%s" % (t, "" if t == 1 else "s"), col[(t, "cpu")], "solid",
                                 cpu))
    refs = [("x", 50.0, "target: 64 planes at 10M tokens in 50 ms")] if P == 64 and tokens == 10000000 else []
    vals = [p[1] for s in series for p in s.points] + [r[1] for r in refs]
    panel = Panel("%s tokens x %d planes, d %s, 4 q heads per kv head, top-16" % (fmt(tokens), P, r0.get("d")),
                  Axis(vals, "ms to route one question", log=True), None, series, refs, categories=cats)
    return figure("Routing for many planes: per-plane vs shared routing", recs, [panel],
                  "bench_query --route-scale --planes %d: summaries in RAM, planes routed one after the other" % P)


def share_modes(recs):
    """bench_scale --planes: routing and attention per sharing mode."""
    cats = ["%s (%s plane%s routed, needle found %.3f)" % (r.need("share"), fmt(r.need("planes_routed")),
                                                           "" if r["planes_routed"] == 1 else "s",
                                                           r.need("needle_hit")) for r in recs]
    fields = (("route p50", "route_p50_ms", 0), ("route p90", "route_p90_ms", 1),
              ("route CPU p50", "route_cpu_p50_ms", 2), ("whole memory attention p50", "attend_p50_ms", 3))
    series = [Series(n, COLORS[c], "solid", [(i, r.get(f), bool(r.source)) for i, r in enumerate(recs)])
              for n, f, c in fields if any(r.get(f) is not None for r in recs)]
    r0 = recs[0]
    vals = [p[1] for s in series for p in s.points]
    panel = Panel("%s tokens, %s layers x %s kv heads, d %s, needles in %s plane%s" % (
        fmt(r0.need("tokens")), r0.get("layers"), r0.get("kv_heads"), r0.get("d"), r0.get("needle_planes"),
        "" if r0.get("needle_planes") == "one" else "s"),
        Axis(vals, "ms per question", log=True), None, series, categories=cats)
    return figure("Routing for many planes through the engine, per sharing mode", recs, [panel],
                  "bench_scale --planes: msadb_retrieve per layer (or once, layer 0 for all), "
                  "then every layer's attention")


def open_first(recs):
    """bench_scale --open: open and first queries, cold and warm."""
    cats, n = [], {}
    for r in recs:
        c = r.need("cache")
        n[c] = n.get(c, 0) + 1
        cats.append("%s page cache%s" % (c, " #%d" % n[c] if sum(x.get("cache") == c for x in recs) > 1 else ""))
    fields = (("open", "open_ms"), ("first query", "first_query_ms"), ("second query", "second_query_ms"))
    series = [Series(name, COLORS[i], "solid", [(ci, r.get(f), bool(r.source)) for ci, r in enumerate(recs)])
              for i, (name, f) in enumerate(fields)]
    vals = [p[1] for s in series for p in s.points]
    panel = Panel("%s tokens" % fmt(recs[0].need("tokens")), Axis(vals, "ms", log=True), None, series,
                  categories=cats)
    return figure("Opening a store and its first queries", recs, [panel], "bench_scale --open [--cold]")


MERGED = (("e2e", "query-latency.svg", query_latency), ("route-scale", "routing-latency.svg", routing_latency),
          ("stream", "ingest.svg", ingest))
PER_FILE = (("scan-dims", scan_dims), ("route-planes", route_planes), ("planes", share_modes),
            ("open", open_first))


def charts(files):
    """[(file name, svg text)] for the records of the files."""
    per_file = [(path, load_file(path)) for path in files]
    out = []
    for kind, name, draw in MERGED:
        recs = [r for _, rs in per_file for r in rs if kind_of(r) == kind]
        if recs:
            out.append((name, draw(recs)))
    for path, recs in per_file:
        base = os.path.splitext(os.path.basename(path))[0]
        kinds = [k for k, _ in PER_FILE if any(kind_of(r) == k for r in recs)]
        for kind, draw in PER_FILE:
            if kind in kinds:
                name = base + ("-" + kind if len(kinds) > 1 else "") + ".svg"
                if any(n == name for n, _ in out):
                    raise PlotError("%s: two inputs would both write %s: give the files different names"
                                    % (path, name))
                out.append((name, draw([r for r in recs if kind_of(r) == kind])))
    return out


def main(argv):
    args, out_dir, files = argv[1:], ".", []
    while args:
        a = args.pop(0)
        if a == "--out" and args:
            out_dir = args.pop(0)
        elif a in ("-h", "--help"):
            print(__doc__.strip())
            return 0
        elif a.startswith("-"):
            files = []
            break
        else:
            files.append(a)
    if not files:
        print("usage: plot.py [--out DIR] RESULT.json [RESULT.json ...]  (--help: what it draws)", file=sys.stderr)
        return 2
    try:
        made = charts(files)
        os.makedirs(out_dir, exist_ok=True)
        for name, svg in made:
            path = os.path.join(out_dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(svg)
            print(path)
    except PlotError as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return 1
    except OSError as e:
        print("%s: cannot write to %s: %s" % (PROG, out_dir, e.strerror or e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
