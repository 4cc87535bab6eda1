//! Limits from the context window, not fixed bytes, against the real gateway and bridge-agent
//! with the scripted peer: every API's spelling of the output cap is accepted up to what the
//! window allows (Claude Code always asks for 32000), `context_length_exceeded` is the one
//! refusal for a request too large, a whole file in one message (aider) reaches the agent, and
//! images count what they cost, not their base64 bytes.
use integration_tests::stack::{Stack, MODEL};
use serde_json::{json, Value};

async fn post(stack: &Stack, path: &str, body: &Value) -> (u16, Value) {
    let resp = stack.gateway.post_json(path, body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// Each API's body asking for `n` output tokens, in its own spelling.
fn asking(n: u64) -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4-5-20250929", "max_tokens": n, "messages": user("hi")}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "max_tokens": n, "messages": user("hi")}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "max_completion_tokens": n, "messages": user("hi")}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "max_tokens": n, "prompt": "fn main() {"}),
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-5-codex", "max_output_tokens": n, "input": "hi"}),
        ),
        (
            "/api/chat",
            json!({"model": MODEL, "stream": false, "options": {"num_predict": n}, "messages": user("hi")}),
        ),
        (
            "/api/generate",
            json!({"model": MODEL, "stream": false, "options": {"num_predict": n}, "prompt": "hi"}),
        ),
    ]
}

#[tokio::test]
async fn every_spelling_of_max_tokens_is_accepted_up_to_the_window() {
    let stack = Stack::start().await;
    for (path, body) in asking(32_000) {
        let (status, answer) = post(&stack, path, &body).await;
        assert_eq!(status, 200, "{path} {body} → {answer}");
        // Chat passes the client's own field on; the other APIs' caps arrive as `max_tokens`.
        let (_, parameters) = stack.peer.last_asked();
        let cap = parameters
            .get("max_tokens")
            .or_else(|| parameters.get("max_completion_tokens"));
        assert_eq!(cap, Some(&json!(32_000)), "{path}");
    }
    // Prompt plus output beyond the 200000-token window: the one refusal, in each API's shape.
    for (path, body) in asking(200_000) {
        let (status, err) = post(&stack, path, &body).await;
        assert_eq!(status, 400, "{path} {err}");
        let message = match path {
            "/v1/messages" => {
                assert_eq!(err["error"]["type"], "invalid_request_error");
                err["error"]["message"].as_str().unwrap().to_owned()
            }
            "/api/chat" | "/api/generate" => err["error"].as_str().unwrap().to_owned(),
            _ => {
                assert_eq!(err["error"]["code"], "context_length_exceeded", "{path}");
                err["error"]["message"].as_str().unwrap().to_owned()
            }
        };
        assert!(
            message.starts_with("This model's maximum context length is 200000 tokens"),
            "{path}: {message}"
        );
    }
    assert_eq!(stack.peer.invokes().len(), asking(0).len());
}

/// A source file of about `bytes` bytes, Python as aider's users edit it.
fn source_file(bytes: usize) -> String {
    let mut out = String::from("\"\"\"A module aider was asked to edit.\"\"\"\nimport math\n\n");
    let mut n = 0;
    while out.len() < bytes {
        out.push_str(&format!(
            "def area_{n}(radius: float) -> float:\n    \"\"\"The area of circle {n}.\"\"\"\n    if radius < 0:\n        raise ValueError(f\"negative radius {{radius}} for circle {n}\")\n    return math.pi * radius ** 2 + {n}\n\n\n"
        ));
        n += 1;
    }
    out
}

#[tokio::test]
async fn a_whole_file_in_one_message_reaches_the_agent_as_sent() {
    let stack = Stack::start().await;
    let file = source_file(300 * 1024);
    // aider 0.86's turn: its system prompt, the repo map exchange, the file in one user message
    // (messages[5] in the refused request), then the ask; litellm adds stream and temperature.
    let files_message = format!(
        "I have *added these files to the chat* so you can go ahead and edit them.\n\n*Trust this message as the true contents of these files!*\nAny other messages in the chat may contain outdated versions of the files' contents.\n\nbig.py\n```\n{file}```\n"
    );
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Act as an expert software developer.\nAlways use best practices when coding.\nRespect and use existing conventions, libraries, etc that are already present in the code base.\nTake requests for changes to the supplied code.\nIf the request is ambiguous, ask questions."},
            {"role": "user", "content": "Here are summaries of some files present in my git repository."},
            {"role": "assistant", "content": "Ok, I won't try and edit those files without asking first."},
            {"role": "user", "content": "I switched to a new code base. Please don't consider the above files or try to edit them any longer."},
            {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": files_message},
            {"role": "assistant", "content": "Ok, any changes I propose will be to those files."},
            {"role": "user", "content": "add a docstring to area_0"}
        ],
        "temperature": 0,
        "stream": true
    });
    let resp = stack.gateway.chat(body).await;
    assert_eq!(resp.status(), 200);
    let sse = integration_tests::stack::Sse::parse(&resp.text().await.unwrap());
    assert_eq!(sse.content(), "echo: add a docstring to area_0");
    let (messages, _) = stack.peer.last_asked();
    assert_eq!(messages.len(), 8);
    assert_eq!(
        messages[5]["content"], files_message,
        "the file arrived unaltered"
    );
}

#[tokio::test]
async fn an_image_counts_what_it_costs_not_its_base64_bytes() {
    let stack = Stack::start().await;
    // A 3 MB screenshot, as Claude Code pastes one: as text it would be far over the window.
    let screenshot = "iVBORw0KGgoAAAANSUhEUgAA".repeat(128 * 1024);
    let body = json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": screenshot}},
            {"type": "text", "text": "what is on this screen?"}
        ]}]
    });
    let (status, counted) = post(&stack, "/v1/messages/count_tokens", &body).await;
    assert_eq!(status, 200, "{counted}");
    let tokens = counted["input_tokens"].as_u64().unwrap();
    assert!((1_600..1_700).contains(&tokens), "{tokens}");
    let (status, answer) = post(&stack, "/v1/messages", &body).await;
    assert_eq!(status, 200, "{answer}");
    let (messages, _) = stack.peer.last_asked();
    let url = messages[0]["content"][0]["image_url"]["url"]
        .as_str()
        .unwrap();
    assert!(
        url.ends_with(&screenshot[screenshot.len() - 64..]),
        "the image arrived whole"
    );
}
