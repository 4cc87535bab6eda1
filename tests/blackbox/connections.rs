//! Connections are bounded: sockets that send nothing, or half a request, are closed, and more of
//! them than a service has places for leave its health checks, and mcp-bridge's WebSocket for
//! bridge-agent, answering.
use std::time::{Duration, Instant};

use integration_tests::harness::{get, wait_for, wait_healthy};
use integration_tests::mcp_stack::{AgentRecipe, McpBridgeProc, BRIDGE_TOKEN, MCP_TOKEN};
use integration_tests::stack::{chat_body, http, Stack, KEY};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::SOON;

/// The sum of a Prometheus counter or gauge over its label sets, from the gateway's `/metrics`
/// (`None` when the gateway did not answer).
async fn metric(stack: &Stack, name: &str) -> Option<f64> {
    let (status, body) = get(&stack.gateway.url("/metrics")).await.ok()?;
    assert_eq!(status, 200, "{body}");
    let text = body.as_str().unwrap_or_default().to_owned();
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Opens `n` connections to the gateway, each having sent `head` (maybe nothing); those the
/// gateway closed at once (reset before the connect completed) are left out.
async fn open(stack: &Stack, n: usize, head: &[u8]) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", stack.gateway.port)).await else {
            continue;
        };
        if !head.is_empty() {
            tcp.write_all(head).await.unwrap();
        }
        all.push(tcp);
    }
    all
}

/// Waits until the server has closed `tcp`; the bytes it sent before.
async fn closed_by_server(tcp: &mut TcpStream, by: Instant) -> Vec<u8> {
    let mut got = Vec::new();
    let left = by.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, tcp.read_to_end(&mut got)).await {
        Ok(_) => got,
        Err(_) => panic!("a connection still open at the deadline"),
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn half_sent_requests_are_closed_within_a_minute_while_a_chat_is_served() {
    let stack = Stack::start().await;
    let opened = Instant::now();
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty";
    let mut half_open = open(&stack, 300, head).await;
    assert_eq!(half_open.len(), 300);

    let resp = stack.gateway.chat(chat_body("still served", false)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: still served"
    );

    let deadline = opened + Duration::from_secs(60);
    for tcp in &mut half_open {
        let answer = closed_by_server(tcp, deadline).await;
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    let took = opened.elapsed();
    assert!(took < Duration::from_secs(60), "closed after {took:?}");
    let timed_out = metric(&stack, "http_connections_timed_out_total").await;
    assert!(timed_out >= Some(300.0), "{timed_out:?}");
    eprintln!("300 half-sent requests closed after {took:?}");
}

#[tokio::test]
async fn more_idle_connections_than_open_files_leave_health_checks_answering() {
    const OPEN_FILES: u64 = 256;
    let stack = Stack::start_with(|a| a, |g| g.open_file_limit(OPEN_FILES)).await;
    let pid = stack.gateway.service.pid().unwrap();
    let logs = stack.gateway.service.logs();
    // Half of what the reserve of 32 past the cap and the headroom of 64 leave.
    assert!(logs.contains("max_connections=80"), "{logs}");

    let idle = open(&stack, OPEN_FILES as usize + 44, b"").await;
    // Every connection was accepted: 80 under the cap, 32 in the reserve (until they have sent
    // nothing for 2 s), and the rest closed at once.
    wait_for(SOON, "the connections past the reserve closed", || async {
        let over = metric(&stack, "http_connections_over_limit_total").await?;
        (over >= (OPEN_FILES + 44 - 80) as f64).then_some(())
    })
    .await;
    let used = open_descriptors(pid);
    assert!(used < OPEN_FILES as usize - 64, "{used} descriptors open");

    // Health checks are served past the cap while the idle connections hold every place.
    let (status, health) = wait_for(SOON, "/health past the cap", || async {
        get(&stack.gateway.url("/health")).await.ok()
    })
    .await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    let open_now = metric(&stack, "http_connections_open").await.unwrap_or(0.0) as u64;
    assert!((80..=80 + 32).contains(&open_now), "{open_now} open");
    // Anything else is told to come back, not left waiting.
    let resp = wait_for(SOON, "an answer past the cap", || async {
        stack
            .gateway
            .post("/v1/chat/completions", Some(KEY))
            .json(&chat_body("past the cap", false))
            .send()
            .await
            .ok()
    })
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");

    // Once the idle ones are gone, chats are served again.
    drop(idle);
    wait_for(SOON, "a chat once the idle connections closed", || async {
        let resp = stack
            .gateway
            .post("/v1/chat/completions", Some(KEY))
            .json(&chat_body("after", false))
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    // Log lines are written by a thread of their own: wait for this one.
    let logs = wait_for(SOON, "the connection-limit log line", || {
        let logs = stack.gateway.service.logs();
        async move { logs.contains("at the connection limit").then_some(logs) }
    })
    .await;
    assert!(!logs.contains("Too many open files"), "{logs}");
}

#[tokio::test]
async fn bridge_agent_reaches_an_mcp_bridge_whose_connections_are_all_taken() {
    let bridge = McpBridgeProc::new()
        .env("MAX_CONNECTIONS", 4)
        .env("HEADER_TIMEOUT", 120)
        .spawn();
    wait_healthy(&bridge.url("/health/live"), SOON).await;
    // Four silent sockets hold every place for two minutes.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            TcpStream::connect(("127.0.0.1", bridge.port))
                .await
                .unwrap(),
        );
    }
    // The health check's connection may still hold a place when they arrive: the fourth then
    // waits past the cap, is closed after RESERVE_HEADER_TIMEOUT, and the place the health check
    // frees later is open. A try that is answered in a place takes one more socket, until /mcp
    // is refused.
    let deadline = Instant::now() + SOON;
    loop {
        // One try at most 2 s: a connection the loaded machine has not yet accepted must not
        // use up the whole wait.
        let sent = http()
            .post(bridge.url("/mcp"))
            .bearer_auth(MCP_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if sent.as_ref().is_ok_and(|r| r.status() == 503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mcp-bridge never refused /mcp; the last try: {:?}",
            sent.map(|r| r.status())
        );
        held.push(
            TcpStream::connect(("127.0.0.1", bridge.port))
                .await
                .unwrap(),
        );
    }
    // The editor's requests arrive on bridge-agent's WebSocket: it still gets in.
    let recipe = AgentRecipe::new(&bridge.ws_url(), Some(BRIDGE_TOKEN));
    let _agent = recipe.spawn();
    bridge.wait_agents(1, SOON).await;
    drop(held);
}
