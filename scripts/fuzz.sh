#!/usr/bin/env bash
# Fuzzes every target in fuzz/fuzz_targets/ (docs/testing.md, "Fuzzing"), one after another, then prints
# executions, executions per second, new inputs and findings per target.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]        each target for SECONDS (default 60)
#   scripts/fuzz.sh --runs N [TARGET...]         each target for N executions
#   options: --cmin        minimize fuzz/corpus/<target> afterwards: a small set of its inputs
#                          that still reaches every edge they reach (what is committed)
#            --sanitizer S address, memory, thread or none (default none: the code is safe Rust,
#                          and without a sanitizer a run goes about twice as fast)
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz when it is
# missing. Inputs the fuzzer finds worth keeping go to fuzz/corpus/<target>/ (the committed seeds
# in fuzz/seeds/<target>/ and the inputs of fixed faults in fuzz/regressions/<target>/ are read,
# not written); a crash, a leak, a timeout (one input over 10 s) or running out of memory leaves
# its input in fuzz/artifacts/<target>/ and makes the exit status 1: once fixed, move it to
# fuzz/regressions/<target>/. Every saved input is replayed by the normal tests
# (tests/fuzz-harness/tests/corpus.rs).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo/fuzz"

seconds=60
runs=
cmin=false
sanitizer=none
targets=()
while (($#)); do
    case $1 in
    --runs)
        runs=${2:?--runs needs a number of executions}
        shift
        ;;
    --cmin) cmin=true ;;
    --sanitizer)
        sanitizer=${2:?--sanitizer needs address, memory, thread or none}
        shift
        ;;
    -h | --help)
        sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    [0-9]*) seconds=$1 ;;
    -*)
        echo "fuzz.sh: unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *) targets+=("$1") ;;
    esac
    shift
done
if [[ -n $runs && ! $runs =~ ^[0-9]+$ ]]; then
    echo "fuzz.sh: --runs expects a whole number, got $runs" >&2
    exit 2
fi
if [[ ! $seconds =~ ^[0-9]+$ ]]; then
    echo "fuzz.sh: SECONDS expects a whole number, got $seconds" >&2
    exit 2
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo +nightly install cargo-fuzz --locked
fi
# The seeds come from the repository's tests; they are committed, made again only if missing.
[[ -d seeds ]] || python3 seeds.py

if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Debug assertions on: an arithmetic overflow is a finding, as it is in the tests.
build=(--sanitizer "$sanitizer" --debug-assertions)
cargo +nightly fuzz build "${build[@]}" >&2

if [[ -n $runs ]]; then
    budget=(-runs="$runs")
    echo "fuzz.sh: ${#targets[@]} targets, $runs executions each" >&2
else
    budget=(-max_total_time="$seconds")
    echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each" >&2
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
summary=()
findings=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target" "seeds/$target" "regressions/$target"
    before=$(find "artifacts/$target" -type f | wc -l)
    echo "==> $target" >&2
    status=0
    cargo +nightly fuzz run "${build[@]}" "$target" "corpus/$target" "seeds/$target" "regressions/$target" -- \
        "${budget[@]}" -timeout=10 -max_len=16384 -print_final_stats=1 \
        >"$logs/$target.log" 2>&1 || status=$?
    tail -n 3 "$logs/$target.log" >&2
    stat() { sed -n "s/^stat::$1: *//p" "$logs/$target.log" | tail -n 1; }
    found=$(($(find "artifacts/$target" -type f | wc -l) - before))
    if ((status != 0 && found == 0)); then
        # Failed without leaving an input (a build or start-up error): show why.
        tail -n 30 "$logs/$target.log" >&2
        found=1
    fi
    findings=$((findings + found))
    summary+=("$(printf '%-16s %14s %10s %8s %8s %9s' "$target" "$(stat number_of_executed_units)" \
        "$(stat average_exec_per_sec)" "$(stat new_units_added)" "$(find "corpus/$target" -type f | wc -l)" "$found")")
    if $cmin; then
        # Edges only, not their hit counts: a few hundred inputs per target rather than thousands.
        cargo +nightly fuzz cmin "${build[@]}" "$target" "corpus/$target" -- -use_counters=0 \
            >"$logs/$target.cmin.log" 2>&1 ||
            tail -n 20 "$logs/$target.cmin.log" >&2
    fi
done

printf '\n%-16s %14s %10s %8s %8s %9s\n' target executions exec/s new corpus findings
printf '%s\n' "${summary[@]}"
if ((findings > 0)); then
    echo "fuzz.sh: $findings finding(s); inputs in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run TARGET FILE)" >&2
    exit 1
fi
