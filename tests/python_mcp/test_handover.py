"""Orderly restarts resume like crashes, with the official `mcp` client as agents: twenty streamed
chats, answered in parts, while bridge-agent is stopped with SIGTERM and started again twice, and
while the gateway's Unix-socket connection to bridge-agent is cut (bridge-agent staying up). Every
editor gets its whole answer, each chunk once, and mcp-bridge answers each request once
(README, "What survives which restart")."""
import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import pytest

from conftest import agent_http, call, env, read_stream_as_void, status_until, user

pytestmark = pytest.mark.anyio

CHATS = 20
PARTS = [f"part {n} " for n in range(15)]
pool = ThreadPoolExecutor(max_workers=CHATS)
# Parts the agents have submitted so far: how far the answers have got.
parts_sent = [0]


def ask_streamed(void, model, text):
    stream = void.chat.completions.create(model=model, messages=user(text), stream=True)
    return read_stream_as_void(stream)


async def serve(stop: anyio.Event):
    """One agent: answers each chat in fifteen parts, 120 ms apart."""
    async with agent_http() as agent:
        while not stop.is_set():
            got = await call(agent, "wait_for_request", {"timeout_seconds": 10})
            if got["status"] != "request":
                continue
            for i, text in enumerate(PARTS):
                await anyio.sleep(0.12)
                await call(agent, "submit_response", {
                    "request_id": got["request_id"], "lease_id": got["lease_id"], "content": text,
                    "done": i == len(PARTS) - 1})
                parts_sent[0] += 1


def health_up() -> bool:
    try:
        return httpx.get(env("AGENT_HEALTH"), timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_agent() -> subprocess.Popen:
    agent_env = {**json.loads(env("AGENT_ENV")), "PATH": os.environ.get("PATH", "")}
    log = open(env("AGENT_LOG"), "ab")
    return subprocess.Popen([env("AGENT_BIN")], env=agent_env, stdout=log, stderr=log)


async def until(what: str, pred, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within}s")
        await anyio.sleep(0.05)


async def streaming(watcher) -> None:
    """Waits until agents are answering several of the chats, part by part."""
    await status_until(watcher, lambda s: s["leased"] >= 3)
    since = parts_sent[0]
    await until("answers streaming", lambda: parts_sent[0] >= since + 6)


async def answered(agent) -> int:
    return (await call(agent, "get_status"))["answered"]


async def run_chats(void, model, fault) -> None:
    """Twenty streamed chats with `fault` (an async callable) running beside them; asserts every
    answer whole and each answered once."""
    stop = anyio.Event()
    async with agent_http() as watcher:
        before = await answered(watcher)
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(serve, stop)
            chats = [pool.submit(ask_streamed, void, model, f"chat {k}") for k in range(CHATS)]
            try:
                await fault(watcher)
                results = [await anyio.to_thread.run_sync(lambda c=c: c.result(timeout=90)) for c in chats]
            finally:
                stop.set()
            for k, answer in enumerate(results):
                assert answer["content"] == "".join(PARTS), f"chat {k}: {answer}"
                assert answer["finish"] == "stop", f"chat {k}: {answer}"
            status = await call(watcher, "get_status")
            assert status["answered"] == before + CHATS, status
            assert status["withdrawn"] == 0 and status["failed"] == 0, status
            tg.cancel_scope.cancel()


@pytest.fixture(scope="module")
def started():
    """The bridge-agents these tests start; the last one serves the tests after it. All are
    stopped at the end."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


async def test_twenty_streams_through_two_sigterm_restarts_of_bridge_agent(void, model, started):
    async def restarts(watcher):
        pid = int(env("AGENT_PID"))
        for _ in range(2):
            # While answers are streaming.
            await streaming(watcher)
            os.kill(pid, signal.SIGTERM)
            # The stopped one gives up its socket and its health port as it exits.
            await until("the old bridge-agent gone", lambda: not health_up())
            started.append(start_agent())
            pid = started[-1].pid
            await until("the new bridge-agent serving", health_up)

    await run_chats(void, model, restarts)
    # The first restarted one exited cleanly on its SIGTERM.
    assert started[0].wait(timeout=10) == 0
    metrics = httpx.get(env("GW_BASE_URL").removesuffix("/v1") + "/metrics", timeout=5).text
    resumed = [float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("gateway_requests_resumed_total")]
    assert resumed and resumed[0] >= CHATS, metrics


async def test_twenty_streams_through_a_cut_gateway_connection(void, model):
    async def cut(watcher):
        await streaming(watcher)
        socket.create_connection(("127.0.0.1", int(env("IPC_CUT_PORT"))), timeout=5).close()

    await run_chats(void, model, cut)
    # bridge-agent stayed up and took the requests up again on the gateway's new connection.
    metrics = httpx.get(env("AGENT_HEALTH").removesuffix("/health") + "/metrics", timeout=5).text
    reattached = [float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("bridge_agent_requests_reattached_total")]
    assert reattached and reattached[0] >= 1, metrics
