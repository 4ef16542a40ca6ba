#!/usr/bin/env bash
# tools/demo.sh BUILD_DIR -- the demo: create a store, ingest a small memory
# (tools/demo/corpus.txt), ask it a question, show what it cites.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
msadb="$build/cli/msadb"
work=$(mktemp -d /tmp/msadb-demo-XXXXXX)
db="$work/memory.msadb"
question=${MSADB_DEMO_QUESTION:-"Where is the spare key to the shed hidden?"}

/usr/bin/python3 "$here/demo/make_demo.py" "$here/demo/corpus.txt" "$work" "$question"
"$msadb" init "$db" --layers 2 --kv-heads 1 --q-heads 2 --head-dim 64 \
    --memory-layers 1 --block 8 --dtype int8
for f in "$work"/doc*.safetensors; do
  "$msadb" ingest "$db" --title "$(cat "${f%.safetensors}.title")" "$f" --quiet
done
echo "== memory"
"$msadb" ls "$db"
echo
echo "== question: $question"
"$msadb" query "$db" --q "$work/question.safetensors" --layer 1 --top-k 2 --json \
  | /usr/bin/python3 -c '
import json, sys
r = json.load(sys.stdin)
for sel in r["selected"]:
    for b in sel["blocks"]:
        print("score %.2f  %-20s tokens %d-%d: %s" % (b["score"], b.get("title", ""),
              b["token_start"], b["token_end"], b.get("text", "")))
'
"$msadb" verify "$db"
echo "(store kept in $work)"
