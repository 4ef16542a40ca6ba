#!/usr/bin/env bash
# tools/scripts/check_install.sh BUILD_DIR -- `meson install` into a scratch
# directory, then build and run a program against the installed header,
# library and pkg-config file, as a user of the library would.
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
dest=$(mktemp -d /tmp/msadb-install-XXXXXX)
trap 'rm -rf "$dest"' EXIT
DESTDIR="$dest" meson install -C "$build" --quiet >/dev/null
pc=$(dirname "$(find "$dest" -name msadb.pc | head -1)")
prefix=$(sed -n 's/^prefix=//p' "$pc/msadb.pc")
flags=$(PKG_CONFIG_PATH="$pc" pkg-config --define-variable=prefix="$dest$prefix" --cflags --libs msadb)
cat > "$dest/use.c" <<'C'
#include <msadb.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv)
{
    msadb_signature sig;
    msadb_store *st;
    if (argc < 2 || msadb_signature_init(&sig, 2, 1, 1, 8)) return 1;
    int rc = msadb_create(argv[1], &sig, NULL, &st);
    if (rc) { fprintf(stderr, "%s\n", msadb_strerror(rc)); return 1; }
    msadb_close(st);
    printf("installed msadb %s works\n", msadb_version());
    return strcmp(msadb_version(), MSADB_VERSION_STRING) != 0;
}
C
cc -std=c11 -o "$dest/use" "$dest/use.c" $flags
lib=$(dirname "$(find "$dest" -name 'libmsadb.so*' | head -1)")
LD_LIBRARY_PATH="$lib" "$dest/use" "$dest/store"
test -x "$(find "$dest" -path '*/bin/msadb')"
test -f "$(find "$dest" -name msadb.1)"
# the Python package: installed into Debian's python3 site directory, with
# _config.py naming the installed library directory; imported from the
# scratch tree (MSADB_LIBRARY points at the library there, since the
# configured directory is the real prefix's) with the bundled model
pkg=$(dirname "$(find "$dest" -path '*-packages/msadb/__init__.py' | head -1)")
test -f "$pkg/_config.py"
grep -q "^LIBDIR = \"$prefix/" "$pkg/_config.py"
model=$(find "$dest" -path '*/share/msadb/msadb-mem.gguf' | head -1)
test -f "$model"
PYTHONPATH="$(dirname "$pkg")" MSADB_LIBRARY="$lib/libmsadb.so" MSADB_MODEL="$model" /usr/bin/python3 -c '
import msadb, sys
sig = msadb.Signature(2, 1, 1, 8)
with msadb.Store.create(sys.argv[1], sig) as st:
    assert st.stat().n_documents == 0
try:
    with msadb.Model(msadb.default_model_path()) as m:
        assert m.info.n_layers > 0
except msadb.NotSupported:  # built with -Druntime=disabled
    pass
print("installed python package msadb %s works" % msadb.__version__)' "$dest/pystore"
