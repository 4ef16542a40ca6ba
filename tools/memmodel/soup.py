#!/usr/bin/python3
"""soup.py -- one checkpoint whose weights are a weighted mean of others.

    PYTHONPATH=tools python3 -m memmodel.soup OUT_DIR CKPT_DIR[:WEIGHT] CKPT_DIR[:WEIGHT] ...

Every CKPT_DIR is a memmodel.train checkpoint of the same shape; a weight left
out is 1, and the weights are normalized to sum to 1.  The result is written as
a checkpoint (fp32; memmodel.export_gguf reads it) whose meta is the last
source's, with "soup" listing the sources, their weights and steps.  Averaging
two fine-tunings of one parent keeps much of what each learned when they stay
in one basin; whether it does here is measured, not assumed (docs/model.md).
Needs torch.
"""
import argparse
import json
import math
import os
import sys

from .net import load_state, save_state


def parse_source(text):
    """(directory, weight) of "DIR" or "DIR:W"; raises ValueError."""
    d, sep, w = text.rpartition(":")
    if sep and d and os.path.isdir(d):
        try:
            weight = float(w)
        except ValueError:
            raise ValueError("weight of %s must be a number, got %r" % (d, w)) from None
    else:
        d, weight = text, 1.0
    if not os.path.isdir(d):
        raise ValueError("no checkpoint directory %r" % d)
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError("weight of %s must be > 0 and finite, got %r" % (d, weight))
    return d, weight


def mean_state(states, weights):
    """The weighted mean of state dicts with the same keys and shapes."""
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            raise ValueError("checkpoint %d has other tensors than the first" % i)
        for k in keys:
            if s[k].shape != states[0][k].shape:
                raise ValueError("%s: shape %s against %s" %
                                 (k, tuple(s[k].shape), tuple(states[0][k].shape)))
    tot = float(sum(weights))
    return {k: sum(s[k] * (w / tot) for s, w in zip(states, weights)) for k in keys}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("out")
    ap.add_argument("sources", nargs="+", help="CKPT_DIR or CKPT_DIR:WEIGHT")
    a = ap.parse_args(argv)
    if len(a.sources) < 2:
        ap.error("give two checkpoints or more")
    try:
        src = [parse_source(s) for s in a.sources]
        loaded = [load_state(d) for d, _ in src]
        sd = mean_state([s for s, _ in loaded], [w for _, w in src])
    except (ValueError, OSError) as e:
        print("memmodel.soup: %s" % e, file=sys.stderr)
        return 2
    tot = sum(w for _, w in src)
    meta = dict(loaded[-1][1])
    meta["soup"] = [{"dir": d, "weight": round(w / tot, 6), "steps": m.get("steps")}
                    for (d, w), (_, m) in zip(src, loaded)]
    os.makedirs(a.out, exist_ok=True)
    save_state(sd, a.out, meta)
    print(json.dumps({"out": a.out, "soup": meta["soup"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
