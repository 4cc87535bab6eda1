"""The chaos test's half through mcp-bridge: twenty-five streamed chats answered in parts by agents
over MCP while bridge-agent is SIGKILLed and restarted twice. Every editor gets exactly the answer a
fault-free run gives (each chunk once, in order), and mcp-bridge answers each request once."""
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest

from conftest import agent_http, call, env, read_stream_as_void, status_until, user

pytestmark = pytest.mark.anyio

CHATS = 25
PARTS = [f"part {n} " for n in range(12)]
pool = ThreadPoolExecutor(max_workers=CHATS)


def ask_streamed(void, model, text):
    started = time.monotonic()
    stream = void.chat.completions.create(model=model, messages=user(text), stream=True)
    return read_stream_as_void(stream), time.monotonic() - started


async def serve(stop: anyio.Event):
    """One agent: takes requests and answers each in twelve parts, 150 ms apart."""
    async with agent_http() as agent:
        while not stop.is_set():
            got = await call(agent, "wait_for_request", {"timeout_seconds": 10})
            if got["status"] != "request":
                continue
            for i, text in enumerate(PARTS):
                await anyio.sleep(0.15)
                await call(agent, "submit_response", {"request_id": got["request_id"],
                                                      "lease_id": got["lease_id"], "content": text,
                                                      "done": i == len(PARTS) - 1})


def restart():
    agent_env = {**json.loads(env("AGENT_ENV")), "PATH": os.environ.get("PATH", "")}
    log = open(env("AGENT_LOG"), "ab")
    return subprocess.Popen([env("AGENT_BIN")], env=agent_env, stdout=log, stderr=log)


async def test_twenty_five_streams_through_two_bridge_agent_kills(void, model):
    stop = anyio.Event()
    agents = []
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(serve, stop)
        chats = [pool.submit(ask_streamed, void, model, f"chat {k}") for k in range(CHATS)]
        pid = int(env("AGENT_PID"))
        try:
            for _ in range(2):
                await anyio.sleep(1.2)
                os.kill(pid, signal.SIGKILL)
                agents.append(restart())
                pid = agents[-1].pid
            results = [await anyio.to_thread.run_sync(lambda c=c: c.result(timeout=90)) for c in chats]
        finally:
            stop.set()
            for agent in agents[:-1]:
                agent.wait(timeout=10)
        for k, (answer, took) in enumerate(results):
            assert answer["content"] == "".join(PARTS), f"chat {k}: {answer}"
            assert answer["finish"] == "stop"
            assert took < 60 + 30 + 5, f"chat {k} took {took:.1f}s"
        # The kills came while answers were in flight: the gateway resumed them.
        metrics = httpx.get(env("GW_BASE_URL").removesuffix("/v1") + "/metrics", timeout=5).text
        resumed = [float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("gateway_requests_resumed_total")]
        assert resumed and resumed[0] >= 8, metrics
        async with agent_http() as agent:
            status = await status_until(agent, lambda s: s["answered"] >= CHATS)
            assert status["answered"] == CHATS and status["withdrawn"] == 0 and status["failed"] == 0
        tg.cancel_scope.cancel()
    agents[-1].terminate()
    agents[-1].wait(timeout=10)
