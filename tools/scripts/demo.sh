#!/usr/bin/env bash
# tools/scripts/demo.sh [MSADB] -- the demo: create a memory store for the bundled
# model (models/msadb-mem.gguf), ingest a few text documents
# (tools/scripts/demo/memory/*.txt), then ask it the questions of
# tools/scripts/demo/memory/questions.txt with memory and without, showing the
# answer, the expected one and the memory the answer drew on.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# the msadb program: an installed one, or a build directory's
msadb=${1:-build}
[ -d "$msadb" ] && msadb="$msadb/cli/msadb"
model="$root/models/msadb-mem.gguf"
work=$(mktemp -d /tmp/msadb-demo-XXXXXX)
db="$work/memory.msadb"
docs=()
for f in "$here"/demo/memory/*.txt; do
  [ "$(basename "$f")" = questions.txt ] || docs+=("$f")
done

"$msadb" init "$db" --model "$model"
"$msadb" ingest "$db" --model "$model" "${docs[@]}"
echo "== memory"
"$msadb" ls "$db"
# query exits 3 when the model answers that memory does not hold it
ask() { "$msadb" query "$db" --model "$model" --max-tokens 16 "$@" || [ $? -eq 3 ]; }
right=0 right_nomem=0 total=0
while IFS=$'\t' read -r question expected; do
  [ -n "$question" ] || continue
  total=$((total + 1))
  echo
  echo "== $question   (expected: $expected)"
  answer=$(ask --top-k 4 --json "$question")
  text=$(printf '%s' "$answer" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["answer"].strip())')
  nomem=$(ask --no-memory --quiet "$question" | tr -d '\n')
  echo "with memory:    $text"
  echo "without memory: $nomem"
  printf '%s' "$answer" | /usr/bin/python3 -c '
import json, sys
for s in json.load(sys.stdin)["spans"][:2]:
    print("  drew on %-22s score %6.1f  %s" % (s["title"], s["score"], s["text"][:70].replace("\n", " ")))'
  case "$text" in *"$expected"*) right=$((right + 1)) ;; esac
  case "$nomem" in *"$expected"*) right_nomem=$((right_nomem + 1)) ;; esac
done < "$here/demo/memory/questions.txt"
echo
echo "correct with memory: $right/$total, without memory: $right_nomem/$total"
"$msadb" verify "$db"
echo "(store kept in $work)"
