"""The agent's figures are advisory: whatever it claims through the tools, the editor is shown
only what is possible and the next requests are served as if it had claimed nothing."""
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from conftest import agent_http, call, refused, take, user

pytestmark = pytest.mark.anyio

pool = ThreadPoolExecutor(max_workers=4)

HUGE = 10**18
U64_MAX = 2**64 - 1


def chat(void, model, text, **extra):
    """A chat as Void sends it, with the raw response so the rate-limit headers can be read."""
    return pool.submit(lambda: void.chat.completions.with_raw_response.create(
        model=model, messages=user(text), **extra))


def remaining_tokens(raw) -> int:
    return int(raw.headers["x-ratelimit-remaining-tokens"])


async def answer(agent, usage: dict, content: str = "ok") -> dict:
    request = await take(agent)
    done = await call(agent, "submit_response", {"request_id": request["request_id"],
                                                 "lease_id": request["lease_id"],
                                                 "content": content, "usage": usage})
    assert done["status"] == "answered"
    return request


async def test_claimed_usage_is_held_to_the_request_and_charges_nothing_more(void, model):
    async with agent_http() as agent:
        # With max_tokens: no more completion tokens than it allows, no more prompt tokens than
        # the gateway counted.
        pending = chat(void, model, "count this", max_tokens=64)
        await answer(agent, {"prompt_tokens": HUGE, "completion_tokens": HUGE})
        raw = pending.result(timeout=30)
        usage = raw.parse().usage
        assert usage.completion_tokens == 64, usage
        assert 0 < usage.prompt_tokens < 100, usage
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

        # The largest numbers the schema takes: saturating sums, not a failed tool call.
        pending = chat(void, model, "and this")
        await answer(agent, {"prompt_tokens": U64_MAX, "completion_tokens": U64_MAX})
        usage = pending.result(timeout=30).parse().usage
        assert usage.prompt_tokens < 100 and usage.completion_tokens < 200_000, usage

        # Beyond 2^64 - 1 the counts stand at it; a count that is no count is refused, and the
        # agent can answer again.
        pending = chat(void, model, "and beyond", max_tokens=10)
        request = await take(agent)
        ids = {"request_id": request["request_id"], "lease_id": request["lease_id"]}
        why = await refused(agent, "submit_response", {**ids, "content": "x",
                                                        "usage": {"prompt_tokens": -1,
                                                                  "completion_tokens": 1}})
        assert "tokens" in why or "u64" in why, why
        await call(agent, "submit_response", {**ids, "content": "fine",
                                              "usage": {"prompt_tokens": 10**20, "completion_tokens": 10**30}})
        out = pending.result(timeout=30).parse()
        assert out.choices[0].message.content == "fine"
        assert out.usage.completion_tokens == 10 and out.usage.prompt_tokens < 100, out.usage

        # The books were charged what the gateway counted: the next chats are served at once,
        # with nearly the whole budget left.
        for i in range(3):
            pending = chat(void, model, f"normal request {i}")
            await answer(agent, {"prompt_tokens": 5, "completion_tokens": 1})
            raw = pending.result(timeout=30)
            assert raw.http_response.status_code == 200
            assert remaining_tokens(raw) > 90_000, raw.headers


async def test_other_figures_are_checked_too(void, model):
    async with agent_http() as agent:
        pending = chat(void, model, "a page too far")
        request = await take(agent)
        ids = {"request_id": request["request_id"], "lease_id": request["lease_id"]}
        why = await refused(agent, "get_conversation", {"request_id": request["request_id"],
                                                         "from": U64_MAX})
        assert why.startswith("from:"), why
        # The agent cannot speak for the transport: a code that would make the editor retry
        # (503 shutting_down) is refused, its own code goes through.
        why = await refused(agent, "fail_request", {**ids, "reason": "pretend", "code": "shutting_down"})
        assert "agent_error" in why, why
        await call(agent, "fail_request", {**ids, "reason": "cannot here", "code": "cannot_edit_files"})
        with pytest.raises(openai.APIStatusError) as err:
            pending.result(timeout=30)
        assert err.value.status_code == 502
        assert "cannot here" in str(err.value)
