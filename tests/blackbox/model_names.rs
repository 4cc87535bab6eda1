//! Model names, against the real gateway and bridge-agent with the scripted peer: by default
//! every name a client asks for is served by the one agent, echoed where each API echoes it and
//! passed to the agent as `parameters.model`; `LOCAL_PROVIDER_MODEL_ALIASES` narrows that, and
//! other names get each API's 404.
use integration_tests::stack::{Stack, KEY, MODEL};
use serde_json::{json, Value};

async fn post(stack: &Stack, path: &str, body: Value) -> reqwest::Response {
    stack.gateway.post_json(path, &body).await
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The model name the agent was told of in the last request it received, and its label.
fn asked_of_agent(stack: &Stack) -> (String, String) {
    let (_, parameters) = stack.peer.last_asked();
    let label = stack.peer.invokes().pop().unwrap().model_meta.label;
    (
        parameters["model"].as_str().unwrap_or_default().to_owned(),
        label,
    )
}

/// The ids `/v1/models` lists.
async fn listed(stack: &Stack) -> Vec<String> {
    stack.gateway.get_json("/v1/models").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn by_default_every_name_reaches_the_one_agent_and_is_echoed() {
    let stack = Stack::start().await;
    // Claude Code's main and background models, Codex's and aider's, an Ollama name.
    let (status, chat) = json_of(
        post(
            &stack,
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": user("hi")}),
        )
        .await,
    )
    .await;
    assert_eq!((status, chat["model"].as_str()), (200, Some("gpt-4o")));
    assert_eq!(asked_of_agent(&stack), ("gpt-4o".into(), MODEL.into()));

    let streamed = post(
        &stack,
        "/v1/chat/completions",
        json!({"model": "deepseek-chat", "stream": true, "messages": user("[[chunks:3]] hi")}),
    )
    .await
    .text()
    .await
    .unwrap();
    let chunks = integration_tests::stack::Sse::parse(&streamed).json();
    assert!(!chunks.is_empty());
    assert!(
        chunks.iter().all(|c| c["model"] == "deepseek-chat"),
        "{streamed}"
    );

    let (status, completion) = json_of(
        post(
            &stack,
            "/v1/completions",
            json!({"model": "starcoder2", "prompt": "fn main() {", "suffix": "}"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, completion["model"].as_str()),
        (200, Some("starcoder2"))
    );
    assert_eq!(asked_of_agent(&stack).0, "starcoder2");

    let (status, response) = json_of(
        post(
            &stack,
            "/v1/responses",
            json!({"model": "gpt-5-codex", "input": "hi"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, response["model"].as_str()),
        (200, Some("gpt-5-codex"))
    );

    for claude in ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"] {
        let (status, message) = json_of(
            post(
                &stack,
                "/v1/messages",
                json!({"model": claude, "max_tokens": 512, "messages": user("hi")}),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, message["model"].as_str()),
            (200, Some(claude)),
            "{message}"
        );
        assert_eq!(asked_of_agent(&stack).0, claude);
    }
    let (status, counted) = json_of(
        post(
            &stack,
            "/v1/messages/count_tokens",
            json!({"model": "claude-opus-4-1", "messages": user("hi")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{counted}");

    let (status, ollama) = json_of(
        post(
            &stack,
            "/api/chat",
            json!({"model": "llama3.1:8b", "stream": false, "messages": user("hi")}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, ollama["model"].as_str()),
        (200, Some("llama3.1:8b"))
    );
    assert_eq!(asked_of_agent(&stack).0, "llama3.1:8b");

    // The list keeps the one served name; any name that would be served is a model too.
    let ids = listed(&stack).await;
    assert_eq!(ids, [MODEL]);
    let (status, one) = json_of(
        stack
            .gateway
            .get("/v1/models/claude-sonnet-4-5", Some(KEY))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, one["id"].as_str()),
        (200, Some("claude-sonnet-4-5"))
    );
    let (_, tags) = json_of(stack.gateway.get("/api/tags", None).send().await.unwrap()).await;
    assert_eq!(tags["models"].as_array().unwrap().len(), 1);
    assert_eq!(tags["models"][0]["name"], MODEL);
    let shown = stack
        .gateway
        .post("/api/show", None)
        .json(&json!({"model": "qwen2.5-coder:7b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);

    let record = stack
        .gateway
        .wait_audit("the model asked for, audited", |v| {
            v["event_type"] == "model_request" && v["requested_model"] == "llama3.1:8b"
        })
        .await;
    assert_eq!(record["model"], MODEL);
}

#[tokio::test]
async fn narrowed_by_aliases_other_names_get_each_apis_404() {
    let stack = Stack::start_with(|a| a, |g| g.env("MODEL_ALIASES", "claude-*, gpt-4o")).await;
    let ids = listed(&stack).await;
    assert_eq!(
        ids,
        [MODEL, "gpt-4o"],
        "plain names are listed, patterns are not"
    );
    let (_, tags) = json_of(stack.gateway.get("/api/tags", None).send().await.unwrap()).await;
    assert_eq!(tags["models"][1]["name"], "gpt-4o");

    let (status, _) = json_of(
        post(
            &stack,
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": user("hi")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = json_of(
        post(
            &stack,
            "/v1/messages",
            json!({"model": "claude-haiku-4-5-20251001", "max_tokens": 512, "messages": user("hi")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let served = stack.peer.invokes().len();

    let (status, err) = json_of(
        post(
            &stack,
            "/v1/chat/completions",
            json!({"model": "gpt-5", "messages": user("hi")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "model_not_found");
    assert_eq!(err["error"]["param"], "model");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    let (status, err) = json_of(
        post(
            &stack,
            "/v1/responses",
            json!({"model": "o3", "input": "hi"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let (status, err) = json_of(
            post(
                &stack,
                path,
                json!({"model": "gpt-5", "max_tokens": 8, "messages": user("hi")}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(err["type"], "error");
        assert_eq!(err["error"]["type"], "not_found_error");
    }
    for (path, body) in [
        (
            "/api/chat",
            json!({"model": "llama3", "messages": user("hi")}),
        ),
        ("/api/generate", json!({"model": "llama3", "prompt": "hi"})),
        ("/api/show", json!({"model": "llama3"})),
    ] {
        let (status, err) = json_of(post(&stack, path, body).await).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            err,
            json!({"error": "model \"llama3\" not found, try pulling it first"}),
            "{path}"
        );
    }
    let (status, _) = json_of(
        stack
            .gateway
            .get("/v1/models/gpt-5", Some(KEY))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        stack.peer.invokes().len(),
        served,
        "no refused name reached the agent"
    );
}
