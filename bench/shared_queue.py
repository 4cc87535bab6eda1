"""Benchmark (not a test): the request queue in memory and on Redis, side by side.

1. Hand-off: non-streamed chats one after another through the release binaries (gateway ->
   bridge-agent -> mcp-bridge A), answered by an agent written with the official `mcp` package
   (tests/python_mcp/queue_agent.py) that is already polling: on mcp-bridge A itself with the memory
   queue, on a second mcp-bridge B with the Redis queue. The hand-off is mcp-bridge's own
   `mcp_bridge_agent_wait_seconds` (from the moment the request reached the mcp-bridge that queued
   it to the moment a waiting poll was handed it); the chat's whole time is measured by the client.
2. Redis memory per 1,000 queued requests: with no agent, requests queue up in Redis; `used_memory`
   before and after.

Needs redis-server (scripts/setup-test-deps.sh) and the test venv (.venv). Usage:
    .venv/bin/python bench/shared_queue.py [--chats N] [--queued M]
"""
import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "target" / "release"
KEY = "sk-bench-0123456789abcdef0123456789abcdef"
BRIDGE_TOKEN = "bridge-token-0123456789abcdef"
MCP_TOKEN = "mcp-token-0123456789abcdef"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except (httpx.HTTPError, OSError, ValueError, subprocess.CalledProcessError):
            pass
        time.sleep(0.05)
    sys.exit(f"shared_queue: timed out waiting for {what}")


class Chain:
    """Redis (redis mode), mcp-bridges, bridge-agent and gateway on free ports."""

    def __init__(self, queue: str, bridges: int):
        self.dir = Path(tempfile.mkdtemp(prefix="shared-queue-"))
        self.procs = []
        for name, secret in [("bt", BRIDGE_TOKEN), ("mt", MCP_TOKEN)]:
            path = self.dir / name
            path.write_text(secret + "\n")
            path.chmod(0o600)
        env = {"LOCAL_PROVIDER_MCP_BRIDGE_TOKEN_FILE": str(self.dir / "bt"),
               "LOCAL_PROVIDER_MCP_HTTP_TOKEN_FILE": str(self.dir / "mt"),
               "LOCAL_PROVIDER_MCP_BRIDGE_AUDIT_LOG": "off", "LOCAL_PROVIDER_LOG_LEVEL": "warn"}
        self.redis_port = None
        if queue == "redis":
            self.redis_port = free_port()
            self.spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(self.dir)], {})
            wait("redis", lambda: self.redis("PING") == "PONG")
            env.update({"LOCAL_PROVIDER_QUEUE": "redis",
                        "LOCAL_PROVIDER_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                        "LOCAL_PROVIDER_STORE_TIMEOUT": "2"})
        self.bridges = []
        for i in range(bridges):
            port = free_port()
            self.spawn(f"mcp-bridge-{i}", [str(BIN / "mcp-bridge")],
                       dict(env, LOCAL_PROVIDER_MCP_BRIDGE_PORT=str(port)))
            self.bridges.append(port)
        socket_path = self.dir / "bridge.sock"
        self.spawn("bridge-agent", [str(BIN / "bridge-agent")], {
            "LOCAL_PROVIDER_MCP_BRIDGE_URL": f"ws://127.0.0.1:{self.bridges[0]}",
            "LOCAL_PROVIDER_MCP_BRIDGE_TOKEN_FILE": str(self.dir / "bt"),
            "LOCAL_PROVIDER_BRIDGE_SOCKET": str(socket_path),
            "LOCAL_PROVIDER_BRIDGE_AGENT_PORT": str(free_port()),
            "LOCAL_PROVIDER_LOG_LEVEL": "warn"})
        self.gateway = free_port()
        self.spawn("gateway", [str(BIN / "gateway")], {
            "LOCAL_PROVIDER_API_KEY": KEY, "LOCAL_PROVIDER_BRIDGE_SOCKET": str(socket_path),
            "LOCAL_PROVIDER_PORT": str(self.gateway), "LOCAL_PROVIDER_AUDIT_LOG": "off",
            "LOCAL_PROVIDER_LOG_LEVEL": "warn", "LOCAL_PROVIDER_RATE_LIMIT_RPM": "1000000",
            "LOCAL_PROVIDER_RATE_LIMIT_BURST": "1000000", "LOCAL_PROVIDER_RATE_LIMIT_TPM": "1000000000",
            "LOCAL_PROVIDER_MAX_CONCURRENT_REQUESTS": "5000"})
        wait("the gateway", lambda: httpx.get(self.url("/health")).json()["status"] == "healthy")

    def spawn(self, name, argv, env):
        log = open(self.dir / f"{name}.log", "w")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LOCAL_PROVIDER_")}
        self.procs.append(subprocess.Popen(argv, env=dict(clean, **env), stdout=log,
                                           stderr=subprocess.STDOUT, cwd=self.dir))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway}{path}"

    def bridge(self, i: int, path: str) -> str:
        return f"http://127.0.0.1:{self.bridges[i]}{path}"

    def redis(self, *args) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.redis_port), *args], check=True,
                              capture_output=True, text=True).stdout.strip()

    def agent(self, i: int):
        env = dict(os.environ, MB_MCP_URL=self.bridge(i, "/mcp"), MB_MCP_TOKEN=MCP_TOKEN)
        self.procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "tests/python_mcp/queue_agent.py"), "--name", "bench",
             "--log", str(self.dir / "agent.jsonl")], env=env))

    def stop(self):
        for p in reversed(self.procs):
            p.kill()
            p.wait()


def quantiles(metrics: str, name: str) -> dict:
    """A summary's quantiles, sum and count, from Prometheus text."""
    out = {}
    for line in metrics.splitlines():
        m = re.match(rf'{name}{{quantile="([0-9.]+)"}} (\S+)', line)
        if m:
            out[float(m.group(1))] = float(m.group(2))
        m = re.match(rf"{name}_(sum|count) (\S+)", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def handoff(queue: str, chats: int) -> dict:
    chain = Chain(queue, 2 if queue == "redis" else 1)
    try:
        on = 1 if queue == "redis" else 0
        chain.agent(on)
        wait("the agent polling",
             lambda: httpx.get(chain.bridge(0, "/health")).json()["waiting_polls"] >= 1)
        body = {"model": "cursor-agent", "messages": [{"role": "user", "content": "hi"}]}
        times = []
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
            for _ in range(chats):
                # The agent is polling again (it answered the last chat), as a serving agent is.
                wait("the agent polling again",
                     lambda: httpx.get(chain.bridge(on, "/health")).json()["waiting_polls"] >= 1)
                started = time.perf_counter()
                r = client.post(chain.url("/v1/chat/completions"), json=body)
                times.append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
        wait_s = quantiles(httpx.get(chain.bridge(on, "/metrics")).text,
                           "mcp_bridge_agent_wait_seconds")
        return {"queue": queue, "chats": chats,
                "handoff_ms": {str(q): round(v * 1000, 3) for q, v in wait_s.items()
                               if isinstance(q, float)},
                "handoff_mean_ms": round(wait_s["sum"] / wait_s["count"] * 1000, 3),
                "chat_p50_ms": round(statistics.median(times) * 1000, 2),
                "chat_p99_ms": round(sorted(times)[int(len(times) * 0.99) - 1] * 1000, 2)}
    finally:
        chain.stop()


async def flood(chain: Chain, n: int):
    body = {"model": "cursor-agent", "messages": [{"role": "user", "content": "queued " * 20}]}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits,
                                 headers={"Authorization": f"Bearer {KEY}"}) as client:
        tasks = [asyncio.create_task(client.post(chain.url("/v1/chat/completions"), json=body))
                 for _ in range(n)]
        await asyncio.sleep(0)
        return tasks


def redis_memory(queued: int) -> dict:
    chain = Chain("redis", 1)
    try:
        before = int(re.search(r"used_memory:(\d+)", chain.redis("INFO", "memory")).group(1))

        async def run():
            tasks = await flood(chain, queued)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                depth = httpx.get(chain.bridge(0, "/health")).json()["queue_depth"]
                if depth >= queued:
                    break
                await asyncio.sleep(0.2)
            after = int(re.search(r"used_memory:(\d+)", chain.redis("INFO", "memory")).group(1))
            for t in tasks:
                t.cancel()
            return depth, after

        depth, after = asyncio.run(run())
        return {"queued": depth, "used_memory_before": before, "used_memory_after": after,
                "bytes_per_request": round((after - before) / max(depth, 1)),
                "mib_per_1000": round((after - before) / max(depth, 1) * 1000 / 2**20, 2)}
    finally:
        chain.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--queued", type=int, default=1000)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "gateway", "-p", "bridge-agent",
                    "-p", "mcp-bridge", "--bins"], cwd=REPO, check=True)
    results = {"memory": handoff("memory", args.chats), "redis": handoff("redis", args.chats),
               "redis_memory": redis_memory(args.queued)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
