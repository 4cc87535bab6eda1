"""Anthropic's Messages API through the gateway: the official `anthropic` package as the client,
the `mcp` package as the Cursor agent answering through mcp-bridge."""
import json
from concurrent.futures import ThreadPoolExecutor

import anthropic
import anyio
import pytest

from conftest import agent_http, call, env, take

pytestmark = pytest.mark.anyio

WEATHER = [{
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]

pool = ThreadPoolExecutor(max_workers=4)


def background(fn, *args, **kwargs):
    return pool.submit(fn, *args, **kwargs)


def answer_of(future, timeout: float = 30):
    return future.result(timeout=timeout)


def ids_of(request: dict) -> dict:
    return {"request_id": request["request_id"], "lease_id": request["lease_id"]}


def root(url: str) -> str:
    """The SDK adds `/v1/…` itself: point it at the gateway's root."""
    return url.removesuffix("/v1")


def client_for(url_var: str = "GW_BASE_URL", **kwargs) -> anthropic.Anthropic:
    kwargs.setdefault("api_key", env("GW_KEY"))
    return anthropic.Anthropic(base_url=root(env(url_var)), max_retries=0, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def claude() -> anthropic.Anthropic:
    return client_for()


def hi(text: str = "hi") -> list:
    return [{"role": "user", "content": text}]


async def test_create_with_system_thinking_and_stop_sequences(claude, model):
    async with agent_http() as agent:
        pending = background(claude.messages.create, model=model, max_tokens=64, system="Be brief.",
                             stop_sequences=["END"], messages=hi("ping"))
        request = await take(agent)
        assert request["kind"] == "chat" and request["stream"] is False
        assert request["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "ping"}]
        params = request["parameters"]
        assert params["api"] == "messages" and params["max_tokens"] == 64 and params["stop"] == ["END"]
        await call(agent, "submit_response", {**ids_of(request), "reasoning": "Short.", "content": "pong"})
        out = answer_of(pending)
    assert out.type == "message" and out.role == "assistant" and out.model == model
    assert [b.type for b in out.content] == ["thinking", "text"]
    assert out.content[0].thinking == "Short." and out.content[1].text == "pong"
    assert out.stop_reason == "end_turn"
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0


async def test_stream_text_and_final_message(claude, model):
    def client():
        with claude.messages.stream(model=model, max_tokens=64, messages=hi("greet")) as stream:
            text = "".join(stream.text_stream)
            return text, stream.get_final_message()

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        assert request["stream"] is True
        await call(agent, "submit_response", {**ids_of(request), "reasoning": "A greeting.", "done": False})
        await call(agent, "submit_response", {**ids_of(request), "content": "Hello", "done": False})
        await call(agent, "submit_response", {**ids_of(request), "content": " world"})
        text, final = answer_of(pending)
    assert text == "Hello world"
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "A greeting."
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


async def test_raw_event_sequence(claude, model):
    def client():
        return [e.type for e in claude.messages.create(model=model, max_tokens=64, stream=True,
                                                       tools=WEATHER, messages=hi("weather?"))]

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        await call(agent, "submit_response", {**ids_of(request), "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]})
        kinds = answer_of(pending)
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"], kinds


async def test_tool_use_round_trip(claude, model):
    question = hi("weather in Oslo?")
    async with agent_http() as agent:
        pending = background(claude.messages.create, model=model, max_tokens=256, tools=WEATHER,
                             tool_choice={"type": "auto"}, messages=question)
        request = await take(agent)
        assert request["parameters"]["tools"] == [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city", "parameters": WEATHER[0]["input_schema"]}}]
        await call(agent, "submit_response", {**ids_of(request), "tool_calls": [
            {"id": "toolu_w1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]})
        first = answer_of(pending)
        assert first.stop_reason == "tool_use"
        use = first.content[-1]
        assert use.type == "tool_use" and use.id == "toolu_w1" and use.name == "get_weather"
        assert use.input == {"city": "Oslo"}

        turn = question + [
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21C"}]},
        ]

        def second():
            with claude.messages.stream(model=model, max_tokens=256, tools=WEATHER, messages=turn) as stream:
                return stream.get_final_message()

        pending = background(second)
        request = await take(agent, args={"full": True})  # the whole conversation, to check its conversion
        messages = request["messages"]
        assert messages[1]["tool_calls"][0]["id"] == "toolu_w1"
        assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
        assert messages[2] == {"role": "tool", "tool_call_id": "toolu_w1", "content": "21C"}
        await call(agent, "submit_response", {**ids_of(request), "content": "21C in Oslo."})
        final = answer_of(pending)
    assert final.content[0].text == "21C in Oslo." and final.stop_reason == "end_turn"


async def test_count_tokens_with_either_credential(model):
    for claude in [client_for(), client_for(api_key=None, auth_token=env("GW_KEY"))]:
        plain = claude.messages.count_tokens(model=model, messages=hi("hello world"))
        with_tools = claude.messages.count_tokens(model=model, messages=hi("hello world"), tools=WEATHER,
                                                  system="Be brief.")
        assert 0 < plain.input_tokens < with_tools.input_tokens


async def test_error_classes(claude, model):
    with pytest.raises(anthropic.AuthenticationError) as err:
        client_for(api_key="not-the-key-0123456789abcdef0123456789").messages.create(
            model=model, max_tokens=8, messages=hi())
    assert err.value.body["error"]["type"] == "authentication_error"

    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model=model, max_tokens=8, messages=hi(),
                               tools=[{"type": "code_execution_20250522", "name": "code_execution"}])
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "tools[0].type" in err.value.message

    # Every model name is served by default; a gateway narrowed to its own name
    # (LOCAL_PROVIDER_MODEL_ALIASES) refuses others as Anthropic does.
    narrow = client_for("GW_NARROW_URL")
    with pytest.raises(anthropic.NotFoundError) as err:
        narrow.messages.create(model="another-model", max_tokens=8, messages=hi())
    assert err.value.body["error"]["type"] == "not_found_error"

    # That gateway allows one failed login a minute: the next request gets a 429.
    with pytest.raises(anthropic.AuthenticationError):
        client_for("GW_NARROW_URL", api_key="not-the-key-0123456789abcdef0123456789").messages.create(
            model=model, max_tokens=8, messages=hi())
    with pytest.raises(anthropic.RateLimitError) as err:
        narrow.messages.create(model=model, max_tokens=8, messages=hi())
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert int(err.value.response.headers["retry-after"]) >= 1


async def test_overload_is_529_overloaded_error(model):
    """A gateway that takes one request at a time, busy with one the agent has not answered."""
    single = client_for("GW_SINGLE_URL")
    async with agent_http() as agent:
        pending = background(single.messages.create, model=model, max_tokens=8, messages=hi("first"))
        request = await take(agent)  # the first is in flight once the agent holds it
        with pytest.raises(anthropic.OverloadedError) as err:
            single.messages.create(model=model, max_tokens=8, messages=hi("second"))
        assert err.value.status_code == 529
        assert err.value.body["error"]["type"] == "overloaded_error"
        assert err.value.response.headers["retry-after"] == "1"
        await call(agent, "submit_response", {**ids_of(request), "content": "done"})
        assert answer_of(pending).content[0].text == "done"


async def test_the_client_going_away_cancels_the_request(claude, model):
    def client():
        with claude.messages.stream(model=model, max_tokens=64, messages=hi("long story")) as stream:
            for text in stream.text_stream:
                return text  # closes the body after the first words
        return None

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        await call(agent, "submit_response", {**ids_of(request), "content": "Once upon a time", "done": False})
        assert answer_of(pending) == "Once upon a time"
        with anyio.fail_after(20):
            while True:
                result = await agent.call_tool("submit_response", {**ids_of(request), "content": " more",
                                                                   "done": False})
                if result.is_error:
                    break
                await anyio.sleep(0.1)
        assert "cancelled" in result.content[0].text


async def test_an_agent_failure_mid_stream_is_an_error_event(claude, model):
    def client():
        seen = []
        with claude.messages.stream(model=model, max_tokens=64, messages=hi("try")) as stream:
            for text in stream.text_stream:
                seen.append(text)
        return seen

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        await call(agent, "submit_response", {**ids_of(request), "content": "Starting", "done": False})
        await call(agent, "fail_request", {**ids_of(request), "reason": "I cannot finish this here"})
        with pytest.raises(anthropic.APIStatusError) as err:
            answer_of(pending)
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "api_error"
    assert "I cannot finish this here" in err.value.body["error"]["message"]


async def test_an_answer_cut_at_the_limit_stops_for_max_tokens(claude, model):
    def client():
        with claude.messages.stream(model=model, max_tokens=16, messages=hi("long")) as stream:
            return stream.get_final_message()

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        await call(agent, "submit_response", {**ids_of(request), "content": "Part of it",
                                              "finish_reason": "length"})
        final = answer_of(pending)
    assert final.stop_reason == "max_tokens" and final.content[0].text == "Part of it"
