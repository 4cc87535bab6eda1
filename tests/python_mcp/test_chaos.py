"""The chaos test's half through mcp-bridge: twenty-five streamed chats answered in parts by agents
over MCP while bridge-agent is SIGKILLed and restarted twice and stopped with SIGTERM and restarted
once, its WebSocket to mcp-bridge is dropped once, four agents vanish (SIGKILL or SIGTERM) while
they poll or hold a request, and five clients stop reading. Every editor gets exactly the answer a
fault-free run gives (each chunk once, in order), each of the five exactly one `slow_client`
error, and mcp-bridge answers each request once."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
from mcp.types import TextContent

from conftest import agent_http, call, env, read_stream_as_void, status_until, user

pytestmark = pytest.mark.anyio

CHATS = 25
STALLED = 5
PARTS = [f"part {n} " for n in range(12)]
# A stalled reader's answer: far past what the gateway holds (STREAM_BUFFER_BYTES) plus what the
# kernel's socket buffers take in.
BULK = ["x" * 131_072] * 80
# Parts of chats the agents have had accepted so far: how far the answers have got.
chat_parts = [0]
pool = ThreadPoolExecutor(max_workers=CHATS + STALLED)


def ask_streamed(void, model, text):
    started = time.monotonic()
    stream = void.chat.completions.create(model=model, messages=user(text), stream=True)
    return read_stream_as_void(stream), time.monotonic() - started


def open_stalled(model, text):
    """A client that reads the response headers and then nothing, until `read_stalled`."""
    client = httpx.Client(timeout=120)
    request = client.build_request(
        "POST", env("GW_BASE_URL") + "/chat/completions",
        headers={"authorization": f"Bearer {env('GW_KEY')}"},
        json={"model": model, "messages": user(text), "stream": True})
    return client, client.send(request, stream=True)


def read_stalled(opened):
    client, response = opened
    try:
        body = response.read().decode()
    finally:
        client.close()
    data = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    events = [json.loads(d) for d in data if d != "[DONE]"]
    return [e["error"].get("code") for e in events if "error" in e], data[-1] if data else None, body


async def serve(stop: anyio.Event, faulted: anyio.Event):
    """One agent: answers each chat in twelve parts, 150 ms apart, and each stalled reader's in a
    short part, then (once the first fault came, so that the reader is cut off during the faults)
    eighty parts of 128 KiB, until the gateway gives up on that reader and the request is
    cancelled."""
    async with agent_http() as agent:
        while not stop.is_set():
            got = await call(agent, "wait_for_request", {"timeout_seconds": 10})
            if got["status"] != "request":
                continue
            stalled = "stall" in json.dumps(got.get("messages"))
            parts, pause = (["start "] + BULK, 0.05) if stalled else (PARTS, 0.15)
            for i, text in enumerate(parts):
                await anyio.sleep(pause)
                if stalled and i == 1:
                    await faulted.wait()
                result = await agent.call_tool("submit_response", {
                    "request_id": got["request_id"], "lease_id": got["lease_id"], "content": text,
                    "done": i == len(parts) - 1})
                if result.is_error:
                    refusal = result.content[0].text if isinstance(result.content[0], TextContent) else ""
                    assert stalled, f"a chat's part was refused: {refusal}"
                    break
                if not stalled:
                    chat_parts[0] += 1


async def answers_moving(round: int, chats) -> None:
    """Before each fault: bridge-agent serving and the chats' answers moving (a part from each of
    the eight agents since the last fault), unless every chat has ended already."""
    since = chat_parts[0]
    deadline = time.monotonic() + 30
    while not all(c.done() for c in chats):
        if chat_parts[0] >= since + 8 and health_up():
            return
        assert time.monotonic() < deadline, f"round {round}: answers not moving within 30s"
        await anyio.sleep(0.05)


def restart():
    agent_env = {**json.loads(env("AGENT_ENV")), "PATH": os.environ.get("PATH", "")}
    log = open(env("AGENT_LOG"), "ab")
    return subprocess.Popen([env("AGENT_BIN")], env=agent_env, stdout=log, stderr=log)


def health_up() -> bool:
    try:
        return httpx.get(env("AGENT_HEALTH"), timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def stopped_in_order(pid: int) -> None:
    """SIGTERM, then waits until the stopped bridge-agent gave up its port (it has exited)."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while health_up():
        assert time.monotonic() < deadline, "bridge-agent did not stop within 20s"
        await anyio.sleep(0.05)


def vanishing_agent() -> subprocess.Popen:
    """An agent process that polls and, if handed a request, holds it without answering."""
    here = Path(__file__).parent
    return subprocess.Popen([sys.executable, str(here / "vanishing_agent.py"), "poll"], cwd=here,
                            stdout=subprocess.DEVNULL, env=os.environ.copy())


def drop_websocket():
    """Cuts every connection through the relay between bridge-agent and mcp-bridge."""
    socket.create_connection(("127.0.0.1", int(env("RELAY_CUT_PORT"))), timeout=5).close()


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def test_twenty_five_streams_through_kills_a_sigterm_restart_a_drop_vanished_agents_and_stalled_readers(
        void, model):
    stop, faulted = anyio.Event(), anyio.Event()
    agents = []
    services = {"gateway": int(env("GW_PID")), "mcp-bridge": int(env("MB_PID"))}
    rss = {name: {"before": rss_mib(pid), "peak": 0.0} for name, pid in services.items()}
    rss["bridge-agent"] = {"before": rss_mib(int(env("AGENT_PID"))), "peak": 0.0}
    faults = []
    # Agents that vanish mid-poll, or holding a request they never answer: they began polling
    # first, so they are first in line.
    vanishing = [vanishing_agent() for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(serve, stop, faulted)
        stalled = [pool.submit(open_stalled, model, f"stall {k}") for k in range(STALLED)]
        chats = [pool.submit(ask_streamed, void, model, f"chat {k}") for k in range(CHATS)]
        pid = int(env("AGENT_PID"))
        try:
            for round, fault in enumerate(["kill", "drop", "term", "kill"]):
                await answers_moving(round, chats)
                # One vanishing agent goes each round, killed or stopped.
                os.kill(vanishing[round].pid, signal.SIGKILL if round % 2 else signal.SIGTERM)
                if fault == "kill":
                    os.kill(pid, signal.SIGKILL)
                    agents.append(restart())
                    pid = agents[-1].pid
                elif fault == "term":
                    await stopped_in_order(pid)
                    agents.append(restart())
                    pid = agents[-1].pid
                else:
                    drop_websocket()
                faults.append(datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
                faulted.set()
                for name, now in [*services.items(), ("bridge-agent", pid)]:
                    rss[name]["peak"] = max(rss[name]["peak"], rss_mib(now))
            results = [await anyio.to_thread.run_sync(lambda c=c: c.result(timeout=90)) for c in chats]
            opened = [await anyio.to_thread.run_sync(lambda s=s: s.result(timeout=90)) for s in stalled]
            cut = [await anyio.to_thread.run_sync(read_stalled, o) for o in opened]
        finally:
            stop.set()
            for agent in agents[:-1]:
                agent.wait(timeout=10)
            for doomed in vanishing:
                doomed.kill()
                doomed.wait(timeout=10)
        for k, (answer, took) in enumerate(results):
            assert answer["content"] == "".join(PARTS), f"chat {k}: {answer}"
            assert answer["finish"] == "stop"
            assert took < 60 + 30 + 5, f"chat {k} took {took:.1f}s"
        for k, (errors, last, body) in enumerate(cut):
            assert errors == ["slow_client"], f"stalled {k}: {errors} {body[-2000:]}"
            assert last == "[DONE]", f"stalled {k}: {body[-2000:]}"
        # The kills came while answers were in flight: the gateway resumed them.
        metrics = httpx.get(env("GW_BASE_URL").removesuffix("/v1") + "/metrics", timeout=5).text
        resumed = [float(line.split()[-1]) for line in metrics.splitlines()
                   if line.startswith("gateway_requests_resumed_total")]
        assert resumed and resumed[0] >= 8, metrics
        async with agent_http() as agent:
            # A stalled reader cut off while bridge-agent is down has its cancel lost with that
            # bridge-agent, so mcp-bridge may count it answered rather than cancelled.
            status = await status_until(
                agent, lambda s: s["answered"] + s["cancelled"] >= CHATS + STALLED and s["leased"] == 0)
            assert status["answered"] + status["cancelled"] == CHATS + STALLED, status
            assert status["answered"] >= CHATS and status["withdrawn"] == 0 and status["failed"] == 0, status
        tg.cancel_scope.cancel()
    for name, now in [*services.items(), ("bridge-agent", pid)]:
        rss[name]["after"] = rss_mib(now)
    with open(env("RSS_REPORT"), "w") as report:
        json.dump({"rss": rss, "faults": faults}, report)
    agents[-1].terminate()
    agents[-1].wait(timeout=10)
