"""Sampling off (the default): a client that declares sampling is never asked; requests wait for
the tool loop."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Sampler, call, sampling_agent_http, take, user

pytestmark = pytest.mark.anyio

pool = ThreadPoolExecutor(max_workers=2)


async def test_a_sampling_client_is_never_asked(void, model):
    sampler = Sampler(lambda params: pytest.fail("sampling is off, yet the client was asked"))
    async with sampling_agent_http(sampler) as agent:
        assert (await call(agent, "get_status"))["sampling_clients"] == 0
        pending = pool.submit(void.chat.completions.create, model=model, messages=user("ping"))
        request = await take(agent)
        assert request["messages"] == user("ping")
        await call(agent, "submit_response", {"request_id": request["request_id"],
                                              "lease_id": request["lease_id"], "content": "pong"})
        assert pending.result(timeout=30).choices[0].message.content == "pong"
        assert sampler.asked == []
