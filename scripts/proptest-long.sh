#!/usr/bin/env bash
# Runs the property tests of what parses untrusted bytes (the IPC frame codec, the bridge frame
# decoder, request validation, the stdio relay's SSE parsing) far longer than CI does (256 cases
# each), then reports how many cases each property ran and the total. Exits non-zero on any
# failure; proptest prints the smallest failing input.
#
# Usage: scripts/proptest-long.sh [CASES]   (cases per property, default 100000)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

cases=${1:-100000}
[[ $cases =~ ^[1-9][0-9]*$ ]] || { echo "proptest-long.sh: CASES must be a positive whole number, got '$cases'" >&2; exit 2; }
filter='test(/props::|relay::tests::sse_/)'
log=$(mktemp)
trap 'rm -f -- "$log"' EXIT

started=$SECONDS
status=0
if cargo nextest --version >/dev/null 2>&1; then
    PROPTEST_CASES=$cases cargo nextest run --locked -p provider-shared -p gateway -p mcp-bridge \
        --no-capture --no-fail-fast -E "$filter" >"$log" 2>&1 || status=$?
else
    PROPTEST_CASES=$cases cargo test --locked -p provider-shared -p gateway -p mcp-bridge \
        --lib --no-fail-fast -- --nocapture props:: relay::tests::sse_ >"$log" 2>&1 || status=$?
fi
grep -E 'panicked|minimal failing input|^property .* failed' -A12 "$log" || true
awk -v secs=$((SECONDS - started)) '
    /^property [a-z_]+: [0-9]+ cases$/ { sub(":", "", $2); n[$2] = $3; total += $3; props++ }
    END {
        for (p in n) printf "  %-28s %12d cases\n", p, n[p]
        printf "%d properties, %d cases in %d s\n", props, total, secs
    }' "$log"
if ((status != 0)); then
    echo "proptest-long.sh: FAILED (exit $status); the log above names the property" >&2
    exit "$status"
fi
