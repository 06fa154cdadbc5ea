#!/usr/bin/env bash
# Builds the lab's real guest once: a bootable Debian bookworm on a sparse raw disk,
# made VMware-like on purpose (no virtio in the initramfs, fstab names /dev/sda1,
# open-vm-tools installed) so that conversion to KVM is really needed.
# Cached under $VMLIFT_CACHE (default ~/.cache/vmlift) by the hash of this recipe;
# prints the disk's path on stdout. Needs root, loop devices and network to the
# Debian mirror that the machine's apt sources name.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
recipe_hash="$(sha256sum "$here/build.sh" | cut -c1-12)"
cache="${VMLIFT_CACHE:-$HOME/.cache/vmlift}"
out="$cache/guest-$recipe_hash"
disk="$out/disk.raw"
SIZE="${VMLIFT_GUEST_SIZE:-2G}"

if [ -f "$disk" ]; then echo "$disk"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/guest-$recipe_hash.lock"
flock 9
if [ -f "$disk" ]; then echo "$disk"; exit 0; fi

for tool in debootstrap extlinux sfdisk mkfs.ext4 losetup; do
  command -v "$tool" >/dev/null || { echo "guest build: $tool is missing; run scripts/setup.sh" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "guest build: needs root (loop devices, mount, chroot)" >&2; exit 1; }

# The Debian mirror comes from the deb822 stanza that is signed by the Debian archive
# keyring and serves bookworm; hosts differ between machines, so none is hard-coded.
mirror="${VMLIFT_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(awk '
    function flush() { if (uri != "" && suites ~ /(^| )bookworm( |$)/ && signed ~ /debian-archive-keyring/ && enabled != "no" && found == "") found = uri; uri = suites = signed = enabled = "" }
    /^[ \t]*$/ { flush(); next }
    /^#/ { next }
    tolower($1) == "uris:" { uri = $2 }
    tolower($1) == "suites:" { $1 = ""; suites = substr($0, 2) }
    tolower($1) == "signed-by:" { signed = $2 }
    tolower($1) == "enabled:" { enabled = tolower($2) }
    END { flush(); print found }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
fi
[ -n "$mirror" ] || { echo "guest build: no bookworm stanza signed by debian-archive-keyring in /etc/apt/sources.list.d/*.sources; set VMLIFT_DEBIAN_MIRROR" >&2; exit 1; }

work="$(mktemp -d "$cache/guest-$recipe_hash.build.XXXXXX")"
root="$work/root"
loop=""
cleanup() {
  set +e
  for m in dev/pts dev proc sys; do mountpoint -q "$root/$m" && umount "$root/$m"; done
  mountpoint -q "$root" && umount "$root"
  [ -n "$loop" ] && losetup -d "$loop"
  rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s)

img="$work/disk.raw"
truncate -s "$SIZE" "$img"
# MBR, one bootable Linux partition from 1 MiB to the end.
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$img"
dd if=/usr/lib/EXTLINUX/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
part_start=$((2048 * 512))
# A loop device over the partition alone (partition scanning needs udev, which may be absent).
loop="$(losetup -f --show -o "$part_start" "$img")"
# extlinux 6.04 cannot boot from ext4 with 64bit; metadata_csum is off for older readers.
mkfs.ext4 -q -F -L root -O ^64bit,^metadata_csum "$loop"
mkdir -p "$root"
mount "$loop" "$root"

echo "guest build: debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=systemd-sysv,udev,kmod,ifupdown,iproute2,procps bookworm "$root" "$mirror" >&2

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

# Initramfs as a VMware guest has it: SCSI/SATA controllers VMware emulates, no virtio.
mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
echo 'MODULES=list' >"$root/etc/initramfs-tools/conf.d/vmware-like.conf"
cat >"$root/etc/initramfs-tools/modules" <<'EOF'
vmw_pvscsi
mptspi
mptsas
sym53c8xx
ata_piix
ahci
sd_mod
ext4
EOF
cat >"$root/etc/initramfs-tools/hooks/no-virtio" <<'EOF'
#!/bin/sh
# Drop virtio drivers that other hooks may pull in, as on a guest built for VMware.
[ "$1" = prereqs ] && exit 0
find "${DESTDIR}/usr/lib/modules" "${DESTDIR}/lib/modules" -name 'virtio*.ko*' -delete 2>/dev/null || true
exit 0
EOF
chmod +x "$root/etc/initramfs-tools/hooks/no-virtio"

cat >"$root/etc/fstab" <<'EOF'
# VMware guest: the root disk on the first SCSI disk
/dev/sda1  /  ext4  errors=remount-ro  0  1
EOF
echo guest-debian >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 guest-debian\n' >"$root/etc/hosts"
printf 'auto lo\niface lo inet loopback\n' >"$root/etc/network/interfaces"

chroot "$root" /bin/sh -ec '
  export DEBIAN_FRONTEND=noninteractive LC_ALL=C
  apt-get install -y -q --no-install-recommends linux-image-amd64 open-vm-tools >&2
  systemctl enable serial-getty@ttyS0.service >&2
  echo "root:vmlift" | chpasswd
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*.log
  : >/etc/machine-id
'

kver="$(ls "$root/lib/modules" | head -1)"
if lsinitramfs "$root/boot/initrd.img-$kver" | grep -q 'virtio'; then
  echo "guest build: the initramfs still holds virtio modules" >&2; exit 1
fi

mkdir -p "$root/boot/extlinux"
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
PROMPT 0
SERIAL 0 115200
LABEL debian
  LINUX /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND root=/dev/sda1 ro console=tty0 console=ttyS0,115200n8
EOF
extlinux --install "$root/boot/extlinux" >&2

for m in dev/pts dev proc sys; do umount "$root/$m"; done
fstrim "$root" >/dev/null 2>&1 || true
umount "$root"
losetup -d "$loop"; loop=""

mkdir -p "$out"
mv "$img" "$disk"
printf '{"kernel":"%s","size":"%s","mirror":"%s","buildSeconds":%d}\n' "$kver" "$SIZE" "$mirror" $(( $(date +%s) - start )) >"$out/build.json"
echo "guest build: done in $(( $(date +%s) - start )) s, allocated $(du -h "$disk" | cut -f1) of $SIZE" >&2
echo "$disk"
