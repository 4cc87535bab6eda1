//! Orderly restarts resume like crashes, against the scripted peer (bridge protocol 2): a
//! bridge-agent stopped with SIGTERM hands its streams over to the next one; the gateway's
//! connection to bridge-agent cut while bridge-agent stays up resumes every stream on the new
//! connection; a stalled bridge-agent is noticed within seconds; the socket belongs to one
//! bridge-agent at a time.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use integration_tests::harness::{get, wait_for, BridgeAgentProc};
use integration_tests::peer::ScriptedPeer;
use integration_tests::relay::UnixRelay;
use integration_tests::stack::{chat_body, Gateway, GatewayProc, Sse};

use crate::resume::{fault_free, only_error_code, resuming_stack};

use crate::SOON;

const STREAMS: usize = 20;

fn text(k: usize) -> String {
    format!("[[chunks:40]] [[slow:60]] stream number {k}")
}

/// A streamed chat read to its end.
async fn stream(gateway: &Gateway, text: String) -> String {
    crate::chaos::stream(gateway, text).await.0
}

/// Every stream complete, as a fault-free run gives it, with one `[DONE]` and no error.
fn assert_whole(bodies: &[String], reference: &[String]) {
    for (k, body) in bodies.iter().enumerate() {
        let sse = Sse::parse(body);
        assert_eq!(only_error_code(&sse), None, "stream {k}: {body}");
        assert_eq!(
            sse.content(),
            reference[k],
            "stream {k}: lost or repeated chunks"
        );
        assert_eq!(
            sse.data.iter().filter(|d| *d == "[DONE]").count(),
            1,
            "stream {k}"
        );
    }
}

/// What fault-free runs give.
async fn references(gateway: &Gateway) -> Vec<String> {
    join_all((0..STREAMS).map(|k| stream(gateway, text(k))))
        .await
        .iter()
        .map(|body| {
            let sse = Sse::parse(body);
            assert_eq!(only_error_code(&sse), None, "{body}");
            sse.content()
        })
        .collect()
}

#[tokio::test]
async fn twenty_streams_survive_two_sigterm_restarts_of_bridge_agent_whole_and_once() {
    let stack = resuming_stack(|a| a, |g| g.env("RESPONSE_TIMEOUT", 60)).await;
    let reference = references(&stack.gateway).await;
    let invokes_before = stack.peer.record().invokes.len();
    let (peer, gateway) = (&stack.peer, &stack.gateway);
    let mut agent = stack.agent;
    let (socket, port, url) = (agent.socket.clone(), agent.port, peer.url());
    // Replaced bridge-agents are kept until the end: the first one's temporary directory holds
    // the socket every later one binds.
    let mut replaced = Vec::new();
    let ended = AtomicUsize::new(0);
    let chats = join_all((0..STREAMS).map(|k| {
        let ended = &ended;
        async move {
            let body = stream(gateway, text(k)).await;
            ended.fetch_add(1, Ordering::SeqCst);
            body
        }
    }));
    let ended = &ended;
    let restarts = async {
        let mut resumes_before = peer.record().resumes.len();
        for round in 0..2 {
            // The streams under way (in the second round, resumed and moving again): a few
            // chunks of each sent since; on a slow machine they may all have ended by then.
            let sent_before = peer.record().chunks_sent;
            wait_for(
                SOON,
                &format!("round {round}: streams under way"),
                || async {
                    let r = peer.record();
                    let moving = r.invokes.len() >= invokes_before + STREAMS
                        && r.resumes.len() >= resumes_before + round.min(1)
                        && r.chunks_sent >= sent_before + 3 * STREAMS;
                    (moving || ended.load(Ordering::SeqCst) == STREAMS).then_some(())
                },
            )
            .await;
            resumes_before = peer.record().resumes.len();
            agent.service.terminate().unwrap();
            if round == 0 {
                // As a supervisor restarts it: the new one once the old one has exited.
                let status = agent.service.wait_exit(SOON).await.unwrap();
                assert!(status.success(), "{status}");
            } else {
                // Back to back: the new one at once; it waits for the old one to let go of the
                // socket and the health port.
            }
            let old = std::mem::replace(
                &mut agent,
                BridgeAgentProc::new(&url)
                    .env("BRIDGE_SOCKET", socket.display())
                    .env("BRIDGE_AGENT_PORT", port)
                    .spawn(),
            );
            let mut old = old;
            let status = old.service.wait_exit(SOON).await.unwrap();
            assert!(status.success(), "{status}");
            replaced.push(old);
            gateway
                .wait_health("healthy", Duration::from_secs(20))
                .await;
            // The old one, exiting after the new one bound, left the new socket alone.
            assert!(socket.exists());
        }
    };
    let (bodies, ()) = tokio::join!(chats, restarts);
    assert_whole(&bodies, &reference);
    let record = peer.record();
    assert_eq!(
        record.invokes.len(),
        invokes_before + STREAMS,
        "nothing sent twice"
    );
    assert!(record.resumes.len() >= STREAMS, "{:?}", record.resumes);
    assert!(record.cancels.is_empty(), "{:?}", record.cancels);
}

#[tokio::test]
async fn a_cut_gateway_connection_resumes_every_stream_while_bridge_agent_stays_up() {
    let peer = ScriptedPeer::start().await;
    peer.set_welcome_protocol(2);
    let agent = BridgeAgentProc::new(&peer.url())
        .env("RESPONSE_TIMEOUT", 60)
        .spawn();
    agent.wait_connected(SOON).await;
    let relay = UnixRelay::start(&agent.socket).await;
    let gateway = GatewayProc::new(&relay.path)
        .env("RESPONSE_TIMEOUT", 60)
        .spawn();
    gateway
        .wait_health("healthy", Duration::from_secs(20))
        .await;
    let reference = references(&gateway).await;
    let invokes_before = peer.record().invokes.len();
    let chats = join_all((0..STREAMS).map(|k| stream(&gateway, text(k))));
    let sent_before = peer.record().chunks_sent;
    let cut = async {
        // Every stream under way: a few chunks of each sent.
        let under_way = peer
            .wait_until(SOON, |r| {
                r.invokes.len() >= invokes_before + STREAMS
                    && r.chunks_sent >= sent_before + 3 * STREAMS
            })
            .await;
        assert!(under_way.is_some(), "streams not under way");
        relay.cut();
    };
    let (bodies, ()) = tokio::join!(chats, cut);
    assert_whole(&bodies, &reference);
    assert!(relay.accepted() >= 2, "the gateway reconnected");
    let record = peer.record();
    assert_eq!(record.invokes.len(), invokes_before + STREAMS);
    // Resumed on the WebSocket they were on, from the last chunk the gateway had.
    assert!(record.resumes.len() >= STREAMS, "{:?}", record.resumes);
    assert!(record.cancels.is_empty(), "{:?}", record.cancels);
    let (_, metrics) = get(&agent.url("/metrics")).await.unwrap();
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bridge_agent_requests_reattached_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stalled_bridge_agent_is_noticed_within_seconds_and_its_stream_resumes() {
    // Deadlines past the stall: what is tested is that the stall is noticed, and survived.
    let stack = resuming_stack(
        |a| a.env("REQUEST_TIMEOUT", 60).env("RESPONSE_TIMEOUT", 60),
        |g| g,
    )
    .await;
    let text = "[[chunks:30]] [[slow:100]] through a stall";
    let want = fault_free(&stack, text).await;
    let mut streamed = stack.gateway.chat(chat_body(text, true)).await;
    let mut head = String::new();
    while !head.contains("\"content\":\"") {
        let chunk = tokio::time::timeout(SOON, streamed.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        head.push_str(&String::from_utf8_lossy(&chunk));
    }
    stack.agent.service.pause().unwrap();
    let paused = Instant::now();
    let url = stack.gateway.url("/health");
    wait_for(Duration::from_secs(15), "the gateway noticing", || async {
        let (_, body) = get(&url).await.ok()?;
        (body["bridge_agent"]["status"] == "disconnected").then_some(())
    })
    .await;
    let noticed = paused.elapsed();
    println!(
        "a stalled bridge-agent noticed after {} ms",
        noticed.as_millis()
    );
    assert!(noticed < Duration::from_secs(10), "{noticed:?}");
    stack.agent.service.unpause().unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(40), streamed.text())
        .await
        .unwrap()
        .unwrap();
    let sse = Sse::parse(&format!("{head}{rest}"));
    assert_eq!(only_error_code(&sse), None, "{rest}");
    assert_eq!(sse.content(), want, "lost or repeated chunks");
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_second_bridge_agent_on_the_same_socket_leaves_the_first_serving() {
    let stack = resuming_stack(|a| a, |g| g).await;
    let socket = stack.agent.socket.clone();
    let mut second = BridgeAgentProc::new(&stack.peer.url())
        .env("BRIDGE_SOCKET", socket.display())
        .spawn();
    let status = second.service.wait_exit(SOON).await.unwrap();
    assert!(!status.success(), "{status}");
    assert!(
        second
            .service
            .logs()
            .contains("another bridge-agent is already listening"),
        "{}",
        second.service.logs()
    );
    assert!(socket.exists(), "the live one's socket is still there");
    let resp = stack.gateway.chat(chat_body("still here", false)).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: still here");
}

#[tokio::test]
async fn a_silent_gateway_that_sent_heartbeats_is_dropped_and_one_without_is_kept() {
    use futures_util::{SinkExt, StreamExt};
    use integration_tests::ipc_client::{chat_invoke, raw_connect};
    use provider_shared::ipc::{IpcFrame, CAP_HEARTBEAT, IPC_PROTOCOL, IPC_VERSION, SILENCE_LIMIT};

    let peer = ScriptedPeer::start().await;
    let agent = BridgeAgentProc::new(&peer.url()).spawn();
    agent.wait_connected(SOON).await;
    // A gateway from before heartbeats: it never pings, and is served all the same.
    let old = agent.connect().await;
    let mut silent = raw_connect(&agent.socket).await.unwrap();
    silent
        .send(IpcFrame::Hello {
            protocol: IPC_PROTOCOL.into(),
            version: IPC_VERSION,
            client: "silent-gateway".into(),
            capabilities: vec![CAP_HEARTBEAT.into()],
        })
        .await
        .unwrap();
    match tokio::time::timeout(SOON, silent.next()).await.unwrap() {
        Some(Ok(IpcFrame::Welcome { capabilities, .. })) => {
            assert!(
                capabilities.iter().any(|c| c == CAP_HEARTBEAT),
                "{capabilities:?}"
            )
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let welcomed = Instant::now();
    // It says it pings, then sends nothing: dropped once it has been silent for SILENCE_LIMIT.
    loop {
        match tokio::time::timeout(SILENCE_LIMIT + SOON, silent.next()).await {
            Ok(Some(Ok(IpcFrame::Status(_)))) => continue,
            Ok(None | Some(Err(_))) => break,
            other => panic!("expected the connection to end, got {other:?}"),
        }
    }
    let dropped = welcomed.elapsed();
    assert!(dropped >= SILENCE_LIMIT, "{dropped:?}");
    // The old gateway was as silent, and still gets its answer.
    let answer = old
        .invoke(chat_invoke("old", "still served", true))
        .finish(SOON)
        .await
        .unwrap();
    assert_eq!(answer.text(), "echo: still served");
}

#[tokio::test]
async fn a_gateway_restart_ends_its_own_streams_says_so_and_cancels_them_at_once() {
    // Protocol 2 and a long resume grace: without the gateway's cancels, bridge-agent would keep
    // the request for a resume that never comes.
    let stack = resuming_stack(|a| a, |g| g.env("SHUTDOWN_GRACE", 0.5)).await;
    let hanging = stack
        .gateway
        .chat(chat_body("[[hang]] never done", true))
        .await;
    let id = stack
        .peer
        .wait_until(SOON, |r| !r.invokes.is_empty())
        .await
        .unwrap()
        .invokes[0]
        .id
        .clone();
    stack.gateway.service.terminate().unwrap();
    let body = tokio::time::timeout(SOON, hanging.text())
        .await
        .unwrap()
        .unwrap();
    let sse = Sse::parse(&body);
    assert_eq!(
        only_error_code(&sse).as_deref(),
        Some("shutting_down"),
        "{body}"
    );
    assert!(body.contains("the gateway shut down"), "{body}");
    // Well within RESUME_GRACE (30 s): the gateway's cancel, not bridge-agent giving up.
    assert!(stack.peer.wait_for_cancel(&id, SOON).await);
    let mut gateway = stack.gateway;
    assert!(gateway.service.wait_exit(SOON).await.unwrap().success());
    let url = stack.agent.url("/health");
    wait_for(SOON, "nothing in flight at bridge-agent", || async {
        let (_, health) = get(&url).await.ok()?;
        (health["in_flight"] == 0).then_some(())
    })
    .await;
}
