#!/usr/bin/env bash
# Builds the libvixDiskLib test double into native/build/vddk-double/lib64/ (the layout of a VDDK
# distribution, so --vddk-libdir=native/build/vddk-double works). Idempotent: rebuilds only when a source changed.
set -euo pipefail
cd "$(dirname "$0")"
src=vddk-double/vddk-double.c
hdr=vddk-double/vixDiskLib-abi.h
out=build/vddk-double/lib64
lib=$out/libvixDiskLib.so.8
if [ -f "$lib" ] && [ "$lib" -nt "$src" ] && [ "$lib" -nt "$hdr" ] && [ "$lib" -nt build.sh ]; then
  exit 0
fi
mkdir -p "$out"
${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -Werror -Wno-format-truncation -fPIC -shared -pthread \
  -Wl,-soname,libvixDiskLib.so.8 -o "$lib.tmp" "$src"
mv "$lib.tmp" "$lib"
ln -sf libvixDiskLib.so.8 "$out/libvixDiskLib.so"
echo "native: built $lib" >&2
