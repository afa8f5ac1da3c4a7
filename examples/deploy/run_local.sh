#!/usr/bin/env bash
# A server and three clients as separate processes on 127.0.0.1 (plaintext). Usage: run_local.sh [ROUNDS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

fl server --config "$here/deploy.toml" --listen 127.0.0.1:0 --set "rounds=${1:-10}" \
  --set "output_dir=\"$work/runs\"" 2> "$work/server.log" &
server=$!
until address=$(grep -o 'listening on [0-9.:]*' "$work/server.log" | cut -d' ' -f3) && [ -n "$address" ]; do
  kill -0 $server 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.2
done
echo "server on $address"

for id in 0 1 2; do fl client --server "$address" --client-id "$id" & done
wait $server
wait
sed -n '/Run summary/,$p' "$work/server.log"
echo "run directory: $work/runs/deploy"
