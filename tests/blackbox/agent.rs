//! bridge-agent, driven from both sides: a Rust IPC client playing the gateway, and the scripted
//! MCP bridge peer.
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use integration_tests::harness::{get, wait_for, BridgeAgent, BridgeAgentProc};
use integration_tests::ipc_client::{chat_invoke, hello, raw_connect};
use integration_tests::peer::{ScriptedPeer, BRIDGE_ID};
use provider_shared::bridge::{codes, RawJson};
use provider_shared::ipc::{IpcFrame, LinkState, IPC_PROTOCOL};

use crate::SOON;

/// A peer and an agent connected to it.
async fn connected(
    configure: impl FnOnce(BridgeAgentProc) -> BridgeAgentProc,
) -> (ScriptedPeer, BridgeAgent) {
    let peer = ScriptedPeer::start().await;
    let agent = configure(BridgeAgentProc::new(&peer.url())).spawn();
    agent.wait_connected(SOON).await;
    (peer, agent)
}

/// A URL where nothing listens.
fn dead_url() -> String {
    format!("ws://127.0.0.1:{}", integration_tests::harness::free_port())
}

async fn metrics_text(agent: &BridgeAgent) -> String {
    let (status, body) = get(&agent.url("/metrics")).await.unwrap();
    assert_eq!(status, 200);
    body.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn hello_is_welcomed_and_other_versions_are_rejected() {
    let (_peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;
    assert_eq!(client.agent_id, "test-agent");
    assert_eq!(client.version, 1);
    assert_eq!(client.welcome_status.state, LinkState::Connected);
    assert_eq!(client.welcome_status.bridge_id.as_deref(), Some(BRIDGE_ID));

    let mut raw = raw_connect(&agent.socket).await.unwrap();
    raw.send(IpcFrame::Hello {
        protocol: IPC_PROTOCOL.into(),
        version: 99,
        client: "future-gateway".into(),
        capabilities: vec![],
    })
    .await
    .unwrap();
    let answer = tokio::time::timeout(SOON, raw.next()).await.unwrap();
    let Some(Ok(IpcFrame::Reject { reason })) = answer else {
        panic!("expected reject, got {answer:?}")
    };
    assert!(reason.contains("99"), "{reason}");
    let after = tokio::time::timeout(SOON, raw.next()).await.unwrap();
    assert!(
        after.is_none(),
        "connection should close after reject: {after:?}"
    );

    // Anything but hello first is rejected too.
    let mut raw = raw_connect(&agent.socket).await.unwrap();
    raw.send(IpcFrame::Cancel { id: "x".into() }).await.unwrap();
    let answer = tokio::time::timeout(SOON, raw.next()).await.unwrap();
    assert!(
        matches!(answer, Some(Ok(IpcFrame::Reject { .. }))),
        "{answer:?}"
    );
}

#[tokio::test]
async fn many_concurrent_streams_share_one_connection_without_cross_talk() {
    let (peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;
    let pending: Vec<_> = (0..40)
        .map(|i| {
            let text = format!("request {i} says hello [[slow:{}]]", i % 4);
            client.invoke(chat_invoke(&format!("r{i}"), &text, true))
        })
        .collect();
    let plain = client.invoke(chat_invoke("plain", "not streamed", false));
    for (i, request) in pending.into_iter().enumerate() {
        let answer = request.finish(SOON).await.unwrap();
        let expected = format!("echo: request {i} says hello");
        assert_eq!(answer.text(), expected, "r{i}");
        assert_eq!(answer.message_content().as_deref(), Some(expected.as_str()));
        assert!(answer.chunks.len() > 1);
        for (n, chunk) in answer.chunks.iter().enumerate() {
            assert_eq!(chunk.id, format!("r{i}"));
            assert_eq!(chunk.chunk_index, n as u64);
        }
    }
    let plain = plain.finish(SOON).await.unwrap();
    assert!(plain.chunks.is_empty());
    assert_eq!(
        plain.message_content().as_deref(),
        Some("echo: not streamed")
    );
    assert!(client.unrouted().is_empty(), "{:?}", client.unrouted());
    assert_eq!(peer.invokes().len(), 41);
}

/// bridge-agent passes the prompt on as the bytes it got: text no encoder of decoded JSON would
/// write (spacing, key order, `\u` escapes, `1.0`) reaches the bridge unchanged, so it was not
/// decoded and encoded again on the way.
#[tokio::test]
async fn the_prompt_reaches_the_bridge_as_the_bytes_the_gateway_sent() {
    let (peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;
    let messages = r#"[ {"role":"user",  "content":"caf\u00e9 plain", "z":1.0, "a":[]} ]"#;
    let parameters = r#"{"stream":false, "x_vendor":{"b":1,"a":2}}"#;
    let mut invoke = chat_invoke("raw", "unused", false);
    invoke.payload = provider_shared::bridge::Payload::Chat {
        messages: RawJson::from_text(messages.into()).unwrap(),
        parameters: RawJson::from_text(parameters.into()).unwrap(),
    };
    let answer = client.invoke(invoke).finish(SOON).await.unwrap();
    assert_eq!(
        answer.message_content().as_deref(),
        Some("echo: café plain")
    );
    let got = peer.wait_for_invoke("raw", SOON).await.unwrap();
    assert_eq!(got.payload.messages().unwrap().get(), messages.trim());
    assert_eq!(got.payload.parameters().get(), parameters);
}

#[tokio::test]
async fn hello_and_bearer_token_reach_the_peer() {
    let peer = ScriptedPeer::start().await;
    peer.expected_token(Some("bridge-secret".into()));
    let agent = BridgeAgentProc::new(&peer.url())
        .env("MCP_BRIDGE_TOKEN", "bridge-secret")
        .spawn();
    agent.wait_connected(SOON).await;
    let hello = peer.wait_for_hello(SOON).await.unwrap();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["agent_id"], "test-agent");
    assert_eq!(
        hello["protocol"], 1,
        "a bridge that knows only 1 still answers"
    );
    assert_eq!(hello["max_protocol"], 2);
    assert_eq!(hello["max_frame_bytes"], 48 * 1024 * 1024);
    let caps: Vec<&str> = hello["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(
        caps,
        [
            "stream",
            "cancel",
            "tools",
            "reasoning",
            "result_after_chunks"
        ]
    );
    assert_eq!(
        peer.authorization_headers(),
        [Some("Bearer bridge-secret".to_owned())]
    );
    assert!(
        !agent.service.logs().contains("bridge-secret"),
        "token leaked to the log"
    );
}

#[tokio::test]
async fn a_missing_token_is_refused_by_the_peer_and_counted_as_a_failure() {
    let peer = ScriptedPeer::start().await;
    peer.expected_token(Some("bridge-secret".into()));
    let agent = BridgeAgentProc::new(&peer.url()).spawn();
    peer.wait_until(SOON, |r| r.authorization.len() >= 2)
        .await
        .unwrap();
    assert!(peer.authorization_headers().iter().all(Option::is_none));
    assert_eq!(peer.record().connections, 0);
    let body = agent.wait_health("degraded", SOON).await;
    assert_ne!(body["mcp_connection"]["status"], "connected");
}

#[tokio::test]
async fn heartbeats_reach_the_peer_and_pongs_set_last_ping() {
    let (peer, agent) = connected(|a| a.env("HEARTBEAT_INTERVAL", "0.2")).await;
    let client = agent.connect().await;
    assert!(peer.wait_for_pings(2, SOON).await, "{:?}", peer.record());
    let status = client
        .wait_status(SOON, |s| s.last_ping.is_some())
        .await
        .expect("a status frame with last_ping");
    let last_ping = status.last_ping.unwrap();
    assert!(
        last_ping.contains('T') && last_ping.len() >= 20,
        "{last_ping}"
    );
    let body = agent.wait_connected(SOON).await;
    assert!(body["mcp_connection"]["last_ping"].is_string(), "{body}");
    // Application ping timestamps are Unix milliseconds.
    let ts = peer.record().pings[0];
    assert!(ts > 1_600_000_000_000, "{ts}");
}

#[tokio::test]
async fn a_silent_peer_is_dropped_and_the_agent_reconnects() {
    let (peer, agent) = connected(|a| {
        a.env("HEARTBEAT_INTERVAL", "0.2")
            .env("CONNECTION_TIMEOUT", "0.5")
    })
    .await;
    peer.set_silent(true);
    let started = Instant::now();
    agent.wait_health("degraded", SOON).await;
    // 2 × HEARTBEAT_INTERVAL without a frame, not sooner.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    wait_for(SOON, "the silence to be logged", || async {
        agent.service.logs().contains("sent nothing").then_some(())
    })
    .await;
    peer.set_silent(false);
    let body = agent.wait_connected(SOON).await;
    assert!(
        body["mcp_connection"]["reconnects"].as_u64().unwrap() >= 1,
        "{body}"
    );
    assert!(peer.record().connections >= 2);
    let client = agent.connect().await;
    let answer = client
        .invoke(chat_invoke("after", "back again", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.text(), "echo: back again");
}

#[tokio::test]
async fn a_peer_drop_fails_in_flight_requests_at_once_then_service_resumes() {
    let (peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;

    let hanging = client.invoke(chat_invoke("h1", "[[hang]]", true));
    peer.wait_for_invoke("h1", SOON).await.unwrap();
    let dropped_at = Instant::now();
    peer.drop_connections();
    let answer = hanging.finish(SOON).await.unwrap();
    assert_eq!(answer.error_code(), Some(codes::BRIDGE_DISCONNECTED));
    assert!(
        dropped_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        dropped_at.elapsed()
    );

    agent.wait_connected(SOON).await;
    // One chunk, then the peer drops the connection mid-stream.
    let answer = client
        .invoke(chat_invoke("d1", "one two three [[drop]]", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.chunks.len(), 1);
    assert_eq!(answer.error_code(), Some(codes::BRIDGE_DISCONNECTED));

    let body = agent.wait_connected(SOON).await;
    assert!(
        body["mcp_connection"]["reconnects"].as_u64().unwrap() >= 2,
        "{body}"
    );
    let answer = client
        .invoke(chat_invoke("ok", "fine now", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.text(), "echo: fine now");
    assert!(client.unrouted().is_empty(), "{:?}", client.unrouted());
}

#[tokio::test]
async fn requests_while_the_bridge_is_down_get_agent_unavailable_after_the_connection_timeout() {
    let url = dead_url();
    let agent = BridgeAgentProc::new(&url)
        .env("CONNECTION_TIMEOUT", "0.6")
        .spawn();
    agent.wait_live(SOON).await;
    let client = agent.connect().await;
    assert_ne!(client.welcome_status.state, LinkState::Connected);
    let sent = Instant::now();
    let answer = client
        .invoke(chat_invoke("u1", "anyone?", true))
        .finish(SOON)
        .await
        .unwrap();
    let waited = sent.elapsed();
    assert_eq!(answer.error_code(), Some(codes::AGENT_UNAVAILABLE));
    let message = answer.error_message().unwrap();
    assert!(
        message.contains(&url) && message.contains("reconnecting"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_request_waiting_for_the_bridge_is_sent_once_it_connects() {
    let mut peer = ScriptedPeer::start().await;
    let port = peer.port();
    peer.stop().await;
    let agent = BridgeAgentProc::new(&format!("ws://127.0.0.1:{port}"))
        .env("CONNECTION_TIMEOUT", "8")
        .spawn();
    agent.wait_live(SOON).await;
    let client = agent.connect().await;
    let waiting = client.invoke(chat_invoke("w1", "patience", true));
    let peer = ScriptedPeer::start_on(port).await;
    let answer = waiting.finish(SOON + SOON).await.unwrap();
    assert_eq!(answer.text(), "echo: patience");
    assert_eq!(peer.invokes().len(), 1);
}

#[tokio::test]
async fn request_timeout_ends_the_request_and_cancels_it_at_the_peer() {
    let (peer, agent) = connected(|a| a.env("REQUEST_TIMEOUT", "0.3")).await;
    let client = agent.connect().await;
    let sent = Instant::now();
    let answer = client
        .invoke(chat_invoke("t1", "[[hang]]", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.error_code(), Some(codes::REQUEST_TIMEOUT));
    assert!(
        sent.elapsed() >= Duration::from_millis(280),
        "{:?}",
        sent.elapsed()
    );
    assert!(peer.wait_for_cancel("t1", SOON).await);

    // A first chunk in time disarms it.
    let answer = client
        .invoke(chat_invoke("t2", "slow but steady [[slow:200]]", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.text(), "echo: slow but steady");
}

#[tokio::test]
async fn response_timeout_ends_a_long_answer_and_cancels_it_at_the_peer() {
    let (peer, agent) = connected(|a| a.env("RESPONSE_TIMEOUT", "0.5")).await;
    let client = agent.connect().await;
    let answer = client
        .invoke(chat_invoke("long", "[[chunks:100]][[slow:50]]", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.error_code(), Some(codes::RESPONSE_TIMEOUT));
    assert!(
        !answer.chunks.is_empty() && answer.chunks.len() < 100,
        "{}",
        answer.chunks.len()
    );
    assert!(peer.wait_for_cancel("long", SOON).await);
}

#[tokio::test]
async fn an_ipc_cancel_reaches_the_peer_and_ends_with_one_cancelled_result() {
    let (peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;
    let mut request = client.invoke(chat_invoke("c1", "[[hang]]", true));
    peer.wait_for_invoke("c1", SOON).await.unwrap();
    client.cancel("c1");
    let Some(IpcFrame::Result(result)) = request.next(SOON).await else {
        panic!("expected a result")
    };
    let answer = integration_tests::ipc_client::Answer {
        chunks: vec![],
        result,
    };
    assert_eq!(answer.error_code(), Some(codes::CANCELLED));
    assert!(peer.wait_for_cancel("c1", SOON).await);
    // The id is free again, and nothing else arrives for the cancelled request.
    let again = client
        .invoke(chat_invoke("c1", "reused id", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(again.text(), "echo: reused id");
    assert!(client.unrouted().is_empty(), "{:?}", client.unrouted());
}

#[tokio::test]
async fn closing_the_gateway_connection_cancels_its_requests_at_the_peer() {
    let (peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;
    let _a = client.invoke(chat_invoke("g1", "[[hang]]", true));
    let _b = client.invoke(chat_invoke("g2", "[[hang]]", false));
    peer.wait_for_invoke("g1", SOON).await.unwrap();
    peer.wait_for_invoke("g2", SOON).await.unwrap();
    let body = agent.wait_connected(SOON).await;
    assert_eq!(body["in_flight"], 2, "{body}");
    assert_eq!(body["gateway_connections"], 1, "{body}");
    client.close().await;
    assert!(peer.wait_for_cancel("g1", SOON).await);
    assert!(peer.wait_for_cancel("g2", SOON).await);
    let url = agent.url("/health");
    wait_for(SOON, "no gateway and nothing in flight", || async {
        let (_, body) = get(&url).await.ok()?;
        (body["gateway_connections"] == 0 && body["in_flight"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_in_flight_id_is_refused() {
    let (peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;
    let mut first = client.invoke(chat_invoke("dup", "[[hang]]", true));
    peer.wait_for_invoke("dup", SOON).await.unwrap();
    // Sent behind the client's back, so its result lands on the first request's handle.
    client.send(IpcFrame::Invoke(chat_invoke("dup", "again", true)));
    let Some(IpcFrame::Result(result)) = first.next(SOON).await else {
        panic!("expected a result")
    };
    let answer = integration_tests::ipc_client::Answer {
        chunks: vec![],
        result,
    };
    assert_eq!(answer.error_code(), Some(codes::DUPLICATE_ID));
    assert_eq!(
        peer.invokes().len(),
        1,
        "the duplicate must not reach the peer"
    );
}

#[tokio::test]
async fn exits_non_zero_after_reconnect_attempts_and_answers_waiting_requests() {
    let agent = BridgeAgentProc::new(&dead_url())
        .env("RECONNECT_ATTEMPTS", "3")
        .env("RECONNECT_DELAY", "0.4")
        .env("CONNECTION_TIMEOUT", "5")
        .spawn();
    let mut agent = agent;
    let started = Instant::now();
    agent.wait_live(SOON).await;
    let client = agent.connect().await;
    let waiting = client.invoke(chat_invoke("w", "hello?", true));
    let status = agent.service.wait_exit(SOON).await.unwrap();
    // Failures 1 and 2 wait at least 0.2 s and 0.4 s: it cannot have given up before then.
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "exited {:?} after it started, before its attempts ran out",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{status:?}");
    let answer = waiting.finish(SOON).await.unwrap();
    assert_eq!(answer.error_code(), Some(codes::AGENT_UNAVAILABLE));
    let logs = agent.service.logs();
    assert!(
        logs.contains("bridge-agent: gave up on the MCP bridge"),
        "{logs}"
    );
    assert!(!agent.socket.exists());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_the_new_one_is_private() {
    let builder = BridgeAgentProc::new(&dead_url());
    let path = builder.socket_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let agent = builder.spawn();
    agent.wait_live(SOON).await;
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let client = agent.connect().await;
    assert_eq!(client.agent_id, "test-agent");
}

#[tokio::test]
async fn a_live_socket_is_refused() {
    let builder = BridgeAgentProc::new(&dead_url());
    let path = builder.socket_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut agent = builder.spawn();
    let status = agent.service.wait_exit(SOON).await.unwrap();
    assert_eq!(status.code(), Some(1));
    let logs = agent.service.logs();
    assert!(
        logs.contains("another bridge-agent is already listening on"),
        "{logs}"
    );
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_refused_untouched() {
    let builder = BridgeAgentProc::new(&dead_url());
    let path = builder.socket_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"not a socket").unwrap();
    let mut agent = builder.spawn();
    let status = agent.service.wait_exit(SOON).await.unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(agent.service.logs().contains("is not a socket"));
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[tokio::test]
async fn a_bad_variable_stops_start_up_with_one_line() {
    let mut agent = BridgeAgentProc::new("http://127.0.0.1:1").spawn();
    let status = agent.service.wait_exit(SOON).await.unwrap();
    assert_eq!(status.code(), Some(2));
    let logs = agent.service.logs();
    assert_eq!(logs.lines().count(), 1, "{logs}");
    assert!(
        logs.starts_with("bridge-agent: LOCAL_PROVIDER_MCP_BRIDGE_URL: expected a ws:// URL"),
        "{logs}"
    );
}

#[tokio::test]
async fn unknown_frame_types_and_ids_are_tolerated() {
    let (peer, agent) = connected(|a| a).await;
    let client = agent.connect().await;
    peer.send_raw(r#"{"type":"telemetry","load":0.5}"#);
    peer.send_raw("this is not json");
    peer.send_chunk_for("nobody-asked");
    // Sent after those on the same connection, so answered after they were handled.
    let answer = client
        .invoke(chat_invoke("after", "still here", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.text(), "echo: still here");
    assert_eq!(
        peer.record().connections,
        1,
        "the link must survive odd frames"
    );
    assert!(client.unrouted().is_empty(), "{:?}", client.unrouted());
    let metrics = metrics_text(&agent).await;
    for reason in ["unknown_type", "malformed", "unknown_id"] {
        assert!(
            metrics.contains(&format!(
                "bridge_agent_frames_dropped_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} missing in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn health_ready_and_metrics_follow_the_link() {
    let mut peer = ScriptedPeer::start().await;
    let port = peer.port();
    peer.stop().await;
    let agent = BridgeAgentProc::new(&format!("ws://127.0.0.1:{port}")).spawn();
    agent.wait_live(SOON).await;
    let (status, live) = get(&agent.url("/health/live")).await.unwrap();
    assert_eq!((status, live["status"].as_str()), (200, Some("alive")));
    let (status, body) = get(&agent.url("/health")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "degraded", "{body}");
    assert!(
        body["uptime_seconds"].is_u64() && body["version"].is_string(),
        "{body}"
    );
    assert_eq!(get(&agent.url("/health/ready")).await.unwrap().0, 503);

    let _peer = ScriptedPeer::start_on(port).await;
    let body = agent.wait_connected(SOON + SOON).await;
    assert_eq!(body["mcp_connection"]["status"], "connected", "{body}");
    assert_eq!(body["mcp_connection"]["bridge_id"], BRIDGE_ID, "{body}");
    assert_eq!(get(&agent.url("/health/ready")).await.unwrap().0, 200);

    let client = agent.connect().await;
    client
        .invoke(chat_invoke("m1", "count me", true))
        .finish(SOON)
        .await
        .unwrap();
    let resp = reqwest::get(agent.url("/metrics")).await.unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/plain; version=0.0.4"
    );
    let text = resp.text().await.unwrap();
    for name in [
        "bridge_agent_ws_connected 1",
        "bridge_agent_ws_reconnects_total",
        "bridge_agent_ws_connect_failures_total",
        "bridge_agent_requests_in_flight",
        "bridge_agent_requests_total{outcome=\"ok\"} 1",
        "bridge_agent_time_to_first_chunk_seconds_bucket",
        "bridge_agent_request_duration_seconds_bucket",
        "bridge_agent_gateway_connections 1",
        "bridge_agent_frames_dropped_total{reason=\"unknown_id\"} 0",
        "bridge_agent_requests_total{outcome=\"unavailable\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
}

#[tokio::test]
async fn sigterm_lets_streams_finish_then_exits_zero_and_removes_the_socket() {
    let (peer, mut agent) = connected(|a| a).await;
    let client = agent.connect().await;
    let streaming = client.invoke(chat_invoke("s1", "[[chunks:5]][[slow:100]]", true));
    peer.wait_for_invoke("s1", SOON).await.unwrap();
    agent.service.terminate().unwrap();
    let answer = streaming.finish(SOON).await.unwrap();
    assert_eq!(answer.error_code(), None, "{:?}", answer.result);
    assert_eq!(answer.chunks.len(), 5);
    let status = agent.service.wait_exit(SOON).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!agent.socket.exists());
    assert!(
        peer.wait_until(SOON, |r| r.closes >= 1).await.is_some(),
        "no Close frame"
    );
    assert!(peer.cancels().is_empty());
}

#[tokio::test]
async fn after_the_shutdown_grace_requests_end_with_shutting_down() {
    let (peer, mut agent) = connected(|a| a.env("SHUTDOWN_GRACE", "0.3")).await;
    let client = agent.connect().await;
    let hanging = client.invoke(chat_invoke("h", "[[hang]]", true));
    peer.wait_for_invoke("h", SOON).await.unwrap();
    agent.service.terminate().unwrap();
    let answer = hanging.finish(SOON).await.unwrap();
    assert_eq!(answer.error_code(), Some(codes::SHUTTING_DOWN));
    assert!(peer.wait_for_cancel("h", SOON).await);
    let status = agent.service.wait_exit(SOON).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(client.wait_closed(SOON).await);
}

#[tokio::test]
async fn a_welcome_with_another_protocol_is_a_failed_attempt() {
    let peer = ScriptedPeer::start().await;
    peer.set_welcome_protocol(3);
    let agent = BridgeAgentProc::new(&peer.url()).spawn();
    peer.wait_until(SOON, |r| r.hellos.len() >= 2)
        .await
        .unwrap();
    let metrics = metrics_text(&agent).await;
    assert!(metrics.contains("bridge_agent_ws_connected 0"), "{metrics}");
    assert!(
        !metrics.contains("bridge_agent_ws_connect_failures_total 0"),
        "{metrics}"
    );
    // Log lines are written by a thread of their own: wait for this one.
    wait_for(SOON, "the protocol refusal in the log", || {
        let found = agent.service.logs().contains("protocol 3");
        async move { found.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_gateway_that_stops_reading_holds_up_no_one() {
    let (peer, mut agent) = connected(|a| a.env("SHUTDOWN_GRACE", "0.3")).await;
    let mut stuck = raw_connect(&agent.socket).await.unwrap();
    stuck.send(hello()).await.unwrap();
    let welcome = tokio::time::timeout(SOON, stuck.next()).await.unwrap();
    assert!(
        matches!(welcome, Some(Ok(IpcFrame::Welcome { .. }))),
        "{welcome:?}"
    );
    // Far more than the socket buffer and the per-connection queue hold; never read.
    stuck
        .send(IpcFrame::Invoke(chat_invoke(
            "flood",
            "[[chunks:20000]]",
            true,
        )))
        .await
        .unwrap();
    peer.wait_for_invoke("flood", SOON).await.unwrap();

    // The peer answers this after the whole flood, on the same WebSocket.
    let client = agent.connect().await;
    let answer = client
        .invoke(chat_invoke("other", "unaffected", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.text(), "echo: unaffected");

    // Nor does it hold up shutdown.
    agent.service.terminate().unwrap();
    let status = agent.service.wait_exit(SOON).await.unwrap();
    assert_eq!(status.code(), Some(0));
    drop(stuck);
}
