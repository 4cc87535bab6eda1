"""The Cursor agent serving VoidEditor through mcp-bridge's tools, over Streamable HTTP and stdio."""
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import anyio
import openai
import pytest

from conftest import (agent_http, agent_stdio, call, read_stream_as_void, refused, status_until,
                      take, user)

pytestmark = pytest.mark.anyio

WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}]

pool = ThreadPoolExecutor(max_workers=8)


def background(fn, *args, **kwargs):
    """Runs a blocking editor call beside the agent."""
    return pool.submit(fn, *args, **kwargs)


def answer_of(future, timeout: float = 30):
    return future.result(timeout=timeout)


async def test_tools_prompt_and_schemas():
    async with agent_http() as agent:
        tools = {t.name: t for t in (await agent.list_tools()).tools}
        assert set(tools) == {"wait_for_request", "submit_response", "fail_request", "get_status",
                              "get_conversation"}
        assert {"timeout_seconds", "fresh", "full"} <= set(tools["wait_for_request"].input_schema["properties"])
        assert {"request_id", "conversation_id", "from", "offset"} == set(
            tools["get_conversation"].input_schema["properties"])
        assert set(tools["submit_response"].input_schema["required"]) == {"request_id", "lease_id"}
        assert set(tools["fail_request"].input_schema["required"]) == {"request_id", "lease_id", "reason"}
        prompt = await agent.get_prompt("serve_editor_requests")
        text = prompt.messages[0].content.text
        assert "wait_for_request" in text and "parameters.tools" in text
        assert '"fresh": true' in text and "messages_from" in text and "get_conversation" in text


async def test_idle_then_a_request(void, model):
    async with agent_http() as agent:
        idle = await call(agent, "wait_for_request")
        assert idle["status"] == "idle" and idle["queue_depth"] == 0
        pending = background(void.chat.completions.create, model=model, messages=user("ping"))
        request = await take(agent)
        assert request["messages"] == user("ping")
        assert request["kind"] == "chat" and request["stream"] is False and request["attempt"] == 1
        done = await call(agent, "submit_response", {"request_id": request["request_id"],
                                                     "lease_id": request["lease_id"], "content": "pong"})
        assert done["status"] == "answered"
        out = answer_of(pending)
        assert out.choices[0].message.content == "pong"
        assert out.choices[0].finish_reason == "stop"
        assert out.usage.total_tokens > 0


async def test_streamed_text_reasoning_and_tool_call_over_http(void, model):
    def editor():
        stream = void.chat.completions.create(
            model=model, stream=True, tools=WEATHER,
            messages=user("weather in Paris?", system="You are a coding assistant."))
        return read_stream_as_void(stream)

    async with agent_http() as agent:
        pending = background(editor)
        request = await take(agent)
        ids = {"request_id": request["request_id"], "lease_id": request["lease_id"]}
        assert request["stream"] is True
        assert request["messages"][0] == {"role": "system", "content": "You are a coding assistant."}
        assert request["parameters"]["tools"] == WEATHER
        assert "native tool_calls allowed" in request["answer_with"]
        part = await call(agent, "submit_response", {**ids, "reasoning": "The user wants weather. ", "done": False})
        assert part == {"status": "part_sent", "request_id": ids["request_id"], "chunks_sent": 1}
        await call(agent, "submit_response", {**ids, "content": "Let me check ", "done": False})
        await call(agent, "submit_response", {**ids, "content": "that.", "tool_calls": [
            {"id": "call_w1", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]})
        out = answer_of(pending)
    assert out["reasoning"] == "The user wants weather. "
    assert out["content"] == "Let me check that."
    assert out["finish"] == "tool_calls"
    assert out["tool"]["id"] == "call_w1" and out["tool"]["name"] == "get_weather"
    assert json.loads(out["tool"]["arguments"]) == {"city": "Paris"}


async def test_not_streamed_with_tool_call_over_stdio(void, model):
    async with agent_stdio() as agent:
        pending = background(void.chat.completions.create, model=model, tools=WEATHER,
                             messages=user("weather in Oslo?"))
        request = await take(agent)
        done = await call(agent, "submit_response", {
            "request_id": request["request_id"], "lease_id": request["lease_id"],
            "reasoning": "Oslo, so call the tool.",
            "tool_calls": [{"type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}],
            "wait_for_next": True})
        assert done["status"] == "answered" and done["next"]["status"] == "idle"
        out = answer_of(pending)
    message = out.choices[0].message
    assert out.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.name == "get_weather"
    assert message.tool_calls[0].id.startswith("call_")
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert (message.model_extra or {}).get("reasoning_content") == "Oslo, so call the tool."


async def test_streamed_text_over_stdio_and_no_native_calls_without_tools(void, model):
    def editor():
        return read_stream_as_void(void.chat.completions.create(
            model=model, stream=True, messages=user("<SYSTEM_MESSAGE>be brief</SYSTEM_MESSAGE> hello")))

    async with agent_stdio() as agent:
        pending = background(editor)
        request = await take(agent)
        ids = {"request_id": request["request_id"], "lease_id": request["lease_id"]}
        assert "no tool_calls" in request["answer_with"]
        why = await refused(agent, "submit_response", {**ids, "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {}}}]})
        assert "no tools" in why
        for piece in ["Hello", ", ", "world"]:
            await call(agent, "submit_response", {**ids, "content": piece, "done": False})
        await call(agent, "submit_response", {**ids, "done": True})
        out = answer_of(pending)
    assert out == {"content": "Hello, world", "reasoning": "", "finish": "stop", "tool": None}


async def test_several_queued_requests_answered_out_of_order(void, model):
    words = ["one", "two", "three"]
    pending = {w: background(void.chat.completions.create, model=model, messages=user(w)) for w in words}
    async with agent_http() as agent:
        await status_until(agent, lambda s: s["queue_depth"] == 3)
        taken = [await take(agent) for _ in words]
        status = await call(agent, "get_status")
        assert status["queue_depth"] == 0 and status["leased"] == 3
        for request in reversed(taken):
            word = request["messages"][-1]["content"]
            await call(agent, "submit_response", {"request_id": request["request_id"],
                                                  "lease_id": request["lease_id"],
                                                  "content": f"answer to {word}"})
    assert sorted(r["messages"][-1]["content"] for r in taken) == sorted(words)
    for word, future in pending.items():
        assert answer_of(future).choices[0].message.content == f"answer to {word}"


async def test_a_lapsed_lease_hands_the_request_out_again_and_it_is_answered_once(void, model):
    pending = background(void.chat.completions.create, model=model, messages=user("lease me"))
    async with agent_http() as first, agent_stdio() as second:
        before = (await call(first, "get_status"))["lease_expiries"]
        lost = await take(first)
        assert lost["attempt"] == 1 and lost["lease_seconds"] == 2
        # The first agent goes quiet; after LEASE_TIMEOUT the request is handed out again.
        again = await take(second)
        assert again["request_id"] == lost["request_id"] and again["attempt"] == 2
        assert again["lease_id"] != lost["lease_id"]
        why = await refused(first, "submit_response", {"request_id": lost["request_id"],
                                                      "lease_id": lost["lease_id"], "content": "late"})
        assert "handed out again" in why
        await call(second, "submit_response", {"request_id": again["request_id"],
                                               "lease_id": again["lease_id"], "content": "on time"})
        why = await refused(second, "submit_response", {"request_id": again["request_id"],
                                                       "lease_id": again["lease_id"], "content": "twice"})
        assert "already answered" in why
        assert (await call(first, "wait_for_request"))["status"] == "idle"
        assert (await call(first, "get_status"))["lease_expiries"] >= before + 1
    assert answer_of(pending).choices[0].message.content == "on time"


async def test_the_editor_going_away_withdraws_the_request(void, model):
    def editor():
        with void.chat.completions.create(model=model, stream=True, messages=user("long story")) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    # Void's stop button: close the body after the first words.
                    return chunk.choices[0].delta.content
        return None

    async with agent_http() as agent:
        before = (await call(agent, "get_status"))["cancelled"]
        pending = background(editor)
        request = await take(agent)
        ids = {"request_id": request["request_id"], "lease_id": request["lease_id"]}
        await call(agent, "submit_response", {**ids, "content": "Once upon a time", "done": False})
        assert answer_of(pending) == "Once upon a time"
        # The cancel travels gateway -> bridge-agent -> mcp-bridge; the agent's next part is refused.
        with anyio.fail_after(20):
            while True:
                result = await agent.call_tool("submit_response", {**ids, "content": " more", "done": False})
                if result.is_error:
                    why = result.content[0].text
                    break
                await anyio.sleep(0.1)
        assert "cancelled" in why and "went away" in why
        status = await call(agent, "get_status")
        assert status["cancelled"] == before + 1 and status["leased"] == 0


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_cancelled_long_poll_takes_no_request(void, model, transport):
    connect = agent_http if transport == "http" else agent_stdio
    async with connect() as agent:
        with anyio.move_on_after(0.5):
            await agent.call_tool("wait_for_request", {"timeout_seconds": 60})
        await status_until(agent, lambda s: s["waiting_polls"] == 0)
        pending = background(void.chat.completions.create, model=model, messages=user("after cancel"))
        request = await take(agent)
        assert request["attempt"] == 1, "the cancelled poll must not have taken it"
        await call(agent, "submit_response", {"request_id": request["request_id"],
                                              "lease_id": request["lease_id"], "content": "ok"})
    assert answer_of(pending).choices[0].message.content == "ok"


async def test_fail_request_reaches_the_editor(void, model):
    pending = background(void.chat.completions.create, model=model, messages=user("impossible"))
    async with agent_http(mode="auto") as agent:
        request = await take(agent)
        await call(agent, "fail_request", {"request_id": request["request_id"],
                                           "lease_id": request["lease_id"],
                                           "reason": "I cannot answer that here"})
    with pytest.raises(openai.APIStatusError) as err:
        answer_of(pending)
    assert "I cannot answer that here" in str(err.value)


async def test_a_disconnecting_agent_logs_nothing(caplog):
    """The official client ends its HTTP session with a DELETE on the way out, and logs any
    answer but 200 or 204 as a failure: mcp-bridge answers 204."""
    with caplog.at_level(logging.DEBUG, logger="mcp"):
        async with agent_http() as agent:
            await call(agent, "get_status")
    complaints = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert complaints == [], complaints
