#!/usr/bin/env bash
# Builds the native parts into native/build/ (idempotent: rebuilds only when a source changed):
#  - the libvixDiskLib test double into native/build/vddk-double/lib64/ (the layout of a VDDK
#    distribution, so --vddk-libdir=native/build/vddk-double works); it reads the lab's snapshot
#    views over NBD with libnbd (Debian libnbd-dev);
#  - libvmlift-digest.so (block digests over OpenSSL's libcrypto, see native/digest/), which the agent
#    and the receiver use when present (they fall back to Node's crypto without it).
set -euo pipefail
cd "$(dirname "$0")"

fresh() { # fresh OUT SRC...: OUT exists and is newer than every SRC and this script
  local out=$1; shift
  [ -f "$out" ] || return 1
  for s in "$@" build.sh; do [ "$out" -nt "$s" ] || return 1; done
}

src=vddk-double/vddk-double.c
hdr=vddk-double/vixDiskLib-abi.h
out=build/vddk-double/lib64
lib=$out/libvixDiskLib.so.8
if ! fresh "$lib" "$src" "$hdr"; then
  mkdir -p "$out"
  ${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -Werror -Wno-format-truncation -fPIC -shared -pthread \
    -Wl,-soname,libvixDiskLib.so.8 -o "$lib.tmp" "$src" -lnbd
  mv "$lib.tmp" "$lib"
  ln -sf libvixDiskLib.so.8 "$out/libvixDiskLib.so"
  echo "native: built $lib" >&2
fi

dsrc=digest/vmlift-digest.c
dlib=build/libvmlift-digest.so
if ! fresh "$dlib" "$dsrc"; then
  mkdir -p build
  # libcrypto.so.3 by its soname: Debian's libssl3 (a dependency of openssl), no -dev package needed
  ${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -Werror -fPIC -shared -pthread -o "$dlib.tmp" "$dsrc" -l:libcrypto.so.3
  mv "$dlib.tmp" "$dlib"
  echo "native: built $dlib" >&2
fi
