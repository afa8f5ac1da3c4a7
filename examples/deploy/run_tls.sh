#!/usr/bin/env bash
# The same over TLS, with a per-client token derived from a server secret. Needs the openssl command.
# Usage: run_tls.sh [ROUNDS]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

# 1. A self-signed certificate for localhost (use your CA's certificate on real machines).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
# 2. The server's secret; each client's token is derived from it and handed to that client only.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/secret"

fl server --config "$here/deploy.toml" --listen 127.0.0.1:0 --set "rounds=${1:-10}" \
  --set "output_dir=\"$work/runs\"" --set "transport.tls_cert=\"$work/cert.pem\"" \
  --set "transport.tls_key=\"$work/key.pem\"" --set "transport.auth_secret_file=\"$work/secret\"" \
  2> "$work/server.log" &
server=$!
until port=$(grep -o 'listening on [0-9.]*:[0-9]*' "$work/server.log" | cut -d: -f2) && [ -n "$port" ]; do
  kill -0 $server 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.2
done
echo "server on localhost:$port (TLS)"

for id in 0 1 2; do
  token=$(fl token --secret-file "$work/secret" --client-id "$id")
  fl client --server "localhost:$port" --client-id "$id" --root-cert "$work/cert.pem" --token "$token" &
done
wait $server
wait
sed -n '/Run summary/,$p' "$work/server.log"
echo "run directory: $work/runs/deploy"
