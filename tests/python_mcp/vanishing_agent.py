"""An agent process for test_vanished.py: an official `mcp` client over Streamable HTTP that either
long-polls once (`poll`) or takes one request (`take`) and then waits, never answering, until the
test kills it. It prints one JSON line when it is polling and one for what it got."""
import asyncio
import json
import sys

from conftest import agent_http, call


async def main(mode: str) -> None:
    async with agent_http() as agent:
        print(json.dumps({"polling": True}), flush=True)
        while True:
            got = await call(agent, "wait_for_request", {"timeout_seconds": 120})
            print(json.dumps({"got": got.get("status"), "request_id": got.get("request_id")}), flush=True)
            if mode == "poll" or got.get("status") == "request":
                break
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
