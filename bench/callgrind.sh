#!/bin/bash
# Instructions per sample for each stage of the hot path, counted by
# callgrind (repeatable: instructions, not seconds). Usage:
#   bench/callgrind.sh [PAGE] [ITERATIONS]
# PAGE defaults to a synthetic Kubernetes-like page of 2000 series from the
# shared bench's generator (../shared/bench/lib/gen_targets.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${BUILD:-$here/../build}
iters=${2:-20}
page=${1:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$page" ]; then
  gen=$here/../../shared/bench/lib/gen_targets.py
  /usr/bin/python3 "$gen" --help >/dev/null 2>&1 || { echo "pass a PAGE (no $gen)" >&2; exit 2; }
  /usr/bin/python3 "$gen" --out "$tmp/pages" --targets 1 --series 2000 --variants 1 >/dev/null
  page=$(find "$tmp/pages/v0" -type f -name '*.prom' | head -1)
fi
cmake --build "$build" --target mg_stages >/dev/null
prev=0
printf '%-9s %12s %12s\n' stage "Ir/sample" "marginal"
for stage in parse lookup ingest compress; do
  out=$(valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$stage" "$build/mg_stages" "$stage" "$page" "$iters" 2>&1)
  samples=$(echo "$out" | sed -n 's/^\([0-9]*\) samples$/\1/p')
  total=$(echo "$out" | sed -n 's/.*Collected : \([0-9]*\)$/\1/p')
  # Subtract the cost of a run with one iteration (start-up, page read).
  base=$(valgrind --tool=callgrind --callgrind-out-file="$tmp/cg1.$stage" "$build/mg_stages" "$stage" "$page" 1 2>&1 |
         sed -n 's/.*Collected : \([0-9]*\)$/\1/p')
  per=$(( (total - base) / (samples - samples / iters) ))
  printf '%-9s %12d %12d\n' "$stage" "$per" $((per - prev))
  prev=$per
done
