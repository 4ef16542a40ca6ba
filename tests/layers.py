#!/usr/bin/env python3
"""layers.py -- checks that every #include points down the library's layers.

The library's folders are layers, lowest first:
    core < codec < store < query < adapter < shard < runtime < mpi
(mpi is the separate library msadb_mpi, on the public API of the others)
A file of the library may include headers of its own layer and of layers
below it, never above.  The CLI (cli/), the Python package and the plain
programs include nothing of the library but the public header; tests,
fuzz harnesses and benchmarks may reach a module's interface below the API
(they test and time it), but by its path under libmsadb/.

Usage: layers.py SOURCE_ROOT    (exit 0: clean; 1: each offence printed)
"""
import os
import re
import sys

LAYERS = ["core", "codec", "store", "query", "adapter", "shard", "runtime", "mpi"]
PUBLIC = ("msadb.h", "msadb_shard.h", "msadb_mpi.h")  # include/
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_of_lib_file(rel):
    """The layer of a file under libmsadb/ (rel is relative to libmsadb/)."""
    top = rel.split("/", 1)[0]
    if top == "adapter.c":
        return "adapter"
    return top if top in LAYERS else None


def library_offences(root):
    lib = os.path.join(root, "libmsadb")
    for dirpath, _, files in os.walk(lib):
        for f in files:
            if not f.endswith((".c", ".h")):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, lib)
            own = layer_of_lib_file(rel)
            if own is None:
                continue
            for inc in INCLUDE.findall(open(path, encoding="utf-8").read()):
                if inc in PUBLIC:
                    continue
                target = inc.split("/", 1)[0] if "/" in inc else None
                if target not in LAYERS:
                    yield f"libmsadb/{rel}: #include \"{inc}\" names no layer (write it as LAYER/FILE.h)"
                elif LAYERS.index(target) > LAYERS.index(own):
                    yield f"libmsadb/{rel}: #include \"{inc}\" points up ({own} -> {target})"


def cli_offences(root):
    cli = os.path.join(root, "cli")
    for dirpath, _, files in os.walk(cli):
        for f in files:
            if not f.endswith((".c", ".h")):
                continue
            path = os.path.join(dirpath, f)
            for inc in INCLUDE.findall(open(path, encoding="utf-8").read()):
                if inc.split("/", 1)[0] in LAYERS:
                    yield f"{os.path.relpath(path, root)}: #include \"{inc}\": the CLI uses msadb.h only"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    bad = list(library_offences(root)) + list(cli_offences(root))
    for b in bad:
        print(b)
    print(f"layers: {len(bad)} offence(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
