#!/usr/bin/env python3
"""Replays a 20-turn VoidEditor conversation through the real chain and records what the agent is
handed. Run by `tests/examples/conversation_deltas.rs` (see bench/conversation-deltas.sh), which
starts mcp-bridge, bridge-agent and the gateway and passes their addresses in the environment.

The editor is the official `openai` client sending the whole conversation every turn, as Void
does: a system prompt of Void's size (about 4k tokens: instructions, the workspace's directory
tree, open files), user turns quoting a file excerpt (about 1k tokens each), and every previous
answer. The agent is the official `mcp` client on one MCP session (one serving chat): it takes
each request with `wait_for_request` and answers with `submit_response`. Every tool result the
agent receives is written, as the exact text it read, to the JSON file `REPLAY_OUT`.
"""
import asyncio
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor

import openai
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

TURNS = 20
rng = random.Random(20)
WORDS = ("value index buffer request handler config parse result error stream token session "
         "client server queue lease answer message payload digest window count limit").split()


def code_lines(n: int, name: str) -> list[str]:
    lines = [f"// {name}"]
    for i in range(n):
        a, b, c = rng.sample(WORDS, 3)
        lines.append(f"    let {a}_{i} = {b}.{c}({a}, {i}); // {b} {c} for the {a} step")
    return lines


def system_prompt() -> str:
    tree = "\n".join(f"{'  ' * (i % 4)}{rng.choice(WORDS)}_{i}.{rng.choice(['rs', 'ts', 'md', 'toml'])}"
                     for i in range(420))
    rules = "\n".join(f"- {' '.join(rng.choices(WORDS, k=14))}." for _ in range(80))
    return ("You are an expert coding assistant whose job is to help the user develop, run, and make "
            "changes to their codebase.\n\nSystem information:\n- OS: linux\n- Workspace folders: "
            "/home/user/project\n- Active file: src/handler.rs\n- Open files: src/handler.rs, "
            "src/queue.rs, README.md\n\nDirectory tree of the workspace:\n" + tree +
            "\n\nGuidelines you always follow:\n" + rules)


def user_turn(n: int) -> str:
    excerpt = "\n".join(code_lines(44, f"src/module_{n}.rs, lines {n * 40}-{n * 40 + 44}"))
    return (f"Here is part of src/module_{n}.rs:\n```rust\n{excerpt}\n```\n"
            f"Question {n}: why does the {rng.choice(WORDS)} path return early, and how would you "
            f"change it so that the {rng.choice(WORDS)} is kept?")


def answer(n: int) -> str:
    body = "\n".join(code_lines(12, f"suggested change {n}"))
    return (f"The early return happens because the {rng.choice(WORDS)} check runs before the "
            f"{rng.choice(WORDS)} is stored. Move the check after it, like this:\n```rust\n{body}\n```\n"
            "This keeps the value and leaves the error path unchanged.")


async def main() -> None:
    env = os.environ
    void = openai.OpenAI(base_url=env["GW_BASE_URL"], api_key=env["GW_KEY"], max_retries=0, timeout=120)
    pool = ThreadPoolExecutor(max_workers=2)
    handed: list[str] = []
    messages = [{"role": "system", "content": system_prompt()}]
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {env['MB_MCP_TOKEN']}"})
    async with http:
        async with Client(streamable_http_client(env["MB_MCP_URL"], http_client=http), mode="legacy") as agent:
            for n in range(1, TURNS + 1):
                messages.append({"role": "user", "content": user_turn(n)})
                pending = pool.submit(void.chat.completions.create, model=env["GW_MODEL"], messages=messages)
                args = {"fresh": True} if n == 1 else {}
                while True:
                    result = await agent.call_tool("wait_for_request", args)
                    text = result.content[0].text
                    request = json.loads(text)
                    if request["status"] == "request":
                        break
                handed.append(text)
                reply = answer(n)
                done = await agent.call_tool("submit_response", {
                    "request_id": request["request_id"], "lease_id": request["lease_id"], "content": reply})
                assert not done.is_error, done.content[0].text
                got = await asyncio.wrap_future(pending)
                assert got.choices[0].message.content == reply
                messages.append({"role": "assistant", "content": reply})
    with open(env["REPLAY_OUT"], "w") as f:
        json.dump({"handed": handed}, f)


if __name__ == "__main__":
    asyncio.run(main())
