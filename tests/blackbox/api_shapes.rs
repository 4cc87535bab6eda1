//! The Responses and Messages APIs on the wire, against the real gateway and bridge-agent with
//! the scripted peer: event names, sequence numbers, Anthropic's auth and error shape, and the
//! parameters every API refuses by name before anything reaches the agent.
use integration_tests::stack::{http, Stack, KEY, MODEL};
use serde_json::{json, Value};

/// `(event name, data)` of each SSE event; comment lines are skipped.
fn events(text: &str) -> Vec<(Option<String>, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(d.trim()).unwrap());
                }
            }
            data.map(|d| (name, d))
        })
        .collect()
}

async fn post(stack: &Stack, path: &str, body: Value) -> reqwest::Response {
    stack
        .gateway
        .post(path, Some(KEY))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn responses_stream_names_numbers_and_ends_each_event() {
    let stack = Stack::start().await;
    let resp = post(
        &stack,
        "/v1/responses",
        json!({"model": MODEL, "stream": true, "input": "[[reasoning]] [[tool]] weather"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("resp_"));
    let text = resp.text().await.unwrap();
    assert!(!text.contains("[DONE]"), "the Responses API has no [DONE]");
    let events = events(&text);
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(name.as_deref(), data["type"].as_str(), "{data}");
        assert_eq!(data["sequence_number"], i, "{data}");
    }
    let last = &events.last().unwrap().1;
    assert_eq!(last["type"], "response.completed");
    let output = last["response"]["output"].as_array().unwrap();
    let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning", "function_call"], "{last}");
    assert_eq!(output[1]["name"], "get_weather");
    let args: Value = serde_json::from_str(output[1]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let deltas: String = events
        .iter()
        .filter(|(_, d)| d["type"] == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, output[1]["arguments"].as_str().unwrap());

    // Nothing was stored, and asking for it says so.
    let id = last["response"]["id"].as_str().unwrap();
    let resp = stack
        .gateway
        .get(&format!("/v1/responses/{id}"), Some(KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "response_not_found", "{err}");
}

#[tokio::test]
async fn messages_take_x_api_key_or_a_session_and_answer_in_anthropics_shape() {
    let stack = Stack::start().await;
    let session = stack.gateway.create_session().await;
    let body = json!({"model": MODEL, "max_tokens": 32,
                      "messages": [{"role": "user", "content": "[[tool]] weather"}]});
    for credential in [KEY, session["token"].as_str().unwrap()] {
        let resp = http()
            .post(stack.gateway.url("/v1/messages"))
            .header("x-api-key", credential)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let message: Value = resp.json().await.unwrap();
        assert_eq!(message["type"], "message");
        assert_eq!(message["stop_reason"], "tool_use");
        let block = message["content"].as_array().unwrap().last().unwrap();
        assert_eq!(block["type"], "tool_use");
        assert_eq!(block["input"], json!({"city": "Paris"}));
    }
    let resp = http()
        .post(stack.gateway.url("/v1/messages"))
        .header("x-api-key", "not-the-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["error"]["type"], "authentication_error");

    // A failure after the stream began is one `error` event, and the body ends.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["messages"][0]["content"] = json!("[[fail]] go");
    let resp = post(&stack, "/v1/messages", streamed).await;
    assert_eq!(resp.status(), 200);
    let events = events(&resp.text().await.unwrap());
    assert_eq!(events[0].0.as_deref(), Some("message_start"));
    let (name, data) = events.last().unwrap();
    assert_eq!(name.as_deref(), Some("error"));
    assert_eq!(data["error"]["type"], "api_error");
    assert!(data["error"]["message"]
        .as_str()
        .unwrap()
        .contains("scripted failure"));
}

#[tokio::test]
async fn what_no_api_can_honour_is_refused_by_name_before_the_agent() {
    let stack = Stack::start().await;
    let chat = |extra: Value| {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let responses = |extra: Value| {
        let mut b = json!({"model": MODEL, "input": "hi"});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true})),
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 2})),
            "top_logprobs",
        ),
        ("/v1/chat/completions", chat(json!({"n": 2})), "n"),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "logprobs": 2}),
            "logprobs",
        ),
        (
            "/v1/responses",
            responses(json!({"top_logprobs": 1})),
            "top_logprobs",
        ),
        (
            "/v1/responses",
            responses(json!({"tools": [{"type": "file_search"}]})),
            "tools[0].type",
        ),
        (
            "/v1/responses",
            responses(json!({"previous_response_id": "resp_1"})),
            "previous_response_id",
        ),
        (
            "/v1/messages",
            json!({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"type": "bash_20250124", "name": "bash"}]}),
            "tools[0].type",
        ),
        (
            "/v1/messages",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
            "max_tokens",
        ),
        (
            "/api/chat",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logprobs": true}),
            "logprobs",
        ),
    ];
    for (path, body, param) in cases {
        let resp = post(&stack, path, body).await;
        assert_eq!(resp.status(), 400, "{path} {param}");
        let err: Value = resp.json().await.unwrap();
        let message = match path {
            "/v1/messages" => {
                assert_eq!(err["error"]["type"], "invalid_request_error");
                err["error"]["message"].as_str().unwrap().to_owned()
            }
            "/api/chat" => err["error"].as_str().unwrap().to_owned(),
            _ => {
                assert_eq!(err["error"]["param"], param, "{err}");
                err["error"]["message"].as_str().unwrap().to_owned()
            }
        };
        assert!(message.starts_with(&format!("{param}:")), "{message}");
    }
    assert!(
        stack.peer.invokes().is_empty(),
        "nothing refused reached the agent"
    );
}
