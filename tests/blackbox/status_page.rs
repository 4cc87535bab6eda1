//! The status page (`/status`, `/status.json`): in a real headless Chromium through real
//! transitions of the chain, its access rule, and the scripted peer standing in for an mcp-bridge
//! that does or does not send `bridge_status`.
use std::path::Path;
use std::time::Duration;

use fantoccini::Locator;
use integration_tests::browser::Browser;
use integration_tests::harness::get;
use integration_tests::mcp_stack::McpStack;
use integration_tests::stack::{chat_body, http, Stack, ADMIN, KEY, MODEL};
use integration_tests::stdio_agent::StdioAgent;
use provider_shared::bridge::{BridgeFrame, BridgeReport};
use serde_json::{json, Value};

use crate::SOON;

/// Time for a change to travel mcp-bridge → bridge-agent → gateway → the page (reports at most
/// 1 s late, the page refreshes every 2 s), with room for a slow machine.
const SEEN: Duration = Duration::from_secs(20);
const PROMPT: &str = "the secret words of this prompt never reach the status page";

fn screenshot_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("status-page.png")
}

#[tokio::test]
async fn the_page_follows_the_chain_through_real_transitions_in_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    // A lease long enough for the page to show the agent working on its request.
    let mut stack = McpStack::start_with(
        |b| b.env("LEASE_TIMEOUT", "60"),
        |g| g.env("STATUS_AGENT_GONE_AFTER", "8"),
    )
    .await;
    browser
        .client
        .goto(&stack.gateway.url("/status"))
        .await
        .unwrap();

    // The chain is up, and no agent has ever polled.
    browser.wait_state("link-editor", "serving", SEEN).await;
    browser
        .wait_state("link-bridge-agent", "connected", SEEN)
        .await;
    browser
        .wait_state("link-mcp-bridge", "connected", SEEN)
        .await;
    let summary = browser.wait_state("agent", "gone", SEEN).await;
    assert!(
        summary.contains("no agent has asked for work since mcp-bridge started"),
        "{summary}"
    );

    // An agent polls.
    let mut agent = StdioAgent::start(&stack.bridge.envs).await;
    agent
        .call(2, "wait_for_request", json!({"timeout_seconds": 120}))
        .await;
    let summary = browser.wait_state("agent", "polling", SEEN).await;
    assert!(summary.contains("an agent is polling now"), "{summary}");
    browser.wait_state("link-agent", "polling", SEEN).await;

    // The editor asks; the agent takes the request and works on it.
    let gateway_url = stack.gateway.url("/v1/chat/completions");
    let chat = tokio::spawn(async move {
        let resp = http()
            .post(gateway_url)
            .bearer_auth(KEY)
            .json(&chat_body(PROMPT, false))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    let handout = StdioAgent::tool_json(&agent.response(2, SEEN).await);
    assert_eq!(handout["status"], "request", "{handout}");
    browser.wait_state("agent", "working", SEEN).await;
    let row = browser
        .wait_text("in-flight", "the request in flight", SEEN, |t| {
            t.contains("chat") && t.contains("key:")
        })
        .await;
    assert!(row.contains("chatcmpl-"), "{row}");
    assert!(browser.text("queue-leased").await.as_deref() == Some("1"));
    let source = browser.client.source().await.unwrap();
    assert!(
        !source.contains("secret words"),
        "a prompt reached the page"
    );

    // It answers; with no poll open the agent is idle, then gone.
    agent
        .call(
            3,
            "submit_response",
            json!({"request_id": handout["request_id"], "lease_id": handout["lease_id"],
                   "content": "hello from the agent"}),
        )
        .await;
    agent.response(3, SEEN).await;
    let (status, body) = chat.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let summary = browser.wait_state("agent", "idle", SEEN).await;
    assert!(summary.contains("last asked for work"), "{summary}");
    let summary = browser.wait_state("agent", "gone", SEEN).await;
    assert!(
        summary.contains("no agent has asked for work for"),
        "{summary}"
    );
    browser
        .wait_text("in-flight-empty", "no request in flight", SEEN, |t| {
            t == "none"
        })
        .await;

    // bridge-agent killed: the gateway's link goes down and the agent's state is unknown.
    stack.agent.kill().await.unwrap();
    browser
        .wait_state("link-bridge-agent", "disconnected", SEEN)
        .await;
    browser.wait_state("link-mcp-bridge", "unknown", SEEN).await;
    let summary = browser.wait_state("agent", "unknown", SEEN).await;
    assert!(
        summary.contains("bridge-agent is not connected"),
        "{summary}"
    );

    // ...and back.
    stack.agent = stack.agent_recipe.spawn();
    browser
        .wait_state("link-bridge-agent", "connected", SEEN)
        .await;
    browser
        .wait_state("link-mcp-bridge", "connected", SEEN)
        .await;
    browser.wait_state("agent", "gone", SEEN).await;

    // A request waits in the queue while nobody polls: depth, age and the plots show it.
    let gateway_url = stack.gateway.url("/v1/chat/completions");
    let waiting = tokio::spawn(async move {
        http()
            .post(gateway_url)
            .bearer_auth(KEY)
            .json(&chat_body(PROMPT, true))
            .send()
            .await
    });
    browser
        .wait_text("queue-depth", "queue depth 1", SEEN, |t| t == "1")
        .await;
    let row = browser
        .wait_text("in-flight", "the queued request", SEEN, |t| {
            t.contains("waiting")
        })
        .await;
    assert!(row.contains("yes"), "a streamed request: {row}");
    browser
        .wait_text("plot-queue-now", "a queue-depth point of 1", SEEN, |t| {
            t == "now 1"
        })
        .await;
    // Nothing failed: the browser's own requests (no /favicon.ico) add no error either.
    assert_eq!(
        browser.attr("errors-empty", "hidden").await,
        None,
        "recent errors: {:?}",
        browser.text("errors").await
    );
    // A refused request is counted on the page, by code.
    let refused = http()
        .post(stack.gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "m", "temperature": 7, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    browser
        .wait_text("refused-codes", "the refusal counted", SEEN, |t| {
            t == "invalid_request 1"
        })
        .await;
    assert_eq!(browser.text("refused-total").await.as_deref(), Some("1"));
    // The audit writer's figures: its bounded queue, nothing dropped.
    browser
        .wait_text("audit-value", "the audit writer's figures", SEEN, |t| {
            t.contains("dropped 0") && t.contains("capacity")
        })
        .await;
    browser.screenshot(&screenshot_path()).await;
    eprintln!("status page screenshot: {}", screenshot_path().display());

    waiting.abort();
    agent.stop().await;
    let _ = browser.client.clone().close().await;
}

#[tokio::test]
async fn the_json_is_for_loopback_clients_or_the_admin_token_when_bound_elsewhere() {
    // Bound to loopback: loopback clients need nothing.
    let stack = Stack::start().await;
    let (status, body) = get(&stack.gateway.url("/status.json")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["audit"]["enabled"], true, "{body}");
    assert_eq!(body["audit"]["dropped"], 0, "{body}");
    let page = http()
        .get(stack.gateway.url("/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'sha256-") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("id=\"agent-summary\""));

    // Bound to every address: the admin token, even from loopback (a proxy may be in front).
    let open = Stack::start_with(
        |a| a,
        |g| g.env("HOST", "0.0.0.0").env("ALLOW_NON_LOOPBACK", "true"),
    )
    .await;
    let url = open.gateway.url("/status.json");
    let refused = http().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let wrong = http().get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(wrong.status(), 401, "the API key is not the admin token");
    let ok = http().get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let page = http()
        .get(open.gateway.url("/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "the page holds no data and asks for the token"
    );

    let no_admin = Stack::start_with(
        |a| a,
        |g| {
            g.env("HOST", "0.0.0.0")
                .env("ALLOW_NON_LOOPBACK", "true")
                .without("ADMIN_TOKEN")
        },
    )
    .await;
    let resp = http()
        .get(no_admin.gateway.url("/status.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("LOCAL_PROVIDER_ADMIN_TOKEN"),
        "{body}"
    );
}

#[tokio::test]
async fn bound_beyond_loopback_the_page_asks_for_the_admin_token_in_chromium() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let stack = Stack::start_with(
        |a| a,
        |g| g.env("HOST", "0.0.0.0").env("ALLOW_NON_LOOPBACK", "true"),
    )
    .await;
    browser
        .client
        .goto(&stack.gateway.url("/status"))
        .await
        .unwrap();
    let why = browser
        .wait_text("token-why", "the page asking for the token", SEEN, |t| {
            t.contains("admin token")
        })
        .await;
    assert_eq!(
        browser.attr("agent", "data-state").await.as_deref(),
        Some("unknown")
    );
    let enter = |token: &'static str| {
        let client = browser.client.clone();
        async move {
            let field = client.find(Locator::Id("token")).await.unwrap();
            field.clear().await.unwrap();
            field.send_keys(token).await.unwrap();
            client
                .find(Locator::Css("#token-form button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
    };
    enter(KEY).await;
    browser
        .wait_text("token-why", "the wrong token refused", SEEN, |t| {
            t.contains("invalid admin token")
        })
        .await;
    assert!(why.contains("admin token"), "{why}");
    enter(ADMIN).await;
    browser
        .wait_state("link-bridge-agent", "connected", SEEN)
        .await;
    let summary = browser.wait_state("agent", "unknown", SEEN).await;
    assert!(summary.contains("sends no status"), "{summary}");
    assert_eq!(
        browser.attr("token-form", "hidden").await.as_deref(),
        Some("true")
    );
    let _ = browser.client.clone().close().await;
}

async fn status(stack: &Stack) -> Value {
    get(&stack.gateway.url("/status.json")).await.unwrap().1
}

#[tokio::test]
async fn an_mcp_bridge_without_bridge_status_reads_as_unknown_and_one_with_it_is_shown() {
    let stack = Stack::start().await;
    let body = status(&stack).await;
    assert_eq!(
        body["chain"]["gateway_to_bridge_agent"]["state"],
        "connected"
    );
    assert_eq!(
        body["chain"]["bridge_agent_to_mcp_bridge"]["state"],
        "connected"
    );
    assert_eq!(body["agent"]["state"], "unknown");
    assert!(
        body["agent"]["summary"]
            .as_str()
            .unwrap()
            .contains("sends no status"),
        "{body}"
    );
    assert!(body["queue"].is_null());

    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    stack
        .peer
        .send_frame(&BridgeFrame::BridgeStatus(BridgeReport {
            queue_depth: 3,
            leased: 0,
            waiting_polls: 0,
            last_poll_ms: Some(at_ms - 300_000),
            at_ms,
            ..BridgeReport::default()
        }));
    let body = integration_tests::harness::wait_for(SOON, "the report at the gateway", || async {
        let body = status(&stack).await;
        (body["agent"]["state"] == "gone").then_some(body)
    })
    .await;
    assert_eq!(
        body["agent"]["summary"],
        "no agent has asked for work for 5 min"
    );
    assert_eq!(body["queue"]["depth"], 3);

    // A report holds only for the connection it came on: after a reconnect it is gone.
    stack.peer.drop_connections();
    integration_tests::harness::wait_for(
        SOON,
        "the report dropped with its connection",
        || async {
            let body = status(&stack).await;
            let summary = body["agent"]["summary"].as_str().unwrap_or("").to_owned();
            (body["queue"].is_null() && summary.contains("sends no status")).then_some(())
        },
    )
    .await;

    // A refused request shows among the recent errors and is counted among the refusals, by
    // code, never with its content.
    let resp = stack
        .gateway
        .chat(json!({"model": MODEL, "temperature": 7,
                     "messages": [{"role": "user", "content": PROMPT}]}))
        .await;
    assert_eq!(resp.status(), 400);
    let body = status(&stack).await;
    let errors = body["recent_errors"].as_array().unwrap();
    assert_eq!(errors[0]["code"], "invalid_request", "{body}");
    assert_eq!(errors[0]["route"], "/v1/chat/completions");
    assert_eq!(body["refusals"]["total"], 1, "{body}");
    assert_eq!(body["refusals"]["by_code"], json!({"invalid_request": 1}));
    assert!(!body.to_string().contains("secret words"));
}
