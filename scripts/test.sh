#!/usr/bin/env bash
# The test command: set-up, type check, then every test file under node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== type check" >&2
npx tsc --noEmit -p .
mapfile -t files < <(find test -name '*.test.ts' | sort)
if (($# > 0)); then files=("$@"); fi
echo "== ${#files[@]} test files" >&2
exec node --import tsx --no-warnings=ExperimentalWarning --test --test-concurrency=2 \
  --test-reporter=spec "${files[@]}"
