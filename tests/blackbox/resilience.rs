//! Supervision: each side survives the other's failure and restart, and no request hangs.
use std::time::Duration;

use integration_tests::harness::BridgeAgentProc;
use integration_tests::stack::{chat_body, Sse, Stack};
use serde_json::Value;

#[tokio::test]
async fn a_dropped_bridge_ends_the_request_clearly_then_chats_recover() {
    let stack = Stack::start().await;
    let resp = stack
        .gateway
        .chat(chat_body("[[drop]] [[chunks:3]] going away", true))
        .await;
    let sse = Sse::parse(&resp.text().await.unwrap());
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
    let error = sse
        .json()
        .into_iter()
        .find(|e| e.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "bridge_disconnected", "{error}");

    stack
        .gateway
        .wait_health("healthy", Duration::from_secs(10))
        .await;
    let ok: Value = stack
        .gateway
        .chat(chat_body("back again", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["choices"][0]["message"]["content"], "echo: back again");
}

#[tokio::test]
async fn bridge_agent_killed_and_restarted_without_restarting_the_gateway() {
    // No bridge-agent comes back within the resume grace: the request ends with a clear error.
    let mut stack = Stack::start_with(|a| a, |g| g.env("RESUME_GRACE", "0.5")).await;
    let gateway_pid = stack.gateway.service.pid();
    let socket = stack.agent.socket.clone();
    let port = stack.agent.port;

    // In flight when bridge-agent dies: an error event once the grace is over, never a hang.
    let mut held = stack
        .gateway
        .chat(chat_body("[[hang]] in flight", true))
        .await;
    held.chunk().await.unwrap();
    stack.agent.service.kill().await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), held.text())
        .await
        .expect("stream ends")
        .unwrap();
    let sse = Sse::parse(&rest);
    let error = sse
        .json()
        .into_iter()
        .find(|e| e.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "bridge_agent_disconnected");
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));

    let health = stack
        .gateway
        .wait_health("degraded", Duration::from_secs(5))
        .await;
    assert_eq!(health["bridge_agent"]["status"], "disconnected");
    let ready = stack
        .gateway
        .get("/health/ready", None)
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let resp = stack.gateway.chat(chat_body("anyone?", false)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bridge_agent_unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bridge-agent"));

    // Its supervisor brings it back on the same socket; the gateway finds it by itself.
    let _restarted = BridgeAgentProc::new(&stack.peer.url())
        .env("BRIDGE_SOCKET", socket.display())
        .env("BRIDGE_AGENT_PORT", port)
        .spawn();
    stack
        .gateway
        .wait_health("healthy", Duration::from_secs(10))
        .await;
    let ok: Value = stack
        .gateway
        .chat(chat_body("welcome back", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["choices"][0]["message"]["content"], "echo: welcome back");
    assert_eq!(
        stack.gateway.service.pid(),
        gateway_pid,
        "the gateway was never restarted"
    );
    assert!(stack.gateway.service.is_running());
}

#[tokio::test]
async fn with_the_bridge_down_health_is_degraded_and_chats_get_a_clear_503() {
    let mut stack = Stack::start().await;
    stack.peer.stop().await;
    let health = stack
        .gateway
        .wait_health("degraded", Duration::from_secs(10))
        .await;
    assert_ne!(health["mcp_connection"]["status"], "connected");
    let live = stack
        .gateway
        .get("/health/live", None)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let resp = stack
        .gateway
        .chat(chat_body("is anyone there", false))
        .await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "agent_unavailable");
}

#[tokio::test]
async fn shutdown_lets_streams_finish_within_the_grace_period_then_ends_the_rest() {
    let stack = Stack::start_with(|a| a, |g| g.env("SHUTDOWN_GRACE", 1.5)).await;
    let finishing = stack
        .gateway
        .chat(chat_body("[[slow:100]] [[chunks:5]] nearly done", true))
        .await;
    let hanging = stack
        .gateway
        .chat(chat_body("[[hang]] never done", true))
        .await;
    stack.gateway.service.terminate().unwrap();
    let done = Sse::parse(&finishing.text().await.unwrap());
    assert_eq!(
        done.content(),
        "echo: nearly done",
        "an answer within the grace period completes"
    );
    let cut = Sse::parse(
        &tokio::time::timeout(Duration::from_secs(10), hanging.text())
            .await
            .unwrap()
            .unwrap(),
    );
    let error = cut
        .json()
        .into_iter()
        .find(|e| e.get("error").is_some())
        .expect("an error event");
    assert_eq!(error["error"]["code"], "shutting_down");
    assert_eq!(cut.data.last().map(String::as_str), Some("[DONE]"));
    let mut gateway = stack.gateway;
    let status = gateway
        .service
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn an_idle_gateway_stops_at_once_without_waiting_out_the_grace_period() {
    let stack = Stack::start_with(|a| a, |g| g.env("SHUTDOWN_GRACE", 60)).await;
    assert_eq!(
        stack
            .gateway
            .chat(chat_body("one answer", false))
            .await
            .status(),
        200
    );
    stack.gateway.service.terminate().unwrap();
    let mut gateway = stack.gateway;
    let status = gateway
        .service
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("nothing in flight, so no reason to wait 60 s");
    assert!(status.success(), "{status:?}");
}
