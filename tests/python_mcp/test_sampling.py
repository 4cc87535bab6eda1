"""Sampling (opt-in, `LOCAL_PROVIDER_MCP_SAMPLING=true`): a client that declares sampling answers
plain chats through `sampling/createMessage`; requests with tools still go to the tool loop."""
from concurrent.futures import ThreadPoolExecutor

import anyio
import openai
import pytest
from mcp import types

from conftest import Sampler, call, read_stream_as_void, sampling_agent_http, status_until, take, user

pytestmark = pytest.mark.anyio

pool = ThreadPoolExecutor(max_workers=4)

WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


async def sampling_ready(agent):
    await status_until(agent, lambda s: s["sampling_clients"] == 1)


def text(message) -> str:
    content = message.content
    return content.text if not isinstance(content, list) else "".join(c.text for c in content)


async def test_a_chat_is_answered_by_sampling(void, model):
    sampler = Sampler(lambda params: "Four.\nExactly 4 — «ok»")
    async with sampling_agent_http(sampler) as agent:
        await sampling_ready(agent)
        out = await _in_thread(lambda: void.chat.completions.create(
            model=model, max_tokens=64, temperature=0.2, stop=["END"],
            messages=user("What is 2+2?", system="You are terse.")))
        assert out.choices[0].message.content == "Four.\nExactly 4 — «ok»"
        assert out.choices[0].finish_reason == "stop"
        [asked] = sampler.asked
        assert asked.system_prompt == "You are terse."
        assert [(m.role, text(m)) for m in asked.messages] == [("user", "What is 2+2?")]
        assert asked.max_tokens == 64 and asked.temperature == pytest.approx(0.2)
        assert asked.stop_sequences == ["END"]
        status = await call(agent, "get_status")
        assert status["queue_depth"] == 0 and status["leased"] == 0


async def test_a_streamed_chat_is_answered_by_sampling(void, model):
    sampler = Sampler(lambda params: "fn main() {}\n")
    history = [{"role": "system", "content": "Write Rust."},
               {"role": "user", "content": [{"type": "text", "text": "Smallest "}, {"type": "text", "text": "program?"}]},
               {"role": "assistant", "content": "In which language?"},
               {"role": "user", "content": "Rust"}]
    async with sampling_agent_http(sampler) as agent:
        await sampling_ready(agent)
        got = await _in_thread(lambda: read_stream_as_void(
            void.chat.completions.create(model=model, stream=True, messages=history)))
        assert got["content"] == "fn main() {}\n"
        assert got["finish"] == "stop" and got["tool"] is None
        [asked] = sampler.asked
        assert asked.system_prompt == "Write Rust."
        assert [(m.role, text(m)) for m in asked.messages] == [
            ("user", "Smallest program?"), ("assistant", "In which language?"), ("user", "Rust")]
        assert asked.max_tokens == 4096


async def test_a_refused_sampling_fails_the_request_clearly(void, model):
    sampler = Sampler(lambda params: types.ErrorData(code=-1, message="User rejected sampling request"))
    async with sampling_agent_http(sampler) as agent:
        await sampling_ready(agent)
        with pytest.raises(openai.APIStatusError) as err:
            await _in_thread(lambda: void.chat.completions.create(model=model, messages=user("hi")))
        assert "sampling" in str(err.value) and "User rejected sampling request" in str(err.value)
        assert len(sampler.asked) == 1, "a refused request is not asked again"
        status = await call(agent, "get_status")
        assert status["queue_depth"] == 0 and status["failed"] >= 1


async def test_a_request_with_tools_goes_to_the_tool_loop(void, model):
    sampler = Sampler(lambda params: pytest.fail("a request with tools was sampled"))
    async with sampling_agent_http(sampler) as agent:
        await sampling_ready(agent)
        pending = pool.submit(void.chat.completions.create, model=model, tools=WEATHER,
                              messages=user("weather?"))
        request = await take(agent)
        assert request["parameters"]["tools"] == WEATHER
        await call(agent, "submit_response", {"request_id": request["request_id"],
                                              "lease_id": request["lease_id"], "content": "sunny"})
        assert pending.result(timeout=30).choices[0].message.content == "sunny"
        assert sampler.asked == []


async def _in_thread(fn):
    """Runs a blocking editor call while the event loop keeps serving the sampling client."""
    return await anyio.to_thread.run_sync(fn)
