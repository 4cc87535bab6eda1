"""The official `ollama` package, and the OpenAI SDK's legacy completions, against the gateway:
what editors' "local model" settings and autocomplete use."""
import os

import ollama
import openai
import pytest

WEATHER = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}]


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through `scripts/test.sh`")
    return value


@pytest.fixture(scope="module")
def keyed() -> ollama.Client:
    return ollama.Client(host=_env("GW_ROOT_URL"), headers={"Authorization": f"Bearer {_env('GW_KEY')}"})


@pytest.fixture(scope="module")
def keyless() -> ollama.Client:
    """No key, as VoidEditor's Ollama provider calls."""
    return ollama.Client(host=_env("GW_ROOT_URL"))


@pytest.fixture(scope="module")
def opted_in() -> ollama.Client:
    """No key, on a gateway with LOCAL_PROVIDER_ALLOW_KEYLESS_GENERATION=true."""
    return ollama.Client(host=_env("GW_KEYLESS_ROOT_URL"))


def test_list_and_show_need_no_key(keyless, model):
    models = keyless.list().models
    assert [m.model for m in models] == [model]
    assert models[0].details.family
    shown = keyless.show(model)
    assert "completion" in shown.capabilities and "tools" in shown.capabilities
    assert any(k.endswith("context_length") for k in shown.modelinfo)
    assert keyless.show(f"{model}:latest").capabilities
    # `ollama ps`: the model is always loaded, with the gateway's context window.
    running = keyless.ps().models
    assert [m.model for m in running] == [model]
    assert running[0].expires_at is not None and running[0].size_vram == 0


def test_chat_not_streamed(keyed, model):
    out = keyed.chat(model=model, messages=[{"role": "user", "content": "hello ollama"}], stream=False)
    assert out.message.role == "assistant"
    assert out.message.content == "echo: hello ollama"
    assert out.done and out.done_reason == "stop"
    assert out.eval_count > 0 and out.prompt_eval_count > 0


def test_chat_streamed(keyed, model):
    parts = list(keyed.chat(model=f"{model}:latest",
                            messages=[{"role": "user", "content": "[[chunks:3]] stream it"}], stream=True))
    assert "".join(p.message.content for p in parts) == "echo: stream it"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].done_reason == "stop"


def test_chat_tool_call_arrives_with_object_arguments(keyed, model):
    for stream in (False, True):
        if stream:
            parts = list(keyed.chat(model=model, messages=[{"role": "user", "content": "[[tool]] weather"}],
                                    tools=WEATHER, stream=True))
            calls = [c for p in parts for c in (p.message.tool_calls or [])]
        else:
            out = keyed.chat(model=model, messages=[{"role": "user", "content": "[[tool]] weather"}],
                             tools=WEATHER, stream=False)
            calls = out.message.tool_calls
        assert len(calls) == 1, calls
        assert calls[0].function.name == "get_weather"
        assert dict(calls[0].function.arguments) == {"city": "Paris"}


def test_generate_fill_in_the_middle_streamed_raw(keyed, model):
    parts = list(keyed.generate(model=model, prompt="def add(a, b):\n    ", suffix="\n    return c",
                                raw=True, stream=True, options={"num_predict": 64, "temperature": 0.2}))
    assert "".join(p.response for p in parts) == "echo: def add(a, b):"
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_errors_inside_a_stream_raise(keyed, model):
    with pytest.raises(ollama.ResponseError) as err:
        for _ in keyed.chat(model=model, messages=[{"role": "user", "content": "[[fail]]"}], stream=True):
            pass
    assert "scripted failure" in str(err.value)


def test_any_model_name_is_served_unless_narrowed(keyed):
    out = keyed.chat(model="llama3", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert out.model == "llama3" and out.message.content == "echo: hi"
    # The small gateway answers only to its own name (LOCAL_PROVIDER_MODEL_ALIASES).
    small = ollama.Client(host=_env("GW_SMALL_ROOT_URL"), headers={"Authorization": f"Bearer {_env('GW_KEY')}"})
    with pytest.raises(ollama.ResponseError) as err:
        small.chat(model="llama3", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert err.value.status_code == 404
    assert err.value.error == 'model "llama3" not found, try pulling it first'


def test_keyless_generation_is_refused_by_default(keyless, model):
    with pytest.raises(ollama.ResponseError) as err:
        keyless.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=False)
    assert err.value.status_code == 401


def test_keyless_generation_works_when_opted_in(opted_in, model):
    out = opted_in.generate(model=model, prompt="complete me", stream=False)
    assert out.response == "echo: complete me"
    out = opted_in.chat(model=model, messages=[{"role": "user", "content": "no key"}], stream=False)
    assert out.message.content == "echo: no key"


def test_openai_legacy_completions_for_autocomplete(client, model):
    # Exactly what VoidEditor's autocomplete sends.
    out = client.completions.create(model=model, prompt="let x = ", suffix=";\n", stop=["\n\n"], max_tokens=300)
    assert out.object == "text_completion"
    assert out.choices[0].text == "echo: let x ="
    assert out.usage.completion_tokens > 0
    stream = client.completions.create(model=model, prompt="[[chunks:3]] fn main", suffix="}", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "echo: fn main"


def test_over_the_context_is_a_400_in_ollamas_shape():
    small = ollama.Client(host=_env("GW_SMALL_ROOT_URL"), headers={"Authorization": f"Bearer {_env('GW_KEY')}"})
    model = _env("GW_MODEL")
    too_long = "context-overflow " + "lorem ipsum dolor sit amet " * 500
    with pytest.raises(ollama.ResponseError) as raised:
        small.chat(model=model, messages=[{"role": "user", "content": too_long}], stream=False)
    assert raised.value.status_code == 400
    assert raised.value.error.startswith("This model's maximum context length is 2000 tokens. However, your messages")
    with pytest.raises(ollama.ResponseError) as raised:
        list(small.generate(model=model, prompt=too_long, stream=True))
    assert raised.value.status_code == 400
    assert "However, your prompt resulted in" in raised.value.error
    # The model reports that window, as Ollama reports num_ctx.
    shown = small.show(model)
    assert shown.modelinfo["cursor-agent.context_length"] == 2000
    assert shown.parameters.split() == ["num_ctx", "2000"]
