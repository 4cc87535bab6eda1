#!/usr/bin/env bash
# Starts mcp-local-provider on this machine, in the foreground, supervised:
#   - builds the three service binaries, release (not the test or bench crates);
#   - on first run creates the API key, an admin token, the bridge token (bridge-agent's
#     WebSocket to mcp-bridge) and the MCP token (/mcp) with mode 0600 under
#     ${LOCAL_PROVIDER_HOME:-~/.config/mcp-local-provider}; they are never printed unless asked;
#   - loads .env from the repository root (variables already set in the shell win);
#   - runs mcp-bridge (the Cursor-facing MCP server on :8787), bridge-agent and gateway,
#     restarting whichever exits (crash-only services: bridge-agent exits non-zero by design
#     when the MCP bridge on :8787 stays unreachable);
#   - on Ctrl-C / SIGTERM stops them gracefully: SIGTERM, a grace period, then SIGKILL.
#
# Usage: scripts/start.sh [--no-build] [--print-key] [--help]
#   --no-build   use the binaries already in target/release
#   --print-key  print the API key (creating it if needed) and exit without starting anything
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

say() { printf '%s\n' "$*"; }
log() {
    local line
    line="$(date '+%Y-%m-%dT%H:%M:%S') start.sh: $*"
    printf '%s\n' "$line" >&2
    if [[ -n ${supervisor_log:-} ]]; then printf '%s\n' "$line" >>"$supervisor_log" 2>/dev/null || true; fi
}
die() { printf 'start.sh: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

build=true
print_key=false
while (($# > 0)); do
    case $1 in
    --no-build) build=false ;;
    --print-key) print_key=true ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

# --- configuration -----------------------------------------------------------------------------
# .env fills in what the shell does not set: remember the caller's LOCAL_PROVIDER_* values, load
# .env (exporting everything in it), then put the caller's values back on top.
saved=()
while IFS= read -r name; do
    case $name in LOCAL_PROVIDER_*) saved+=("$name=${!name}") ;; esac
done < <(compgen -e)
if [[ -f .env ]]; then
    set -a
    # shellcheck source=/dev/null
    . ./.env
    set +a
fi
for kv in ${saved[@]+"${saved[@]}"}; do export "${kv?}"; done

home_dir=${LOCAL_PROVIDER_HOME:-${HOME:?HOME is not set; set LOCAL_PROVIDER_HOME}/.config/mcp-local-provider}
logs_dir=$home_dir/logs
# Private to the user when we create it (it holds the key); an existing directory is left as is.
if [[ ! -d $home_dir ]]; then
    mkdir -p -- "$home_dir"
    chmod 700 -- "$home_dir"
fi
mkdir -p -- "$logs_dir"

bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release

# Writes a fresh secret from `gateway generate-api-key` to $1 with mode 0600, atomically.
new_secret() {
    local dest=$1 secret tmp
    [[ -x $bin_dir/gateway ]] || die "$bin_dir/gateway not found; run without --no-build"
    secret=$("$bin_dir/gateway" generate-api-key) \
        || die "'gateway generate-api-key' failed"
    secret=${secret//[[:space:]]/}
    ((${#secret} >= 64)) || die "'gateway generate-api-key' printed ${#secret} characters; 64 or more expected"
    tmp=$(mktemp "$dest.XXXXXX") # mktemp creates the file with mode 0600
    printf '%s' "$secret" >"$tmp"
    chmod 600 -- "$tmp"
    mv -f -- "$tmp" "$dest"
}

# --print-key needs no build when the key already exists.
if $print_key && [[ -z ${LOCAL_PROVIDER_API_KEY:-}${LOCAL_PROVIDER_API_KEY_SHA256:-} ]]; then
    existing=${LOCAL_PROVIDER_API_KEY_FILE:-$home_dir/api_key}
    if [[ -s $existing ]]; then
        cat -- "$existing"
        printf '\n'
        exit 0
    fi
fi

if $build; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install the Rust toolchain (rustup) first"
    log "building the release binaries of gateway, bridge-agent and mcp-bridge (the first build takes a few minutes)"
    # Only the three services: the test crates (containers, Docker API) would double the build.
    cargo build --release --locked -p gateway -p bridge-agent -p mcp-bridge --bins
fi
for bin in gateway bridge-agent mcp-bridge; do
    [[ -x $bin_dir/$bin ]] || die "$bin_dir/$bin not found after the build"
done

# API key: the caller's own (API_KEY / API_KEY_SHA256 / API_KEY_FILE) wins; otherwise a key
# file created once and handed to the gateway by path, so the key never sits in any environment.
key_file=
if [[ -z ${LOCAL_PROVIDER_API_KEY:-}${LOCAL_PROVIDER_API_KEY_SHA256:-}${LOCAL_PROVIDER_API_KEY_FILE:-} ]]; then
    key_file=$home_dir/api_key
    if [[ ! -s $key_file ]]; then
        new_secret "$key_file"
        log "created a new API key in $key_file"
    fi
    chmod 600 -- "$key_file"
    export LOCAL_PROVIDER_API_KEY_FILE=$key_file
elif [[ -n ${LOCAL_PROVIDER_API_KEY_FILE:-} ]]; then
    key_file=$LOCAL_PROVIDER_API_KEY_FILE
    [[ -r $key_file ]] || die "LOCAL_PROVIDER_API_KEY_FILE=$key_file is not readable"
fi

if $print_key; then
    [[ -n $key_file ]] || die "the API key comes from LOCAL_PROVIDER_API_KEY or _SHA256, not from a file"
    cat -- "$key_file"
    printf '\n'
    exit 0
fi

# Admin token for /admin/* (incident response: POST /admin/revoke_all_sessions). The gateway
# reads it only from the environment, so it is exported to the services, never printed.
admin_file=
if [[ -z ${LOCAL_PROVIDER_ADMIN_TOKEN:-} ]]; then
    admin_file=$home_dir/admin_token
    if [[ ! -s $admin_file ]]; then
        new_secret "$admin_file"
        log "created a new admin token in $admin_file"
    fi
    chmod 600 -- "$admin_file"
    LOCAL_PROVIDER_ADMIN_TOKEN=$(<"$admin_file")
    export LOCAL_PROVIDER_ADMIN_TOKEN
fi

# The agent side's two doors: bridge-agent's WebSocket to mcp-bridge (bridge_token, used by both)
# and MCP clients on /mcp (mcp_http_token, used by mcp-bridge and `mcp-bridge --stdio`). Created
# once and handed over by path, never printed; the caller's own token or file wins. With
# LOCAL_PROVIDER_MCP_ALLOW_NO_TOKEN=true none is made and mcp-bridge serves without (warning).
# Sets $1_FILE to a token file unless $1 or $1_FILE is given; prints the file used.
agent_side_token() {
    local var=$1 name=$2 file_var="$1_FILE" file
    if [[ -n ${!var:-} ]]; then
        return 0
    fi
    if [[ -n ${!file_var:-} ]]; then
        [[ -r ${!file_var} ]] || die "$file_var=${!file_var} is not readable"
        printf '%s' "${!file_var}"
        return 0
    fi
    file=$home_dir/$name
    if [[ ! -s $file ]]; then
        new_secret "$file"
        log "created a new ${name//_/ } in $file"
    fi
    chmod 600 -- "$file"
    printf '%s' "$file"
}
bridge_token_file='' mcp_token_file=''
case ${LOCAL_PROVIDER_MCP_ALLOW_NO_TOKEN:-false} in
1 | [Tt]rue | [Yy]es | [Oo]n) log "LOCAL_PROVIDER_MCP_ALLOW_NO_TOKEN is set: no token is made for mcp-bridge" ;;
*)
    bridge_token_file=$(agent_side_token LOCAL_PROVIDER_MCP_BRIDGE_TOKEN bridge_token)
    mcp_token_file=$(agent_side_token LOCAL_PROVIDER_MCP_HTTP_TOKEN mcp_http_token)
    if [[ -n $bridge_token_file ]]; then export LOCAL_PROVIDER_MCP_BRIDGE_TOKEN_FILE=$bridge_token_file; fi
    if [[ -n $mcp_token_file ]]; then export LOCAL_PROVIDER_MCP_HTTP_TOKEN_FILE=$mcp_token_file; fi
    ;;
esac

export LOCAL_PROVIDER_AUDIT_LOG=${LOCAL_PROVIDER_AUDIT_LOG:-$logs_dir/security_audit.log}
mkdir -p -- "$(dirname -- "$LOCAL_PROVIDER_AUDIT_LOG")"
export LOCAL_PROVIDER_MCP_BRIDGE_AUDIT_LOG=${LOCAL_PROVIDER_MCP_BRIDGE_AUDIT_LOG:-$logs_dir/mcp_bridge_audit.log}

# The socket lives in a private runtime directory: $XDG_RUNTIME_DIR when the session has one
# (tmpfs, per user), else under the home directory.
if [[ -n ${XDG_RUNTIME_DIR:-} && -d ${XDG_RUNTIME_DIR:-} ]]; then
    runtime_dir=$XDG_RUNTIME_DIR/mcp-local-provider
else
    runtime_dir=$home_dir/run
fi
if [[ -z ${LOCAL_PROVIDER_BRIDGE_SOCKET:-} ]]; then
    # Our own directory: only this user may reach the socket.
    mkdir -p -- "$runtime_dir"
    chmod 700 -- "$runtime_dir"
    export LOCAL_PROVIDER_BRIDGE_SOCKET=$runtime_dir/bridge.sock
fi
# Unix socket paths are limited to about 104 bytes (macOS) / 108 (Linux).
((${#LOCAL_PROVIDER_BRIDGE_SOCKET} <= 100)) \
    || die "socket path too long (${#LOCAL_PROVIDER_BRIDGE_SOCKET} bytes): $LOCAL_PROVIDER_BRIDGE_SOCKET; set LOCAL_PROVIDER_BRIDGE_SOCKET to a shorter path"
mkdir -p -- "$(dirname -- "$LOCAL_PROVIDER_BRIDGE_SOCKET")"

host=${LOCAL_PROVIDER_HOST:-127.0.0.1}
port=${LOCAL_PROVIDER_PORT:-8788}
case $host in
0.0.0.0 | "") url_host=127.0.0.1 ;;
:: | "[::]") url_host="[::1]" ;;
*:*) url_host=${host#[} && url_host="[${url_host%]}]" ;;
*) url_host=$host ;;
esac
agent_port=${LOCAL_PROVIDER_BRIDGE_AGENT_PORT:-8789}
mcp_port=${LOCAL_PROVIDER_MCP_BRIDGE_PORT:-8787}

# A busy port means another gateway (or something else) is there; starting would only crash-loop.
if (exec 3<>"/dev/tcp/${url_host//[\[\]]/}/$port") 2>/dev/null; then
    die "something already listens on $url_host:$port; stop it or set LOCAL_PROVIDER_PORT"
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$mcp_port") 2>/dev/null; then
    die "something already listens on 127.0.0.1:$mcp_port (an MCP bridge?); stop it or set LOCAL_PROVIDER_MCP_BRIDGE_PORT and LOCAL_PROVIDER_MCP_BRIDGE_URL"
fi

# One supervisor at a time: a second one would fight the first over the port and the socket.
supervisor_pidfile=$home_dir/supervisor.pid
if [[ -s $supervisor_pidfile ]] && kill -0 "$(<"$supervisor_pidfile")" 2>/dev/null; then
    die "already running (supervisor pid $(<"$supervisor_pidfile")); stop it with Ctrl-C or: kill $(<"$supervisor_pidfile")"
fi
printf '%s\n' "$$" >"$supervisor_pidfile"
supervisor_log=$logs_dir/supervisor.log

# --- supervisor ---------------------------------------------------------------------------------
# One line per service; they start in this order and stop in reverse (the gateway drains its
# streams while bridge-agent is still there to finish them).
names=() cmds=() pids=() next_start=() backoff=() started_at=()
service() {
    local name=$1
    shift
    names+=("$name")
    cmds+=("$(printf '%q ' "$@")")
    pids+=("")
    next_start+=(0)
    backoff+=(1)
    started_at+=(0)
}
service mcp-bridge "$bin_dir/mcp-bridge"
service bridge-agent "$bin_dir/bridge-agent"
service gateway "$bin_dir/gateway"

max_backoff=10     # seconds; doubles per quick exit (1, 2, 4, 8, 10, ...)
stable_after=60    # a service that ran this long restarts after the shortest back-off again
grace=${LOCAL_PROVIDER_SHUTDOWN_GRACE:-10}
grace=${grace%%.*}
grace=$((${grace:-0} + 5)) # the services' own drain time, plus a margin before SIGKILL
max_log_bytes=$((10 * 1024 * 1024))
setsid=$(command -v setsid || true) # util-linux; absent on macOS, where trap '' INT must do

# Output goes to the terminal, prefixed with the service name, and to logs/<name>.log. The
# logging pipeline ignores INT, TERM and HUP (it ends at EOF, when its service exits) so that
# no signal cuts off the services' last words.
start_service() {
    local i=$1 name=${names[$1]} logfile
    logfile=$logs_dir/${names[$1]}.log
    if [[ -f $logfile ]] && (($(wc -c <"$logfile") > max_log_bytes)); then
        mv -f -- "$logfile" "$logfile.1"
    fi
    # LOCAL_PROVIDER_HOME is this script's setting; the services would report it as unknown.
    # Each service gets its own session (setsid, which keeps the pid here because the child is
    # no group leader), so Ctrl-C in the terminal reaches only this script, and the services
    # stop in order: gateway first, draining its streams while bridge-agent still serves them.
    (
        unset LOCAL_PROVIDER_HOME
        trap '' INT
        if [[ -n $setsid ]]; then
            eval "exec setsid ${cmds[$i]}"
        else
            eval "exec ${cmds[$i]}"
        fi
    ) > >(
        trap '' INT TERM HUP
        # bash's read takes a pipe byte by byte, so lines show up at once (awk would buffer).
        tee -a "$logfile" | while IFS= read -r line || [[ -n $line ]]; do
            printf '[%s] %s\n' "$name" "$line"
        done
    ) 2>&1 &
    pids[i]=$!
    started_at[i]=$SECONDS
    log "started $name (pid ${pids[i]})"
}

stopping=false
force=false

# shellcheck disable=SC2317  # reached through the EXIT trap only
stop_all() {
    local j pid deadline
    trap 'force=true; log "second signal: killing now"' INT TERM HUP
    for ((j = ${#names[@]} - 1; j >= 0; j--)); do
        pid=${pids[j]}
        [[ -n $pid ]] || continue
        log "stopping ${names[j]} (pid $pid, SIGTERM, up to ${grace}s)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + grace))
        while kill -0 "$pid" 2>/dev/null && ! $force && ((SECONDS < deadline)); do
            # A signal may kill this sleep; that must not end the shutdown (set -e).
            sleep 0.2 || true
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "${names[j]} still running; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        pids[j]=""
    done
}

# shellcheck disable=SC2317  # reached through the EXIT trap only
cleanup() {
    # Best effort from here on: one failing command must not leave a service running.
    set +e
    stop_all
    rm -f -- "$supervisor_pidfile"
}
trap cleanup EXIT
trap 'stopping=true' INT TERM HUP

scheme_url="http://$url_host:$port"
say ""
say "mcp-local-provider: starting mcp-bridge, bridge-agent and gateway (Ctrl-C stops them)"
say "  Base URL    $scheme_url/v1"
say "  Model       ${LOCAL_PROVIDER_MODEL_NAME:-cursor-agent-local}"
say "  Health      $scheme_url/health"
say "  Metrics     $scheme_url/metrics  and  http://${LOCAL_PROVIDER_BRIDGE_AGENT_HOST:-127.0.0.1}:$agent_port/metrics"
if [[ -n $key_file ]]; then
    say "  API key     read it with: cat $(printf '%q' "$key_file")"
else
    say "  API key     from LOCAL_PROVIDER_API_KEY${LOCAL_PROVIDER_API_KEY_SHA256:+_SHA256} (your setting)"
fi
if [[ -n $admin_file ]]; then
    say "  Admin token read it with: cat $(printf '%q' "$admin_file")"
fi
say "  Audit log   $LOCAL_PROVIDER_AUDIT_LOG"
say "  Logs        $logs_dir/"
say "  MCP bridge  ${LOCAL_PROVIDER_MCP_BRIDGE_URL:-ws://127.0.0.1:8787} (bridge-agent restarts until it is reachable)"
say "  Cursor MCP  http://127.0.0.1:$mcp_port/mcp  (or: $bin_dir/mcp-bridge --stdio); health http://127.0.0.1:$mcp_port/health"
if [[ -n $mcp_token_file ]]; then
    say "  MCP token   $(printf '%q' "$mcp_token_file") (stdio: LOCAL_PROVIDER_MCP_HTTP_TOKEN_FILE=that path; see docs/clients.md, Connect Cursor)"
fi
if [[ -n $bridge_token_file ]]; then
    say "  Bridge token $(printf '%q' "$bridge_token_file") (bridge-agent and mcp-bridge)"
fi
say "  MCP audit   $LOCAL_PROVIDER_MCP_BRIDGE_AUDIT_LOG"
say ""

while ! $stopping; do
    for i in "${!names[@]}"; do
        pid=${pids[i]}
        if [[ -n $pid ]]; then
            kill -0 "$pid" 2>/dev/null && continue
            rc=0
            wait "$pid" || rc=$?
            pids[i]=""
            ran=$((SECONDS - started_at[i]))
            ((ran < stable_after)) || backoff[i]=1
            if [[ ${names[i]} == bridge-agent && $rc -ne 0 ]]; then
                why=" (expected while the MCP bridge is unreachable)"
            else
                why=""
            fi
            log "${names[i]} exited with status $rc after ${ran}s$why; restarting in ${backoff[i]}s"
            next_start[i]=$((SECONDS + backoff[i]))
            backoff[i]=$((backoff[i] * 2 > max_backoff ? max_backoff : backoff[i] * 2))
        elif ((SECONDS >= next_start[i])); then
            start_service "$i"
        fi
    done
    # Sleeping in the background lets a trapped signal interrupt the wait at once.
    sleep 1 &
    wait $! 2>/dev/null || true
done

log "shutting down"
# The EXIT trap stops the services.
exit 0
