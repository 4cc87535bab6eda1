#!/usr/bin/env bash
# Benchmark (not a test): what the Redis store adds to each request, next to the memory store.
#   1. store round trips: the store calls one authenticated session request makes (failed-auth
#      peek, session lookup, request and token takes), timed one by one through the Store trait;
#   2. end to end: non-streamed chats through the real release binaries (scripted bridge peer,
#      bridge-agent, gateway) with each store, with the API key and with a session token.
# Starts its own redis-server on a free port (Debian package redis-server; see
# scripts/setup-test-deps.sh). Usage: bench/store-latency.sh [REQUESTS]   (default 2000)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
requests=${1:-2000}

command -v redis-server >/dev/null 2>&1 || {
    echo "store-latency: redis-server not found (scripts/setup-test-deps.sh installs it)" >&2
    exit 1
}
cargo build --release --quiet -p gateway -p bridge-agent --bins

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
cleanup() {
    if [[ -f $dir/redis.pid ]]; then kill "$(cat "$dir/redis.pid")" 2>/dev/null || true; fi
    rm -rf -- "$dir"
}
trap cleanup EXIT
for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== store round trips (4 calls per request, 1 and 8 concurrent) =="
cargo run --release --quiet -p gateway --example store_latency -- "redis://127.0.0.1:$port/0" $((requests * 5)) 1
cargo run --release --quiet -p gateway --example store_latency -- "redis://127.0.0.1:$port/0" $((requests * 5)) 8
echo
echo "== end to end: chat requests through the release binaries =="
cargo run --release --quiet -p integration-tests --example e2e_store_latency -- "$requests"
