#!/usr/bin/env bash
# `make demo`: cio's story on a local 4-node cluster — nodes fail and come
# back, and the cluster notices and heals without an operator.
# Everything it starts is stopped at the end (also on Ctrl-C or failure).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CIO_HOME="${CIO_HOME:-$(mktemp -d /tmp/cio-demo.XXXXXX)}"
dir="$CIO_HOME/cluster"
cio() { node "$root/dist/src/cli/main.js" "$@"; }

cleanup() { cio cluster down --dir "$dir" --wipe >/dev/null 2>&1 || true; }
trap cleanup EXIT

t0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { printf '\n\033[1m== %s\033[0m  (t=%ss)\n' "$1" "$(since "$t0")"; }
show() { printf '\n$ cio %s\n' "$*"; cio "$@"; }

step "start a 4-node cluster: one etcd, agents v1..v4 on 127.0.0.11-14"
cio cluster up --nodes 4 --dir "$dir" --lease-ttl 5

step "node v3 loses power (SIGKILL)"
cio cluster kill v3 --dir "$dir"
start=$(date +%s.%N)
until cio node ls | grep -q '^v3 .*maintenance'; do sleep 0.5; done
echo "v3 detected as failed after $(since "$start") s"
show node ls

step "the controller's own node (v1) dies too: another node takes over"
cio cluster kill v1 --dir "$dir"
until cio node ls | grep -q '^v1 .*maintenance'; do sleep 0.5; done
show node ls
show info

step "v3 and v1 come back, as themselves"
cio cluster start v3 --dir "$dir"
cio cluster start v1 --dir "$dir"
until [ "$(cio node ls | grep -c ' normal$')" = 4 ]; do sleep 0.5; done
show node ls
show info
show events -n 20

step "done; stopping everything"
