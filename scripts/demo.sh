#!/usr/bin/env bash
# vmlift's end-to-end demo (agent-based flow, until the agentless engine has its own): a generated
# 256 MiB disk image with real data and holes, a local receiver, two agent cycles with a change in
# between, each image exported and checked by SHA-256 against the source, a summary table.
# Idempotent: starts from a clean work folder each time (VMLIFT_DEMO_DIR, default /tmp/vmlift-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

DIR=${VMLIFT_DEMO_DIR:-${TMPDIR:-/tmp}/vmlift-demo}
SIZE_MIB=${VMLIFT_DEMO_SIZE_MIB:-256}
VMLIFT=(bin/vmlift)
TSX=(node --import tsx --no-warnings)

rm -rf "$DIR"
mkdir -p "$DIR"
RECV_PID=
cleanup() {
  if [ -n "$RECV_PID" ] && kill -0 "$RECV_PID" 2>/dev/null; then kill "$RECV_PID"; wait "$RECV_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*" >&2; }
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let v=JSON.parse(s.trim().split("\n").pop());for(const k of process.argv[1].split("."))v=v[k];console.log(v)})' "$1"; }

step "generating a ${SIZE_MIB} MiB disk image: text from /usr/share/doc, random data and holes"
"${TSX[@]}" scripts/lib/gen-disk.ts "$DIR/disk.img" "$SIZE_MIB" --data 0.6 --text 0.5 --seed 7 >/dev/null
du -h --apparent-size "$DIR/disk.img" | sed 's/\t.*/ apparent size/' >&2
du -h "$DIR/disk.img" | sed 's/\t.*/ allocated/' >&2

step "starting a receiver (data in $DIR/receiver, loopback, free ports)"
"${VMLIFT[@]}" receiver serve --data-dir "$DIR/receiver" --listen 127.0.0.1 --control-port 0 --data-port 0 --json \
  > "$DIR/receiver.out" 2> "$DIR/receiver.log" &
RECV_PID=$!
for _ in $(seq 1 150); do [ -s "$DIR/receiver.out" ] && break; sleep 0.2; done
[ -s "$DIR/receiver.out" ] || { cat "$DIR/receiver.log" >&2; echo "demo: the receiver did not start" >&2; exit 1; }
PORT=$(json controlPort < "$DIR/receiver.out")
FP=$(json fingerprint < "$DIR/receiver.out")
json activationCode.code < "$DIR/receiver.out" > "$DIR/activation-code"
chmod 600 "$DIR/activation-code"
echo "receiver on 127.0.0.1:$PORT, certificate fingerprint $FP" >&2

sync_once() {
  "${VMLIFT[@]}" agent sync --device "$DIR/disk.img" --receiver "127.0.0.1:$PORT" --fingerprint "$FP" \
    --code-file "$DIR/activation-code" --state-dir "$DIR/agent-state" --source-id demo --checksum --once --json \
    > "$DIR/cycle-$1.jsonl"
  grep '"type":"cycle"' "$DIR/cycle-$1.jsonl" > "$DIR/cycle-$1.json"
}

declare -a ROWS
verify_image() { # cycle number, description
  local id src exp ok
  id=$(json imageId < "$DIR/cycle-$1.json")
  "${VMLIFT[@]}" image export --data-dir "$DIR/receiver" --source demo --image "$id" --format raw --output "$DIR/image-$id.raw" >/dev/null
  src=$(sha256sum "$DIR/disk.img" | cut -d' ' -f1)
  exp=$(sha256sum "$DIR/image-$id.raw" | cut -d' ' -f1)
  ok=MISMATCH; [ "$src" = "$exp" ] && ok=identical
  ROWS+=("$(printf '%-6s %-6s %-12s %10s %10s %10s %8s  %-10s %s' "$1" "$id" "$2" \
    "$(( $(json changedBytes < "$DIR/cycle-$1.json") / 1024 ))" "$(( $(json wireBytes < "$DIR/cycle-$1.json") / 1024 ))" \
    "$(( $(json disks.0.readBytes < "$DIR/cycle-$1.json") / 1024 ))" "$(json durationMs < "$DIR/cycle-$1.json")" "$ok" "${exp:0:16}")")
  rm -f "$DIR/image-$id.raw"
  [ "$ok" = identical ] || { echo "demo: image $id does not match the source" >&2; exit 1; }
}

step "cycle 1: full (allocated data only)"
sync_once 1
verify_image 1 full

step "changing 1% of the disk's 4 KiB blocks at random offsets"
"${TSX[@]}" scripts/lib/gen-disk.ts --change "$DIR/disk.img" 0.01 --seed 9 >&2

step "cycle 2: incremental (only changed blocks are sent)"
sync_once 2
verify_image 2 incremental

step "images kept by the receiver"
"${VMLIFT[@]}" image ls --data-dir "$DIR/receiver" >&2

printf '\n%-6s %-6s %-12s %10s %10s %10s %8s  %-10s %s\n' cycle image kind changedKiB wireKiB readKiB ms 'vs source' sha256
for r in "${ROWS[@]}"; do echo "$r"; done
echo
echo "both images export bit-identical to the source at their cycle; receiver stopped, files in $DIR"
