#!/usr/bin/python3
"""The examples of docs/python.md, run: every ```python block in a fresh
directory (the package from the source tree, the library from the build
tree, the bundled model), and the commands of the ```sh blocks (build and
install steps aside: the build under test is the build, and
tools/scripts/check_install.sh imports the installed package).  A block
whose first line is "# needs: transformers" runs where transformers is
installed and is reported as not run elsewhere (tools/memmodel/hf_check.py covers
that integration on a GPU machine)."""
import os
import re
import subprocess
import sys

import pyenv

DOC = os.path.join(pyenv.ROOT, "docs", "python.md")


def blocks():
    text = open(DOC, encoding="utf-8").read()
    return re.findall(r"```(python|sh)\n(.*?)```", text, re.S)


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = pyenv.PACKAGE_DIR + os.pathsep + e.get("PYTHONPATH", "")
    e["MSADB_MODEL"] = pyenv.MODEL
    return e


def have_transformers():
    try:
        import transformers  # noqa: F401
        return True
    except ImportError:
        return False


def test_examples():
    found = blocks()
    assert sum(1 for k, _ in found if k == "python") >= 5, "docs/python.md lost its examples"
    ran = skipped = 0
    for i, (kind, code) in enumerate(found):
        d = pyenv.tmpdir("msadb-doc-%d-" % i)
        if kind == "python":
            if code.startswith("# needs: transformers") and not have_transformers():
                print("block %d: not run here (needs transformers)" % i)
                skipped += 1
                continue
            r = subprocess.run([sys.executable, "-c", code], cwd=d, env=env(), capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, "docs/python.md block %d failed:\n%s\n%s" % (i, code, r.stderr)
            ran += 1
            continue
        for line in code.splitlines():
            line = line.strip()
            if not line or line.startswith(("meson ", "ninja ")):
                continue
            cmd = line.replace("/tmp/", d + "/").replace("python3 ", sys.executable + " ", 1)
            r = subprocess.run(cmd, shell=True, cwd=pyenv.ROOT, env=env(), capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, "docs/python.md: %s failed:\n%s" % (line, r.stderr)
            ran += 1
    print("%d examples run, %d need transformers" % (ran, skipped))


if __name__ == "__main__":
    pyenv.run_tests(globals())
