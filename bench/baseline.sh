#!/usr/bin/env bash
# Builds the release binaries of an earlier commit for `bench/run.sh --baseline REV` (BENCHMARKS.md):
# a detached git worktree of REV, built into this repository's target/ (the dependencies both
# builds share are compiled once), the gateway, bridge-agent and mcp-bridge copied into
# bench/.baseline/<commit>/ and the worktree removed. Prints that directory; does nothing but print
# it when it already holds the three binaries.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
rev=${1:?usage: bench/baseline.sh REV}
commit=$(git -C "$repo" rev-parse --verify --short=9 "$rev^{commit}")
out="$repo/bench/.baseline/$commit"
bins=(gateway bridge-agent mcp-bridge)
if [[ -x $out/gateway && -x $out/bridge-agent && -x $out/mcp-bridge ]]; then
    echo "$out"
    exit 0
fi
src=$(mktemp -d "${TMPDIR:-/tmp}/baseline-$commit-XXXXXX")
trap 'git -C "$repo" worktree remove --force "$src" >/dev/null 2>&1 || rm -rf "$src"' EXIT
git -C "$repo" worktree add --detach --quiet "$src" "$commit"
# Progress goes to stderr: stdout is only the directory, for run.sh.
(cd "$src" && CARGO_TARGET_DIR="$repo/target" cargo build --release --locked \
    -p gateway -p bridge-agent -p mcp-bridge --bins) >&2
mkdir -p "$out"
for bin in "${bins[@]}"; do cp "$repo/target/release/$bin" "$out/"; done
git -C "$repo" rev-parse "$commit" >"$out/COMMIT"
echo "$out"
