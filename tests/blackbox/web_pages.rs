//! What a web page in the user's browser can send, sent to the real services: a rebinding
//! `Host`, cross-origin simple and JSON POSTs, `Origin: null`; a wrong key in keyless mode; and
//! the operations routes behind the admin token on a shared host.
use integration_tests::mcp_stack::{McpBridgeProc, MCP_TOKEN};
use integration_tests::stack::{chat_body, http, Gateway, Stack, ADMIN, KEY, MODEL};
use reqwest::header::{CONTENT_TYPE, HOST, ORIGIN};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::SOON;

fn ollama_chat() -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": false})
}

async fn keyless() -> Stack {
    Stack::start_with(|a| a, |g| g.env("ALLOW_KEYLESS_GENERATION", "true")).await
}

/// A refused request's status, message and code. Ollama's paths answer in Ollama's shape,
/// `{"error": "<message>"}` (no code); the others `{"error": {"message", "code", …}}`.
async fn refused(req: RequestBuilder) -> (u16, String, Option<String>) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ollama = resp.url().path().starts_with("/api/");
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    let body: Value = resp.json().await.unwrap();
    match &body["error"] {
        Value::String(message) if ollama => (status, message.clone(), None),
        error if !ollama => (
            status,
            error["message"].as_str().unwrap().to_owned(),
            Some(error["code"].as_str().unwrap().to_owned()),
        ),
        _ => panic!("not the shape of its path: {body}"),
    }
}

/// Asserts a refusal: its status, its code (where the shape has one), and a phrase of its message.
fn assert_refused(got: (u16, String, Option<String>), status: u16, code: &str, says: &str) {
    let (got_status, message, got_code) = got;
    assert_eq!(got_status, status, "{message}");
    assert!(
        got_code.as_deref().is_none_or(|c| c == code),
        "{got_code:?}, not {code}"
    );
    assert!(message.contains(says), "{message:?} does not say {says:?}");
}

fn request(gw: &Gateway, method: Method, path: &str) -> RequestBuilder {
    http().request(method, gw.url(path))
}

#[tokio::test]
async fn a_rebinding_host_is_refused_on_every_route() {
    let stack = keyless().await;
    let gw = &stack.gateway;
    let evil = format!("rebind.evil.example:{}", gw.port);
    for (method, path) in [
        (Method::POST, "/api/chat"),
        (Method::POST, "/v1/chat/completions"),
        (Method::GET, "/v1/models"),
        (Method::GET, "/api/tags"),
        (Method::GET, "/status.json"),
        (Method::GET, "/health"),
        (Method::GET, "/metrics"),
        (Method::GET, "/no/such/route"),
        (Method::OPTIONS, "/v1/chat/completions"),
    ] {
        let req = request(gw, method.clone(), path)
            .header(HOST, &evil)
            .json(&ollama_chat());
        let got = refused(req).await;
        assert_refused(got, 403, "host_not_allowed", "LOCAL_PROVIDER_ALLOWED_HOSTS");
    }
    assert!(stack.peer.invokes().is_empty(), "nothing reached the agent");
    let record = gw
        .wait_audit("the refusal audited", |v| {
            v["violation_type"] == "host_not_allowed"
        })
        .await;
    assert_eq!(record["details"], evil);
    // The same request addressed to a loopback name, any port, is served keyless.
    for host in ["localhost:1", "127.0.0.1", "[::1]:8788"] {
        let resp = request(gw, Method::POST, "/api/chat")
            .header(HOST, host)
            .json(&ollama_chat())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host}");
    }
}

#[tokio::test]
async fn a_configured_host_is_served() {
    let stack = Stack::start_with(|a| a, |g| g.env("ALLOWED_HOSTS", "gateway.internal")).await;
    let gw = &stack.gateway;
    let resp = request(gw, Method::GET, "/v1/models")
        .header(HOST, "Gateway.Internal:8788")
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _, _) = refused(
        request(gw, Method::GET, "/v1/models")
            .header(HOST, "other.internal")
            .bearer_auth(KEY),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn cross_origin_posts_are_refused_even_with_keys_off() {
    let stack = keyless().await;
    let gw = &stack.gateway;
    let text = ollama_chat().to_string();
    // A CORS "simple request" any page can send without asking, and the JSON one CORS would
    // only have hidden the answer of: both refused before they reach anything.
    for (origin, content_type) in [
        ("http://evil.example", "text/plain;charset=UTF-8"),
        ("http://evil.example", "application/json"),
        ("null", "application/json"),
        ("http://127.0.0.1.evil.example", "application/json"),
    ] {
        for path in ["/api/chat", "/v1/chat/completions"] {
            let req = request(gw, Method::POST, path)
                .header(ORIGIN, origin)
                .header(CONTENT_TYPE, content_type)
                .body(text.clone());
            let got = refused(req).await;
            assert_refused(got, 403, "origin_not_allowed", "ALLOWED_ORIGINS");
        }
    }
    // Without an Origin (not a browser's POST) a body that is not JSON is refused too.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut req = request(gw, Method::POST, "/api/chat").body(text.clone());
        if let Some(t) = content_type {
            req = req.header(CONTENT_TYPE, t);
        }
        let got = refused(req).await;
        assert_refused(got, 415, "unsupported_media_type", "application/json");
    }
    assert!(stack.peer.invokes().is_empty(), "nothing reached the agent");
    // The first refusal of a kind from a client is written whole; the next ones within the
    // minute are counted (docs/operations.md, "Audit log").
    gw.wait_audit("an origin refusal audited", |v| {
        v["violation_type"] == "origin_not_allowed" && v["details"] == "http://evil.example"
    })
    .await;
    // Pages served from loopback, and the editors' own windows, are served.
    for origin in [
        "http://localhost:5173",
        "http://127.0.0.1:3000",
        "vscode-file://vscode-app",
    ] {
        let resp = request(gw, Method::POST, "/api/chat")
            .header(ORIGIN, origin)
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{origin}");
        assert_eq!(resp.headers()["access-control-allow-origin"], origin);
    }
    let (_, metrics) = integration_tests::harness::get(&gw.url("/metrics"))
        .await
        .unwrap();
    let metrics = metrics.as_str().unwrap();
    for reason in ["origin_not_allowed", "unsupported_media_type"] {
        assert!(
            metrics.contains(&format!(
                "gateway_requests_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_in_keyless_mode() {
    let stack = keyless().await;
    let gw = &stack.gateway;
    let wrong = "wrong-key-that-is-long-enough-0123456789";
    for path in ["/api/chat", "/v1/chat/completions"] {
        let body = if path == "/api/chat" {
            ollama_chat()
        } else {
            chat_body("hi", false)
        };
        for (key, status) in [(Some(wrong), 401), (None, 200), (Some(KEY), 200)] {
            let resp = gw.post(path, key).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), status, "{path} with {key:?}");
        }
    }
    let failure = gw
        .wait_audit("the wrong key audited", |v| {
            v["event_type"] == "authentication" && v["success"] == false
        })
        .await;
    assert_eq!(failure["credential"], "none");
    assert_eq!(stack.peer.invokes().len(), 4);
}

#[tokio::test]
async fn protected_operations_need_the_admin_token_and_liveness_stays_open() {
    let stack = Stack::start_with(|a| a, |g| g.env("PROTECT_OPERATIONS", "true")).await;
    let gw = &stack.gateway;
    let get = |path: &str, token: Option<&str>| gw.get(path, token).send();

    let resp = get("/metrics", None).await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = get("/metrics", Some(ADMIN)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("gateway_http_requests_total"));
    // A wrong token is refused, audited and throttled like the admin routes'.
    assert_eq!(get("/metrics", Some(KEY)).await.unwrap().status(), 401);
    gw.wait_audit("the wrong admin token audited", |v| {
        v["credential"] == "admin_token" && v["success"] == false
    })
    .await;

    for path in ["/health", "/health/ready"] {
        let bare: Value = get(path, None).await.unwrap().json().await.unwrap();
        assert_eq!(bare.as_object().unwrap().len(), 1, "{path}: {bare}");
        assert_eq!(bare["status"], "healthy");
        let whole: Value = get(path, Some(ADMIN)).await.unwrap().json().await.unwrap();
        assert!(
            whole["bridge_agent"]["socket"].is_string(),
            "{path}: {whole}"
        );
        assert!(whole["store"].is_object(), "{path}: {whole}");
    }
    assert_eq!(get("/health/live", None).await.unwrap().status(), 200);
    // Even for loopback callers of a loopback gateway.
    assert_eq!(get("/status.json", None).await.unwrap().status(), 401);
    assert_eq!(
        get("/status.json", Some(ADMIN)).await.unwrap().status(),
        200
    );
    // The page holds no data and asks for the token; a navigation cannot carry one.
    assert_eq!(get("/status", None).await.unwrap().status(), 200);
}

#[tokio::test]
async fn mcp_bridge_refuses_a_rebinding_host_and_a_foreign_origin() {
    let bridge = McpBridgeProc::new().spawn();
    bridge.wait_agents(0, SOON).await;
    let client = http();
    let post = |host: &str, origin: Option<&str>| {
        let mut req = crate::mcp_tokens::mcp_initialize(&client, &bridge.url("/mcp"), 1)
            .header(HOST, host)
            .bearer_auth(MCP_TOKEN);
        if let Some(origin) = origin {
            req = req.header(ORIGIN, origin);
        }
        req.send()
    };
    let resp = post(&format!("evil.example:{}", bridge.port), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "host_not_allowed");
    let resp = post("localhost", Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    // The health routes and bridge-agent's door are behind the same check.
    for path in ["/health", "/metrics", "/"] {
        let resp = client
            .get(bridge.url(path))
            .header(HOST, "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
    }
    assert_eq!(post("127.0.0.1", None).await.unwrap().status(), 200);
    bridge
        .wait_audit("the refusal audited", |v| {
            v["violation_type"] == "origin_not_allowed"
        })
        .await;
}

#[tokio::test]
async fn bridge_agents_health_listener_refuses_a_rebinding_host() {
    let stack = Stack::start().await;
    let agent = &stack.agent;
    for path in ["/health", "/metrics"] {
        let resp = http()
            .get(agent.url(path))
            .header(HOST, "rebind.evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "host_not_allowed");
    }
    let (_, metrics) = integration_tests::harness::get(&agent.url("/metrics"))
        .await
        .unwrap();
    assert!(metrics
        .as_str()
        .unwrap()
        .contains("bridge_agent_requests_refused_total{reason=\"host_not_allowed\"} 2"));
}
