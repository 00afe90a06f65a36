#!/usr/bin/env bash
# `make demo`: the seed's story on a local 4-node cluster (see src/cluster/demo.ts).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec node "$root/dist/src/cli/main.js" cluster demo
