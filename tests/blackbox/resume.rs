//! Requests that survive a dropped WebSocket or a killed bridge-agent (bridge protocol 2), clients
//! that stop reading (`slow_client`), and requests too large for the bridge's frames
//! (`request_too_large`), each without touching the other requests in flight.
use std::time::{Duration, Instant};

use integration_tests::harness::{wait_for, BridgeAgentProc};
use integration_tests::stack::{chat_body, Sse, Stack, KEY, MODEL};
use serde_json::{json, Value};

use crate::SOON;

/// A stack whose scripted peer resumes as mcp-bridge does.
pub(crate) async fn resuming_stack(
    agent: impl FnOnce(BridgeAgentProc) -> BridgeAgentProc,
    gateway: impl FnOnce(integration_tests::stack::GatewayProc) -> integration_tests::stack::GatewayProc,
) -> Stack {
    let stack = Stack::start_with(agent, gateway).await;
    stack.peer.set_welcome_protocol(2);
    // Reconnect so the welcome of protocol 2 is the one in force.
    stack.peer.drop_connections();
    wait_for(SOON, "bridge-agent back on protocol 2", || async {
        let hellos = stack.peer.hellos().len();
        (hellos >= 2 && stack.peer.record().open == 1).then_some(())
    })
    .await;
    stack
        .gateway
        .wait_health("healthy", Duration::from_secs(10))
        .await;
    stack
}

/// "echo: <text>": what a fault-free run answers to a message without directives.
fn expected(text: &str) -> String {
    format!("echo: {text}")
}

/// The content a fault-free streamed run of `text` gives.
pub(crate) async fn fault_free(stack: &Stack, text: &str) -> String {
    let body = stack
        .gateway
        .chat(chat_body(text, true))
        .await
        .text()
        .await
        .unwrap();
    let sse = Sse::parse(&body);
    assert_eq!(only_error_code(&sse), None, "{body}");
    sse.content()
}

/// Lifts the token budget so that a conversation over 1 MiB is admitted.
/// Token budgets that a request of over a megabyte fits: the rate limit and the context window.
fn roomy(g: integration_tests::stack::GatewayProc) -> integration_tests::stack::GatewayProc {
    g.env("RATE_LIMIT_TPM", 1_000_000_000)
        .env("CONTEXT_WINDOW", 10_000_000)
}

pub(crate) fn only_error_code(sse: &Sse) -> Option<String> {
    let errors: Vec<Value> = sse
        .json()
        .into_iter()
        .filter(|e| e.get("error").is_some())
        .collect();
    assert!(errors.len() <= 1, "one error at most: {errors:?}");
    errors
        .first()
        .and_then(|e| e["error"]["code"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn every_chunk_arrives_once_in_order_across_a_websocket_drop() {
    let stack = resuming_stack(|a| a, |g| g).await;
    let text = "[[chunks:40]] [[slow:25]] in order please";
    let want = fault_free(&stack, text).await;
    let sent_before = stack.peer.record().chunks_sent;
    let resp = stack.gateway.chat(chat_body(text, true)).await;
    let reader = tokio::spawn(async move { resp.text().await.unwrap() });
    // A quarter of the way in: chunks behind it and ahead of it.
    let under_way = stack
        .peer
        .wait_until(SOON, |r| r.chunks_sent >= sent_before + 10)
        .await;
    assert!(under_way.is_some(), "the stream did not get under way");
    stack.peer.drop_connections();
    let body = tokio::time::timeout(SOON, reader).await.unwrap().unwrap();
    let sse = Sse::parse(&body);
    assert_eq!(only_error_code(&sse), None, "{body}");
    assert_eq!(sse.content(), want);
    assert_eq!(sse.data.iter().filter(|d| *d == "[DONE]").count(), 1);
    let finishes = sse
        .json()
        .iter()
        .filter(|e| e["choices"][0]["finish_reason"].is_string())
        .count();
    assert_eq!(finishes, 1);
    assert_eq!(stack.peer.record().resumes.len(), 1);
}

#[tokio::test]
async fn a_killed_bridge_agent_is_replaced_and_the_gateway_resumes_its_streams() {
    let mut stack = resuming_stack(|a| a, |g| g).await;
    let socket = stack.agent.socket.clone();
    let port = stack.agent.port;
    let text = "[[chunks:30]] [[slow:60]] survive the restart";
    let mut streamed = stack.gateway.chat(chat_body(text, true)).await;
    let whole = stack
        .gateway
        .post("/v1/chat/completions", Some(KEY))
        .json(&chat_body("[[delay:800]] whole", false));
    let whole = tokio::spawn(async move { whole.send().await.unwrap() });
    stack
        .peer
        .wait_until(SOON, |r| r.invokes.len() == 2)
        .await
        .unwrap();
    streamed.chunk().await.unwrap();
    streamed.chunk().await.unwrap();
    stack.agent.service.kill().await.unwrap();
    let restarted_at = Instant::now();
    let _restarted = BridgeAgentProc::new(&stack.peer.url())
        .env("BRIDGE_SOCKET", socket.display())
        .env("BRIDGE_AGENT_PORT", port)
        .spawn();
    let next = tokio::time::timeout(SOON, streamed.chunk())
        .await
        .unwrap()
        .unwrap();
    let to_next_chunk = restarted_at.elapsed();
    println!(
        "from bridge-agent's restart to the resumed stream's next chunk: {} ms",
        to_next_chunk.as_millis()
    );
    let rest = tokio::time::timeout(SOON, streamed.text())
        .await
        .unwrap()
        .unwrap();
    let body = format!(
        "{}{}",
        String::from_utf8_lossy(next.as_deref().unwrap_or_default()),
        rest
    );
    let tail = Sse::parse(&body);
    assert_eq!(only_error_code(&tail), None, "{body}");
    assert_eq!(tail.data.last().map(String::as_str), Some("[DONE]"));
    let whole: Value = whole.await.unwrap().json().await.unwrap();
    assert_eq!(whole["choices"][0]["message"]["content"], expected("whole"));
    let record = stack.peer.record();
    assert_eq!(record.invokes.len(), 2, "nothing sent twice");
    assert_eq!(record.resumes.len(), 2, "{:?}", record.resumes);
}

#[tokio::test]
async fn without_a_bridge_agent_within_the_grace_the_stream_ends_with_one_clear_error() {
    let mut stack = resuming_stack(|a| a, |g| g.env("RESUME_GRACE", "0.5")).await;
    let mut streamed = stack
        .gateway
        .chat(chat_body("[[chunks:30]] [[slow:60]] alone", true))
        .await;
    streamed.chunk().await.unwrap();
    stack.agent.service.kill().await.unwrap();
    let body = tokio::time::timeout(SOON, streamed.text())
        .await
        .unwrap()
        .unwrap();
    let sse = Sse::parse(&body);
    assert_eq!(
        only_error_code(&sse).as_deref(),
        Some("bridge_agent_disconnected")
    );
    assert!(body.contains("RESUME_GRACE"), "{body}");
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_resume_the_bridge_refuses_and_withdraws_ends_the_request_at_once_not_sent_afresh() {
    // No chunk has reached bridge-agent yet, so it still holds the request: a refusal must not
    // make it send the request afresh when the bridge says it had it and withdrew it.
    let stack = resuming_stack(|a| a, |g| g).await;
    stack.peer.withdraw_on_resume(true);
    let whole = stack
        .gateway
        .post("/v1/chat/completions", Some(KEY))
        .json(&chat_body("[[delay:5000]] withdrawn", false));
    let whole = tokio::spawn(async move { whole.send().await.unwrap() });
    stack
        .peer
        .wait_until(SOON, |r| r.invokes.len() == 1)
        .await
        .unwrap();
    let dropped_at = Instant::now();
    stack.peer.drop_connections();
    let resp = tokio::time::timeout(SOON, whole).await.unwrap().unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bridge_disconnected", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("withdrawn")),
        "the bridge's reason: {body}"
    );
    assert!(status.is_server_error(), "{status} {body}");
    assert!(
        dropped_at.elapsed() < Duration::from_secs(4),
        "ended at once, not when the answer came: {:?}",
        dropped_at.elapsed()
    );
    let record = stack.peer.record();
    assert_eq!(record.resumes.len(), 1, "{:?}", record.resumes);
    assert_eq!(record.invokes.len(), 1, "not sent afresh");
}

#[tokio::test]
async fn a_request_the_bridge_never_got_is_sent_afresh_once_and_answered() {
    let stack = resuming_stack(|a| a, |g| g).await;
    stack.peer.forget_on_resume(true);
    let whole = stack
        .gateway
        .post("/v1/chat/completions", Some(KEY))
        .json(&chat_body("[[delay:1500]] again", false));
    let whole = tokio::spawn(async move { whole.send().await.unwrap() });
    stack
        .peer
        .wait_until(SOON, |r| r.invokes.len() == 1)
        .await
        .unwrap();
    stack.peer.drop_connections();
    let resp = tokio::time::timeout(SOON, whole).await.unwrap().unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        expected("again"),
        "{body}"
    );
    let record = stack.peer.record();
    assert_eq!(record.resumes.len(), 1, "{:?}", record.resumes);
    assert_eq!(record.invokes.len(), 2, "sent afresh once");
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_slow_client_and_holds_up_no_one() {
    // bridge-agent holds the whole answer for the gateway: the bound under test is the gateway's
    // towards its client, not bridge-agent's towards a gateway slowed by a busy machine.
    // The stalled answer's tokens are charged to the same key when it ends, which can be before
    // the other chat below is sent: the token budget must not be what refuses that one.
    let stack = Stack::start_with(
        |a| a.env("STREAM_BUFFER_BYTES", 64 * 1024 * 1024),
        |g| {
            g.env("STREAM_BUFFER_BYTES", 262_144)
                .env("RATE_LIMIT_TPM", 100_000_000)
        },
    )
    .await;
    // 40 MiB: far more than the socket buffers between the gateway and a client hold. A client
    // of its own with no overall timeout: the body is read only once the gateway gave up on it.
    let stalled = patient()
        .post(stack.gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body("[[bulk:10000]]", true))
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let invoke = stack
        .peer
        .wait_until(SOON, |r| !r.invokes.is_empty())
        .await
        .unwrap()
        .invokes[0]
        .id
        .clone();
    // Meanwhile another client is answered at once.
    let other: Value = stack
        .gateway
        .chat(chat_body("[[chunks:3]] meanwhile", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        other["choices"][0]["message"]["content"],
        expected("meanwhile")
    );
    // Debug builds on a busy machine move the first megabytes slowly; the bound is what counts.
    assert!(
        stack
            .peer
            .wait_for_cancel(&invoke, Duration::from_secs(90))
            .await,
        "the stalled request is cancelled at the agent"
    );
    let audit = stack
        .gateway
        .wait_audit("the slow_client record", |v| v["outcome"] == "slow_client")
        .await;
    assert_eq!(audit["request_id"], invoke);
    // What the client reads when it comes back: part of the answer, then one clear error.
    let body = tokio::time::timeout(Duration::from_secs(60), stalled.text())
        .await
        .expect("the stalled response ends within 60 s once read")
        .unwrap();
    let sse = Sse::parse(&body);
    assert_eq!(only_error_code(&sse).as_deref(), Some("slow_client"));
    assert!(body.contains("STREAM_BUFFER_BYTES"));
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
    assert!(sse.content().len() < 40 * 1024 * 1024);
    // The request leaves the in-flight gauge when its handler lets go, just after the body ends.
    let metrics = wait_for_metrics(&stack, "gateway_requests_in_flight 0 on /metrics", |m| {
        m.contains("gateway_requests_in_flight 0")
    })
    .await;
    assert!(
        metrics.contains("gateway_slow_clients_total 1"),
        "{metrics}"
    );
}

/// A client without the shared one's 30 s overall timeout, for responses read long after they
/// began; each test bounds its reads itself.
fn patient() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The gateway's `/metrics` text once `pred` holds for it, polled for up to [`SOON`].
async fn wait_for_metrics(stack: &Stack, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_for(SOON, what, || async {
        let resp = stack.gateway.get("/metrics", None).send().await.ok()?;
        let text = resp.text().await.ok()?;
        pred(&text).then_some(text)
    })
    .await
}

/// A conversation of about 1.2 MB: over a 1 MiB frame, within every other limit.
fn big_chat(stream: bool) -> Value {
    let part = "y".repeat(99_000);
    let mut messages: Vec<Value> = (0..12)
        .map(|_| json!({"role": "user", "content": part}))
        .collect();
    messages.push(json!({"role": "user", "content": "and a question"}));
    json!({"model": MODEL, "messages": messages, "stream": stream})
}

#[tokio::test]
async fn a_request_over_the_bridge_frame_limit_gets_413_before_it_is_sent() {
    let stack = Stack::start_with(|a| a, roomy).await;
    stack.peer.limit_frames(1024 * 1024, true);
    stack.peer.set_welcome_protocol(2);
    stack.peer.drop_connections();
    wait_for(SOON, "the limit in force", || async {
        let health = stack.gateway.get("/health", None).send().await.ok()?;
        let v: Value = health.json().await.ok()?;
        (stack.peer.hellos().len() >= 2 && v["status"] == "healthy").then_some(())
    })
    .await;
    for stream in [false, true] {
        let resp = stack.gateway.chat(big_chat(stream)).await;
        assert_eq!(resp.status(), 413);
        assert_eq!(resp.headers()["x-should-retry"], "false");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "request_too_large");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("1048576"), "{message}");
        assert!(message.contains("MAX_FRAME_BYTES"), "{message}");
    }
    let ok: Value = stack
        .gateway
        .chat(chat_body("still fine", false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        ok["choices"][0]["message"]["content"],
        expected("still fine")
    );
    let record = stack.peer.record();
    assert_eq!(record.invokes.len(), 1, "the big ones were never sent");
    assert_eq!(record.too_big, 0);
}

#[tokio::test]
async fn a_1009_close_fails_only_the_request_that_caused_it_and_the_others_resume() {
    // The peer takes 1 MiB frames but does not say so; bridge-agent believes in 48 MiB. Its
    // timeouts leave room for the big request's validation on a busy machine while the
    // bystander is held.
    let stack = resuming_stack(
        |a| a.env("REQUEST_TIMEOUT", 60).env("RESPONSE_TIMEOUT", 90),
        roomy,
    )
    .await;
    stack.peer.limit_frames(1024 * 1024, false);
    stack.peer.drop_connections();
    wait_for(SOON, "the limit in force", || async {
        (stack.peer.hellos().len() >= 3 && stack.peer.record().open == 1).then_some(())
    })
    .await;
    stack
        .gateway
        .wait_health("healthy", Duration::from_secs(10))
        .await;
    // Held at the peer after its first chunk until the big request has been refused, so that it
    // is in flight when the 1009 comes however long the big one takes to be validated and
    // counted.
    let text = "[[held]] [[chunks:20]] [[slow:20]] bystander";
    let want = fault_free(&stack, text).await;
    stack.peer.hold(true);
    let bystander = patient()
        .post(stack.gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body(text, true));
    let bystander =
        tokio::spawn(async move { bystander.send().await.unwrap().text().await.unwrap() });
    let in_flight = stack.peer.wait_until(SOON, |r| r.invokes.len() == 2).await;
    assert!(in_flight.is_some(), "the bystander never reached the peer");
    let resp = patient()
        .post(stack.gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&big_chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("1009"));
    stack.peer.hold(false);
    let body = tokio::time::timeout(Duration::from_secs(30), bystander)
        .await
        .expect("the bystander's stream ends within 30 s of its release")
        .unwrap();
    let sse = Sse::parse(&body);
    assert_eq!(only_error_code(&sse), None, "{body}");
    assert_eq!(sse.content(), want);
    let record = stack.peer.record();
    assert!((1..=2).contains(&record.too_big), "{}", record.too_big);
    // Usually the 1009 arrives first: the bystander is resumed once. When the peer's close races
    // the big frame's write, bridge-agent sees only a reset, resumes both, sends the big request
    // afresh (the peer never took it) and gets the 1009 then: the bystander is resumed twice.
    let bystander_id = sse.json()[0]["id"].as_str().unwrap().to_owned();
    let bystander_resumes = record
        .resumes
        .iter()
        .filter(|(id, _)| *id == bystander_id)
        .count();
    assert!((1..=2).contains(&bystander_resumes), "{:?}", record.resumes);
}
