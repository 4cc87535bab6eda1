"""bridge-agent restarting while requests wait: no request lost, none answered twice, and the
answers in flight are resumed (docs/operations.md, "Resume").

When bridge-agent is killed, mcp-bridge keeps the requests its connection sent for RESUME_GRACE:
queued ones stay queued, leased ones stay leased and the agent may keep answering them. The gateway
keeps each editor's request open for the same grace and re-attaches it to the restarted
bridge-agent, which resumes it at mcp-bridge after the last chunk the gateway has. The editor sees
every chunk exactly once, in order; requests sent while bridge-agent is down wait in the gateway
(up to CONNECTION_TIMEOUT) and are served once it is back.
"""
import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from conftest import agent_http, call, env, read_stream_as_void, status_until, take, user

pytestmark = pytest.mark.anyio

pool = ThreadPoolExecutor(max_workers=4)


def ask(void, model, text):
    out = void.chat.completions.create(model=model, messages=user(text))
    return out.choices[0].message.content


def ask_streamed(void, model, text):
    stream = void.chat.completions.create(model=model, messages=user(text), stream=True)
    return read_stream_as_void(stream)


def agent_health_connected() -> bool:
    try:
        return httpx.get(env("AGENT_HEALTH"), timeout=2).json()["mcp_connection"]["status"] == "connected"
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def part(request, content, done):
    return {"request_id": request["request_id"], "lease_id": request["lease_id"],
            "content": content, "done": done}


async def test_bridge_agent_restart_resumes_every_request_exactly_once(void, model):
    async with agent_http() as agent:
        alpha = pool.submit(ask_streamed, void, model, "alpha")
        leased = await take(agent)
        await call(agent, "submit_response", part(leased, "one ", False))
        beta = pool.submit(ask, void, model, "beta")
        await status_until(agent, lambda s: s["queue_depth"] == 1 and s["leased"] == 1)

        os.kill(int(env("AGENT_PID")), signal.SIGKILL)
        # Nothing is withdrawn: both requests wait for a resume, and the agent keeps answering.
        status = await status_until(agent, lambda s: s["connected_bridge_agents"] == 0)
        assert status["queue_depth"] == 1 and status["leased"] == 1 and status["withdrawn"] == 0
        await call(agent, "submit_response", part(leased, "two ", False))
        assert not alpha.done() and not beta.done()

        # Editors keep asking while bridge-agent is down; the gateway holds their requests.
        gamma = pool.submit(ask, void, model, "gamma")
        agent_env = {**json.loads(env("AGENT_ENV")), "PATH": os.environ.get("PATH", "")}
        with open(env("AGENT_LOG"), "wb") as log:
            restarted = subprocess.Popen([env("AGENT_BIN")], env=agent_env, stdout=log, stderr=log)
        try:
            await status_until(agent, lambda s: s["connected_bridge_agents"] == 1)
            await call(agent, "submit_response", part(leased, "three", True))
            served = []
            for _ in range(2):
                request = await take(agent)
                word = request["messages"][-1]["content"]
                served.append(word)
                assert request["attempt"] == 1
                await call(agent, "submit_response", part(request, f"answer to {word}", True))
            assert sorted(served) == ["beta", "gamma"]
            streamed = alpha.result(timeout=20)
            assert streamed["content"] == "one two three", streamed
            assert streamed["finish"] == "stop"
            assert beta.result(timeout=20) == "answer to beta"
            assert gamma.result(timeout=20) == "answer to gamma"
            # Nothing else is handed out, and nothing was answered twice.
            assert (await call(agent, "wait_for_request"))["status"] == "idle"
            status = await call(agent, "get_status")
            assert status["answered"] == 3 and status["withdrawn"] == 0
            assert status["queue_depth"] == 0 and status["leased"] == 0
            assert agent_health_connected()
        finally:
            restarted.terminate()
            restarted.wait(timeout=10)
