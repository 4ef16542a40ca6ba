#!/usr/bin/env python3
"""train_continue.py -- tools/memmodel/train.py run in two commands
(--stop-after-steps, then --continue) goes on where the first stopped.

On a tiny model and made-up data (CPU, PyTorch): one uninterrupted run of
3 + 2 + 3 steps, and the same run in three commands: stopped after 4
steps, continued for 2 and stopped again, continued to the end.  Checks:
each stopped command writes its state where it stopped (phase, steps into
it, the optimizer's own step count: 4, then 6, so the optimizer state is
carried) and no checkpoint of the unfinished phase; the last command ends
after 8 steps in all, in phase c, with a history of steps 1-8 whose
phases and learning rates equal the uninterrupted run's (the schedule
resumed, not restarted).  Then --resume of the finished checkpoint for 3
steps of phase c: steps 9-11, a fresh warm-up, totals carried.  Skips (77)
without numpy or torch.
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError:
    print("numpy or torch missing: skipped")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from memmodel.net import load_state  # noqa: E402


def make_data(d, n_ex=2100, vocab=8192, seed=5):
    """Text streams and facts in memmodel.data's layout: each example
    one 9-token fact whose value starts at token 5, a 6-token question
    (BOS first) and a 3-token answer ending in EOS."""
    rng = np.random.default_rng(seed)
    rng.integers(3, vocab, 200000).astype(np.uint16).tofile(os.path.join(d, "train_lm.u16"))
    rng.integers(3, vocab, 20000).astype(np.uint16).tofile(os.path.join(d, "val_lm.u16"))
    facts = rng.integers(3, vocab, (n_ex, 9))
    q = np.concatenate([np.ones((n_ex, 1), np.int64), rng.integers(3, vocab, (n_ex, 5))], 1)
    a = np.concatenate([facts[:, 5:7], np.full((n_ex, 1), 2)], 1)
    np.savez(os.path.join(d, "facts_train.npz"),
             fact_tok=facts.reshape(-1).astype(np.uint16),
             fact_off=np.arange(0, 9 * n_ex + 1, 9, dtype=np.int64),
             fact_vstart=np.full(n_ex, 5, np.int32), n_facts=np.ones(n_ex, np.int8),
             q_tok=q.reshape(-1).astype(np.uint16),
             q_off=np.arange(0, 6 * n_ex + 1, 6, dtype=np.int64),
             a_tok=a.reshape(-1).astype(np.uint16),
             a_off=np.arange(0, 3 * n_ex + 1, 3, dtype=np.int64),
             kind=np.zeros(n_ex, np.int8),
             key_hash=np.stack([np.arange(1, n_ex + 1), np.zeros(n_ex), np.zeros(n_ex)],
                               1).astype(np.uint32))


def run(args):
    r = subprocess.run([sys.executable, "-m", "memmodel.train"] + args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit("memmodel.train %s: exit %d" % (" ".join(args), r.returncode))


def log_of(out):
    with open(os.path.join(out, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def hist_of(out):
    with open(os.path.join(out, "train_hist.json")) as f:
        return json.load(f)


def adam_steps(state):
    return sorted({int(float(v["step"])) for v in state["opt"]["state"].values()})


def meta_of(out):
    with open(os.path.join(out, "ckpt_meta.json")) as f:
        return json.load(f)


def main():
    fails = []

    def check(cond, what):
        print(("ok    " if cond else "FAIL  ") + what)
        if not cond:
            fails.append(what)

    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "data")
        os.makedirs(data)
        make_data(data)
        common = ["--data", data, "--n-layers", "2", "--d", "32", "--n-heads", "2",
                  "--n-kv", "1", "--ffn", "64", "--steps-a", "3", "--steps-b", "2",
                  "--steps-c", "3", "--mem-batch", "4", "--decoys", "4", "--lm-batch", "2",
                  "--doc-len", "128", "--val-questions", "2", "--qa-frac", "0.5"]
        whole, first, second, third = (os.path.join(d, x)
                                       for x in ("whole", "first", "second", "third"))
        run(common + ["--out", whole])
        run(common + ["--out", first, "--stop-after-steps", "4"])
        run(["--continue", first, "--out", second, "--data", data, "--stop-after-steps", "2"])
        run(["--continue", second, "--out", third, "--data", data])

        check(meta_of(whole)["steps"] == 8 and meta_of(whole)["phase"] == "c",
              "the uninterrupted run: 8 steps, ends in phase c")
        st = torch.load(os.path.join(first, "state.pt"), map_location="cpu", weights_only=False)
        check(st["step"] == 4 and st["phase"] == 1 and st["in_phase_steps"] == 1,
              "stopped after step 4, one step into phase b (state: step %d, phase %d, %d in it)"
              % (st["step"], st["phase"], st["in_phase_steps"]))
        check(adam_steps(st) == [4], "the optimizer state holds 4 steps (%s)" % adam_steps(st))
        check(meta_of(first)["phase"] == "a",
              "the stopped command checkpointed phase a only (its last checkpoint: %s)"
              % meta_of(first)["phase"])
        check(any(e.get("event") == "stopped" for e in log_of(first)), "the stop is logged")
        ms = meta_of(os.path.join(first, "at_stop"))
        check(ms["steps"] == 4 and ms["phase"] == "b",
              "the weights where it stopped are in OUT/at_stop (step %d, phase %s)"
              % (ms["steps"], ms["phase"]))

        st2 = torch.load(os.path.join(second, "state.pt"), map_location="cpu", weights_only=False)
        check(st2["step"] == 6 and st2["phase"] == 2 and st2["in_phase_steps"] == 1,
              "the second command stopped after step 6, one step into phase c (%d, %d, %d)"
              % (st2["step"], st2["phase"], st2["in_phase_steps"]))
        check(adam_steps(st2) == [6], "its optimizer went on from the first's: 6 steps (%s)"
              % adam_steps(st2))

        m3 = meta_of(third)
        check(m3["steps"] == 8 and m3["phase"] == "c",
              "the third command ends after 8 steps in all, in phase c (%d, %s)"
              % (m3["steps"], m3["phase"]))
        l3 = log_of(third)
        check(l3[0].get("event") == "continue" and l3[0].get("segment") == 2,
              "its log begins with a continue event of segment 2")
        h_whole, h3 = hist_of(whole), hist_of(third)
        check([h["step"] for h in h3] == list(range(1, 9)),
              "the history of the three commands holds steps 1-8 once each")
        check([h["phase"] for h in h3] == [h["phase"] for h in h_whole],
              "every step ran in the same phase as in the uninterrupted run")
        check(all(abs(a["lr"] - b["lr"]) < 1e-12 for a, b in zip(h3, h_whole)),
              "the learning rate of every step equals the uninterrupted run's")

        # --resume: a finished checkpoint trained further in phase c alone, fresh optimizer
        res = os.path.join(d, "resumed")
        run(common[:common.index("--steps-a")] + ["--steps-a", "0", "--steps-b", "0",
            "--steps-c", "3", "--lr", "1e-3", "--resume", whole, "--out", res]
            + common[common.index("--mem-batch"):])
        mw, mr, hr = meta_of(whole), meta_of(res), hist_of(res)
        check(mr["steps"] == 11 and mr["phase"] == "c",
              "the resumed run counts on from the checkpoint's 8 steps to 11 (%d)" % mr["steps"])
        check([h["step"] for h in hr] == [9, 10, 11] and {h["phase"] for h in hr} == {"c"},
              "its steps 9-11 all ran in phase c (%s)" % [(h["step"], h["phase"]) for h in hr])
        check(abs(hr[0]["lr"] - 1e-3 / 200) < 1e-12,
              "its fresh optimizer warms up again: first learning rate lr/200 (%g)" % hr[0]["lr"])
        check(all(mr["tokens"][k] > mw["tokens"][k] for k in ("mem_docs", "question"))
              and mr["train_seconds"] > mw["train_seconds"],
              "its token counts and training seconds add to the checkpoint's")
        check(not any(e.get("event") == "phase_end" and e.get("phase") != "c" for e in log_of(res)),
              "the phases given no steps end without validation or checkpoint")
        # --resume --grow: the finished checkpoint deepened (2 -> 4 layers), trained a step,
        # checkpointed at its new depth; a layout that moves a memory layer is refused
        grown = os.path.join(d, "grown")
        grow_args = (common[:common.index("--steps-a")] + ["--steps-a", "0", "--steps-b", "0",
                     "--steps-c", "1", "--resume", whole] + common[common.index("--mem-batch"):])
        run(grow_args + ["--grow", "0,new,1,new", "--out", grown])
        mg = meta_of(grown)
        check(mg["config"]["n_layers"] == 4 and mg["steps"] == 9
              and any(e.get("event") == "grow" for e in log_of(grown)),
              "--grow: the resumed model trained at 4 layers, its checkpoint says so (%s layers)"
              % mg["config"]["n_layers"])
        sd, _ = load_state(grown)
        check(any(k.startswith("layers.3.") for k in sd) and float(sd["layers.1.wo.weight"].abs().max()) > 0,
              "--grow: the checkpoint holds the new layers, trained off zero")
        def refused(extra, needle, what):
            r = subprocess.run([sys.executable, "-m", "memmodel.train"] + grow_args + extra
                               + ["--out", os.path.join(d, "bad")], capture_output=True, text=True)
            check(r.returncode != 0 and needle in r.stderr,
                  "%s exits non-zero naming it (%s)" % (what, r.stderr.strip()[-160:]))

        refused(["--grow", "0,1,new,new"], "memory layer", "--grow: a layout that moves a memory layer")
        # --resume --widen: the finished checkpoint widened (d 32 -> 128, 1 -> 4 kv heads,
        # 2 -> 8 q heads), trained a step, checkpointed at its new width, the new
        # dimensions trained off zero; a shape that regroups the q heads is refused
        d0 = mw["config"]["d"]
        wide = os.path.join(d, "wide")
        run(grow_args + ["--widen", "d=128,n_heads=8,n_kv=4,ffn=192", "--out", wide])
        mw2 = meta_of(wide)
        cw = mw2["config"]
        check((cw["d"], cw["n_heads"], cw["n_kv"], cw["ffn"]) == (128, 8, 4, 192) and mw2["steps"] == 9
              and any(e.get("event") == "widen" for e in log_of(wide)),
              "--widen: the resumed model trained at d 128, 8 heads, 4 kv, ffn 192 (%s)" % cw)
        sd, _ = load_state(wide)
        check(tuple(sd["tok.weight"].shape) == (cw["vocab"], 128)
              and float(sd["tok.weight"][:, d0:].float().abs().max()) > 0,
              "--widen: the new dimensions' embedding columns trained off zero")
        refused(["--widen", "d=128,n_heads=8"], "--widen",
                "--widen: a shape that puts more q heads on a kv head")
    if fails:
        print("%d check(s) failed" % len(fails))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
