"""An MCP agent for the real coding CLIs (tests/blackbox/coding_clients.rs): it plays the Cursor
agent with the official `mcp` package against the real mcp-bridge, and answers each request the
way the client can act on:

- a request whose tools include the client's file-writing tool (Claude Code's `Write`, Codex's
  `apply_patch` or its code-mode `exec`, a shell tool) and whose conversation does not end in a
  tool result: a call of that tool writing `--content` to `--dir`/`--name`;
- a request whose conversation ends in a tool result: a short final text;
- with `--search`/`--replace` (aider, which has no tools): a SEARCH/REPLACE block in aider's
  `diff` edit format for the file named `--name`;
- anything else (the clients' background calls: titles, summaries): a short text.

Every request it takes is written to `--log` as one JSON line (api, model, tools, roles, what it
answered), for the test to check what reached the agent.

    MB_MCP_URL=… MB_MCP_TOKEN=… python coding_agent.py --log FILE --dir DIR --name NAME --content TEXT
"""
import argparse
import json
import os
import sys
from pathlib import Path

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients"))
from answers import chat_tools, write_call  # noqa: E402

FINAL = "Done: the file is written."


def aider_block(name: str, search: str, replace: str) -> str:
    return (f"I will change it.\n\n{name}\n```\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n"
            f">>>>>>> REPLACE\n```\n")


def decide(request: dict, args) -> dict:
    """The `submit_response` arguments (besides the ids) answering `request`."""
    messages = request.get("messages") or []
    parameters = request.get("parameters") or {}
    tools = chat_tools(parameters.get("tools"))
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return {"content": FINAL}
    if args.search is not None and not tools:
        return {"content": aider_block(args.name, args.search, args.replace)}
    call = write_call(tools, args.dir, args.name, args.content) if tools else None
    if call:
        name, arguments = call
        return {"tool_calls": [{"id": "call_write_1", "type": "function",
                                "function": {"name": name, "arguments": arguments}}]}
    return {"content": "OK."}


async def call(client, tool: str, arguments: dict) -> dict:
    result = await client.call_tool(tool, arguments)
    text = result.content[0].text
    if result.is_error:
        raise RuntimeError(f"{tool} refused: {text}")
    return json.loads(text)


async def serve(args):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {os.environ['MB_MCP_TOKEN']}"})
    async with http:
        # A request handed out whole (aider's 300 KB file) is one SSE event: past the client's
        # default bound of 1 MiB once escaped, so the bound is raised.
        transport = streamable_http_client(os.environ["MB_MCP_URL"], http_client=http,
                                           max_sse_event_size=64 * 1024 * 1024)
        async with Client(transport, mode="legacy") as client:
            Path(args.log).touch()
            while True:
                got = await call(client, "wait_for_request", {"timeout_seconds": 10, "full": True})
                if got["status"] != "request":
                    continue
                answer = decide(got, args) if got.get("kind") == "chat" else {"content": "pass"}
                parameters = got.get("parameters") or {}
                entry = {
                    "kind": got.get("kind"),
                    "api": parameters.get("api"),
                    "model": parameters.get("model"),
                    "max_tokens": parameters.get("max_tokens"),
                    "stream": got.get("stream"),
                    "tools": [name for name, _ in chat_tools(parameters.get("tools"))],
                    "roles": [m.get("role") for m in got.get("messages") or []],
                    "prompt_bytes": len(json.dumps(got.get("messages") or [])),
                    "answered": "tool_calls" if "tool_calls" in answer else "text",
                    "tool": answer["tool_calls"][0]["function"]["name"] if "tool_calls" in answer else None,
                }
                await call(client, "submit_response",
                           dict(answer, request_id=got["request_id"], lease_id=got["lease_id"]))
                with open(args.log, "a") as log:
                    log.write(json.dumps(entry) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True)
    parser.add_argument("--dir", required=True, help="the directory the file is written in")
    parser.add_argument("--name", required=True, help="the file's name (relative to --dir)")
    parser.add_argument("--content", default="hello from the agent\n")
    parser.add_argument("--search", help="aider: the text to replace in --name")
    parser.add_argument("--replace", default="")
    args = parser.parse_args()
    anyio.run(serve, args)


if __name__ == "__main__":
    main()
