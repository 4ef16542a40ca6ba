"""Shared setup of the Python package's tests: the package from the source
tree, the library from the build tree (MSADB_LIBRARY), numpy required
(exit 77, meson's skip, without it)."""
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("MSADB_SOURCE_ROOT") or os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("MSADB_BUILD", os.path.join(ROOT, "build"))
PACKAGE_DIR = os.path.join(ROOT, "libmsadb", "python")
MODEL = os.path.join(ROOT, "models", "msadb-mem.gguf")

try:
    import numpy  # noqa: F401
except ImportError:
    print("SKIP: numpy is not installed (Debian: python3-numpy)")
    sys.exit(77)

sys.path.insert(0, PACKAGE_DIR)
os.environ.setdefault("MSADB_LIBRARY", os.path.join(BUILD, "libmsadb", "libmsadb.so"))
CLI = os.environ.get("MSADB_CLI", os.path.join(BUILD, "cli", "msadb"))


def tmpdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    import atexit
    atexit.register(shutil.rmtree, d, True)
    return d


def run_tests(glob):
    """Runs every test_* function of the calling module, in order; exit 1
    naming the failures."""
    import traceback
    fails = []
    names = [n for n in glob if n.startswith("test_") and callable(glob[n])]
    for n in names:
        try:
            glob[n]()
            print("ok  ", n, flush=True)
        except Exception:
            fails.append(n)
            print("FAIL", n, flush=True)
            traceback.print_exc()
    if fails:
        sys.exit("FAIL: " + ", ".join(fails))
    print("%d tests passed" % len(names))
