#!/usr/bin/python3
"""soup.py -- one checkpoint whose weights are a weighted mean of others.

    PYTHONPATH=tools python3 -m memmodel.soup OUT_DIR SOURCE[:WEIGHT] SOURCE[:WEIGHT] ...

Every SOURCE is a memmodel.train checkpoint directory or a GGUF file the
model was exported to (its weights dequantized: a bundled model whose
checkpoint is gone), all of the same shape, at least one a checkpoint; a
weight left out is 1, and the weights are normalized to sum to 1.  The result
is written as a checkpoint (fp32; memmodel.export_gguf reads it) whose meta is
the last checkpoint's, with "soup" listing the sources, their weights and
steps (a GGUF file's from its msadb.training key).  Averaging
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


def is_gguf(path):
    return path.endswith(".gguf") and os.path.isfile(path)


def parse_source(text):
    """(path, weight) of "PATH" or "PATH:W" (PATH a checkpoint directory or
    a .gguf file); raises ValueError."""
    d, sep, w = text.rpartition(":")
    if sep and d and (os.path.isdir(d) or is_gguf(d)):
        try:
            weight = float(w)
        except ValueError:
            raise ValueError("weight of %s must be a number, got %r" % (d, w)) from None
    else:
        d, weight = text, 1.0
    if not (os.path.isdir(d) or is_gguf(d)):
        raise ValueError("no checkpoint directory or .gguf file %r" % d)
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError("weight of %s must be > 0 and finite, got %r" % (d, weight))
    return d, weight


def load_source(path):
    """(state dict in fp32, meta) of a checkpoint directory or a GGUF file
    (meta: {"steps": msadb.training's steps, "gguf": True})."""
    if not is_gguf(path):
        return load_state(path)
    from .net import torch_from_gguf
    try:
        m = torch_from_gguf(path)
    except (KeyError, ValueError) as e:
        raise ValueError("%s: not a memory model GGUF file (%s)" % (path, e)) from None
    try:
        steps = json.loads(m.gguf_meta.get("msadb.training", "{}")).get("steps")
    except (ValueError, AttributeError):
        steps = None
    return {k: v.float() for k, v in m.state_dict().items()}, {"steps": steps, "gguf": True}


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
    ap.add_argument("sources", nargs="+", help="SOURCE or SOURCE:WEIGHT (a checkpoint directory "
                    "or a .gguf file)")
    a = ap.parse_args(argv)
    if len(a.sources) < 2:
        ap.error("give two checkpoints or more")
    try:
        src = [parse_source(s) for s in a.sources]
        if all(is_gguf(d) for d, _ in src):
            raise ValueError("give at least one checkpoint directory (its meta holds the "
                             "training configuration the result needs)")
        loaded = [load_source(d) for d, _ in src]
        sd = mean_state([s for s, _ in loaded], [w for _, w in src])
    except (ValueError, OSError) as e:
        print("memmodel.soup: %s" % e, file=sys.stderr)
        return 2
    tot = sum(w for _, w in src)
    meta = dict([m for _, m in loaded if not m.get("gguf")][-1])
    meta["soup"] = [{"dir": d, "weight": round(w / tot, 6), "steps": m.get("steps")}
                    for (d, w), (_, m) in zip(src, loaded)]
    os.makedirs(a.out, exist_ok=True)
    save_state(sd, a.out, meta)
    print(json.dumps({"out": a.out, "soup": meta["soup"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
