#!/usr/bin/env bash
# Benchmarks (not part of the tests): set-up, then every bench/*.ts entry point in turn, or only the
# ones named: `bash scripts/bench.sh [agent-cycle transports ...]`. Arguments after `--` go to each
# benchmark (e.g. `bash scripts/bench.sh agent-cycle -- --size 1`). Helpers that other benchmarks
# start (servers) are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

names=(); extra=()
while (($#)); do
  if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
  names+=("$1"); shift
done
if ((${#names[@]} == 0)); then
  for f in bench/*.ts; do
    n=$(basename "$f" .ts)
    case "$n" in *-server) continue ;; esac
    names+=("$n")
  done
fi

status=0
for n in "${names[@]}"; do
  f="bench/$n.ts"
  [ -f "$f" ] || { echo "bench: no benchmark $f" >&2; status=1; continue; }
  echo "== bench $n ${extra[*]}" >&2
  node --import tsx --no-warnings "$f" "${extra[@]}" || { echo "bench: $n failed" >&2; status=1; }
done
exit $status
