//! Chaos: fifty streamed chats while bridge-agent is SIGKILLed and restarted twice, stopped with
//! SIGTERM and restarted once, its WebSocket is dropped once, and five clients stop reading. Every chat either gets exactly the answer a
//! fault-free run gives (no chunk lost or repeated, one `[DONE]`) or, for the five, exactly one
//! `slow_client` error; none outlives the gateway's deadline; both services' memory stays bounded.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use integration_tests::harness::{wait_for, BridgeAgentProc};
use integration_tests::observe::rss_mib;
use integration_tests::stack::{chat_body, Gateway, Sse, Stack, KEY};

use crate::SOON;

const STREAMS: usize = 45;
const STALLED: usize = 5;
/// Held at the peer after a first chunk until the first fault has come and gone
/// (`ScriptedPeer::hold`).
const STALLED_TEXT: &str = "[[held]] [[bulk:2500]]";

fn text(k: usize) -> String {
    format!("[[chunks:60]] [[slow:150]] chat number {k}")
}

/// Deadlines a debug build on a busy two-core machine meets with room to spare. The scripted peer
/// runs in the test process, beside a hundred streams: its heartbeat answers and welcomes get
/// seconds, not the harness's one; every fault here is a closed socket, seen at once.
fn agent_settings(agent: BridgeAgentProc) -> BridgeAgentProc {
    agent
        .env("RESPONSE_TIMEOUT", 90)
        .env("REQUEST_TIMEOUT", 60)
        .env("HEARTBEAT_INTERVAL", 5)
        .env("CONNECTION_TIMEOUT", 5)
}

fn errors(sse: &Sse) -> Vec<String> {
    sse.json()
        .iter()
        .filter_map(|e| e["error"]["code"].as_str().map(str::to_owned))
        .collect()
}

/// A streamed chat read to its end, or what came of it by the time the gateway's deadline passed.
pub(crate) async fn stream(gateway: &Gateway, text: String) -> (String, Duration) {
    use futures_util::StreamExt;
    let started = Instant::now();
    let patient = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = patient
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body(&text, true))
        .send()
        .await
        .unwrap();
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(Ok(chunk)) = chunks.next().await {
            body.extend_from_slice(&chunk);
        }
    })
    .await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(read.is_ok(), "{text}: no end within 120 s; so far: {body}");
    (body, started.elapsed())
}

#[tokio::test]
async fn fifty_streams_through_two_kills_a_sigterm_restart_a_drop_and_five_stalled_readers() {
    let backstop = Duration::from_secs(90 + 1 + 5);
    let stack = Stack::start_with(agent_settings, |g| {
        g.env("RESPONSE_TIMEOUT", 90)
            .env("STREAM_BUFFER_BYTES", 262_144)
            .env("RATE_LIMIT_TPM", 1_000_000_000)
    })
    .await;
    stack.peer.set_welcome_protocol(2);
    stack.peer.drop_connections();
    wait_for(SOON, "bridge-agent on protocol 2", || async {
        (stack.peer.hellos().len() >= 2 && stack.peer.record().open == 1).then_some(())
    })
    .await;
    stack
        .gateway
        .wait_health("healthy", Duration::from_secs(10))
        .await;

    // What a fault-free run gives, for every chat.
    let Stack {
        peer,
        agent,
        gateway,
    } = stack;
    let reference: Vec<String> = join_all((0..STREAMS).map(|k| stream(&gateway, text(k))))
        .await
        .into_iter()
        .map(|(body, _)| {
            let sse = Sse::parse(&body);
            assert!(errors(&sse).is_empty(), "{body}");
            sse.content()
        })
        .collect();
    let gateway_before = rss_mib(gateway.service.pid());

    // Five clients that stop reading: their responses are held, unread, until the end. Their
    // 10 MiB answers, far past the buffer, are held back at the peer until the first fault is
    // over, so that the readers are cut off while the later faults come. Their own client: the
    // shared one gives up on a request after 30 s, and these wait longer.
    peer.hold(true);
    let patient = reqwest::Client::builder().no_proxy().build().unwrap();
    let stalled = join_all((0..STALLED).map(|_| {
        patient
            .post(gateway.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat_body(STALLED_TEXT, true))
            .send()
    }));
    let ended = AtomicUsize::new(0);
    let chats = join_all((0..STREAMS).map(|k| {
        let (ended, gateway) = (&ended, &gateway);
        async move {
            let done = stream(gateway, text(k)).await;
            ended.fetch_add(1, Ordering::SeqCst);
            done
        }
    }));
    let socket = agent.socket.clone();
    let port = agent.port;
    let url = peer.url();
    let mut agent = agent;
    // Replaced bridge-agents are kept until the end: the first one's temporary directory holds
    // the socket every later one binds.
    let mut replaced = Vec::new();
    let (peer, gateway) = (&peer, &gateway);
    let mut peak = (0.0_f64, 0.0_f64);
    let ended = &ended;
    let faults = async {
        // Every chat and stalled reader in flight at the peer before the first fault.
        let all_in = peer
            .wait_until(Duration::from_secs(30), |r| {
                r.invokes.len() >= 2 * STREAMS + STALLED
            })
            .await;
        assert!(all_in.is_some(), "not every request reached the peer");
        for round in 0..4 {
            let before = peer.record();
            if round == 1 {
                peer.drop_connections();
            } else {
                if round == 2 {
                    // An orderly stop hands the streams over, as a crash leaves them.
                    agent.service.terminate().unwrap();
                    let status = agent.service.wait_exit(SOON).await.unwrap();
                    assert!(status.success(), "{status}");
                } else {
                    agent.service.kill().await.unwrap();
                }
                let next = agent_settings(
                    BridgeAgentProc::new(&url)
                        .env("BRIDGE_SOCKET", socket.display())
                        .env("BRIDGE_AGENT_PORT", port),
                )
                .spawn();
                replaced.push(std::mem::replace(&mut agent, next));
            }
            gateway
                .wait_health("healthy", Duration::from_secs(30))
                .await;
            // The next fault once this one's streams were resumed and are moving again (a
            // chunk for each chat since), unless every chat has ended already.
            let what = format!("round {round}: streams resumed and moving again");
            wait_for(Duration::from_secs(30), &what, || async {
                let r = peer.record();
                let moving = r.resumes.len() > before.resumes.len()
                    && r.chunks_sent >= before.chunks_sent + STREAMS;
                (moving || ended.load(Ordering::SeqCst) == STREAMS).then_some(())
            })
            .await;
            if round == 0 {
                peer.hold(false);
            }
            peak.0 = peak.0.max(rss_mib(gateway.service.pid()));
            peak.1 = peak.1.max(rss_mib(agent.service.pid()));
        }
        agent
    };
    let (results, agent, stalled) = tokio::join!(chats, faults, stalled);

    let mut completed = 0;
    for (k, (body, took)) in results.iter().enumerate() {
        assert!(*took < backstop, "chat {k} took {took:?}");
        let sse = Sse::parse(body);
        assert_eq!(
            sse.data.iter().filter(|d| *d == "[DONE]").count(),
            1,
            "chat {k}: {body}"
        );
        let errs = errors(&sse);
        assert!(errs.len() <= 1, "chat {k}: {errs:?}");
        if errs.is_empty() {
            assert_eq!(
                sse.content(),
                reference[k],
                "chat {k}: lost or repeated chunks"
            );
            completed += 1;
        } else {
            let last = sse.json().into_iter().find(|e| e.get("error").is_some());
            println!("chat {k} ended with {last:?}");
        }
    }
    assert_eq!(completed, STREAMS, "every chat was resumed and completed");
    for resp in stalled {
        let resp = resp.unwrap();
        let body = tokio::time::timeout(Duration::from_secs(60), resp.text())
            .await
            .unwrap()
            .unwrap();
        let sse = Sse::parse(&body);
        let last = sse
            .json()
            .into_iter()
            .rev()
            .find(|e| e.get("error").is_some());
        // Cut off for falling behind, as a rule. When a kill lands after the peer sent the whole
        // answer but before the gateway's buffer overflowed, the rest died with that bridge-agent
        // and the peer, having finished, holds nothing to replay: one clear error all the same.
        let errs = errors(&sse);
        assert!(
            errs == ["slow_client"] || errs == ["bridge_disconnected"],
            "{errs:?} {last:?}"
        );
        assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
    }
    let record = peer.record();
    let stalled_ids: Vec<&str> = record
        .invokes
        .iter()
        .filter(|i| {
            serde_json::to_string(&i.payload)
                .unwrap()
                .contains("bulk:2500")
        })
        .map(|i| i.id.as_str())
        .collect();
    let stalled_resumed = record
        .resumes
        .iter()
        .filter(|(id, _)| stalled_ids.contains(&id.as_str()))
        .count();
    println!(
        "chaos: {} invokes, {} resumes ({stalled_resumed} of stalled readers), {} cancels",
        record.invokes.len(),
        record.resumes.len(),
        record.cancels.len()
    );
    assert_eq!(
        record.invokes.len(),
        2 * STREAMS + STALLED,
        "nothing sent twice"
    );
    assert!(
        stalled_resumed >= STALLED,
        "the stalled readers were still in flight when the faults came"
    );
    assert!(
        record.resumes.len() >= STREAMS,
        "the faults came while the chats were in flight"
    );
    let metrics: String = gateway
        .get("/metrics", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_requests_in_flight 0"),
        "{metrics}"
    );
    let gateway_after = rss_mib(gateway.service.pid());
    let agent_after = rss_mib(agent.service.pid());
    println!(
        "RSS (MiB, debug build): gateway {gateway_before:.1} before, {:.1} peak, {gateway_after:.1} after; bridge-agent {:.1} peak, {agent_after:.1} after",
        peak.0, peak.1
    );
    // Bounded: five readers were sent 50 MiB of answers between them, the services far less.
    assert!(
        peak.0 < gateway_before + 64.0,
        "gateway peak {:.1} MiB",
        peak.0
    );
    assert!(peak.1 < 96.0, "bridge-agent peak {:.1} MiB", peak.1);
}
