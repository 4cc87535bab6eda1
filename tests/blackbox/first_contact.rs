//! The coding CLIs' requests as they send them, against the real gateway and bridge-agent with
//! the scripted peer: Claude Code 2.1's Messages request (its own model names, 32000 output
//! tokens, a system message inside `messages`, `cache_control`, betas and hints) and Codex CLI
//! 0.16x's Responses request (a `namespace` tool and the hosted `web_search`), each accepted
//! and reaching the agent as intended, its tool calls coming back as the client expects.
use integration_tests::stack::{http, Sse, Stack, KEY};
use serde_json::{json, Map, Value};

/// The names of the chat tools the agent was given.
fn tool_names(parameters: &Map<String, Value>) -> Vec<String> {
    parameters["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `(event name, data)` of each SSE event.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = String::new();
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = serde_json::from_str(d.trim()).ok();
                }
            }
            data.map(|d| (name, d))
        })
        .collect()
}

fn claude_tools() -> Value {
    let schema = |props: Value, required: Value| {
        json!({"type": "object", "properties": props, "required": required,
               "additionalProperties": false, "$schema": "http://json-schema.org/draft-07/schema#"})
    };
    json!([
        {"name": "Bash", "description": "Executes a given bash command in a persistent shell session.",
         "input_schema": schema(json!({"command": {"type": "string"}, "timeout": {"type": "number"},
                                       "description": {"type": "string"}}), json!(["command"]))},
        {"name": "Read", "description": "Reads a file from the local filesystem.",
         "input_schema": schema(json!({"file_path": {"type": "string"}}), json!(["file_path"]))},
        {"name": "Write", "description": "Writes a file to the local filesystem.",
         "input_schema": schema(json!({"file_path": {"type": "string"}, "content": {"type": "string"}}),
                                json!(["file_path", "content"]))},
        {"name": "Edit", "description": "Performs exact string replacements in files.",
         "input_schema": schema(json!({"file_path": {"type": "string"}, "old_string": {"type": "string"},
                                       "new_string": {"type": "string"}}),
                                json!(["file_path", "old_string", "new_string"])),
         "cache_control": {"type": "ephemeral"}}
    ])
}

/// Claude Code 2.1's first request for a model it does not know (the name is its default).
fn claude_code_request(model: &str, ask: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n# claudeMd\nNo CLAUDE.md here.\n</system-reminder>\n"},
                {"type": "text", "text": ask, "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "system", "content": "<env>\nWorking directory: /home/dev/project\nIs directory a git repo: No\nPlatform: linux\nToday's date: 2026-01-15\n</env>"}
        ],
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks.",
             "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "tools": claude_tools(),
        "metadata": {"user_id": "user_0123abcd_account__session_4567"},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": true
    })
}

async fn claude_code_post(stack: &Stack, body: &Value) -> reqwest::Response {
    http()
        .post(stack.gateway.url("/v1/messages?beta=true"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14,context-management-2025-06-27,effort-2025-11-24",
        )
        .header("anthropic-dangerous-direct-browser-access", "true")
        .header("x-app", "cli")
        .header("user-agent", "claude-cli/2.1.12 (external, cli)")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn claude_code_as_it_sends_is_served_and_its_tool_call_comes_back() {
    let stack = Stack::start().await;
    let body = claude_code_request(
        "claude-sonnet-4-5-20250929",
        "[[tool:Write]] write hello.py that prints hello",
    );
    let resp = claude_code_post(&stack, &body).await;
    assert_eq!(resp.status(), 200);
    let first = events(&resp.text().await.unwrap());
    assert_eq!(first[0].0, "message_start");
    assert_eq!(first[0].1["message"]["model"], "claude-sonnet-4-5-20250929");
    let tool_use = first
        .iter()
        .find(|(name, data)| {
            name == "content_block_start" && data["content_block"]["type"] == "tool_use"
        })
        .expect("a tool_use block");
    assert_eq!(tool_use.1["content_block"]["name"], "Write");
    let stop = first
        .iter()
        .find(|(name, _)| name == "message_delta")
        .unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");

    // What the agent got: the system prompt, the user turn, the environment as a system message
    // in place; the four tools as chat function tools; the model asked for and the output cap.
    let (messages, parameters) = stack.peer.last_asked();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "system"]);
    assert!(messages[2]["content"]
        .as_str()
        .unwrap()
        .starts_with("<env>"));
    assert_eq!(parameters["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(parameters["max_tokens"], 32000);
    assert_eq!(parameters["api"], "messages");
    assert_eq!(parameters["thinking"], json!({"type": "adaptive"}));
    assert_eq!(tool_names(&parameters), ["Bash", "Read", "Write", "Edit"]);
    assert!(!serde_json::to_string(&messages)
        .unwrap()
        .contains("cache_control"));

    // The next turn: the tool's result, and Claude Code's quick background call on its small
    // model, both served by the same agent.
    let mut next = body.clone();
    let messages = next["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I will write it.", "signature": ""},
        {"type": "tool_use", "id": "call_1", "name": "Write",
         "input": {"file_path": "hello.py", "content": "print('hello')\n"}}]}));
    messages.push(json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "File created successfully at: hello.py",
         "cache_control": {"type": "ephemeral"}}]}));
    let resp = claude_code_post(&stack, &next).await;
    assert_eq!(resp.status(), 200);
    // The answer ends after the agent was asked.
    assert!(resp.text().await.unwrap().contains("message_stop"));
    let (messages, _) = stack.peer.last_asked();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "system", "assistant", "tool"]);

    let haiku = json!({"model": "claude-haiku-4-5-20251001", "max_tokens": 512,
        "system": [{"type": "text", "text": "Summarize this coding conversation in under 50 characters."}],
        "messages": [{"role": "user", "content": "write hello.py"}],
        "metadata": {"user_id": "user_0123abcd_account__session_4567"}, "stream": true});
    let resp = claude_code_post(&stack, &haiku).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let deltas: String = events(&text)
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(deltas, "echo: write hello.py");
    assert_eq!(
        stack.peer.last_asked().1["model"],
        "claude-haiku-4-5-20251001"
    );
    // `Sse` reads the same body as OpenAI-style data lines: none of them is an error.
    assert!(Sse::parse(&text)
        .json()
        .iter()
        .all(|e| e["type"] != "error"));
}

/// Codex CLI 0.16x's request: instructions, developer and user items, its function tools, a
/// `namespace` tool, the hosted `web_search`, `store: false`, encrypted reasoning asked for.
fn codex_request(input: Vec<Value>) -> Value {
    let object = |props: Value, required: Value| json!({"type": "object", "properties": props, "required": required, "additionalProperties": false});
    json!({
        "model": "gpt-5-codex",
        "instructions": "You are Codex, based on GPT-5. You are running as a coding agent in the Codex CLI on a user's computer.",
        "input": input,
        "tools": [
            {"type": "function", "name": "exec_command", "description": "Runs a command in a PTY, returning output or a session ID for ongoing interaction.",
             "strict": false, "parameters": object(json!({"cmd": {"type": "string"}, "workdir": {"type": "string"},
                                                          "yield_time_ms": {"type": "number"}}), json!(["cmd"]))},
            {"type": "function", "name": "write_stdin", "description": "Writes characters to an existing unified exec session.",
             "strict": false, "parameters": object(json!({"session_id": {"type": "number"}, "chars": {"type": "string"}}),
                                                   json!(["session_id"]))},
            {"type": "function", "name": "update_plan", "description": "Updates the task plan.",
             "strict": false, "parameters": object(json!({"plan": {"type": "array", "items": {"type": "object"}}}), json!(["plan"]))},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Tools to spawn and wait for sub-agents.",
             "tools": [
                {"type": "function", "name": "spawn_agent", "description": "Spawns a sub-agent.", "strict": false,
                 "parameters": object(json!({"message": {"type": "string"}}), json!(["message"]))},
                {"type": "function", "name": "wait_agent", "description": "Waits for a sub-agent.", "strict": false,
                 "parameters": object(json!({"id": {"type": "string"}}), json!(["id"]))}]},
            {"type": "web_search", "external_web_access": true}
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a0b9c-4d5e-7f60-8a1b-2c3d4e5f6a7b"
    })
}

fn codex_turn(text: &str) -> Vec<Value> {
    vec![
        json!({"type": "message", "role": "developer", "content": [
            {"type": "input_text", "text": "<permissions instructions>\nFilesystem sandboxing: workspace-write.\n</permissions instructions>"}]}),
        json!({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "<environment_context>\n  <cwd>/home/dev/project</cwd>\n  <shell>bash</shell>\n</environment_context>"}]}),
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}),
    ]
}

async fn codex_post(stack: &Stack, body: &Value) -> Vec<(String, Value)> {
    let resp = http()
        .post(stack.gateway.url("/v1/responses"))
        .bearer_auth(KEY)
        .header("originator", "codex_cli_rs")
        .header("version", "0.162.0")
        .header("session_id", "019a0b9c-4d5e-7f60-8a1b-2c3d4e5f6a7b")
        .header("accept", "text/event-stream")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    events(&resp.text().await.unwrap())
}

/// The function_call items of a finished Responses stream.
fn calls_of(events: &[(String, Value)]) -> Vec<Value> {
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "response.completed", "{last}");
    last["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "function_call")
        .cloned()
        .collect()
}

#[tokio::test]
async fn codex_as_it_sends_is_served_and_namespaced_calls_come_back_as_it_routes_them() {
    let stack = Stack::start().await;
    let events = codex_post(
        &stack,
        &codex_request(codex_turn(
            "[[tool:multi_agent_v1__spawn_agent]] delegate the tests",
        )),
    )
    .await;
    // The namespaced call: its own name and its namespace, in the streamed items as well.
    let calls = calls_of(&events);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["name"], "spawn_agent");
    assert_eq!(calls[0]["namespace"], "multi_agent_v1");
    let added = events
        .iter()
        .find(|(n, _)| n == "response.output_item.added")
        .unwrap();
    assert_eq!(added.1["item"]["namespace"], "multi_agent_v1");
    let args_done = events
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(args_done.1["name"], "spawn_agent");

    // What the agent got: every function, the namespace's under `<namespace>__<name>`, and web
    // search to run itself.
    let (messages, parameters) = stack.peer.last_asked();
    assert_eq!(
        tool_names(&parameters),
        [
            "exec_command",
            "write_stdin",
            "update_plan",
            "multi_agent_v1__spawn_agent",
            "multi_agent_v1__wait_agent"
        ]
    );
    assert_eq!(
        parameters["hosted_tools"],
        json!([{"type": "web_search", "external_web_access": true}])
    );
    assert_eq!(parameters["model"], "gpt-5-codex");
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "developer", "user", "user"]);

    // The next turn sends the call back with its namespace: the agent sees its own name again.
    // A plain function's call comes back plain.
    let mut input = codex_turn("delegate the tests");
    input.push(json!({"type": "reasoning", "summary": [], "encrypted_content": null}));
    input.push(
        json!({"type": "function_call", "call_id": calls[0]["call_id"], "name": "spawn_agent",
        "namespace": "multi_agent_v1", "arguments": calls[0]["arguments"]}),
    );
    input.push(
        json!({"type": "function_call_output", "call_id": calls[0]["call_id"],
        "output": "agent 7 started"}),
    );
    input.push(json!({"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "[[tool:exec_command]] now run them"}]}));
    let events = codex_post(&stack, &codex_request(input)).await;
    let calls = calls_of(&events);
    assert_eq!(calls[0]["name"], "exec_command");
    assert!(calls[0].get("namespace").is_none(), "{}", calls[0]);
    let (messages, _) = stack.peer.last_asked();
    let call = messages
        .iter()
        .find(|m| m.get("tool_calls").is_some())
        .unwrap();
    assert_eq!(
        call["tool_calls"][0]["function"]["name"],
        "multi_agent_v1__spawn_agent"
    );
}
