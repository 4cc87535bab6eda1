#!/usr/bin/env bash
# The benchmark: one command. Installs what it needs (nginx, a pinned LiteLLM in bench/.venv, the
# oha load generator in bench/.tools), builds the release binaries, runs every measurement of
# bench/run.py on this machine in one go, and writes bench/results/<time>.{json,md}.
# Takes about ten minutes; run it on an otherwise idle machine.
# --allocs: allocations per request and per streamed chunk of the gateway and bridge-agent (heaptrack);
# --profile: where their CPU time goes under load (perf; a flame graph too when inferno is in
# bench/.tools); with --chain, of every process of the chain (mcp-bridge and two agents too). Both build the bench-profile binaries into target/bench-profile and skip the timing
# runs, LiteLLM and oha.
# --chain: only the figures through mcp-bridge (no LiteLLM); --queue redis: mcp-bridge's queue in a
# redis-server of its own; --mcp-bridge-env KEY=VALUE: more of mcp-bridge's environment.
# --compare DIR: ours against the release binaries in DIR, side by side; --baseline REV: the same
# against commit REV, built first by bench/baseline.sh into bench/.baseline/<commit>/. With either, the
# syscalls per chat are counted (perf); --long-run N sends N requests at c=64 through a fresh pair of each build, then
# reads its RSS (with --only-leak: N requests, 1,000,000 without it, through this build alone).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(dirname "$here")
cd "$repo"

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
apt_install() {
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
    apt_install nginx
fi
# --allocs and --profile measure costs of ours alone (see BENCHMARKS.md, "Allocations and profile").
costs="" chain="" redis="" compare="" args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --allocs | --profile) costs=1 ;;
        --chain) chain=1 ;;
        --queue) if [[ ${2:-} == redis ]]; then redis=1; fi ;;
        --compare | --baseline) compare=1 ;;
    esac
    if [[ $1 == --baseline ]]; then
        # Built before ours: both builds share target/, and ours is built last.
        baseline=$(bench/baseline.sh "${2:?--baseline takes a commit}")
        args+=(--compare "$baseline")
        shift 2
        continue
    fi
    args+=("$1")
    shift
done
set -- ${args[@]+"${args[@]}"}
if [[ -n $redis ]] && ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server
fi
if [[ -z $costs && -z $chain ]]; then
    # The anchor: an older LiteLLM release, pinned, configured as its docs recommend for production.
    litellm_version=1.74.9
    if [[ ! -x bench/.venv/bin/litellm ]] || ! bench/.venv/bin/pip show litellm 2>/dev/null | grep -qx "Version: $litellm_version"; then
        python3 -m venv bench/.venv
        bench/.venv/bin/pip install -q --disable-pip-version-check "litellm[proxy]==$litellm_version"
    fi
fi
if [[ -n $compare && -z $chain ]] && ! command -v perf >/dev/null 2>&1; then
    apt_install linux-perf
fi
if [[ -n $costs ]]; then
    # Their load comes from bench/run.py itself: they count work, not time.
    for tool in heaptrack:heaptrack perf:linux-perf; do
        if ! command -v "${tool%%:*}" >/dev/null 2>&1; then apt_install "${tool#*:}"; fi
    done
    # Release code with line tables (Cargo.toml, profile bench-profile), for symbols in both tools;
    # BENCH_COST_BUILD=release uses the release binaries (function symbols only; see run.py).
    cargo build --profile "${BENCH_COST_BUILD:-bench-profile}" --locked -p gateway -p bridge-agent -p mcp-bridge -p bench --bins
else
    oha_version=1.16.0
    if [[ ! -x bench/.tools/bin/oha ]] || [[ $(bench/.tools/bin/oha --version) != "oha $oha_version" ]]; then
        cargo install oha --version "$oha_version" --locked --root bench/.tools
    fi
    cargo build --release --locked -p gateway -p bridge-agent -p mcp-bridge -p bench --bins
fi
# 10,000 open streams need more descriptors than the usual soft limit: raise it to the hard one.
ulimit -n "$(ulimit -Hn)"
exec python3 bench/run.py "$@"
