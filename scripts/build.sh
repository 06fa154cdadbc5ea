#!/usr/bin/env bash
# Compiles src/ (and the lab helper the demo uses) to dist/ with tsc, so bin/vmlift runs plain
# JavaScript: no TypeScript loader at run time (a much cheaper start; figures in README.md, Layout).
# Idempotent: does nothing when dist/ is newer than every source.
set -euo pipefail
cd "$(dirname "$0")/.."
# The connector's web console: web/ (Preact, uPlot) type-checked, then bundled by Vite into dist/console.
console_stamp=dist/console/.build-stamp
if [ ! -f "$console_stamp" ] || [ -n "$(find web package-lock.json -newer "$console_stamp" -print -quit)" ]; then
  echo "build: vite web/ -> dist/console" >&2
  npx tsc --noEmit -p web/tsconfig.json
  npx vite build --config web/vite.config.ts >&2
  touch "$console_stamp"
fi
stamp=dist/.build-stamp
if [ -f "$stamp" ] && [ -z "$(find src lab/lab.ts scripts/lib tsconfig.json tsconfig.build.json package-lock.json -newer "$stamp" -print -quit)" ]; then
  exit 0
fi
echo "build: tsc -> dist/" >&2
npx tsc -p tsconfig.build.json
touch "$stamp"
