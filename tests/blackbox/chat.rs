//! Chat through the real gateway and bridge-agent, as VoidEditor and the OpenAI SDK read it.
use std::time::{Duration, Instant};

use integration_tests::peer::asked;
use integration_tests::stack::{chat_body, Sse, Stack, MODEL};
use serde_json::{json, Value};

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("missing header {name}"))
}

#[tokio::test]
async fn non_streamed_chat_is_a_full_chat_completion() {
    let stack = Stack::start().await;
    let resp = stack.gateway.chat(chat_body("hello there", false)).await;
    assert_eq!(resp.status(), 200);
    for name in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
        "x-request-id",
    ] {
        header(&resp, name);
    }
    assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
    assert_eq!(header(&resp, "x-frame-options"), "DENY");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "echo: hello there");
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);

    let invoke = stack.peer.invokes().pop().unwrap();
    assert_eq!(invoke.session_id, None);
    assert_eq!(invoke.model_meta.label, MODEL);
    assert_eq!(
        invoke.payload.kind(),
        "chat",
        "a chat reaches the agent as kind chat"
    );
    let (messages, parameters) = asked(&invoke.payload);
    assert_eq!(
        messages,
        vec![json!({"role": "user", "content": "hello there"})]
    );
    assert_eq!(parameters["stream"], false);
}

#[tokio::test]
async fn agent_usage_is_reported_when_given() {
    let stack = Stack::start().await;
    let body: Value = stack
        .gateway
        // Long enough that the 11 prompt tokens the agent reports are within what the gateway
        // counted (the agent's figures are held to that).
        .chat(chat_body(
            "[[usage]] hi, here are a few more words to count",
            false,
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
}

#[tokio::test]
async fn streamed_chat_is_what_strict_clients_need() {
    let stack = Stack::start().await;
    let resp = stack
        .gateway
        .chat(chat_body("[[chunks:5]] one two three", true))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    header(&resp, "x-ratelimit-remaining-requests");
    let sse = Sse::parse(&resp.text().await.unwrap());
    assert!(
        sse.other.is_empty(),
        "only data and comment lines: {:?}",
        sse.other
    );
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
    let events = sse.json();
    assert!(
        events.iter().all(|e| e["choices"].is_array()),
        "choices in every chunk"
    );
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk"));
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(sse.content(), "echo: one two three");
    let content_chunks = events
        .iter()
        .filter(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count();
    assert_eq!(content_chunks, 5, "each agent chunk relayed as it came");
    let finishes: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, vec![&json!("stop")], "exactly one finish_reason");
    assert!(
        events.iter().all(|e| e.get("usage").is_none()),
        "no usage unless asked"
    );
}

#[tokio::test]
async fn include_usage_adds_a_usage_chunk_before_done() {
    let stack = Stack::start().await;
    let mut body = chat_body("[[usage]] count me, and these few words as well", true);
    body["stream_options"] = json!({"include_usage": true});
    let sse = Sse::parse(&stack.gateway.chat(body).await.text().await.unwrap());
    let events = sse.json();
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 18);

    let mut body = chat_body("no usage from the agent", true);
    body["stream_options"] = json!({"include_usage": true});
    let sse = Sse::parse(&stack.gateway.chat(body).await.text().await.unwrap());
    let usage = sse.json().last().unwrap()["usage"].clone();
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 0,
        "counted by the gateway: {usage}"
    );
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

#[tokio::test]
async fn reasoning_and_tool_calls_stream_as_void_reads_them() {
    let stack = Stack::start().await;
    let mut body = chat_body("[[reasoning]] [[tool]] weather in Paris?", true);
    body["tools"] = weather_tool();
    body["tool_choice"] = json!("auto");
    let sse = Sse::parse(&stack.gateway.chat(body.clone()).await.text().await.unwrap());
    assert!(!sse.delta_text("reasoning_content").is_empty());
    let events = sse.json();
    let calls: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(calls.len() >= 2, "the call arrives in pieces: {calls:?}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    for later in &calls[1..] {
        assert_eq!(later["index"], 0);
        assert!(
            later.get("id").is_none() && later["function"].get("name").is_none(),
            "{later}"
        );
    }
    let args: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let finish = events
        .iter()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));

    // The tool definitions reach the agent unchanged.
    let invoke = stack.peer.invokes().pop().unwrap();
    assert_eq!(invoke.payload.kind(), "chat");
    let (_, parameters) = asked(&invoke.payload);
    assert_eq!(parameters["tools"], body["tools"]);
    assert_eq!(parameters["tool_choice"], "auto");
    assert_eq!(invoke.model_meta.requested_scopes, vec!["chat", "tools"]);
}

#[tokio::test]
async fn non_streamed_tool_call_and_tool_history_pass_through() {
    let stack = Stack::start().await;
    let mut body = chat_body("[[tool]] weather?", false);
    body["tools"] = weather_tool();
    let out: Value = stack.gateway.chat(body).await.json().await.unwrap();
    let message = &out["choices"][0]["message"];
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );

    let history = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": null, "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
        {"role": "user", "content": "thanks"}
    ]);
    let resp = stack
        .gateway
        .chat(json!({"model": MODEL, "messages": history, "tools": weather_tool()}))
        .await;
    assert_eq!(resp.status(), 200);
    let invoke = stack.peer.invokes().pop().unwrap();
    assert_eq!(invoke.payload.kind(), "chat");
    let (messages, _) = asked(&invoke.payload);
    assert_eq!(
        Value::Array(messages),
        history,
        "history reaches the agent unchanged"
    );
}

#[tokio::test]
async fn headers_come_at_once_and_keepalives_flow_while_the_agent_thinks() {
    let stack = Stack::start().await;
    // A first request loads the tokenizer, so the one measured waits only on the agent.
    let warm = stack.gateway.chat(chat_body("warm up", false)).await;
    assert_eq!(warm.status(), 200);
    let started = Instant::now();
    let resp = stack
        .gateway
        .chat(chat_body("[[delay:3000]] slow", true))
        .await;
    let to_headers = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(
        to_headers < Duration::from_millis(2000),
        "headers must not wait for the agent (took {to_headers:?})"
    );
    let sse = Sse::parse(&resp.text().await.unwrap());
    assert!(
        sse.comments >= 2,
        "keep-alive comments while waiting: {}",
        sse.comments
    );
    assert_eq!(sse.content(), "echo: slow");
}

#[tokio::test]
async fn agent_failure_is_an_error_event_or_a_502() {
    let stack = Stack::start().await;
    let sse = Sse::parse(
        &stack
            .gateway
            .chat(chat_body("[[fail]]", true))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
    let error = sse
        .json()
        .into_iter()
        .find(|e| e.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "agent_error");
    assert_eq!(error["error"]["message"], "scripted failure");

    let resp = stack.gateway.chat(chat_body("[[fail]]", false)).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "agent_error");
    for field in ["message", "type", "param", "code"] {
        assert!(body["error"].get(field).is_some(), "{field}");
    }
}

#[tokio::test]
async fn a_streaming_client_that_leaves_cancels_the_request_at_the_agent() {
    let stack = Stack::start().await;
    let mut resp = stack
        .gateway
        .chat(chat_body("[[hang]] wait for me", true))
        .await;
    let id = header(&resp, "x-request-id").to_owned();
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("assistant"));
    drop(resp);
    assert!(
        stack
            .peer
            .wait_for_cancel(&id, Duration::from_secs(5))
            .await,
        "model_cancel for {id} must reach the bridge"
    );
    let record = stack
        .gateway
        .wait_audit("model_request cancelled", |v| {
            v["event_type"] == "model_request" && v["request_id"] == id.as_str()
        })
        .await;
    assert_eq!(record["success"], false);
    assert_eq!(record["outcome"], "cancelled");
}

#[tokio::test]
async fn a_non_streaming_client_that_leaves_cancels_too() {
    let stack = Stack::start().await;
    let request = stack
        .gateway
        .post("/v1/chat/completions", Some(integration_tests::stack::KEY))
        .json(&chat_body("[[hang]] patience", false))
        .send();
    let waiting = tokio::spawn(request);
    let record = stack
        .peer
        .wait_until(Duration::from_secs(10), |r| !r.invokes.is_empty())
        .await
        .expect("the request reached the agent");
    // The client gives up while the agent is still thinking.
    waiting.abort();
    let id = record.invokes[0].id.clone();
    assert!(
        stack
            .peer
            .wait_for_cancel(&id, Duration::from_secs(5))
            .await
    );
    // Its books are closed as a streamed request's are.
    let record = stack
        .gateway
        .wait_audit("model_request cancelled", |v| {
            v["event_type"] == "model_request" && v["request_id"] == id.as_str()
        })
        .await;
    assert_eq!(record["outcome"], "cancelled");
}
