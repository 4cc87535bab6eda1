#!/usr/bin/env bash
# The one test command: everything CI runs (.ci/run executes exactly this), from any directory.
#   test dependencies (idempotent) -> rustfmt -> clippy -> build the binaries the black-box tests
#   start -> test images (scripts/build-test-images.sh) -> tests (nextest, else cargo test) + doc
#   tests -> shellcheck -> promtool (configs, rules, rule unit tests) -> hadolint (Dockerfile) ->
#   launchd plists -> systemd-analyze verify/security on the units.
# Stops at the first failing step (set -e) and names it; prints one summary line at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

started=$SECONDS
passed=()
current=

step() {
    current=$1
    printf '\n==> %s\n' "$1" >&2
}
done_step() { passed+=("$current ($((SECONDS - step_started))s)"); }
on_exit() {
    local rc=$?
    if ((rc != 0)); then
        printf '\ntest.sh: FAILED at step "%s" (exit %d) after %ds\n' "$current" "$rc" "$((SECONDS - started))" >&2
    fi
}
trap on_exit EXIT
run_step() {
    step "$1"
    shift
    step_started=$SECONDS
    "$@"
    done_step
}

run_step "test dependencies" scripts/setup-test-deps.sh

# Rust tests that drive the official Python OpenAI client use this interpreter.
export LOCAL_PROVIDER_TEST_PYTHON=$repo/.venv/bin/python
# Deterministic, non-interactive cargo output in CI logs.
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

run_step "cargo fmt" cargo fmt --all --check
run_step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# The black-box tests start the real binaries from target/debug.
run_step "cargo build" cargo build --workspace --bins --locked

# The container tests run images built here from the release binaries (no registry needed).
# The tests run the same script (without cargo), which then finds every image up to date.
test_images() {
    if docker info >/dev/null 2>&1; then
        scripts/build-test-images.sh >/dev/null
    else
        echo "no Docker engine: the container tests will skip (and fail under CI=true)"
    fi
}
run_step "test images" test_images

rust_tests() {
    rm -f target/nextest.log
    if cargo nextest --version >/dev/null 2>&1; then
        # --no-tests=warn: a workspace without tests yet is not a failure of this script.
        # nextest does not run doc tests; they go first so nextest's summary closes the run.
        cargo test --workspace --doc --locked --no-fail-fast
        cargo nextest run --workspace --no-fail-fast --locked --no-tests=warn 2>&1 | tee target/nextest.log
    else
        cargo test --workspace --no-fail-fast --locked
    fi
}
run_step "rust tests" rust_tests

shell_scripts() {
    local files=()
    while IFS= read -r -d '' f; do files+=("$f"); done \
        < <(find scripts deploy -type f -name '*.sh' -print0 | sort -z)
    files+=(.ci/run)
    shellcheck --external-sources "${files[@]}"
    printf 'shellcheck: %d files clean\n' "${#files[@]}"
}
run_step "shellcheck" shell_scripts

prometheus_files() {
    promtool check config deploy/prometheus/prometheus.yml
    promtool check config deploy/prometheus/prometheus.compose.yml
    promtool check rules deploy/prometheus/alerts.yml
    promtool test rules deploy/prometheus/alerts.test.yml
}
run_step "promtool" prometheus_files

# The Dockerfile's builder stage needs a registry, so it is linted here, not built (the runtime
# stages are built and run by the container tests).
run_step "hadolint" .venv/bin/hadolint Dockerfile

# .env.example must document exactly the variables the services read (shared/src/config.rs).
env_example() {
    python3 - <<'PY'
import re, sys
src = open("shared/src/config.rs", encoding="utf-8").read()
m = re.search(r"KNOWN_VARS: &\[&str\] = &\[(.*?)\];", src, re.S)
if not m:
    print("env example: KNOWN_VARS not found in shared/src/config.rs; check skipped")
    sys.exit(0)
known = set(re.findall(r'"(\w+)"', m.group(1)))
documented = set(re.findall(r"^#? ?LOCAL_PROVIDER_(\w+)=", open(".env.example", encoding="utf-8").read(), re.M))
missing, extra = sorted(known - documented), sorted(documented - known)
if missing or extra:
    print(f".env.example out of date: missing {missing}, unknown {extra}", file=sys.stderr)
    sys.exit(1)
print(f".env.example: all {len(known)} variables documented")
PY
}
run_step ".env.example" env_example

# Every relative link between the Markdown files names a file that exists and, with #anchor, a
# heading in it (GitHub's anchor rules: lower case, punctuation dropped, spaces to hyphens, -N for
# repeats), so the README's pointers into docs/ cannot rot.
doc_links() {
    python3 - README.md BENCHMARKS.md docs/*.md <<'PY'
import os, re, sys
def prose(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
def anchors(path):
    seen, out = {}, set()
    for line in prose(open(path, encoding="utf-8").read()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
            slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out
broken, links = [], 0
for src in sys.argv[1:]:
    text = re.sub(r"`[^`\n]*`", "", prose(open(src, encoding="utf-8").read()))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        links += 1
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(src), path)) if path else src
        if not os.path.exists(dest):
            broken.append(f"{src}: ({target}): no file {dest}")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append(f"{src}: ({target}): no heading #{anchor} in {dest}")
if broken:
    print("broken Markdown links:\n  " + "\n  ".join(broken), file=sys.stderr)
    sys.exit(1)
print(f"Markdown links: all {links} in {len(sys.argv) - 1} files resolve")
PY
}
run_step "doc links" doc_links

plists() {
    python3 - deploy/launchd/*.plist <<'PY'
import plistlib, sys
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        d = plistlib.load(f)
    assert d["KeepAlive"] is True and d["RunAtLoad"] is True, path
    print(f"{path}: ok ({d['Label']})")
PY
}
run_step "launchd plists" plists

# systemd-analyze verify checks that ExecStart= exists and is executable, so it runs on copies
# of the units whose /opt/mcp-local-provider/bin paths point at the binaries just built.
# It needs no running systemd (works in containers); any warning counts as a failure.
# (A subshell body, so that its EXIT trap removes the copies.)
systemd_units() (
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        echo "systemd-analyze not available; unit verification skipped"
        exit 0
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf -- "$tmp"' EXIT
    for unit in deploy/systemd/*.service; do
        sed -e "s|/opt/mcp-local-provider/bin/|$repo/target/debug/|g" \
            -e "s|^WorkingDirectory=.*|WorkingDirectory=$tmp|" \
            "$unit" >"$tmp/$(basename "$unit")"
    done
    out=$(systemd-analyze verify --man=no "$tmp"/*.service 2>&1) || {
        printf '%s\n' "$out"
        exit 1
    }
    if [[ -n $out ]]; then
        printf 'systemd-analyze verify warned:\n%s\n' "$out"
        exit 1
    fi
    echo "systemd-analyze verify: deploy/systemd/*.service ok"
    # Exposure 0.0 (locked down) .. 10.0 (unprotected); --threshold counts tenths, so 30 = 3.0.
    systemd-analyze security --offline=yes --threshold=30 --no-pager "$tmp"/*.service | grep -F 'Overall exposure'
)
run_step "systemd units" systemd_units

trap - EXIT
summary=$(printf '%s, ' "${passed[@]}")
printf '\ntest.sh: OK: %d steps passed in %ds: %s\n' "${#passed[@]}" "$((SECONDS - started))" "${summary%, }"
# The test count, in the plain form CI reads ("N passed, N failed").
# Reaching this line means none failed.
if [[ -f target/nextest.log ]] && ran=$(grep -oE 'run: [0-9]+ passed' target/nextest.log | grep -oE '[0-9]+' | tail -n 1); then
    printf 'tests: %d passed, 0 failed\n' "$ran"
fi
