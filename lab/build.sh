#!/usr/bin/env bash
# Builds the lab vCenter (lab/build/vmlift-lab) from Debian's golang-go and
# golang-github-vmware-govmomi-dev, offline. Idempotent: rebuilds only when the Go sources change.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
out=build/vmlift-lab
hash=$(cat ./*.go | sha256sum | cut -c1-16)
if [ -x "$out" ] && [ "$(cat build/.hash 2>/dev/null)" = "$hash" ]; then exit 0; fi
mkdir -p build
exec 9>build/.lock
flock 9   # parallel test files build once
if [ -x "$out" ] && [ "$(cat build/.hash 2>/dev/null)" = "$hash" ]; then exit 0; fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
mkdir -p "$src/src/vmlift-lab"
cp ./*.go "$src/src/vmlift-lab/"
echo "lab: building the lab vCenter (govmomi simulator), about 20 s" >&2
(cd "$src/src/vmlift-lab" && GO111MODULE=off GOPATH="$src:/usr/share/gocode" GOFLAGS=-mod=mod \
  GOCACHE="${GOCACHE:-$here/build/.gocache}" go build -o "$here/$out.tmp" .) 2>&1 | sed 's/^/lab: /' >&2
mv "$out.tmp" "$out"
echo "$hash" > build/.hash
