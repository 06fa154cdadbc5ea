#!/usr/bin/env bash
# Idempotent set-up for vmlift's demo, tests and benchmarks on a Debian machine:
# Debian packages, npm dependencies, the native VDDK test double and the lab vCenter.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-utils nbdkit libnbd-bin libnbd-dev golang-go golang-github-vmware-govmomi-dev gcc make openssl jq curl
  debootstrap extlinux syslinux-common libguestfs-tools guestfs-tools linux-image-amd64 virt-v2v qemu-system-x86
  chromium fonts-wqy-microhei)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

stamp=node_modules/.vmlift-install-stamp
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund >&2
  touch "$stamp"
fi

# Parts that need building register a build script here; each is itself idempotent and cached.
for build in native/build.sh lab/build.sh scripts/build.sh; do
  if [ -x "$build" ]; then "$build" >&2; fi
done
