"""The Cursor agent's side of the MCP bridge tests, with the official `mcp` package, and the
editor's side with the official `openai` package.

The Rust black-box tests in `tests/blackbox/mcp_agent.rs` start the real mcp-bridge, bridge-agent
and gateway and run these files with the addresses below in the environment.
"""
import json
import os
import sys
import time
from contextlib import asynccontextmanager

import anyio
import openai
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def missing_dependency(what: str, how: str) -> None:
    """The rule of every suite: when CI is set to anything but false/0 a missing dependency fails
    the test; otherwise the test is skipped, loudly."""
    if os.environ.get("CI", "").strip().lower() not in ("", "false", "0"):
        pytest.fail(f"{what} is missing ({how}); CI is set, so this is a failure, not a skip")
    print(f"\n********** SKIPPED: {what} is missing ({how}) **********", file=sys.stderr)
    pytest.skip(f"{what} is missing ({how})")


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        missing_dependency(f"the variable {name} (the running services)",
                           "run these tests through `scripts/test.sh`, which starts them")
    return value


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def model() -> str:
    return env("GW_MODEL")


@pytest.fixture(scope="session")
def void() -> openai.OpenAI:
    """The editor: the base URL as a user types it, no retries so that every outcome is seen."""
    return openai.OpenAI(base_url=env("GW_BASE_URL"), api_key=env("GW_KEY"), max_retries=0, timeout=60)


@asynccontextmanager
async def agent_http(mode: str = "legacy", max_event_bytes: int | None = None):
    """The agent over Streamable HTTP, with the bearer token, as Cursor's `mcp.json` sets it.
    `max_event_bytes` raises the client's own bound on one SSE event (1 MiB by default): a
    request handed out whole is one event."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {env('MB_MCP_TOKEN')}"})
    extra = {"max_sse_event_size": max_event_bytes} if max_event_bytes else {}
    async with http:
        transport = streamable_http_client(env("MB_MCP_URL"), http_client=http, **extra)
        async with Client(transport, mode=mode) as client:
            yield client


@asynccontextmanager
async def agent_stdio(mode: str = "legacy"):
    """The agent launching `mcp-bridge --stdio`, as a client that starts its servers does, with
    the token's file named as the Cursor entry in docs/clients.md names it (no copy of the secret)."""
    params = StdioServerParameters(
        command=env("MB_BIN"),
        args=["--stdio"],
        env={"LOCAL_PROVIDER_MCP_BRIDGE_PORT": env("MB_PORT"),
             "LOCAL_PROVIDER_MCP_HTTP_TOKEN_FILE": env("MB_MCP_TOKEN_FILE"),
             "LOCAL_PROVIDER_LOG_LEVEL": "warning"},
    )
    async with Client(params, mode=mode) as client:
        yield client


async def call(client, tool: str, args: dict | None = None) -> dict:
    """Calls a tool that must succeed; returns its JSON answer."""
    result = await client.call_tool(tool, args or {})
    text = result.content[0].text
    assert not result.is_error, f"{tool} refused: {text}"
    return json.loads(text)


async def refused(client, tool: str, args: dict) -> str:
    """Calls a tool that must refuse; returns the message the agent reads."""
    result = await client.call_tool(tool, args)
    assert result.is_error, f"{tool} was expected to refuse: {result.content[0].text}"
    return result.content[0].text


async def take(client, within: float = 20.0, args: dict | None = None) -> dict:
    """Long-polls with `args` until a request comes (idle answers are normal)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = await call(client, "wait_for_request", args or {})
        if got["status"] == "request":
            return got
        assert got["status"] == "idle", got
    pytest.fail(f"no request within {within}s")


async def status_until(client, pred, within: float = 20.0) -> dict:
    deadline = time.monotonic() + within
    while True:
        status = await call(client, "get_status")
        if pred(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"status never matched: {status}")
        await anyio.sleep(0.05)


def user(text: str, system: str | None = None) -> list:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


def read_stream_as_void(stream) -> dict:
    """Reads a streamed answer the way VoidEditor does: delta.content, delta.reasoning_content and
    delta.tool_calls (index 0; id and name in its first delta, arguments concatenated)."""
    out = {"content": "", "reasoning": "", "finish": None, "tool": None}
    for chunk in stream:
        assert chunk.choices is not None, "every chunk must carry a choices array"
        for choice in chunk.choices:
            delta = choice.delta
            out["content"] += delta.content or ""
            out["reasoning"] += (delta.model_extra or {}).get("reasoning_content") or ""
            out["finish"] = choice.finish_reason or out["finish"]
            for tc in delta.tool_calls or []:
                assert tc.index == 0
                call = out["tool"] = out["tool"] or {"id": None, "name": None, "arguments": ""}
                call["id"] = call["id"] or tc.id
                if tc.function and tc.function.name:
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
    return out


class Sampler:
    """A client that declares sampling, as VS Code does: records every `sampling/createMessage`
    and answers with `reply(params)` (text, or `mcp.types.ErrorData` to refuse)."""

    def __init__(self, reply):
        self.reply = reply
        self.asked = []

    async def __call__(self, context, params):
        from mcp import types
        self.asked.append(params)
        answer = self.reply(params)
        if isinstance(answer, types.ErrorData):
            return answer
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text=answer),
                                         model="client-model", stop_reason="endTurn")


@asynccontextmanager
async def sampling_agent_http(sampler: Sampler):
    """A client over Streamable HTTP that declares sampling (and can call the tools too)."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {env('MB_MCP_TOKEN')}"})
    async with http:
        async with Client(streamable_http_client(env("MB_MCP_URL"), http_client=http), mode="legacy",
                          sampling_callback=sampler) as client:
            yield client
