#!/usr/bin/env python3
"""How long a request waits when the agent it was going to, or was with, dies.

Starts mcp-bridge, bridge-agent and the gateway from target/<profile>/ on free ports and plays the
agents with the official `mcp` client (one live agent in this process, and doomed ones as child
processes of this script), the editor with plain HTTP. For SIGKILL and SIGTERM, `runs` times each:

- held: a doomed agent takes a request and is killed before answering; measured from the kill
  to the request reaching the live agent (which then answers it).
- poll: a doomed agent waits in `wait_for_request` ahead of the live one and is killed; measured
  from the kill to mcp-bridge dropping its poll, and from the next chat being sent to it reaching
  the live agent.

Usage: .venv/bin/python bench/agent_death.py [release|debug] [runs]. Prints one JSON object with
every figure in milliseconds. Needs the `mcp` package (`scripts/setup-test-deps.sh` makes .venv).
"""
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from procs import Services, free_port, wait

KEY = "bench-key-0123456789abcdef0123456789abcdef"


def get_json(url: str) -> dict:
    return json.load(urllib.request.urlopen(url, timeout=2))


async def call(agent, tool: str, args: dict) -> dict:
    result = await agent.call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


async def take(agent) -> dict:
    while True:
        got = await call(agent, "wait_for_request", {"timeout_seconds": 60})
        if got["status"] == "request":
            return got


async def doomed(url: str, mode: str) -> None:
    """A child process: polls once (`poll`) or until handed a request (`held`), and never answers."""
    async with Client(streamable_http_client(url), mode="legacy") as agent:
        print(json.dumps({"polling": True}), flush=True)
        while True:
            got = await call(agent, "wait_for_request", {"timeout_seconds": 120})
            print(json.dumps({"got": got["status"]}), flush=True)
            if mode == "poll" or got["status"] == "request":
                break
        await asyncio.sleep(3600)


def chat(gw_port: int, text: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw_port}/v1/chat/completions", method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        data=json.dumps({"model": "cursor-agent-local",
                         "messages": [{"role": "user", "content": text}]}).encode())
    return json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["message"]["content"]


def in_background(fn, *args):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn(*args)), daemon=True)
    thread.start()
    return thread, out


def summary(values: list) -> dict:
    ms = [round(v * 1000, 1) for v in values]
    return {"median": round(statistics.median(ms), 1), "min": min(ms), "max": max(ms), "runs": ms}


async def measure(url: str, health: str, gw_port: int, runs: int) -> dict:
    def polls() -> int:
        return get_json(health)["waiting_polls"]

    def spawn(mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, "--doomed", url, mode],
                                stdout=subprocess.PIPE, text=True)

    figures = {}
    async with Client(streamable_http_client(url), mode="legacy") as live:
        # One chat first: the gateway loads its tokenizer on first use, which is not measured.
        thread, out = in_background(chat, gw_port, "warm up")
        got = await take(live)
        await call(live, "submit_response", {"request_id": got["request_id"],
                                             "lease_id": got["lease_id"], "content": "ok"})
        thread.join()
        for how in ("SIGKILL", "SIGTERM"):
            held, gone, reach = [], [], []
            for k in range(runs):
                # A request held by an agent that dies.
                agent = spawn("held")
                assert json.loads(agent.stdout.readline()) == {"polling": True}
                wait(lambda: polls() == 1, "the doomed agent polling")
                thread, out = in_background(chat, gw_port, f"held {how} {k}")
                assert json.loads(agent.stdout.readline()) == {"got": "request"}
                poll = asyncio.create_task(take(live))
                await asyncio.to_thread(wait, lambda: polls() == 1, "the live agent polling")
                os.kill(agent.pid, getattr(signal, how))
                died = time.monotonic()
                got = await poll
                held.append(time.monotonic() - died)
                await call(live, "submit_response", {"request_id": got["request_id"],
                                                     "lease_id": got["lease_id"], "content": "ok"})
                await asyncio.to_thread(thread.join)
                assert out["value"] == "ok" and got["attempt"] == 2, (out, got)
                agent.wait(timeout=10)

                # A poll whose agent dies ahead of the live one.
                agent = spawn("poll")
                assert json.loads(agent.stdout.readline()) == {"polling": True}
                wait(lambda: polls() == 1, "the doomed agent polling")
                poll = asyncio.create_task(take(live))
                await asyncio.to_thread(wait, lambda: polls() == 2, "the live agent polling")
                os.kill(agent.pid, getattr(signal, how))
                died = time.monotonic()
                await asyncio.to_thread(wait, lambda: polls() == 1, "the dead poll dropped")
                gone.append(time.monotonic() - died)
                sent = time.monotonic()
                thread, out = in_background(chat, gw_port, f"poll {how} {k}")
                got = await poll
                reach.append(time.monotonic() - sent)
                await call(live, "submit_response", {"request_id": got["request_id"],
                                                     "lease_id": got["lease_id"], "content": "ok"})
                await asyncio.to_thread(thread.join)
                assert out["value"] == "ok" and got["attempt"] == 1, (out, got)
                agent.wait(timeout=10)
            figures[how] = {
                "held_request_to_next_agent_ms": summary(held),
                "dead_poll_dropped_ms": summary(gone),
                "next_chat_to_live_agent_ms": summary(reach),
            }
    return figures


def main() -> None:
    if sys.argv[1:2] == ["--doomed"]:
        asyncio.run(doomed(sys.argv[2], sys.argv[3]))
        return
    profile = sys.argv[1] if len(sys.argv) > 1 else "release"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    mb_port, gw_port, agent_port = free_port(), free_port(), free_port()
    with Services(profile, "agent-death-") as services:
        sock = os.path.join(services.tmp, "bridge.sock")
        services.start("mcp-bridge", {"LOCAL_PROVIDER_MCP_BRIDGE_PORT": str(mb_port),
                                      "LOCAL_PROVIDER_MCP_ALLOW_NO_TOKEN": "true",
                                      "LOCAL_PROVIDER_MCP_BRIDGE_AUDIT_LOG": "off"})
        services.start("bridge-agent", {"LOCAL_PROVIDER_MCP_BRIDGE_URL": f"ws://127.0.0.1:{mb_port}",
                                        "LOCAL_PROVIDER_BRIDGE_SOCKET": sock,
                                        "LOCAL_PROVIDER_BRIDGE_AGENT_PORT": str(agent_port)})
        services.start("gateway", {"LOCAL_PROVIDER_PORT": str(gw_port), "LOCAL_PROVIDER_API_KEY": KEY,
                                   "LOCAL_PROVIDER_BRIDGE_SOCKET": sock,
                                   "LOCAL_PROVIDER_AUDIT_LOG": "off",
                                   "LOCAL_PROVIDER_RATE_LIMIT_RPM": "100000",
                                   "LOCAL_PROVIDER_RATE_LIMIT_BURST": "100000"})
        wait(lambda: get_json(f"http://127.0.0.1:{gw_port}/health")["status"] == "healthy",
             "a healthy gateway")
        health = f"http://127.0.0.1:{mb_port}/health"
        figures = asyncio.run(measure(f"http://127.0.0.1:{mb_port}/mcp", health, gw_port, runs))
        lease = get_json(health)["lease_timeout_seconds"]
        print(json.dumps({"profile": profile, "lease_timeout_s": lease, **figures}))


if __name__ == "__main__":
    main()
