#!/usr/bin/env python3
"""memmodel_soup.py -- tools/memmodel/soup.py writes the weighted mean of
checkpoints.

Two tiny checkpoints written by memmodel.net.save_ckpt (one in fp32, one in
bf16, as training writes them) are averaged 1:3 by the command; every tensor
of the result must equal 0.25 a + 0.75 b (to bf16's rounding of b), the
result must load as a model (memmodel.net.load_ckpt), and its meta must list
both sources with weights 0.25 and 0.75 and their steps.  Then the errors: a
missing directory, a weight of 0, an infinite one, one that is not a number,
one checkpoint only and two checkpoints of different shapes each exit
non-zero with a message naming the cause and write nothing.  A GGUF source:
the bundled model's file averaged 1:1 with a checkpoint of its own shape
(its weights plus noise) must give, in every tensor, the mean of the file's
dequantized weights (memmodel.net.torch_from_gguf) and the checkpoint's,
list the file with the steps its msadb.training key gives; GGUF files alone,
and a file that is no GGUF, are refused.  Skips (77) without torch.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError:
    print("torch missing: skipped")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from memmodel.net import (Config, Model, load_ckpt, load_state, save_ckpt,  # noqa: E402
                          torch_from_gguf)

GGUF = os.path.join(ROOT, "models", "msadb-mem.gguf")

ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tools"))


def tiny(seed, d=32, layers=2):
    torch.manual_seed(seed)
    c = Config()
    c.vocab, c.d, c.n_layers, c.n_heads, c.n_kv, c.hd, c.ffn, c.ctx = 64, d, layers, 2, 1, 16, 48, 64
    m = Model(c)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m, {"config": c.to_dict(), "steps": seed * 10}


def soup(*args):
    return subprocess.run([sys.executable, "-m", "memmodel.soup"] + list(args),
                          capture_output=True, text=True, env=ENV)


def gguf_source(t):
    """The bundled GGUF file as a source, beside a checkpoint of its shape."""
    fails = []
    g = torch_from_gguf(GGUF)
    steps = json.loads(g.gguf_meta["msadb.training"])["steps"]
    torch.manual_seed(5)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ck, out = os.path.join(t, "gck"), os.path.join(t, "gout")
    os.makedirs(ck)
    save_ckpt(g, ck, {"config": g.c.to_dict(), "steps": 7})
    r = soup(out, GGUF, ck)
    if r.returncode != 0:
        return ["gguf source: rc %d %s" % (r.returncode, r.stderr[-300:])]
    sg = {k: v.float() for k, v in torch_from_gguf(GGUF).state_dict().items()}
    sc, _ = load_state(ck)
    so, meta = load_state(out)
    for k in sc:
        err = (so[k] - 0.5 * (sg[k] + sc[k])).abs().max().item()
        if err > 1e-5:
            fails.append("gguf source %s: off by %g" % (k, err))
    got = [(os.path.basename(s["dir"]), s["weight"], s["steps"]) for s in meta["soup"]]
    if got != [("msadb-mem.gguf", 0.5, steps), ("gck", 0.5, 7)] or meta["config"] != g.c.to_dict():
        fails.append("gguf source meta %r" % (got,))
    return fails


def main():
    fails = []
    with tempfile.TemporaryDirectory() as t:
        a, b, c, out = (os.path.join(t, n) for n in ("a", "b", "c", "out"))
        for d, (m, meta), dt in ((a, tiny(1), "fp32"), (b, tiny(2), "bf16"), (c, tiny(3, d=48), "fp32")):
            os.makedirs(d)
            save_ckpt(m, d, meta, dtype=dt)
        r = soup(out, a + ":1", b + ":3")
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            return 1
        sa, _ = load_state(a)
        sb, _ = load_state(b)
        so, meta = load_state(out)
        if set(so) != set(sa):
            fails.append("tensors differ: %s" % sorted(set(so) ^ set(sa)))
        for k in sa:
            want = 0.25 * sa[k] + 0.75 * sb[k]
            err = (so[k] - want).abs().max().item()
            if err > 1e-5:
                fails.append("%s: off by %g" % (k, err))
        load_ckpt(out)
        got = [(os.path.basename(s["dir"]), s["weight"], s["steps"]) for s in meta.get("soup", [])]
        if got != [("a", 0.25, 10), ("b", 0.75, 20)]:
            fails.append("meta soup %r" % (got,))
        bad = [((os.path.join(t, "none"), a), "no checkpoint directory"),
               ((a + ":0", b), "must be > 0"),
               ((a + ":inf", b), "must be > 0 and finite"),
               ((a + ":half", b), "must be a number"),
               ((a,), "two checkpoints"),
               ((a, c), "shape"),
               ((GGUF, GGUF), "at least one checkpoint directory"),
               ((a, os.path.join(t, "junk.gguf")), "not a memory model GGUF file")]
        with open(os.path.join(t, "junk.gguf"), "wb") as f:
            f.write(b"GGUF" + bytes(60))
        for args, msg in bad:
            o = os.path.join(t, "bad")
            r = soup(o, *args)
            if r.returncode == 0 or msg not in r.stderr or os.path.exists(o):
                fails.append("%r: rc %d, %r" % (args, r.returncode, r.stderr[-200:]))
        fails += gguf_source(t)
    for f in fails:
        print("FAIL", f)
    print("soup: %d checks failed" % len(fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
