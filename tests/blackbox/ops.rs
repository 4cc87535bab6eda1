//! What operators see: health, metrics (checked by promtool), start-up refusals, the key
//! generator and the audit log's content.
use std::process::Command;
use std::time::Duration;

use integration_tests::harness::bin_path;
use integration_tests::stack::{chat_body, Stack, KEY};
use serde_json::Value;

#[tokio::test]
async fn health_reports_the_seed_fields() {
    let stack = Stack::start().await;
    let health: Value = stack
        .gateway
        .get("/health", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["mcp_connection"]["status"], "connected");
    assert!(health["mcp_connection"].get("last_ping").is_some());
    for field in ["version", "uptime_seconds", "active_sessions"] {
        assert!(health.get(field).is_some(), "{field}");
    }
    assert_eq!(
        stack
            .gateway
            .get("/health/ready", None)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        stack
            .gateway
            .get("/health/live", None)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

fn promtool() -> Option<String> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if found {
        return Some("promtool".into());
    }
    integration_tests::skip::missing_dependency(
        "the exposition-format check of /metrics",
        "promtool",
        "scripts/setup-test-deps.sh installs it",
    );
    None
}

#[tokio::test]
async fn metrics_count_what_happened_and_pass_promtool() {
    let stack = Stack::start().await;
    let gw = &stack.gateway;
    assert_eq!(gw.chat(chat_body("count me", true)).await.status(), 200);
    assert_eq!(gw.chat(chat_body("and me", false)).await.status(), 200);
    let _ = gw.get("/v1/models", None).send().await.unwrap();
    let text = gw
        .get("/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gateway_http_requests_total",
        "gateway_http_request_duration_seconds_bucket",
        "gateway_time_to_first_chunk_seconds_bucket",
        "gateway_chat_requests_total",
        "gateway_tokens_total",
        "gateway_auth_failures_total",
        "gateway_requests_in_flight",
        "gateway_bridge_agent_connected 1",
        "gateway_bridge_connected 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains("route=\"/v1/chat/completions\""));
    let agent_metrics = integration_tests::harness::get(&stack.agent.url("/metrics"))
        .await
        .unwrap()
        .1;
    for body in [text, agent_metrics.as_str().unwrap_or_default().to_owned()] {
        let Some(tool) = promtool() else { return };
        let mut child = Command::new(tool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn the_audit_log_has_the_seed_events_and_no_secrets() {
    let stack = Stack::start().await;
    let gw = &stack.gateway;
    let secret_prompt = "my secret prompt 8d1f0c";
    assert_eq!(gw.chat(chat_body(secret_prompt, false)).await.status(), 200);
    let record = gw
        .wait_audit("model_request", |v| v["event_type"] == "model_request")
        .await;
    assert_eq!(record["success"], true);
    assert_eq!(record["model"], "cursor-agent-local");
    assert!(record["tokens"].as_u64().unwrap() > 0);
    assert!(record["duration_ms"].is_u64());
    assert_eq!(record["prompt_sha256"].as_str().map(str::len), Some(64));
    assert!(record["timestamp"].is_string());
    let text = gw.audit_text();
    assert!(
        !text.contains(secret_prompt),
        "the prompt never reaches the audit log"
    );
    assert!(!text.contains(KEY));
    assert!(text.contains("\"event_type\":\"authentication\""));
}

fn run_gateway(envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin_path("gateway"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        cmd.env(format!("LOCAL_PROVIDER_{k}"), v);
    }
    cmd.output().unwrap()
}

#[test]
fn start_up_refuses_a_missing_key_or_a_bad_variable_in_one_line() {
    let out = run_gateway(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("LOCAL_PROVIDER_API_KEY") && err.contains("generate-api-key"),
        "{err}"
    );

    for (var, value, expect) in [
        ("PORT", "http", "LOCAL_PROVIDER_PORT"),
        ("RATE_LIMIT_RPM", "-5", "LOCAL_PROVIDER_RATE_LIMIT_RPM"),
        ("SESSION_TTL", "soon", "LOCAL_PROVIDER_SESSION_TTL"),
        ("HOST", "0.0.0.0", "LOCAL_PROVIDER_ALLOW_NON_LOOPBACK"),
        ("LOG_LEVEL", "loud", "LOCAL_PROVIDER_LOG_LEVEL"),
    ] {
        let out = run_gateway(&[("API_KEY", KEY), (var, value)], &[]);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{var}={value}: {err}");
    }
    let out = run_gateway(&[("API_KEY", "short")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("short"),
        "the key is never echoed"
    );
}

#[test]
fn generate_api_key_prints_a_long_fresh_key() {
    let a = run_gateway(&[], &["generate-api-key"]);
    let b = run_gateway(&[], &["generate-api-key"]);
    assert!(a.status.success());
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout).trim().to_owned(),
        String::from_utf8_lossy(&b.stdout).trim().to_owned(),
    );
    assert!(a.len() >= 64, "{a}");
    assert_ne!(a, b);
    assert!(!a.contains(char::is_whitespace));
}

#[tokio::test]
async fn a_gateway_started_before_bridge_agent_connects_when_it_arrives() {
    let peer = integration_tests::peer::ScriptedPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("late.sock");
    let gateway = integration_tests::stack::GatewayProc::new(&socket).spawn();
    gateway.wait_live().await;
    gateway
        .wait_health("degraded", Duration::from_secs(5))
        .await;
    let _agent = integration_tests::harness::BridgeAgentProc::new(&peer.url())
        .env("BRIDGE_SOCKET", socket.display())
        .spawn();
    gateway
        .wait_health("healthy", Duration::from_secs(10))
        .await;
    assert_eq!(
        gateway
            .chat(chat_body("late but here", false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_gateway_reports_its_own_overhead_when_asked() {
    let plain = Stack::start().await;
    let resp = plain.gateway.chat(chat_body("no header", false)).await;
    assert!(
        !resp.headers().contains_key("x-gateway-overhead-ms"),
        "off by default"
    );

    let stack = Stack::start_with(|a| a, |g| g.env("OVERHEAD_HEADER", "true")).await;
    let started = std::time::Instant::now();
    let resp = stack
        .gateway
        .chat(chat_body("[[delay:300]] measured", false))
        .await;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    let overhead: f64 = resp.headers()["x-gateway-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead > 0.0, "{overhead}");
    assert!(
        overhead < total_ms - 250.0,
        "the agent's 300 ms are not the gateway's: {overhead} of {total_ms}"
    );
    let streamed = stack.gateway.chat(chat_body("streamed", true)).await;
    assert!(streamed.headers().contains_key("x-gateway-overhead-ms"));
    let text = stack
        .gateway
        .get("/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("gateway_overhead_seconds_bucket"), "{text}");
}
