"""Records what real clients send, for the compatibility corpus (tests/corpus/).

    .venv/bin/python tests/clients/record.py CLIENT [CLIENT ...]   # drive clients, record them
    .venv/bin/python tests/clients/record.py --serve NAME          # record whatever comes

A tiny HTTP server on 127.0.0.1 writes every request it gets to
`tests/corpus/<client>/NNN-<method>-<path>.json` (method, path with its query, headers with the
values of credentials replaced by "<redacted>", the body as JSON) and answers a plausible minimal
response of the API asked (OpenAI Chat Completions, completions and Responses, Anthropic Messages,
Ollama, the model lists), streamed when the request asks for a stream. A request that offers the
client's own file-writing tool and carries no tool result yet is answered with a call of that tool
(tests/clients/answers.py), so that the client's second turn, with the tool's result, is recorded
too. `tests/blackbox/corpus.rs` replays every file against the real gateway.

CLIENT is one of: claude-code, codex, aider, langchain-chat, langchain-responses, openai-agents,
llm, ollama-python, void. Each is recorded afresh (its directory is emptied first). The drivers use
the same pinned packages as the tests (scripts/setup-test-deps.sh); aider runs from .venv-aider.
"""
import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answers import write_call  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
SECRET_HEADERS = {"authorization", "x-api-key", "api-key", "proxy-authorization", "cookie",
                  "openai-api-key", "x-goog-api-key"}
KEY = "recorder-key-0123456789abcdef"
TEXT = "Done."
# Requests are small; a bound keeps a confused client from filling the disk.
MAX_BODY = 8 * 1024 * 1024


class Recorder:
    def __init__(self, client: str, directory: str, write_name: str, write_content: str):
        self.client = client
        self.out = CORPUS / client
        self.directory = directory
        self.write_name = write_name
        self.write_content = write_content
        self.lock = threading.Lock()
        self.counter = itertools.count(1)

    def reset(self):
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)

    def save(self, method: str, path: str, headers: dict, body) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", path.split("?")[0].lower()).strip("-") or "root"
        with self.lock:
            n = next(self.counter)
        file = self.out / f"{n:03d}-{method.lower()}-{slug}.json"
        record = {"client": self.client, "method": method, "path": path,
                  "headers": headers, "body": body}
        file.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        return file


def redacted(headers) -> dict:
    out = {}
    for name, value in headers.items():
        lower = name.lower()
        out[lower] = "<redacted>" if lower in SECRET_HEADERS else value
    return out


# --- tools as each API sends them, read into (name, parameters) pairs ---------------------------

def plausible(schema: dict) -> dict:
    """Arguments for a JSON schema's required properties."""
    samples = {"string": "Oslo", "number": 1, "integer": 1, "boolean": True, "array": [], "object": {}}
    props = schema.get("properties") or {}
    return {name: samples.get((props.get(name) or {}).get("type"), "Oslo")
            for name in schema.get("required") or list(props)}


FREE_FORM = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}


def responses_tools(body):
    """`(name, parameters, namespace, free-form?)` of the request's tools and of the tools its
    `additional_tools` input items add (Codex's default model sends its tools so)."""
    tools = list(body.get("tools") or [])
    for item in body.get("input") if isinstance(body.get("input"), list) else []:
        if item.get("type") == "additional_tools":
            tools.extend(item.get("tools") or [])
    out = []

    def one(tool, namespace):
        flat = f"{namespace}__{tool['name']}" if namespace else tool["name"]
        if tool.get("type") == "function":
            out.append((flat, tool.get("parameters") or {}, namespace, tool["name"], False))
        elif tool.get("type") == "custom":
            out.append((flat, FREE_FORM, namespace, tool["name"], True))

    for tool in tools:
        if tool.get("type") == "namespace":
            for member in tool.get("tools", []):
                one(member, tool["name"])
        else:
            one(tool, None)
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    recorder: Recorder = None  # set by serve()

    def log_message(self, fmt, *args):  # quiet: the files are the record
        pass

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_HEAD(self):
        self.handle_any("HEAD")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def handle_any(self, method):
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.send_json(413, {"error": {"message": "too large for the recorder"}})
            return
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            raw = self.read_chunked()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"$text": raw.decode("utf-8", "replace")}
        self.recorder.save(method, self.path, redacted(self.headers), body)
        self.answer(method, self.path.split("?")[0], body if isinstance(body, dict) else {})

    def read_chunked(self) -> bytes:
        data = b""
        while len(data) <= MAX_BODY:
            size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
            if size == 0:
                self.rfile.readline()
                break
            data += self.rfile.read(size)
            self.rfile.readline()
        return data

    # --- answers --------------------------------------------------------------------------------

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, content_type, pieces):
        data = "".join(pieces).encode()
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def call_for(self, pairs, has_result):
        """The client's write tool when it has one, else its first tool with plausible
        arguments, so that its next turn carries a tool result; nothing once it does."""
        if has_result or not pairs:
            return None
        r = self.recorder
        return write_call(pairs, r.directory, r.write_name, r.write_content) or (
            pairs[0][0], plausible(pairs[0][1]))

    def answer(self, method, path, body):
        model = body.get("model") or "cursor-agent-local"
        if path.endswith("/models") or path.startswith("/v1/models/"):
            card = {"id": "cursor-agent-local", "object": "model", "created": 0, "owned_by": "local",
                    "type": "model", "display_name": "cursor-agent-local",
                    "created_at": "2026-01-01T00:00:00Z"}
            if path.startswith("/v1/models/"):
                return self.send_json(200, card)
            return self.send_json(200, {"object": "list", "data": [card], "has_more": False,
                                        "first_id": card["id"], "last_id": card["id"]})
        if path.endswith("/chat/completions"):
            return self.answer_chat(model, body)
        if path.endswith("/completions"):
            return self.answer_completion(model, body)
        if path.endswith("/responses"):
            return self.answer_responses(model, body)
        if path.endswith("/messages/count_tokens"):
            return self.send_json(200, {"input_tokens": 42})
        if path.endswith("/messages"):
            return self.answer_messages(model, body)
        if path.startswith("/api/"):
            return self.answer_ollama(path, model, body)
        if method in ("GET", "HEAD"):
            return self.send_json(200, {"status": "ok"})
        return self.send_json(404, {"error": {"message": f"the recorder does not know {path}"}})

    def answer_chat(self, model, body):
        has_result = any(m.get("role") == "tool" for m in body.get("messages", []))
        pairs = [(t["function"]["name"], t["function"].get("parameters") or {})
                 for t in body.get("tools") or [] if t.get("type") == "function"]
        call = self.call_for(pairs, has_result)
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        calls = [{"id": "call_rec1", "type": "function",
                  "function": {"name": call[0], "arguments": json.dumps(call[1])}}] if call else None
        finish = "tool_calls" if call else "stop"
        base = {"id": "chatcmpl-rec", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            message = {"role": "assistant", "content": None if call else TEXT}
            if calls:
                message["tool_calls"] = calls
            return self.send_json(200, dict(base, object="chat.completion", usage=usage, choices=[
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]))
        chunk = lambda delta, finish=None: "data: " + json.dumps(dict(  # noqa: E731
            base, object="chat.completion.chunk",
            choices=[{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}])) + "\n\n"
        pieces = [chunk({"role": "assistant", "content": ""})]
        if calls:
            pieces.append(chunk({"tool_calls": [dict(calls[0], index=0)]}))
        else:
            pieces.append(chunk({"content": TEXT}))
        pieces.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            pieces.append("data: " + json.dumps(dict(base, object="chat.completion.chunk",
                                                     choices=[], usage=usage)) + "\n\n")
        pieces.append("data: [DONE]\n\n")
        self.send_stream("text/event-stream", pieces)

    def answer_completion(self, model, body):
        base = {"id": "cmpl-rec", "object": "text_completion", "created": int(time.time()), "model": model}
        choice = {"index": 0, "text": "pass", "finish_reason": "stop", "logprobs": None}
        if not body.get("stream"):
            return self.send_json(200, dict(base, choices=[choice],
                                            usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}))
        self.send_stream("text/event-stream", ["data: " + json.dumps(dict(base, choices=[choice])) + "\n\n",
                                               "data: [DONE]\n\n"])

    def answer_responses(self, model, body):
        items = body.get("input") if isinstance(body.get("input"), list) else []
        has_result = any(i.get("type") in ("function_call_output", "custom_tool_call_output") for i in items)
        tools = {t[0]: t for t in responses_tools(body)}
        call = self.call_for([(t[0], t[1]) for t in tools.values()], has_result)
        tool = tools[call[0]] if call else None
        if tool and tool[4]:
            item = {"type": "custom_tool_call", "id": "ctc_rec1", "call_id": "call_rec1", "name": tool[3],
                    "input": call[1]["input"], "status": "completed"}
        elif tool:
            item = {"type": "function_call", "id": "fc_rec1", "call_id": "call_rec1", "name": tool[3],
                    "arguments": json.dumps(call[1]), "status": "completed"}
        else:
            item = {"type": "message", "id": "msg_rec1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": TEXT, "annotations": []}]}
        if tool and tool[2]:
            item["namespace"] = tool[2]
        usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12}
        response = {"id": "resp_rec", "object": "response", "created_at": int(time.time()), "model": model,
                    "status": "completed", "output": [item], "usage": usage, "error": None,
                    "incomplete_details": None, "parallel_tool_calls": True, "tool_choice": "auto",
                    "tools": [], "store": False, "text": {"format": {"type": "text"}}, "metadata": {}}
        if not body.get("stream"):
            return self.send_json(200, response)
        seq = itertools.count()
        ev = lambda kind, **fields: (  # noqa: E731
            f"event: {kind}\ndata: " + json.dumps(dict(fields, type=kind, sequence_number=next(seq))) + "\n\n")
        running = dict(response, status="in_progress", output=[], usage=None)
        pieces = [ev("response.created", response=running), ev("response.in_progress", response=running)]
        if item["type"] == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            pieces += [ev("response.output_item.added", output_index=0, item=dict(item, content=[], status="in_progress")),
                       ev("response.content_part.added", item_id=item["id"], output_index=0, content_index=0, part=part),
                       ev("response.output_text.delta", item_id=item["id"], output_index=0, content_index=0, delta=TEXT, logprobs=[]),
                       ev("response.output_text.done", item_id=item["id"], output_index=0, content_index=0, text=TEXT, logprobs=[]),
                       ev("response.content_part.done", item_id=item["id"], output_index=0, content_index=0, part=dict(part, text=TEXT))]
        elif item["type"] == "custom_tool_call":
            pieces += [ev("response.output_item.added", output_index=0, item=dict(item, input="", status="in_progress")),
                       ev("response.custom_tool_call_input.delta", item_id=item["id"], output_index=0, delta=item["input"]),
                       ev("response.custom_tool_call_input.done", item_id=item["id"], output_index=0, input=item["input"])]
        else:
            pieces += [ev("response.output_item.added", output_index=0, item=dict(item, arguments="", status="in_progress")),
                       ev("response.function_call_arguments.delta", item_id=item["id"], output_index=0, delta=item["arguments"]),
                       ev("response.function_call_arguments.done", item_id=item["id"], output_index=0, name=item["name"], arguments=item["arguments"])]
        pieces += [ev("response.output_item.done", output_index=0, item=item),
                   ev("response.completed", response=response)]
        self.send_stream("text/event-stream", pieces)

    def answer_messages(self, model, body):
        has_result = any(isinstance(m.get("content"), list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])
            for m in body.get("messages", []))
        pairs = [(t["name"], t.get("input_schema") or {}) for t in body.get("tools") or [] if t.get("name")]
        call = self.call_for(pairs, has_result)
        block = ({"type": "tool_use", "id": "toolu_rec1", "name": call[0], "input": call[1]} if call
                 else {"type": "text", "text": TEXT})
        stop = "tool_use" if call else "end_turn"
        usage = {"input_tokens": 10, "output_tokens": 2, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        message = {"id": "msg_rec", "type": "message", "role": "assistant", "model": model,
                   "content": [block], "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return self.send_json(200, message)
        ev = lambda kind, **fields: f"event: {kind}\ndata: " + json.dumps(dict(fields, type=kind)) + "\n\n"  # noqa: E731
        start_block = dict(block, input={}) if call else dict(block, text="")
        delta = ({"type": "input_json_delta", "partial_json": json.dumps(call[1])} if call
                 else {"type": "text_delta", "text": TEXT})
        self.send_stream("text/event-stream", [
            ev("message_start", message=dict(message, content=[], stop_reason=None)),
            ev("content_block_start", index=0, content_block=start_block),
            ev("content_block_delta", index=0, delta=delta),
            ev("content_block_stop", index=0),
            ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage={"output_tokens": 2}),
            ev("message_stop"),
        ])

    def answer_ollama(self, path, model, body):
        now = "2026-01-01T00:00:00Z"
        details = {"format": "gguf", "family": "cursor", "parameter_size": "unknown", "quantization_level": "none"}
        if path == "/api/version":
            return self.send_json(200, {"version": "0.6.0"})
        if path == "/api/tags":
            return self.send_json(200, {"models": [{"name": "cursor-agent-local", "model": "cursor-agent-local",
                                                    "modified_at": now, "size": 0, "digest": "0" * 64,
                                                    "details": details}]})
        if path == "/api/show":
            return self.send_json(200, {"modelfile": "", "parameters": "", "template": "", "details": details,
                                        "model_info": {"general.architecture": "cursor"},
                                        "capabilities": ["completion", "tools"], "modified_at": now})
        if path == "/api/ps":
            return self.send_json(200, {"models": []})
        field = {"/api/chat": "message", "/api/generate": "response"}.get(path)
        if field is None:
            return self.send_json(404, {"error": f"the recorder does not know {path}"})
        content = {"role": "assistant", "content": TEXT} if field == "message" else TEXT
        done = {"model": model, "created_at": now, field: content if field == "response" else dict(content, content=""),
                "done": True, "done_reason": "stop", "total_duration": 1, "load_duration": 0,
                "prompt_eval_count": 10, "prompt_eval_duration": 1, "eval_count": 2, "eval_duration": 1}
        if body.get("stream") is False:
            return self.send_json(200, dict(done, **{field: content}))
        part = {"model": model, "created_at": now, field: content, "done": False}
        self.send_stream("application/x-ndjson", [json.dumps(part) + "\n", json.dumps(done) + "\n"])


def serve(recorder: Recorder) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"recorder": recorder})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- the drivers: each real client, pointed at the recorder with its minimal settings -----------

def run(cmd, env, cwd, timeout=180):
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    print(f"  {Path(cmd[0]).name} exited {result.returncode}", file=sys.stderr)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
    return result


def base_env(home: str) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8"}


def claude_binary() -> str:
    import claude_agent_sdk
    return str(Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude")


def codex_binary() -> str:
    import codex_cli_bin
    return str(codex_cli_bin.bundled_codex_path())


def drive_claude_code(url, work, home):
    env = dict(base_env(home), ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=KEY)
    run([claude_binary(), "-p", "Create hello.txt saying hello.", "--permission-mode", "acceptEdits"],
        env, work)


def codex_config(home: str, url: str) -> str:
    codex_home = Path(home) / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model_provider = "local-provider"\n\n[model_providers.local-provider]\n'
        f'name = "mcp-local-provider"\nbase_url = "{url}/v1"\nwire_api = "responses"\n'
        'env_key = "MCP_LOCAL_PROVIDER_KEY"\n')
    return str(codex_home)


def drive_codex(url, work, home):
    env = dict(base_env(home), CODEX_HOME=codex_config(home, url), MCP_LOCAL_PROVIDER_KEY=KEY)
    run([codex_binary(), "exec", "--skip-git-repo-check", "--sandbox", "workspace-write", "-C", work,
         "Create hello.txt saying hello."], env, work)


def drive_aider(url, work, home):
    aider = REPO / ".venv-aider" / "bin" / "aider"
    source = Path(work) / "greet.py"
    source.write_text('def greet():\n    return "hi"\n')
    env = dict(base_env(home))
    run([str(aider), "--yes-always", "--no-git", "--no-auto-commits", "--no-analytics", "--no-check-update",
         "--no-show-model-warnings", "--no-pretty", "--no-stream", "--model", "openai/cursor-agent-local",
         "--openai-api-base", f"{url}/v1", "--openai-api-key", KEY,
         "--message", "Make greet return hello.", str(source)], env, work)


def drive_langchain(url, responses: bool):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    model = ChatOpenAI(model="cursor-agent-local", base_url=f"{url}/v1", api_key=KEY,
                       use_responses_api=responses, max_retries=0)
    model.invoke([("system", "Be brief."), ("user", "hi")])
    "".join(chunk.text if isinstance(chunk.text, str) else chunk.text() for chunk in model.stream("hi"))
    model.bind_tools([get_weather]).invoke("weather in Oslo?")


def drive_openai_agents(url):
    from agents import Agent, Runner, function_tool, set_default_openai_api, set_default_openai_client, \
        set_tracing_disabled
    from openai import AsyncOpenAI

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    set_tracing_disabled(True)
    set_default_openai_client(AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0))
    set_default_openai_api("responses")
    agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather],
                  model="cursor-agent-local")
    Runner.run_sync(agent, "weather in Oslo?")


def drive_llm(url, home):
    user_path = Path(home) / "llm"
    user_path.mkdir(parents=True, exist_ok=True)
    (user_path / "extra-openai-models.yaml").write_text(
        f"- model_id: local\n  model_name: cursor-agent-local\n  api_base: {url}/v1\n  api_key_name: local\n")
    (user_path / "keys.json").write_text(json.dumps({"local": KEY}))
    env = dict(base_env(home), LLM_USER_PATH=str(user_path))
    llm = str(Path(sys.executable).parent / "llm")
    run([llm, "-m", "local", "--no-log", "hi"], env, home)
    run([llm, "-m", "local", "--no-log", "--no-stream", "-s", "Be brief.", "hi"], env, home)


def drive_ollama(url):
    import ollama
    client = ollama.Client(host=url, headers={"Authorization": f"Bearer {KEY}"})
    client.list()
    client.show("cursor-agent-local")
    client.chat(model="cursor-agent-local", messages=[{"role": "user", "content": "hi"}], stream=False)
    list(client.chat(model="cursor-agent-local", messages=[{"role": "user", "content": "hi"}], stream=True))
    client.generate(model="cursor-agent-local", prompt="def add(a, b):", suffix="\n", stream=False)


def drive_void(url):
    """VoidEditor cannot be driven here: these are its requests as docs/clients.md documents them
    (OpenAI-compatible provider with the recommended override, autocomplete, the Ollama provider)."""
    import httpx
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    tools = [{"type": "function", "function": {"name": "read_file", "description": "Reads a file.",
              "parameters": {"type": "object", "properties": {"uri": {"type": "string"}}, "required": ["uri"]}}}]
    with httpx.Client(base_url=url, timeout=30) as c:
        c.get("/v1/models", headers=h)
        c.post("/v1/chat/completions", headers=h, json={
            "model": "cursor-agent-local", "stream": True, "max_tokens": 32000, "tools": tools,
            "messages": [{"role": "system", "content": "You are an expert coding agent."},
                         {"role": "user", "content": "What does main.py do?"}]})
        c.post("/v1/completions", headers=h, json={
            "model": "cursor-agent-local", "prompt": "def add(a, b):\n    ", "suffix": "\n",
            "stop": ["\n\n"], "max_tokens": 300})
        c.post("/api/chat", headers={"Content-Type": "application/json"}, json={
            "model": "cursor-agent-local", "stream": True,
            "messages": [{"role": "system", "content": "You are an expert coding agent."},
                         {"role": "user", "content": "hi"}]})


DRIVERS = ["claude-code", "codex", "aider", "langchain-chat", "langchain-responses", "openai-agents",
           "llm", "ollama-python", "void"]


def record(client: str):
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as work:
        recorder = Recorder(client, work, "hello.txt", "hello\n")
        recorder.reset()
        server = serve(recorder)
        url = f"http://127.0.0.1:{server.server_port}"
        print(f"recording {client} at {url}", file=sys.stderr)
        try:
            if client == "claude-code":
                drive_claude_code(url, work, home)
            elif client == "codex":
                drive_codex(url, work, home)
            elif client == "aider":
                drive_aider(url, work, home)
            elif client in ("langchain-chat", "langchain-responses"):
                drive_langchain(url, client == "langchain-responses")
            elif client == "openai-agents":
                drive_openai_agents(url)
            elif client == "llm":
                drive_llm(url, home)
            elif client == "ollama-python":
                drive_ollama(url)
            elif client == "void":
                drive_void(url)
        finally:
            server.shutdown()
        files = sorted(p.name for p in recorder.out.iterdir())
        print(f"  {len(files)} requests: {', '.join(files)}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clients", nargs="*", help=f"any of {', '.join(DRIVERS)}")
    parser.add_argument("--serve", metavar="NAME", help="record any client into tests/corpus/NAME until Ctrl-C")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.serve:
        recorder = Recorder(args.serve, os.getcwd(), "hello.txt", "hello\n")
        recorder.reset()
        handler = type("BoundHandler", (Handler,), {"recorder": recorder})
        server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
        print(f"recording into {recorder.out} at http://127.0.0.1:{server.server_port}", file=sys.stderr)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return
    unknown = [c for c in args.clients if c not in DRIVERS]
    if unknown or not args.clients:
        parser.error(f"name clients among {', '.join(DRIVERS)}" + (f" (unknown: {unknown})" if unknown else ""))
    for client in args.clients:
        record(client)


if __name__ == "__main__":
    main()
