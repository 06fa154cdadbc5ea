#!/bin/bash
# An NBD server command for the connector's `nbd` transport against the lab (docs/transports.md):
# serves the lab's point-in-time view of (VM moref, snapshot moref, disk key) on the Unix socket the
# connector names, through a real nbdkit. It asks the lab control endpoint for the view's NBD export
# and execs nbdkit's nbd plugin in front of it, so the pid the connector watches is nbdkit's own.
#
#   nbd.command: ["bash", "<repo>/lab/nbd-view.sh", "<lab dir>", "{socket}", "{vm}", "{snapshot}", "{diskKey}"]
#
# Arguments after the fifth put nbdkit filters in front of the view (fault injection in tests):
# `--filter=NAME` ones go before the plugin, the others (the filters' key=value) after it, e.g.
#   … "{diskKey}" "--filter=error" "error=EIO" "error-pread-rate=100%" "error-pread-file=/tmp/fail-{diskKey}"
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: nbd-view.sh LAB_DIR SOCKET VM_MOREF SNAPSHOT_MOREF DISK_KEY [--filter=F ...] [key=value ...]" >&2; exit 2; }
labdir=$1 socket=$2 moref=$3 snapshot=$4 disk=$5
shift 5
filters=() params=()
for a in "$@"; do
  case $a in --filter=*) filters+=("$a") ;; *) params+=("$a") ;; esac
done
state="$labdir/lab.json"
[ -r "$state" ] || { echo "nbd-view: no lab.json in $labdir (is the lab running?)" >&2; exit 1; }
name=$(jq -er --arg m "$moref" '.vms[] | select(.moref == $m) | .name' "$state") ||
  { echo "nbd-view: the lab has no VM $moref" >&2; exit 1; }
control=$(jq -er .controlUrl "$state")
cert=$(jq -er .certFile "$state")
# The lab token goes to curl on stdin (a config line), never on argv.
answer=$(jq -er '"header = \"X-Lab-Token: " + .token + "\""' "$state" |
  curl -sS --fail-with-body --cacert "$cert" -K - -X POST \
    "$control/nbd?vm=$(jq -rn --arg v "$name" '$v|@uri')&snapshot=$(jq -rn --arg v "$snapshot" '$v|@uri')&disk=$disk") ||
  { echo "nbd-view: the lab refused the view of $moref/$snapshot/$disk: $answer" >&2; exit 1; }
port=$(jq -er .port <<<"$answer")
exec nbdkit --unix "$socket" --foreground --readonly --exit-with-parent "${filters[@]}" nbd hostname=127.0.0.1 port="$port" "${params[@]}"
