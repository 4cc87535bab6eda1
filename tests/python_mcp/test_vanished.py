"""Agents that vanish: an agent SIGKILLed, one SIGTERMed and one whose MCP session is closed, each
while its `wait_for_request` is pending and waiting longer than a second agent's poll: the next
chat goes to the second agent, at once, each time. And an agent that took a request and then died:
the request goes to another agent and is answered once (README, "Agents that vanish")."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import agent_http, call, env, status_until, take, user

pytestmark = pytest.mark.anyio

pool = ThreadPoolExecutor(max_workers=4)
HERE = Path(__file__).parent
# What the README promises: the next chat reaches the live agent within this.
WITHIN = 2.0


def spawn_agent(mode: str) -> subprocess.Popen:
    """A separate agent process (`vanishing_agent.py`), so that it can be killed like Cursor."""
    return subprocess.Popen([sys.executable, str(HERE / "vanishing_agent.py"), mode],
                            cwd=HERE, stdout=subprocess.PIPE, text=True, env=os.environ.copy())


def line_of(agent: subprocess.Popen) -> dict:
    line = agent.stdout.readline()
    assert line, f"the agent process ended (code {agent.poll()})"
    return json.loads(line)


@asynccontextmanager
async def agent_with_session():
    """An agent over Streamable HTTP that also tells its MCP session id."""
    seen = {}

    async def remember(response):
        if response.headers.get("mcp-session-id"):
            seen["id"] = response.headers["mcp-session-id"]

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {env('MB_MCP_TOKEN')}"})
    http.event_hooks = {"response": [remember]}
    async with http:
        async with Client(streamable_http_client(env("MB_MCP_URL"), http_client=http), mode="legacy") as client:
            yield client, seen


async def polls(live, n: int) -> None:
    await status_until(live, lambda s: s["waiting_polls"] == n, within=20)


async def answered_by_live(void, model, live, text: str) -> float:
    """Sends a chat while `live` is the only live poller; the live agent answers it. Returns how long
    the editor waited for the answer."""
    marks = {}
    async with anyio.create_task_group() as tg:
        async def serve():
            request = await take(live, within=WITHIN + 5)
            marks["handed"] = time.monotonic()
            assert request["attempt"] == 1, request
            await call(live, "submit_response", {"request_id": request["request_id"],
                                                 "lease_id": request["lease_id"], "content": f"live: {text}"})
        tg.start_soon(serve)
        # The live agent's poll is in line behind the vanished one's.
        await polls(live, 1)

        def editor():
            marks["sent"] = time.monotonic()
            out = void.chat.completions.create(model=model, messages=user(text))
            return out, time.monotonic() - marks["sent"]

        out, took = await anyio.to_thread.run_sync(editor)
    assert out.choices[0].message.content == f"live: {text}"
    print(f"{text}: handed to the live agent {marks['handed'] - marks['sent']:.3f}s after it was sent,"
          f" answered after {took:.3f}s")
    return took


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_an_agent_killed_mid_poll_takes_nothing(void, model, how):
    async with agent_http() as live:
        # A first chat: a fresh gateway loads its tokenizer, which is not what is timed here.
        await answered_by_live(void, model, live, "warm-up")
        doomed = spawn_agent("poll")
        try:
            assert line_of(doomed) == {"polling": True}
            await polls(live, 1)
            os.kill(doomed.pid, getattr(signal, how))
            doomed.wait(timeout=10)
            # Its poll ends as its connection closes.
            await polls(live, 0)
            took = await answered_by_live(void, model, live, f"after {how}")
        finally:
            doomed.kill()
            doomed.wait(timeout=10)
    assert took < WITHIN, took


async def test_an_agent_whose_session_is_closed_mid_poll_takes_nothing(void, model):
    async with agent_http() as live, agent_with_session() as (doomed, seen):
        async with anyio.create_task_group() as tg:
            async def doomed_poll():
                # Its session is closed under it: the call ends with an error, or never returns.
                with anyio.move_on_after(30):
                    try:
                        await doomed.call_tool("wait_for_request", {"timeout_seconds": 120})
                    except Exception:  # noqa: BLE001 - any ending is fine, taking a request is not
                        pass
            tg.start_soon(doomed_poll)
            await polls(live, 1)
            # Close the session the way a client does (DELETE), leaving the poll's connection open.
            async with httpx.AsyncClient() as raw:
                closed = await raw.delete(env("MB_MCP_URL"), headers={
                    "Authorization": f"Bearer {env('MB_MCP_TOKEN')}", "mcp-session-id": seen["id"]})
                assert closed.status_code in (200, 202, 204), closed.text
            await polls(live, 0)
            took = await answered_by_live(void, model, live, "after the session closed")
            tg.cancel_scope.cancel()
    assert took < WITHIN, took


async def test_a_request_taken_by_an_agent_that_died_is_answered_once_by_another(void, model):
    async with agent_http() as live:
        before = await call(live, "get_status")
        doomed = spawn_agent("take")
        try:
            assert line_of(doomed) == {"polling": True}
            await polls(live, 1)
            pending = pool.submit(void.chat.completions.create, model=model, messages=user("orphan"))
            got = line_of(doomed)
            assert got["got"] == "request", got
            os.kill(doomed.pid, signal.SIGKILL)
            died = time.monotonic()
            doomed.wait(timeout=10)
            request = await take(live, within=30)
            reached = time.monotonic() - died
            assert request["request_id"] == got["request_id"] and request["attempt"] == 2, request
            await call(live, "submit_response", {"request_id": request["request_id"],
                                                 "lease_id": request["lease_id"], "content": "answered once"})
            out = await anyio.to_thread.run_sync(lambda: pending.result(timeout=30))
        finally:
            doomed.kill()
            doomed.wait(timeout=10)
        assert out.choices[0].message.content == "answered once"
        status = await call(live, "get_status")
        assert status["answered"] == before["answered"] + 1, status
        assert status["leased"] == 0 and status["queue_depth"] == 0, status
    print(f"from the agent's death to its request reaching another agent: {reached:.3f}s")
