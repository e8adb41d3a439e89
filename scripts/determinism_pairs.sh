#!/usr/bin/env bash
# Runs the demo pipeline in pairs — plain, and with every sink batch slowed by 3 ms
# (WATERSHED_SLOW=sink-write:3) — both at once, until their late rows differ, keeping the
# outputs of the pair that differs. Results must not depend on load: every pair must agree.
# Put the machine under load beside it (e.g. `for i in 1 2; do sh -c 'while :; do :; done' & done`).
#
#   scripts/determinism_pairs.sh [BINARY] [PAIRS] [DIR]
#
# Defaults: target/debug/watershed, 20 pairs, /tmp/watershed-determinism.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/watershed}
pairs=${2:-20}
dir=${3:-/tmp/watershed-determinism}
root=$(pwd)/examples
for i in $(seq 1 "$pairs"); do
  d="$dir/pair-$i"
  rm -rf "$d"; mkdir -p "$d"
  for name in plain slow; do
    sed -e "s#demo/#$root/demo/#g" -e "s#watershed-out/#$d/$name/#g" "$root/demo.yaml" > "$d/$name.yaml"
  done
  "$bin" run --log error --metrics-addr off "$d/plain.yaml" > /dev/null 2> "$d/plain.err" &
  plain=$!
  WATERSHED_SLOW=sink-write:3 "$bin" run --log error --metrics-addr off "$d/slow.yaml" > /dev/null 2> "$d/slow.err" &
  slow=$!
  wait "$plain" "$slow"
  a=$(wc -l < "$d/plain/late.jsonl"); b=$(wc -l < "$d/slow/late.jsonl")
  echo "pair $i: plain $a late rows, slowed sink $b"
  if [ "$a" != "$b" ]; then
    echo "pair $i differs: outputs kept in $d"
    exit 1
  fi
  rm -rf "$d"
done
echo "all $pairs pairs agree"
