"""The official `openai` package against the real gateway: what editors and scripts rely on."""
import json
import re

import openai
import pytest


def user(text: str) -> list:
    return [{"role": "user", "content": text}]


WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}]


def test_models_list_and_retrieve(client, model):
    ids = [m.id for m in client.models.list()]
    assert ids == [model]
    assert client.models.retrieve(model).id == model


def test_chat_not_streamed(client, model):
    out = client.chat.completions.create(model=model, messages=user("hello sdk"))
    assert out.object == "chat.completion"
    assert out.choices[0].message.content == "echo: hello sdk"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens > 0


def test_chat_streamed_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model, messages=user("[[chunks:4]] streamed words here"), stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "echo: streamed words here"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_reasoning_streams_as_reasoning_content(client, model):
    stream = client.chat.completions.create(model=model, messages=user("[[reasoning]] think"), stream=True)
    reasoning, content = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            reasoning += extra.get("reasoning_content") or ""
            content += choice.delta.content or ""
    assert reasoning
    assert content == "echo: think"


def test_tool_call_streamed_as_void_accumulates_it(client, model):
    stream = client.chat.completions.create(
        model=model, messages=user("[[tool]] weather in Paris"), tools=WEATHER, stream=True,
    )
    call = {"id": None, "name": None, "arguments": ""}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                assert tc.index == 0
                call["id"] = call["id"] or tc.id
                if tc.function and tc.function.name:
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
    assert finish == "tool_calls"
    assert call["id"] == "call_1" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}


def test_tool_call_not_streamed(client, model):
    out = client.chat.completions.create(model=model, messages=user("[[tool]] weather"), tools=WEATHER)
    message = out.choices[0].message
    assert out.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls[0].function.name == "get_weather"
    assert json.loads(message.tool_calls[0].function.arguments) == {"city": "Paris"}


def test_wrong_key_raises_authentication_error(client, model):
    bad = client.with_options(api_key="not-the-key-but-long-enough-0123456789")
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model=model, messages=user("hi"))
    assert err.value.status_code == 401
    assert err.value.code == "invalid_api_key"


def test_invalid_request_raises_bad_request_error(client, small_client, model):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=user("hi"), temperature=5)
    assert err.value.param == "temperature"
    # Every name is served by default; a gateway narrowed by LOCAL_PROVIDER_MODEL_ALIASES
    # refuses other names as OpenAI does.
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as err:
        small_client.models.retrieve("gpt-4o")
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as err:
        small_client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert err.value.param == "model"


def test_rate_limit_raises_rate_limit_error_with_retry_after(limited_client, model):
    limited_client.chat.completions.create(model=model, messages=user("first"))
    with pytest.raises(openai.RateLimitError) as err:
        limited_client.chat.completions.create(model=model, messages=user("second"))
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_bridge_agent_down_raises_a_503(down_client, model):
    with pytest.raises(openai.InternalServerError) as err:
        down_client.chat.completions.create(model=model, messages=user("anyone?"))
    assert err.value.status_code == 503
    assert err.value.code == "bridge_agent_unavailable"


def test_error_inside_a_stream_raises(client, model):
    stream = client.chat.completions.create(model=model, messages=user("[[fail]]"), stream=True)
    with pytest.raises(openai.APIError) as err:
        for _ in stream:
            pass
    assert "scripted failure" in str(err.value)


# About 3,000 tokens: more than the 2,000-token context of the small gateway.
TOO_LONG = "context-overflow " + "lorem ipsum dolor sit amet " * 500
CONTEXT = re.compile(
    r"This model's maximum context length is 2000 tokens\. However, your messages resulted in (\d+) "
    r"tokens \((\d+) in the messages, (\d+) in the completion\)\. Please reduce the length of the "
    r"messages or completion\.")


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_is_a_400_context_length_exceeded(small_client, model, stream):
    with pytest.raises(openai.BadRequestError) as raised:
        small_client.chat.completions.create(model=model, messages=user(TOO_LONG), stream=stream)
    err = raised.value
    assert err.status_code == 400
    assert (err.code, err.param, err.type) == ("context_length_exceeded", "messages", "invalid_request_error")
    body = err.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    total, prompt, output = map(int, CONTEXT.fullmatch(body["error"]["message"]).groups())
    assert total == prompt + output and prompt > 2000 and output == 1024
    assert err.response.headers["x-should-retry"] == "false"
    assert err.response.headers["content-type"] == "application/json"


def test_max_tokens_counts_towards_the_context(small_client, model):
    with pytest.raises(openai.BadRequestError) as raised:
        small_client.chat.completions.create(model=model, messages=user("context-overflow by max_tokens"),
                                             max_tokens=1990)
    total, prompt, output = map(int, CONTEXT.fullmatch(raised.value.body["message"]).groups())
    assert output == 1990 and total == prompt + 1990
    fits = small_client.chat.completions.create(model=model, messages=user("fits-the-context"), max_tokens=100)
    assert fits.choices[0].message.content == "echo: fits-the-context"


def test_a_completion_prompt_over_the_context_names_prompt(small_client, model):
    with pytest.raises(openai.BadRequestError) as raised:
        small_client.completions.create(model=model, prompt=TOO_LONG, suffix="\n", max_tokens=64)
    err = raised.value
    assert (err.code, err.param) == ("context_length_exceeded", "prompt")
    assert "maximum context length is 2000 tokens. However, your prompt resulted in" in err.body["message"]
