#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/seeds/<target>/, from what the repository's tests already send.

The JSON objects written with `json!(…)` in the Rust tests and sources (tests/blackbox/, the
services' and shared/ unit tests) that parse as plain JSON once the test constants are put in
are the request-body seeds of every gateway API target (each target's minimization keeps what
it can use), and those that are JSON-RPC messages are SSE `message` events for the relay, with
the streams the relay's own tests use. The bridge and IPC seeds are one frame of each type (the
IPC ones behind their 4-byte length). The IPC and SSE seeds start with one byte the harness
reads as the length of the pieces a stream arrives in (tests/fuzz-harness/src/lib.rs). Each file
is named by a digest of its bytes, so running this again changes nothing unless the tests did. Run by scripts/fuzz.sh when fuzz/seeds/ is missing.
"""
import hashlib
import json
import pathlib
import re
import struct

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["tests/blackbox", "services", "shared/src"]
CONSTANTS = {"MODEL": '"cursor-agent-local"', "KEY": '"test-key"', "PROMPT": '"a prompt"'}
API_TARGETS = ["chat", "completions", "responses", "messages", "ollama_chat", "ollama_generate"]
# One frame of each type, as the services write them (docs/PROTOCOL.md).
BRIDGE_FRAMES = [
    '{"type":"hello","agent_id":"local-provider-1","protocol":1,"capabilities":["resume"],"max_protocol":2,"max_frame_bytes":16777216}',
    '{"type":"welcome","protocol":2,"bridge_id":"mcp-bridge/0.1.0","max_frame_bytes":16777216}',
    '{"type":"model_invoke","id":"chatcmpl-1","session_id":"s1","model_meta":{"provider":"cursor","label":"cursor-agent-local","requested_scopes":["chat","tools"]},"payload":{"kind":"chat","messages":[{"content":"hi","role":"user"}],"parameters":{"max_tokens":64,"stream":true}}}',
    '{"type":"model_invoke","id":"cmpl-1","session_id":null,"model_meta":{"provider":"cursor","label":"cursor-agent-local","requested_scopes":["chat","tools"]},"payload":{"kind":"completion","prompt":"fn a(","suffix":")","parameters":{}}}',
    '{"type":"model_stream_chunk","id":"chatcmpl-1","chunk_index":3,"delta":{"content":"hé","reasoning_content":"think","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":"}}]},"finish_reason":"tool_calls"}',
    '{"type":"model_result","id":"chatcmpl-1","status":"ok","result":{"choices":[{"index":0,"message":{"content":"hi","role":"assistant"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},"created":1}}',
    '{"type":"model_result","id":"chatcmpl-1","status":"error","error":{"code":"agent_unavailable","message":"gone"}}',
    '{"type":"model_cancel","id":"x"}',
    '{"type":"model_resume","id":"x","after_chunk_index":2}',
    '{"type":"ping","ts":1}',
    '{"type":"pong","ts":1}',
    '{"type":"bridge_status","queue_depth":0,"leased":0,"waiting_polls":0,"sampling_clients":0,"polling_since_ms":null,"last_poll_ms":null,"connected_bridge_agents":0,"answered":0,"failed":0,"at_ms":0}',
]
IPC_FRAMES = [
    '{"type":"hello","protocol":"local-provider-ipc","version":1,"client":"gateway/0.1.0"}',
    '{"type":"welcome","version":1,"agent_id":"local-provider-1","bridge":{"state":"disconnected","last_ping":null,"bridge_id":null,"reconnects":0},"capabilities":["resume"]}',
    '{"type":"reject","reason":"no"}',
    '{"type":"invoke","id":"chatcmpl-1","session_id":"s1","model_meta":{"provider":"cursor","label":"cursor-agent-local","requested_scopes":["chat","tools"]},"payload":{"kind":"chat","messages":[{"content":"hi","role":"user"}],"parameters":{"max_tokens":64,"stream":true}}}',
    '{"type":"cancel","id":"x"}',
    '{"type":"resume","id":"x","after_chunk_index":null,"elapsed_ms":5,"invoke":{"id":"cmpl-1","session_id":null,"model_meta":{"provider":"cursor","label":"cursor-agent-local","requested_scopes":["chat","tools"]},"payload":{"kind":"completion","prompt":"fn a(","suffix":")","parameters":{}}}}',
    '{"type":"chunk","id":"chatcmpl-1","chunk_index":3,"delta":{"content":"hé","reasoning_content":"think","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":"}}]},"finish_reason":"tool_calls"}',
    '{"type":"result","id":"x","status":"error","error":{"code":"slow_client","message":"behind"}}',
    '{"type":"status","state":"disconnected","last_ping":null,"bridge_id":null,"reconnects":0}',
]
SSE = [
    b": keep-alive\n\nid: 1\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\nid: 2\ndata:\n\n",
    b"no colon here\n\n",
    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
    b"retry: 3000\r\nevent: message\r\nid: 0\r\ndata: {}\r\n\r\n",
    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"content\":[{\"type\":\"text\","
    b"\"text\":\"{\\\"request\\\":null}\"}],\"isError\":false}}\n\n",
    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":"
    b"{\"progress\":1}}\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"error\":"
    b"{\"code\":-32602,\"message\":\"bad\"}}\n\n",
]


def json_macro_arguments(text: str):
    """The argument of every `json!(…)` in `text`, by balanced brackets (strings respected)."""
    for match in re.finditer(r"json!\(", text):
        depth, i, in_string = 1, match.end(), False
        while i < len(text) and depth:
            c = text[i]
            if in_string:
                if c == "\\":
                    i += 1
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            i += 1
        yield text[match.end():i - 1]


def as_json(argument: str):
    for name, value in CONSTANTS.items():
        argument = re.sub(rf"\b{name}\b", value, argument)
    argument = re.sub(r",\s*([}\]])", r"\1", argument)
    try:
        return json.loads(argument)
    except ValueError:
        return None


def write(target: str, data: bytes):
    folder = REPO / "fuzz" / "seeds" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    objects = []
    for source in SOURCES:
        for path in sorted((REPO / source).rglob("*.rs")):
            for argument in json_macro_arguments(path.read_text(encoding="utf-8")):
                value = as_json(argument)
                if isinstance(value, dict) and value:
                    objects.append(value)
    bodies = rpc = 0
    for value in objects:
        data = json.dumps(value, separators=(",", ":")).encode()
        if "jsonrpc" in value:
            write("relay_sse", b"\x00event: message\ndata: " + data + b"\n\n")
            rpc += 1
        else:
            for target in API_TARGETS:
                write(target, data)
            bodies += 1
    for frame in BRIDGE_FRAMES:
        write("bridge_frame", frame.encode())
    for frame in IPC_FRAMES:
        data = frame.encode()
        write("ipc_codec", b"\x00" + struct.pack(">I", len(data)) + data)
    for stream in SSE:
        write("relay_sse", b"\x00" + stream)
    print(f"fuzz seeds: {bodies} request bodies, {len(BRIDGE_FRAMES)} bridge frames, "
          f"{len(IPC_FRAMES)} IPC frames, {len(SSE) + rpc} SSE streams")


if __name__ == "__main__":
    main()
