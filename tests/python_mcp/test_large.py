"""A request near the gateway's body cap, through the real chain to an agent over Streamable HTTP
and over `mcp-bridge --stdio`: the `mcp` package as the Cursor agent, the `openai` package as the
editor."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import agent_http, agent_stdio, call, take

pytestmark = pytest.mark.anyio

pool = ThreadPoolExecutor(max_workers=2)


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_request_near_the_body_cap_reaches_the_agent_whole(void, model, transport):
    """A request larger than the old 16 MiB frame limit, within the 32 MiB body cap: a long
    conversation with screenshots as Claude Code sends them. Every hop (the gateway, bridge-agent's
    and mcp-bridge's WebSocket frames, the stdio relay) takes it, and the agent gets it whole."""
    screenshot = "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUgAA" * (768 * 1024)   # 18 MiB
    source = "def f(x):\n    return x + 1\n" * 5_000                                    # 135 KB
    content = [{"type": "text", "text": source}, {"type": "image_url", "image_url": {"url": screenshot}}]
    # The official client takes SSE events of at most 1 MiB unless told otherwise; the stdio
    # relay takes events up to 96 MiB itself.
    agent = agent_http(max_event_bytes=64 * 1024 * 1024) if transport == "http" else agent_stdio()
    async with agent as agent:
        pending = pool.submit(void.chat.completions.create, model=model,
                              messages=[{"role": "user", "content": content}])
        request = await take(agent, within=60)
        got = request["messages"][-1]["content"]
        assert got[0]["text"] == source
        assert got[1]["image_url"]["url"] == screenshot
        await call(agent, "submit_response", {"request_id": request["request_id"],
                                              "lease_id": request["lease_id"], "content": "a screen"})
        out = pending.result(timeout=60)
    assert out.choices[0].message.content == "a screen"
