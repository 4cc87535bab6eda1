"""An agent for the shared-queue tests (tests/blackbox/shared_queue.rs): the official `mcp` client
against one mcp-bridge, taking requests and answering each in `--parts` parts ("<name>:<i> ").
It writes what it does to `--log`, one JSON line each: `taken` (id, attempt), `part` (id, n),
`answered` (id), `refused` (id, why). It reconnects when its mcp-bridge goes away.

- `--gate FILE`: after the first part of an answer, wait until FILE exists before the rest (so a
  test can act mid-answer without timing);
- `--hold`: take one request and never answer it (a test then kills the agent).

    MB_MCP_URL=… MB_MCP_TOKEN=… python queue_agent.py --name A --log FILE [--parts N] [--gate F] [--hold]
"""
import argparse
import json
import os
import time
from pathlib import Path

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def log(path: str, **entry) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Refused(Exception):
    pass


async def call(client, tool: str, arguments: dict) -> dict:
    result = await client.call_tool(tool, arguments)
    text = result.content[0].text
    if result.is_error:
        raise Refused(text)
    return json.loads(text)


async def answer(client, got: dict, args) -> None:
    ids = {"request_id": got["request_id"], "lease_id": got["lease_id"]}
    for i in range(1, args.parts + 1):
        if i == 2 and args.gate:
            while not Path(args.gate).exists():
                await anyio.sleep(0.02)
        await call(client, "submit_response",
                   dict(ids, content=f"{args.name}:{i} ", done=i == args.parts))
        log(args.log, event="part", id=got["request_id"], n=i)
    log(args.log, event="answered", id=got["request_id"])


async def session(args) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {os.environ['MB_MCP_TOKEN']}"})
    async with http:
        transport = streamable_http_client(os.environ["MB_MCP_URL"], http_client=http)
        async with Client(transport, mode="legacy") as client:
            log(args.log, event="connected", agent=args.name)
            while True:
                got = await call(client, "wait_for_request", {"timeout_seconds": 10, "full": True})
                if got.get("status") != "request":
                    continue
                log(args.log, event="taken", id=got["request_id"], agent=args.name,
                    attempt=got.get("attempt"))
                if args.hold:
                    await anyio.sleep(3600)
                try:
                    await answer(client, got, args)
                except Refused as why:
                    log(args.log, event="refused", id=got["request_id"], why=str(why))


async def serve(args) -> None:
    Path(args.log).touch()
    while True:
        try:
            await session(args)
        except Exception as e:  # its mcp-bridge went away: connect again
            log(args.log, event="disconnected", why=repr(e)[:300])
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--gate")
    parser.add_argument("--hold", action="store_true")
    anyio.run(serve, parser.parse_args())


if __name__ == "__main__":
    main()
