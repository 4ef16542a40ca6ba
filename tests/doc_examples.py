#!/usr/bin/python3
"""Runs the examples of the documentation: usage

    /usr/bin/python3 doc_examples.py SOURCE_ROOT BUILD_ROOT

Every fenced block of README.md and docs/*.md tagged `sh` or `c`, or
untagged and made of commands (lines starting with msadb, python3, bash,
build/, cc, ...), and the EXAMPLES of docs/msadb.1, is run in a fresh
temporary directory holding `models/` (the bundled model), `notes/*.md`
(the demo's documents), `tools/`, `build/` and `docs/bench-data/`, with the
build's msadb first on PATH.  Shell blocks run with `bash -e -o pipefail`; a C block with a
main() is compiled against the build's header and library and run.  The
few examples that cannot run here are in ALLOWED below, each with its
reason (RUN_ANYWAY names the ones that run although their file is allowed
as a whole); an entry that matches no example any more is an error, so the
lists stay true.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC = os.path.abspath(sys.argv[1])
BUILD = os.path.abspath(sys.argv[2])

# (file, text the block's first line starts with) -> why it is not run here
ALLOWED = {
    ("README.md", "bash tools/scripts/run.sh demo"):
        "installs Debian packages and msadb system-wide as root (CI runs run.sh test)",
    ("README.md", "#include <msadb.h>"):
        "a fragment of a host program (T, K, V are the host's); adapter.md section 4 runs these calls",
    ("docs/adapter.md", "msadb_signature sig;"): "a fragment; section 4's complete program runs it",
    ("docs/adapter.md", "msadb_capture *cap;"): "a fragment; section 4's complete program runs it",
    ("docs/adapter.md", "msadb_query mq;"): "a fragment; section 4's complete program runs it",
    ("docs/adapter.md", "/* context = question tokens"): "pseudo-code of a host's loop (run_prompt_pass, concat)",
    ("docs/cli.md", "msadb init    DB --layers L"): "the synopsis: placeholders, not an example",
    ("docs/python.md", ""): "run by tests/python/test_docs.py, with the Python package importable",
    ("docs/runtime.md", ""): "a fragment of a host program",
    ("docs/benchmarks.md", ""): "benchmarks: minutes to hours and gigabytes of disk each",
    ("docs/model.md", ""): "training and evaluating the model: a GPU and hours",
}

# Examples run although their file is allowed as a whole above: (file, text
# the block's first line starts with).
RUN_ANYWAY = {
    ("docs/benchmarks.md", "python3 tools/bench/plot.py"),  # the charts of docs/bench-data: seconds
}

COMMAND = re.compile(r"^(msadb|PYTHONPATH=|python3|/usr/bin/python3|bash|build/|cc |OPENBLAS|M=|PW=|meson|ninja|sudo)")


def blocks_md(rel):
    text = open(os.path.join(SRC, rel), encoding="utf-8").read()
    for m in re.finditer(r"^```([a-z]*)\n(.*?)^```$", text, re.S | re.M):
        lang, body = m.group(1), m.group(2)
        if lang == "":
            lines = [l for l in body.splitlines() if l.strip()]
            if not lines or not all(COMMAND.match(l) or l.startswith(" ") for l in lines):
                continue  # a diagram, a formula, an output
            lang = "sh"
        if lang in ("sh", "c"):
            yield rel, lang, body


def blocks_man():
    text = open(os.path.join(SRC, "docs", "msadb.1"), encoding="utf-8").read()
    ex = text.split(".SH EXAMPLES", 1)[1]
    body = ex.split(".nf\n", 1)[1].split(".fi", 1)[0]
    body = body.replace("\\-", "-").replace("\\\\", "\\")
    yield "docs/msadb.1", "sh", body


def allowed(rel, body):
    first = body.lstrip().splitlines()[0] if body.strip() else ""
    for f, start in RUN_ANYWAY:
        if f == rel and first.startswith(start):
            return None, (f, start)
    for (f, start), why in ALLOWED.items():
        if f == rel and first.startswith(start):
            return (f, start), why  # (an empty start allows the whole file)
    return None, None


def fixtures(d):
    os.symlink(os.path.join(SRC, "models"), os.path.join(d, "models"))
    os.symlink(os.path.join(SRC, "tools"), os.path.join(d, "tools"))
    os.symlink(BUILD, os.path.join(d, "build"))
    os.mkdir(os.path.join(d, "docs"))  # the benchmarks' results (read only); the charts go to docs/plots
    os.symlink(os.path.join(SRC, "docs", "bench-data"), os.path.join(d, "docs", "bench-data"))
    os.mkdir(os.path.join(d, "notes"))
    demo = os.path.join(SRC, "tools", "scripts", "demo", "memory")
    for f in os.listdir(demo):
        if f.endswith(".txt") and f != "questions.txt":
            shutil.copy(os.path.join(demo, f), os.path.join(d, "notes", f[:-4] + ".md"))
    try:  # tensor files the man page's examples name, for a 32-layer model
        import numpy as np
        from memmodel.safetensors_io import st_write
        rng = np.random.default_rng(0)
        st_write(os.path.join(d, "book.safetensors"),
             {"keys": rng.standard_normal((16, 8, 64, 128)).astype(np.float16),
              "values": rng.standard_normal((16, 8, 64, 128)).astype(np.float16)})
        st_write(os.path.join(d, "q.safetensors"),
             {"queries": rng.standard_normal((1, 32, 128)).astype(np.float32)})
    except ImportError:
        pass


def sanitize_flags():
    """The build's -fsanitize flags: a program linked to a sanitized
    library must be built with them too."""
    import json
    try:
        opts = json.load(open(os.path.join(BUILD, "meson-info", "intro-buildoptions.json")))
    except OSError:
        return []
    san = next((o["value"] for o in opts if o["name"] == "b_sanitize"), "none")
    if isinstance(san, list):
        san = ",".join(san)
    return [] if san in ("none", "") else ["-fsanitize=" + san]


def run_block(rel, lang, body, env):
    d = tempfile.mkdtemp(prefix="msadb-doc-")
    try:
        fixtures(d)
        if lang == "sh":
            r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", body], cwd=d, env=env,
                               capture_output=True, text=True, timeout=600)
        else:
            if "int main" not in body:
                return "a C fragment without main(): add it to ALLOWED with a reason"
            open(os.path.join(d, "example.c"), "w").write(body)
            cc = ["cc", "-std=c11", "-Wall", "-o", "example", "example.c",
                  "-I" + os.path.join(SRC, "include"), "-L" + os.path.join(BUILD, "libmsadb"),
                  "-lmsadb", "-lm"] + sanitize_flags()
            r = subprocess.run(cc, cwd=d, capture_output=True, text=True)
            if r.returncode == 0:
                e = dict(env, LD_LIBRARY_PATH=os.path.join(BUILD, "libmsadb"))
                r = subprocess.run(["./example"], cwd=d, env=e, capture_output=True, text=True,
                                   timeout=300)
        if r.returncode != 0:
            return f"exit {r.returncode}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-1500:]}"
        return None
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    env = dict(os.environ, PATH=os.path.join(BUILD, "cli") + ":" + os.environ.get("PATH", ""))
    env.pop("MSADB_MODEL", None)
    docs = ["README.md"] + sorted("docs/" + f for f in os.listdir(os.path.join(SRC, "docs"))
                                  if f.endswith(".md"))
    examples = [b for rel in docs for b in blocks_md(rel)] + list(blocks_man())
    used, failed, ran = set(), [], 0
    for rel, lang, body in examples:
        key, why = allowed(rel, body)
        if key:
            used.add(key)
            continue
        if why in RUN_ANYWAY:
            used.add(why)
        err = run_block(rel, lang, body, env)
        ran += 1
        first = body.strip().splitlines()[0]
        if err:
            failed.append(f"{rel}: example '{first[:70]}': {err}")
        else:
            print(f"ok   {rel}: {first[:70]}")
    stale = [k for k in list(ALLOWED) + sorted(RUN_ANYWAY) if k not in used]
    for f in failed:
        print("FAIL " + f)
    for k in stale:
        print(f"FAIL allow-list entry {k} matches no example any more")
    print(f"doc_examples: {ran} run, {len(used)} allowed, {len(failed)} failed")
    sys.exit(1 if failed or stale else 0)


if __name__ == "__main__":
    main()
