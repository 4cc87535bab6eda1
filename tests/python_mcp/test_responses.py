"""OpenAI's Responses API through the gateway: the official `openai` package and the OpenAI Agents
SDK as the clients, the `mcp` package as the Cursor agent answering through mcp-bridge."""
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import anyio
import openai
import pytest
from pydantic import BaseModel

from conftest import agent_http, call, env, take, user

pytestmark = pytest.mark.anyio

WEATHER = [{
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]
# What the agent receives: the same tool as a chat tool.
CHAT_WEATHER = [{"type": "function", "function": {k: v for k, v in WEATHER[0].items() if k != "type"}}]

pool = ThreadPoolExecutor(max_workers=4)


def background(fn, *args, **kwargs):
    """Runs a blocking client call beside the agent."""
    return pool.submit(fn, *args, **kwargs)


def answer_of(future, timeout: float = 30):
    return future.result(timeout=timeout)


def ids_of(request: dict) -> dict:
    return {"request_id": request["request_id"], "lease_id": request["lease_id"]}


async def test_not_streamed_text_and_reasoning(void, model):
    async with agent_http() as agent:
        pending = background(void.responses.create, model=model, instructions="Be brief.", input="ping",
                             max_output_tokens=64, temperature=0.2)
        request = await take(agent)
        assert request["kind"] == "chat" and request["stream"] is False
        assert request["messages"] == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "ping"}]
        params = request["parameters"]
        assert params["api"] == "responses" and params["max_tokens"] == 64 and params["temperature"] == 0.2
        await call(agent, "submit_response", {**ids_of(request), "reasoning": "A short answer.",
                                              "content": "pong"})
        out = answer_of(pending)
    assert out.object == "response" and out.status == "completed" and out.id.startswith("resp_")
    assert out.output_text == "pong"
    assert [item.type for item in out.output] == ["reasoning", "message"]
    assert out.output[0].summary[0].text == "A short answer."
    assert out.store is False and out.previous_response_id is None
    assert out.usage.total_tokens == out.usage.input_tokens + out.usage.output_tokens
    assert out.usage.input_tokens > 0 and out.usage.output_tokens > 0


async def test_streamed_events_in_order_with_sequence_numbers(void, model):
    def client():
        return list(void.responses.create(model=model, input="tell me", stream=True))

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        assert request["stream"] is True
        await call(agent, "submit_response", {**ids_of(request), "reasoning": "Greeting.", "done": False})
        await call(agent, "submit_response", {**ids_of(request), "content": "Hello", "done": False})
        await call(agent, "submit_response", {**ids_of(request), "content": " world"})
        events = answer_of(pending)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed",
    ], kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Hello", " world"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    done = events[-1].response
    assert done.status == "completed" and done.output_text == "Hello world"
    assert done.id == events[0].response.id and done.usage.output_tokens > 0


async def test_function_tool_round_trip(void, model):
    question = [{"role": "user", "content": "weather in Oslo?"}]
    async with agent_http() as agent:
        pending = background(void.responses.create, model=model, input=question, tools=WEATHER)
        request = await take(agent)
        assert request["parameters"]["tools"] == CHAT_WEATHER
        assert "native tool_calls allowed" in request["answer_with"]
        await call(agent, "submit_response", {**ids_of(request), "tool_calls": [
            {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]})
        first = answer_of(pending)
        calls = [item for item in first.output if item.type == "function_call"]
        assert len(calls) == 1 and first.status == "completed"
        assert calls[0].call_id == "call_w1" and calls[0].name == "get_weather"
        assert json.loads(calls[0].arguments) == {"city": "Oslo"}

        # The second turn sends the call back with its output, streamed through the SDK's
        # accumulating helper, which checks every event against the items so far.
        turn = question + [item.model_dump(exclude_none=True) for item in first.output] + [
            {"type": "function_call_output", "call_id": "call_w1", "output": "21C and sunny"}]

        def second():
            with void.responses.stream(model=model, input=turn, tools=WEATHER) as stream:
                return stream.get_final_response()

        pending = background(second)
        request = await take(agent, args={"full": True})  # the whole conversation, to check its conversion
        messages = request["messages"]
        assert messages[0] == question[0]
        assert messages[1]["role"] == "assistant" and messages[1]["tool_calls"][0]["id"] == "call_w1"
        assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
        assert messages[2] == {"role": "tool", "tool_call_id": "call_w1", "content": "21C and sunny"}
        for piece in ["It is 21C ", "and sunny in Oslo."]:
            await call(agent, "submit_response", {**ids_of(request), "content": piece, "done": False})
        await call(agent, "submit_response", {**ids_of(request), "done": True})
        final = answer_of(pending)
    assert final.output_text == "It is 21C and sunny in Oslo."


class City(BaseModel):
    name: str
    population: int


async def test_structured_output(void, model):
    async with agent_http() as agent:
        pending = background(void.responses.parse, model=model, input="largest city of Norway?", text_format=City)
        request = await take(agent)
        schema = request["parameters"]["response_format"]
        assert schema["type"] == "json_schema" and schema["json_schema"]["name"] == "City"
        assert set(schema["json_schema"]["schema"]["properties"]) == {"name", "population"}
        await call(agent, "submit_response", {**ids_of(request),
                                              "content": json.dumps({"name": "Oslo", "population": 717710})})
        out = answer_of(pending)
    assert out.output_parsed == City(name="Oslo", population=717710)


async def test_agents_sdk_runs_an_agent_with_a_function_tool(model):
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # no traces leave the machine
    looked_up = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather of a city."""
        looked_up.append(city)
        return f"21C in {city}"

    async def run(streamed: bool):
        # Closed before its event loop ends, so no connection is left for another loop to close.
        async with openai.AsyncOpenAI(base_url=env("GW_BASE_URL"), api_key=env("GW_KEY"),
                                      max_retries=0) as client:
            weather = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather],
                            model=OpenAIResponsesModel(model=model, openai_client=client))
            if not streamed:
                return (await Runner.run(weather, "weather in Bergen?")).final_output
            result = Runner.run_streamed(weather, "weather in Bergen?")
            async for _ in result.stream_events():
                pass
            return result.final_output

    for streamed in [False, True]:
        looked_up.clear()
        async with agent_http() as agent:
            pending = background(asyncio.run, run(streamed))
            request = await take(agent)
            assert request["stream"] is streamed
            assert request["messages"][0] == {"role": "system", "content": "Answer with the weather."}
            assert [t["function"]["name"] for t in request["parameters"]["tools"]] == ["get_weather"]
            await call(agent, "submit_response", {**ids_of(request), "tool_calls": [
                {"id": "call_b1", "type": "function",
                 "function": {"name": "get_weather", "arguments": {"city": "Bergen"}}}]})
            request = await take(agent)
            tool = [m for m in request["messages"] if m["role"] == "tool"]
            assert tool == [{"role": "tool", "tool_call_id": "call_b1", "content": "21C in Bergen"}]
            await call(agent, "submit_response", {**ids_of(request), "content": "Bergen: 21C."})
            assert answer_of(pending) == "Bergen: 21C."
        assert looked_up == ["Bergen"]


async def test_codex_namespace_and_web_search_tools(void, model):
    """Codex CLI's tools: function tools, a `namespace` of function tools, and the hosted
    `web_search`. The agent gets the namespace's tools under `<namespace>__<name>` and web search
    in `hosted_tools`; its call of a namespaced tool comes back with the tool's own `name` and its
    `namespace`, as Codex routes it."""
    tools = WEATHER + [
        {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
            {"type": "function", "name": "spawn_agent", "description": "Starts a sub-agent.", "strict": False,
             "parameters": {"type": "object", "properties": {"message": {"type": "string"}},
                            "required": ["message"]}}]},
        {"type": "web_search", "external_web_access": True},
    ]

    def client():
        return list(void.responses.create(model="gpt-5-codex", input="delegate it", tools=tools,
                                          stream=True, store=False, parallel_tool_calls=False,
                                          include=["reasoning.encrypted_content"]))

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        params = request["parameters"]
        assert params["model"] == "gpt-5-codex"
        assert [t["function"]["name"] for t in params["tools"]] == ["get_weather", "multi_agent_v1__spawn_agent"]
        assert params["hosted_tools"] == [{"type": "web_search", "external_web_access": True}]
        await call(agent, "submit_response", {**ids_of(request), "tool_calls": [
            {"id": "call_sa", "type": "function",
             "function": {"name": "multi_agent_v1__spawn_agent", "arguments": {"message": "write hello.py"}}}]})
        events = answer_of(pending)
    done = [e for e in events if e.type == "response.output_item.done"][-1].item
    assert done.type == "function_call" and done.call_id == "call_sa"
    assert done.name == "spawn_agent"
    namespace = getattr(done, "namespace", None) or (done.model_extra or {}).get("namespace")
    assert namespace == "multi_agent_v1"
    assert json.loads(done.arguments) == {"message": "write hello.py"}


async def test_what_cannot_be_honoured_is_refused_by_name(void, model):
    cases = {
        "logprobs": lambda: void.chat.completions.create(model=model, messages=user("x"), logprobs=True),
        "top_logprobs": lambda: void.responses.create(model=model, input="x", top_logprobs=2),
        "n": lambda: void.chat.completions.create(model=model, messages=user("x"), n=2),
        "previous_response_id": lambda: void.responses.create(model=model, input="x",
                                                              previous_response_id="resp_123"),
        "tools[0].type": lambda: void.responses.create(model=model, input="x", tools=[
            {"type": "file_search", "vector_store_ids": ["vs_1"]}]),
        "input[0]": lambda: void.responses.create(model=model, input=[{"type": "item_reference", "id": "msg_1"}]),
    }
    for param, make in cases.items():
        with pytest.raises(openai.BadRequestError) as err:
            make()
        assert err.value.param == param, err.value
        assert param in err.value.message


async def test_the_client_going_away_cancels_the_request(void, model):
    def client():
        with void.responses.create(model=model, input="long story", stream=True) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    return event.delta  # closes the body after the first words
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


async def test_an_agent_failure_mid_stream_is_response_failed(void, model):
    def client():
        return list(void.responses.create(model=model, input="try", stream=True))

    async with agent_http() as agent:
        pending = background(client)
        request = await take(agent)
        await call(agent, "submit_response", {**ids_of(request), "content": "Starting", "done": False})
        await call(agent, "fail_request", {**ids_of(request), "reason": "I cannot finish this here"})
        events = answer_of(pending)
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["error", "response.failed"], kinds
    assert "response.completed" not in kinds
    assert "response.output_item.done" in kinds, "the open item is closed first"
    failed = events[-1].response
    assert failed.status == "failed" and "I cannot finish this here" in failed.error.message
    assert failed.output_text == "Starting"


async def test_an_answer_cut_at_the_limit_is_incomplete(void, model):
    def client():
        return list(void.responses.create(model=model, input="long", max_output_tokens=16, stream=True))

    async with agent_http() as agent:
        pending = background(void.responses.create, model=model, input="long", max_output_tokens=16)
        request = await take(agent)
        await call(agent, "submit_response", {**ids_of(request), "content": "Part of it",
                                              "finish_reason": "length"})
        whole = answer_of(pending)
        pending = background(client)
        request = await take(agent)
        await call(agent, "submit_response", {**ids_of(request), "content": "Part of it",
                                              "finish_reason": "length"})
        events = answer_of(pending)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output_text == "Part of it"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
