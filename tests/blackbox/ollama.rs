//! Ollama's API, legacy completions and prefix-less paths, as editors' "local model" settings
//! call them, on the same agent path, auth and audit as chat.
use std::time::Duration;

use integration_tests::stack::{Stack, KEY, MODEL};
use provider_shared::bridge::Payload;
use serde_json::{json, Value};

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn metadata_routes_answer_without_a_key_in_the_shape_clients_parse() {
    let stack = Stack::start().await;
    let gw = &stack.gateway;
    let version: Value = gw
        .get("/api/version", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v: Vec<u64> = version["version"]
        .as_str()
        .unwrap()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        v >= vec![0, 6, 4],
        "clients refuse versions below 0.6.4: {version}"
    );
    let tags: Value = gw
        .get("/api/tags", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = &tags["models"][0];
    for field in ["name", "model", "modified_at", "size", "digest", "details"] {
        assert!(entry.get(field).is_some(), "{field} in {entry}");
    }
    for field in [
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    ] {
        assert!(entry["details"].get(field).is_some(), "details.{field}");
    }
    assert_eq!(entry["name"], MODEL);
    let show = gw
        .post("/api/show", None)
        .json(&json!({"model": format!("{MODEL}:latest")}))
        .send()
        .await
        .unwrap();
    assert_eq!(show.status(), 200);
    let show: Value = show.json().await.unwrap();
    assert_eq!(show["capabilities"], json!(["completion", "tools"]));
    // Any name is served by default, so it can be shown (model_names.rs has the narrowed 404).
    let other = gw
        .post("/api/show", None)
        .json(&json!({"model": "llama3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let body: Value = other.json().await.unwrap();
    assert_eq!(
        body["capabilities"],
        json!(["completion", "tools"]),
        "{body}"
    );
    // A client polling every few seconds must not fill the audit log. The log is written in
    // order, so once a later audited event is in it, anything the polls recorded would be too.
    let refused = gw
        .get("/v1/models", Some("not-the-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    gw.wait_audit("the refused key", |v| v["event_type"] == "authentication")
        .await;
    let audit = gw.audit();
    assert_eq!(audit.len(), 1, "metadata polls are not audited: {audit:?}");
}

#[tokio::test]
async fn generation_needs_the_key_and_errors_are_ollama_shaped() {
    let stack = Stack::start().await;
    let gw = &stack.gateway;
    let resp = gw
        .post("/api/chat", None)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("API key"),
        "{body}"
    );
    gw.wait_audit("the refusal audited", |v| {
        v["event_type"] == "authentication" && v["success"] == false
    })
    .await;
    let resp = gw
        .post("/api/generate", Some(KEY))
        .json(&json!({"model": MODEL, "prompt": "x", "options": {"temperature": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("options.temperature"),
        "{body}"
    );
}

/// `/api/ps` answers as Ollama does, and every `/api/*` answer that is an error is Ollama's
/// `{"error": "…"}`: unknown paths and wrong methods too, which Ollama clients probe.
#[tokio::test]
async fn ps_and_every_api_path_answer_in_ollamas_shape() {
    let stack = Stack::start().await;
    let gw = &stack.gateway;
    let resp = gw.get("/api/ps", None).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ps: Value = resp.json().await.unwrap();
    let loaded = &ps["models"][0];
    assert_eq!(loaded["name"], MODEL);
    assert_eq!(loaded["model"], MODEL);
    assert_eq!(loaded["context_length"], 200_000);
    assert_eq!(loaded["size_vram"], 0);
    assert!(loaded["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(loaded["digest"].is_string() && loaded["details"]["family"].is_string());
    for (method, path, status) in [
        ("GET", "/api/pull", 404),
        ("POST", "/api/embed", 404),
        ("DELETE", "/api/delete", 404),
        ("GET", "/api", 404),
        ("POST", "/api/tags", 405),
        ("GET", "/api/chat", 405),
        ("POST", "/api/ps", 405),
    ] {
        let resp = integration_tests::stack::http()
            .request(method.parse().unwrap(), gw.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.unwrap();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["error"], "{method} {path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(path), "{body}");
    }
}

#[tokio::test]
async fn chat_streams_ndjson_and_an_error_mid_stream_is_the_last_line() {
    let stack = Stack::start().await;
    let resp = stack
        .gateway
        .post("/api/chat", Some(KEY))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "[[reasoning]] [[chunks:3]] ndjson please"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let all = lines(&resp.text().await.unwrap());
    let content: String = all
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: ndjson please");
    assert!(
        all.iter().any(|l| l["message"]["thinking"].is_string()),
        "reasoning arrives as thinking"
    );
    let last = all.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    for field in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(last[field].is_u64(), "{field} in {last}");
    }
    assert!(all[..all.len() - 1].iter().all(|l| l["done"] == false));

    let resp = stack
        .gateway
        .post("/api/generate", Some(KEY))
        .json(&json!({"model": MODEL, "prompt": "[[drop]] [[chunks:3]] going"}))
        .send()
        .await
        .unwrap();
    let all = lines(&resp.text().await.unwrap());
    let last = all.last().unwrap();
    assert!(last["error"].as_str().unwrap().contains("bridge"), "{last}");
}

#[tokio::test]
async fn void_autocomplete_reaches_the_agent_as_a_completion() {
    let stack = Stack::start().await;
    // Exactly VoidEditor's autocomplete body, to the path without /v1 (a common editor setting).
    let body = json!({"model": MODEL, "prompt": "fn add(a: i32, b: i32) -> i32 {\n    ",
        "suffix": "\n}\n", "stop": ["\n\n"], "max_tokens": 300});
    let resp = stack
        .gateway
        .post("/completions", Some(KEY))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["object"], "text_completion");
    assert_eq!(
        out["choices"][0]["text"],
        "echo: fn add(a: i32, b: i32) -> i32 {"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert!(out["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let invoke = stack.peer.invokes().pop().unwrap();
    assert_eq!(invoke.model_meta.requested_scopes, vec!["completion"]);
    let Payload::Completion {
        prompt,
        suffix,
        parameters,
        ..
    } = invoke.payload
    else {
        panic!("not a completion: {:?}", invoke.payload)
    };
    assert_eq!(prompt, body["prompt"].as_str().unwrap());
    assert_eq!(suffix.as_deref(), Some("\n}\n"));
    let parameters: Value = parameters.parse().unwrap();
    assert_eq!(parameters["max_tokens"], 300);
    assert_eq!(parameters["stop"], json!(["\n\n"]));

    for (field, value) in [
        ("echo", json!(true)),
        ("prompt", json!(42)),
        ("best_of", json!(3)),
    ] {
        let mut bad = body.clone();
        bad[field] = value;
        let resp = stack
            .gateway
            .post("/v1/completions", Some(KEY))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{field}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["param"], field);
    }
}

#[tokio::test]
async fn paths_without_v1_and_ollama_disconnects_cancel() {
    let stack = Stack::start().await;
    let models: Value = stack
        .gateway
        .get("/models", Some(KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    let chat = stack
        .gateway
        .post("/chat/completions", Some(KEY))
        .json(&integration_tests::stack::chat_body("no prefix", false))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);

    let mut resp = stack
        .gateway
        .post("/api/chat", Some(KEY))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "[[hang]] wait"}]}))
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let waiting = tokio::spawn(async move { resp.chunk().await });
    stack
        .peer
        .wait_for_invoke(&id, Duration::from_secs(5))
        .await
        .expect("reached the agent");
    waiting.abort();
    assert!(
        stack
            .peer
            .wait_for_cancel(&id, Duration::from_secs(5))
            .await,
        "model_cancel for {id}"
    );
}

#[test]
fn keyless_generation_is_refused_beyond_loopback() {
    let out = std::process::Command::new(integration_tests::harness::bin_path("gateway"))
        .env_clear()
        .env("LOCAL_PROVIDER_API_KEY", KEY)
        .env("LOCAL_PROVIDER_HOST", "0.0.0.0")
        .env("LOCAL_PROVIDER_ALLOW_NON_LOOPBACK", "true")
        .env("LOCAL_PROVIDER_ALLOW_KEYLESS_GENERATION", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LOCAL_PROVIDER_ALLOW_KEYLESS_GENERATION"),
        "{err}"
    );
}
