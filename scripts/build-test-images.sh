#!/usr/bin/env bash
# Builds the images the container tests run, from this machine's binaries and Debian's packages,
# with no registry (the engine here starts with no images and can pull none):
#   mcp-local-provider/gateway:TAG, mcp-local-provider/bridge-agent:TAG, mcp-local-provider/mcp-bridge:TAG
#       the Dockerfile's runtime stages, taken from it unchanged, after a `builder` stage holding
#       the release binaries built here (laid out by deploy/docker/rootfs.sh, as the real builder
#       stage does). Only the Dockerfile's own builder stage (rust image, cargo) goes untested.
#   mcp-local-provider/test-peer:TAG        the scripted bridge peer (tests/src/bin/scripted-peer.rs)
#   mcp-local-provider/test-redis:TAG       Debian's redis-server and redis-cli
#   mcp-local-provider/test-prometheus:TAG  Debian's prometheus, laid out as the official image
# Every image is FROM scratch: programs, their shared libraries (ldd), passwd/group.
# TAG is a hash of what goes into the image, so unchanged binaries skip the rebuild; all but the
# three newest tags of each image are removed. Safe to run concurrently (one build at a time,
# under a lock).
#
# Usage: scripts/build-test-images.sh [--no-cargo]
#   --no-cargo  use target/release and target/debug binaries as they are
# Prints NAME=IMAGE lines on stdout (GATEWAY_IMAGE, BRIDGE_AGENT_IMAGE, MCP_BRIDGE_IMAGE, PROVIDER_IMAGE_TAG,
# PEER_IMAGE, REDIS_IMAGE, PROMETHEUS_IMAGE), also written to target/test-images/images.env.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo"

log() { printf 'build-test-images: %s\n' "$*" >&2; }
die() { printf 'build-test-images: ERROR: %s\n' "$*" >&2; exit 1; }

cargo_build=true
case ${1:-} in
    "") ;;
    --no-cargo) cargo_build=false ;;
    *) die "unknown argument ${1}; usage: scripts/build-test-images.sh [--no-cargo]" ;;
esac

command -v docker >/dev/null 2>&1 || die "docker not found (Debian package docker.io)"
command -v flock >/dev/null 2>&1 || die "flock not found (Debian package util-linux)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (is the daemon running?)"

work=target/test-images
mkdir -p "$work"
exec 9>"$work/.lock"
flock 9

if $cargo_build; then
    # Cargo serialises with any other build of this target directory by itself.
    cargo build --release --locked -p gateway -p bridge-agent -p mcp-bridge >&2
    cargo build --locked -p integration-tests --bin scripted-peer >&2
fi

need() {
    [[ -x $1 ]] || die "$1 not found; $2"
}
need target/release/gateway "build it: cargo build --release -p gateway"
need target/release/bridge-agent "build it: cargo build --release -p bridge-agent"
need target/release/mcp-bridge "build it: cargo build --release -p mcp-bridge"
need target/debug/scripted-peer "build it: cargo build -p integration-tests --bin scripted-peer"
redis_server=$(command -v redis-server || true)
redis_cli=$(command -v redis-cli || true)
prometheus=$(command -v prometheus || true)
need "${redis_server:-redis-server}" "run scripts/setup-test-deps.sh (Debian package redis-server)"
need "${redis_cli:-redis-cli}" "run scripts/setup-test-deps.sh (Debian package redis-tools)"
need "${prometheus:-prometheus}" "run scripts/setup-test-deps.sh (Debian package prometheus)"

# A hash of the context: every path, mode and file content.
context_hash() (
    cd "$1"
    {
        find . -printf '%p %m %y\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
)

# build IMAGE CONTEXT [TARGET]: prints IMAGE:TAG; builds only when that tag is missing.
build() {
    local image=$1 ctx=$2 target=${3:-} tag
    tag=$(context_hash "$ctx")
    if ! docker image inspect "$image:$tag" >/dev/null 2>&1; then
        log "building $image:$tag"
        # Quiet unless it fails (the engine's legacy builder also warns about itself on stderr).
        if ! out=$(docker build --quiet ${target:+--target "$target"} \
            --label mcp-local-provider.test-image=1 -t "$image:$tag" "$ctx" 2>&1); then
            printf '%s\n' "$out" >&2
            die "docker build of $image failed (context $ctx)"
        fi
    fi
    # Older builds: keep the two newest besides this one (another checkout or developer on this
    # engine may be testing with them right now), remove the rest (one a container uses stays).
    docker image ls --format '{{.Repository}}:{{.Tag}}' "$image" | grep -vxF "$image:$tag" \
        | tail -n +3 | xargs -r docker image rm >/dev/null 2>&1 || true
    printf '%s:%s\n' "$image" "$tag"
}

# context NAME PROGRAM...: a fresh build context with rootfs.sh's layout under out/.
context() {
    local ctx=$work/$1
    shift
    rm -rf "$ctx"
    mkdir -p "$ctx"
    deploy/docker/rootfs.sh "$ctx/out" "$@" 2>/dev/null
    printf '%s\n' "$ctx"
}

# --- gateway and bridge-agent: the Dockerfile's runtime stages, verbatim ---
marker='# ---- runtime stages ----'
grep -qxF "$marker" Dockerfile || die "Dockerfile lacks the line '$marker' that starts its runtime stages"
ctx=$(context app target/release/gateway target/release/bridge-agent target/release/mcp-bridge)
{
    echo "# Generated by scripts/build-test-images.sh: a builder stage made from local binaries,"
    echo "# then the Dockerfile's runtime stages unchanged."
    echo "FROM scratch AS builder"
    echo "LABEL mcp-local-provider.test-builder=1"
    echo "COPY out/ /out/"
    sed -n "/^$marker\$/,\$p" Dockerfile
} >"$ctx/Dockerfile"
bridge_agent_image=$(build mcp-local-provider/bridge-agent "$ctx" bridge-agent)
gateway_image=$(build mcp-local-provider/gateway "$ctx" gateway)
mcp_bridge_image=$(build mcp-local-provider/mcp-bridge "$ctx" mcp-bridge)
# The legacy builder keeps the stand-in builder stage as an untagged image; it is not needed.
docker image prune --force --filter label=mcp-local-provider.test-builder=1 >/dev/null

# --- the scripted bridge peer ---
ctx=$(context peer target/debug/scripted-peer)
# A debug build: its debug info is most of its size and no use in the image.
if command -v strip >/dev/null 2>&1; then strip --strip-debug "$ctx/out/bin/scripted-peer"; fi
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY out/rootfs/ /
COPY out/bin/scripted-peer /usr/local/bin/scripted-peer
USER 10001:10001
EXPOSE 8787
ENTRYPOINT ["/usr/local/bin/scripted-peer"]
EOF
peer_image=$(build mcp-local-provider/test-peer "$ctx")

# --- Redis (compose.yaml's redis service runs `redis-server ...` as 999:999) ---
ctx=$(context redis "$redis_server" "$redis_cli")
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY out/rootfs/ /
COPY out/bin/redis-server out/bin/redis-cli /usr/local/bin/
COPY --chown=999:999 out/data/run/ /data/
ENV PATH=/usr/local/bin
WORKDIR /data
USER 999:999
EXPOSE 6379
CMD ["redis-server"]
EOF
redis_image=$(build mcp-local-provider/test-redis "$ctx")

# --- Prometheus, where the official image keeps it: /bin/prometheus, /prometheus, nobody ---
ctx=$(context prometheus "$prometheus")
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY out/rootfs/ /
COPY out/bin/prometheus /bin/prometheus
COPY --chown=65534:65534 out/data/run/ /prometheus/
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
prometheus_image=$(build mcp-local-provider/test-prometheus "$ctx")

{
    printf 'GATEWAY_IMAGE=%s\n' "$gateway_image"
    printf 'BRIDGE_AGENT_IMAGE=%s\n' "$bridge_agent_image"
    printf 'MCP_BRIDGE_IMAGE=%s\n' "$mcp_bridge_image"
    printf 'PROVIDER_IMAGE_TAG=%s\n' "${gateway_image##*:}"
    printf 'PEER_IMAGE=%s\n' "$peer_image"
    printf 'REDIS_IMAGE=%s\n' "$redis_image"
    printf 'PROMETHEUS_IMAGE=%s\n' "$prometheus_image"
} | tee "$work/images.env"
