"""bridge-agent restarting while requests wait: no request lost, none answered twice.

What "waiting" means differs by where a request is when bridge-agent goes away:
- requests already at the bridge (queued or leased to the agent) belong to the bridge-agent
  connection that sent them. When it drops, bridge-agent has already told the editor
  `bridge_agent_disconnected` / `bridge_disconnected`, and a new bridge-agent cannot resume them,
  so mcp-bridge withdraws them: the editor gets a clear error (it may retry), the agent is never
  handed them again, and a late reply is refused as "withdrawn";
- requests the editor sends while bridge-agent is down wait in the gateway (up to
  CONNECTION_TIMEOUT) and are served once bridge-agent is back: each answered exactly once.
"""
import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import agent_http, call, env, refused, status_until, take, user

pytestmark = pytest.mark.anyio

pool = ThreadPoolExecutor(max_workers=4)


def ask(void, model, text):
    out = void.chat.completions.create(model=model, messages=user(text))
    return out.choices[0].message.content


def agent_health_connected() -> bool:
    try:
        return httpx.get(env("AGENT_HEALTH"), timeout=2).json()["mcp_connection"]["status"] == "connected"
    except (httpx.HTTPError, ValueError, KeyError):
        return False


async def test_bridge_agent_restart_loses_and_duplicates_no_request(void, model):
    async with agent_http() as agent:
        alpha = pool.submit(ask, void, model, "alpha")
        leased = await take(agent)
        beta = pool.submit(ask, void, model, "beta")
        await status_until(agent, lambda s: s["queue_depth"] == 1 and s["leased"] == 1)

        os.kill(int(env("AGENT_PID")), signal.SIGKILL)
        # The editors are told at once, not left hanging.
        for pending in (alpha, beta):
            with pytest.raises(openai.APIStatusError) as err:
                pending.result(timeout=20)
            assert err.value.status_code == 502, err.value
        status = await status_until(agent, lambda s: s["connected_bridge_agents"] == 0)
        assert status["queue_depth"] == 0 and status["leased"] == 0 and status["withdrawn"] == 2
        why = await refused(agent, "submit_response", {"request_id": leased["request_id"],
                                                       "lease_id": leased["lease_id"], "content": "late"})
        assert "withdrawn" in why

        # Editors keep asking while bridge-agent is down; the gateway holds their requests.
        gamma = pool.submit(ask, void, model, "gamma")
        delta = pool.submit(ask, void, model, "delta")
        agent_env = {**json.loads(env("AGENT_ENV")), "PATH": os.environ.get("PATH", "")}
        with open(env("AGENT_LOG"), "wb") as log:
            restarted = subprocess.Popen([env("AGENT_BIN")], env=agent_env, stdout=log, stderr=log)
        try:
            await status_until(agent, lambda s: s["connected_bridge_agents"] == 1)
            served = []
            for _ in range(2):
                request = await take(agent)
                word = request["messages"][-1]["content"]
                served.append(word)
                assert request["attempt"] == 1
                await call(agent, "submit_response", {"request_id": request["request_id"],
                                                      "lease_id": request["lease_id"],
                                                      "content": f"answer to {word}"})
            assert sorted(served) == ["delta", "gamma"]
            assert gamma.result(timeout=20) == "answer to gamma"
            assert delta.result(timeout=20) == "answer to delta"
            # Nothing else is handed out: the withdrawn requests do not come back.
            assert (await call(agent, "wait_for_request"))["status"] == "idle"
            status = await call(agent, "get_status")
            assert status["answered"] == 2 and status["withdrawn"] == 2
            assert status["queue_depth"] == 0 and status["leased"] == 0
            assert agent_health_connected()
        finally:
            restarted.terminate()
            restarted.wait(timeout=10)
