#!/usr/bin/python3
"""The bundled memory model through the msadb program: usage
/usr/bin/python3 bundled_model.py PATH_TO_msadb

Ingests the demo documents (tools/scripts/demo/memory) with models/msadb-mem.gguf and
asks the demo questions: each must be answered with its expected answer
from memory, and the store must verify.  Without memory the model must not
know them (the answers come from the documents, not from training).  A
regression check of the whole text path: tokenizer, runtime, capture,
routing, attention merge and generation together.
"""
import json
import os
import subprocess
import sys
import tempfile

MSADB = os.path.abspath(sys.argv[1])
ROOT = os.environ.get("MSADB_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "msadb-mem.gguf")
DEMO = os.path.join(ROOT, "tools", "scripts", "demo", "memory")


def run(*args, abstain_ok=False):
    """stdout of msadb ARGS; exit 3 (the model answered "not in memory") only
    where abstain_ok."""
    r = subprocess.run([MSADB, *args], capture_output=True, text=True)
    if r.returncode != 0 and not (abstain_ok and r.returncode == 3):
        sys.exit(f"FAIL: msadb {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r.stdout


def main():
    db = os.path.join(tempfile.mkdtemp(prefix="msadb-bundled-"), "m.msadb")
    docs = sorted(os.path.join(DEMO, f) for f in os.listdir(DEMO) if f.endswith(".txt") and f != "questions.txt")
    run("init", db, "--model", MODEL, "--quiet")
    run("ingest", db, "--model", MODEL, "--quiet", *docs)
    fails, with_mem, without, abstained = [], 0, 0, 0
    for line in open(os.path.join(DEMO, "questions.txt"), encoding="utf-8"):
        if not line.strip():
            continue
        question, expected = line.rstrip("\n").split("\t")
        out = json.loads(run("query", db, "--model", MODEL, "--max-tokens", "16", "--top-k", "4", "--json", question))
        if expected in out["answer"]:
            with_mem += 1
        else:
            fails.append(f"{question!r}: answered {out['answer']!r}, expected {expected!r}")
        if not out["spans"]:
            fails.append(f"{question!r}: no memory spans reported")
        plain = run("query", db, "--model", MODEL, "--max-tokens", "16", "--no-memory", "--quiet", question,
                    abstain_ok=True)
        without += expected in plain
        abstained += plain.strip() == "not in memory"
    run("verify", db, "--quiet")
    # a question memory does not answer: the model says so (exit 3, its
    # declared abstain answer) instead of inventing a value
    r = subprocess.run([MSADB, "query", db, "--model", MODEL, "--json",
                        "What is the name of Walter Bennett's parrot?"], capture_output=True, text=True)
    j = json.loads(r.stdout) if r.stdout else {}
    if r.returncode != 3 or not j.get("abstained") or j.get("answer") != "not in memory":
        fails.append(f"an unanswerable question: exit {r.returncode}, {r.stdout!r}")
    print(f"bundled model: {with_mem} correct with memory, {without} without "
          f"({abstained} of those answered 'not in memory')")
    if without:
        fails.append(f"{without} questions answered without memory: the test no longer shows memory at work")
    if fails:
        sys.exit("FAIL:\n" + "\n".join(fails))


if __name__ == "__main__":
    main()
