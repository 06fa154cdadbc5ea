#!/usr/bin/env bash
# Compiles src/ (and the lab helper the demo uses) to dist/ with tsc, so bin/vmlift runs plain
# JavaScript: no TypeScript loader at run time (a much cheaper start; figures in README.md, Layout).
# Idempotent: does nothing when dist/ is newer than every source.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=dist/.build-stamp
if [ -f "$stamp" ] && [ -z "$(find src lab/lab.ts scripts/lib tsconfig.json tsconfig.build.json package-lock.json -newer "$stamp" -print -quit)" ]; then
  exit 0
fi
echo "build: tsc -> dist/" >&2
npx tsc -p tsconfig.build.json
touch "$stamp"
