#!/usr/bin/python3
"""GGUF files msadb writes, read by an independent parser.

    /usr/bin/python3 tests/gguf_peer.py [--pkg DIR]

The npm package @huggingface/gguf (installed by tools/scripts/run.sh into
<build>/npm) parses models/msadb-mem.gguf and models written by
tools/memmodel/make_test_model.py in every weight type the writer supports (f32, f16,
bf16, q8_0; tied and untied).  Its view must agree with what tools/memmodel/gguf.py
wrote: the same metadata keys, types' values and counts, the same tensor
names, shapes, types and offsets, the same start of the data section, and
every tensor's data must lie inside the file at the declared alignment.

Exit 0 pass, 1 fail, 77 skip (node or the package missing).  Under CI=true
a missing package is a failure, not a skip.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from memmodel import gguf  # noqa: E402  (tools/ on PYTHONPATH: tests/meson.build)

SKIP = 77

# Prints the parser's view as JSON (64-bit integers as strings).
NODE_SCRIPT = r"""
const { gguf } = require(process.argv[1]);
(async () => {
  const out = [];
  for (const path of process.argv.slice(2)) {
    const r = await gguf(path, { allowLocalFile: true });
    out.push({ metadata: r.metadata, tensorDataOffset: r.tensorDataOffset,
               tensorInfos: r.tensorInfos });
  }
  process.stdout.write(JSON.stringify(out, (k, v) => typeof v === "bigint" ? v.toString() : v));
})().catch(e => { console.error(String(e)); process.exit(1); });
"""


def find_pkg(arg):
    cands = [arg, os.environ.get("MSADB_GGUF_PEER")]
    for root in (os.environ.get("MSADB_BUILD"), os.environ.get("MESON_BUILD_ROOT"),
                 os.path.join(REPO, "build")):
        if root:
            cands.append(os.path.join(root, "npm", "node_modules", "@huggingface", "gguf"))
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "package.json")):
            return c
    return None


def same_value(ours, theirs):
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours is theirs or ours == theirs
    if isinstance(ours, float):
        # f32 values: the peer prints the float32 as a double
        return isinstance(theirs, (int, float)) and math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-30)
    if isinstance(ours, int):
        return str(ours) == str(theirs)
    if isinstance(ours, (list, tuple)):
        return (isinstance(theirs, list) and len(ours) == len(theirs)
                and all(same_value(a, b) for a, b in zip(ours, theirs)))
    if isinstance(ours, bytes):
        ours = ours.decode("utf-8")
    return ours == theirs


def compare(path, peer):
    """Differences between tools/memmodel/gguf.py's reading of path and the peer's."""
    bad = []
    r = gguf.GGUFReader(path)
    meta = peer["metadata"]
    for k in ("version", "tensor_count", "kv_count"):
        if k not in meta:
            bad.append("peer metadata lacks %s" % k)
    if str(meta.get("version")) != str(gguf.GGUF_VERSION):
        bad.append("version %s" % meta.get("version"))
    if str(meta.get("tensor_count")) != str(len(r.tensors)):
        bad.append("tensor_count %s != %d" % (meta.get("tensor_count"), len(r.tensors)))
    if str(meta.get("kv_count")) != str(len(r.meta)):
        bad.append("kv_count %s != %d" % (meta.get("kv_count"), len(r.meta)))
    theirs = {k: v for k, v in meta.items() if k not in ("version", "tensor_count", "kv_count")}
    if set(theirs) != set(r.meta):
        bad.append("metadata keys differ: %s" % sorted(set(theirs) ^ set(r.meta)))
    for k in sorted(set(theirs) & set(r.meta)):
        if not same_value(r.meta[k], theirs[k]):
            bad.append("metadata %s: ours %r, peer %r" % (k, str(r.meta[k])[:80], str(theirs[k])[:80]))
    if int(peer["tensorDataOffset"]) != r.data_offset:
        bad.append("data offset: ours %d, peer %s" % (r.data_offset, peer["tensorDataOffset"]))
    infos = peer["tensorInfos"]
    if [t["name"] for t in infos] != list(r.tensors):
        bad.append("tensor names or order differ")
    size = os.path.getsize(path)
    end = 0
    for t in infos:
        ours = r.tensors.get(t["name"])
        if ours is None:
            continue
        shape = [int(x) for x in t["shape"]]
        off = int(t["offset"])
        if shape != list(ours.ne) or int(t["dtype"]) != ours.ggml_type or off != ours.offset:
            bad.append("tensor %s: peer %s/%s@%d, ours %s/%s@%d" % (
                t["name"], shape, t["dtype"], off, ours.ne, ours.ggml_type, ours.offset))
        if off % r.alignment:
            bad.append("tensor %s at offset %d is not %d-aligned" % (t["name"], off, r.alignment))
        n = gguf.tensor_nbytes(int(t["dtype"]), shape)
        if r.data_offset + off + n > size:
            bad.append("tensor %s runs past the end of the file" % t["name"])
        end = max(end, r.data_offset + off + n)
    if infos and size - end >= r.alignment:
        bad.append("%d bytes after the last tensor" % (size - end))
    return bad


def main(argv):
    pkg = find_pkg(argv[argv.index("--pkg") + 1] if "--pkg" in argv else None)
    node = shutil.which("node") or shutil.which("nodejs")
    if not pkg or not node:
        what = "node" if not node else "the npm package @huggingface/gguf (tools/scripts/run.sh installs it)"
        if os.environ.get("CI") == "true":
            print("FAIL: %s not found" % what)
            return 1
        print("skip: %s not found" % what)
        return SKIP
    tmp = tempfile.mkdtemp(prefix="msadb-gguf-peer-")
    try:
        files = [os.path.join(REPO, "models", "msadb-mem.gguf")]
        for wtype, extra in (("f32", []), ("f16", ["--untied"]), ("bf16", []), ("q8_0", ["--untied"])):
            out = os.path.join(tmp, "m-%s.gguf" % wtype)
            subprocess.run([sys.executable, "-m", "memmodel.make_test_model", out,
                            "--wtype", wtype, "--head-dim", "32", "--ffn", "96", *extra],
                           check=True, stdout=subprocess.DEVNULL)
            files.append(out)
        r = subprocess.run([node, "-e", NODE_SCRIPT, pkg, *files], stdout=subprocess.PIPE)
        if r.returncode != 0:
            print("FAIL: the peer could not parse the files")
            return 1
        views = json.loads(r.stdout)
        fails = 0
        for path, view in zip(files, views):
            bad = compare(path, view)
            name = os.path.relpath(path, REPO) if path.startswith(REPO) else os.path.basename(path)
            for b in bad:
                print("FAIL %s: %s" % (name, b))
            fails += bool(bad)
            if not bad:
                print("ok %s: %d tensors, %d keys agree" % (name, len(view["tensorInfos"]),
                                                            len(view["metadata"]) - 3))
        return 1 if fails else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
