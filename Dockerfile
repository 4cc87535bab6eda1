# Images of mcp-local-provider: one build, three targets.
#   docker build --target gateway      -t mcp-local-provider/gateway:local .
#   docker build --target bridge-agent -t mcp-local-provider/bridge-agent:local .
#   docker build --target mcp-bridge   -t mcp-local-provider/mcp-bridge:local .
# (`docker compose build` builds them, with the tags compose.yaml runs.)
#
# The runtime images are FROM scratch: the one binary, the shared libraries it loads (collected
# with ldd by deploy/docker/rootfs.sh), /etc/passwd naming the unprivileged user 10001, and
# nothing else: no shell, no package manager. The HEALTHCHECK is the binary's own `healthcheck`
# subcommand. Give `docker run` a stop timeout above LOCAL_PROVIDER_SHUTDOWN_GRACE
# (`--stop-timeout 20`); compose.yaml sets stop_grace_period.

ARG RUST_IMAGE=rust:1-slim-bookworm

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway -p bridge-agent -p mcp-bridge \
    && deploy/docker/rootfs.sh /out target/release/gateway target/release/bridge-agent \
        target/release/mcp-bridge

# ---- runtime stages ----
# scripts/build-test-images.sh builds everything from this line on, unchanged, after a `builder`
# stage holding the same /out layout made from binaries built on the test machine.

FROM scratch AS runtime
COPY --from=builder /out/rootfs/ /
COPY --from=builder --chown=10001:10001 /out/data/run/ /run/mcp-local-provider/
COPY --from=builder --chown=10001:10001 /out/data/log/ /var/log/mcp-local-provider/
# Inside a container both services listen on all of its addresses; publish only on 127.0.0.1
# (compose.yaml: "127.0.0.1:8788:8788").
ENV PATH=/usr/local/bin \
    LOCAL_PROVIDER_ALLOW_NON_LOOPBACK=true \
    LOCAL_PROVIDER_BRIDGE_SOCKET=/run/mcp-local-provider/bridge.sock
USER 10001:10001
STOPSIGNAL SIGTERM

FROM runtime AS bridge-agent
COPY --from=builder /out/bin/bridge-agent /usr/local/bin/bridge-agent
ENV LOCAL_PROVIDER_BRIDGE_AGENT_HOST=0.0.0.0 \
    LOCAL_PROVIDER_BRIDGE_AGENT_PORT=8789
EXPOSE 8789
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/bridge-agent", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/bridge-agent"]

FROM runtime AS gateway
COPY --from=builder /out/bin/gateway /usr/local/bin/gateway
ENV LOCAL_PROVIDER_HOST=0.0.0.0 \
    LOCAL_PROVIDER_PORT=8788 \
    LOCAL_PROVIDER_AUDIT_LOG=/var/log/mcp-local-provider/security_audit.log
EXPOSE 8788
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/gateway", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gateway"]

# The Cursor-facing peer, for the compose profile `team` (the request queue on Redis, several
# mcp-bridges); a single user runs it on the host beside Cursor instead (docs/operations.md).
FROM runtime AS mcp-bridge
COPY --from=builder /out/bin/mcp-bridge /usr/local/bin/mcp-bridge
ENV LOCAL_PROVIDER_MCP_BRIDGE_HOST=0.0.0.0 \
    LOCAL_PROVIDER_MCP_BRIDGE_PORT=8787 \
    LOCAL_PROVIDER_MCP_BRIDGE_AUDIT_LOG=/var/log/mcp-local-provider/mcp_bridge_audit.log
EXPOSE 8787
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/mcp-bridge", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/mcp-bridge"]
