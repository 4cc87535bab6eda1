#!/usr/bin/env bash
# Benchmark (not a test): bytes and tokens handed to the agent over a 20-turn VoidEditor
# conversation, conversation deltas on and off, through the real binaries with the
# official `mcp` client as the agent and the `openai` client as the editor. Needs the Python
# environment of the tests (scripts/setup-test-deps.sh). Prints a Markdown table (BENCHMARKS.md).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"
# Bytes and tokens do not depend on the build profile, so the debug binaries of the tests serve.
cargo build --quiet -p gateway -p bridge-agent -p mcp-bridge --bins
cargo run --quiet -p integration-tests --example conversation_deltas
