"""Across an mcp-bridge restart (run by `tests/blackbox/mcp_agent.rs` between the two tests):
the conversation is handed whole again, because nothing handed before the restart is known."""
import json

import pytest

from conftest import agent_http, env
from test_deltas import SYSTEM, ask, delta, turn, whole

pytestmark = pytest.mark.anyio


async def test_before_restart(void, model):
    async with agent_http() as agent:
        messages = ask([SYSTEM], "Before the restart")
        _, messages = await turn(agent, void, model, messages, {"fresh": True})
        messages = ask(messages, "Still before")
        request, messages = await turn(agent, void, model, messages)
        delta(request, messages[:-1], 2)
    with open(env("CONVERSATION_FILE"), "w") as f:
        json.dump(messages, f)


async def test_after_restart(void, model):
    with open(env("CONVERSATION_FILE")) as f:
        messages = json.load(f)
    async with agent_http() as agent:
        messages = ask(messages, "After the restart")
        request, _ = await turn(agent, void, model, messages)
        whole(request, messages)
