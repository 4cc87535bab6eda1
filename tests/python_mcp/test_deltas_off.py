"""With LOCAL_PROVIDER_MCP_DELTAS=false every conversation is handed whole."""
import pytest

from conftest import agent_http
from test_deltas import SYSTEM, ask, turn, whole

pytestmark = pytest.mark.anyio


async def test_every_turn_is_handed_whole(void, model):
    async with agent_http() as agent:
        messages = ask([SYSTEM], "First")
        for n in range(3):
            request, messages = await turn(agent, void, model, messages, {"fresh": n == 0})
            whole(request, messages[:-1])
            assert request["conversation_id"].startswith("conv-")
            messages = ask(messages, f"Turn {n + 2}")
