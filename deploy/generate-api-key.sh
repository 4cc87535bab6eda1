#!/usr/bin/env bash
# Prints a new API key (64+ characters) on stdout, nothing else, so it can be redirected:
#   (umask 077; deploy/generate-api-key.sh > /etc/mcp-local-provider/api_key)
# Prefers the gateway's own generator (`gateway generate-api-key`) from target/release, then
# target/debug, then PATH; otherwise falls back to openssl, then /dev/urandom.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
min_len=64

die() { printf 'generate-api-key: ERROR: %s\n' "$*" >&2; exit 1; }

# A key is only accepted if it is long enough and made of characters safe in a header and a
# shell variable.
valid() { [[ ${#1} -ge $min_len && $1 =~ ^[A-Za-z0-9._~-]+$ ]]; }

key=
for gw in "$repo/target/release/gateway" "$repo/target/debug/gateway" "$(command -v gateway || true)"; do
    [[ -n $gw && -x $gw ]] || continue
    if candidate=$("$gw" generate-api-key 2>/dev/null) && valid "$candidate"; then
        key=$candidate
        break
    fi
done

# Fallbacks: 96 random bytes give 128 base64 characters; dropping '+', '/', '=' still leaves
# far more than 64 (and about 5.9 bits of entropy per remaining character).
if [[ -z $key ]] && command -v openssl >/dev/null 2>&1; then
    key=$(openssl rand -base64 96 | tr -d '\n=+/')
fi
if [[ -z $key ]] && [[ -r /dev/urandom ]]; then
    key=$(head -c 96 /dev/urandom | base64 | tr -d '\n=+/')
fi

valid "$key" || die "could not generate a key of at least $min_len characters (no gateway binary, openssl or /dev/urandom)"
printf '%s\n' "$key"
