#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use provider_shared::bridge::Outcome;
use provider_shared::ws_peer;
use serde_json::json;
use std::time::Duration;

use crate::caller::Caller;
use crate::queue::tests::invoke;
use crate::queue::Handout;
use tokio_util::sync::CancellationToken;

async fn broker() -> Arc<Broker> {
    let config = Config::from_vars(vec![]).unwrap();
    let (audit, _writer) = Audit::open(None, "mcp-bridge", Default::default())
        .await
        .unwrap();
    Arc::new(Broker::new(config, audit, None))
}

/// A request for a caller that stays, taken at once.
async fn take(broker: &Broker) -> Handout {
    let caller = Caller::until(CancellationToken::new());
    broker
        .next_request(Duration::from_millis(10), &caller)
        .await
        .expect("a queued request")
}

fn part(content: &str) -> Part {
    serde_json::from_value(json!({"content": content, "done": false})).unwrap()
}

fn chunk_of(frame: BridgeFrame) -> (String, String) {
    match frame {
        BridgeFrame::ModelStreamChunk(c) => (c.id, c.delta.content.unwrap_or_default()),
        other => panic!("not a chunk: {other:?}"),
    }
}

#[tokio::test]
async fn a_request_that_overflows_its_connection_s_queue_ends_alone() {
    let broker = broker().await;
    // One connection whose queue holds two frames, with two requests on it.
    let (tx, mut rx) = ws_peer::queue::<BridgeFrame>(2);
    broker.invoke(1, invoke("a"), tx.clone(), false);
    broker.invoke(1, invoke("b"), tx.clone(), false);
    let a = take(&broker).await;
    let b = take(&broker).await;
    broker.submit("a", &a.lease, part("a1")).unwrap();
    broker.submit("b", &b.lease, part("b1")).unwrap();
    let Err(refused) = broker.submit("a", &a.lease, part("a2")) else {
        panic!("a full queue took the chunk");
    };
    assert!(refused.0.contains("frames behind"), "{refused:?}");

    assert_eq!(
        chunk_of(rx.recv().await.unwrap()),
        ("a".into(), "a1".into())
    );
    assert_eq!(
        chunk_of(rx.recv().await.unwrap()),
        ("b".into(), "b1".into())
    );
    // a's result waited for room; it names the reason.
    match rx.recv().await.unwrap() {
        BridgeFrame::ModelResult(result) => {
            assert_eq!(result.id, "a");
            let Outcome::Error { error } = result.outcome else {
                panic!("not an error")
            };
            assert_eq!(error.code, codes::SLOW_CLIENT);
        }
        other => panic!("not a result: {other:?}"),
    }
    assert!(broker.submit("a", &a.lease, part("a3")).is_err(), "a ended");
    // b, on the same connection, goes on.
    broker.submit("b", &b.lease, part("b2")).unwrap();
    assert_eq!(
        chunk_of(rx.recv().await.unwrap()),
        ("b".into(), "b2".into())
    );
}

fn done(content: &str) -> Part {
    serde_json::from_value(json!({"content": content, "done": true})).unwrap()
}

/// The race of one request's parts: one part finds bridge-agent's queue full and ends the
/// request with `slow_client` while another, `done: true`, ends it too. Replayed many times
/// on two threads: the request gets exactly one result every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_result_per_request_when_an_overflow_races_the_last_part() {
    let broker = broker().await;
    for round in 0..300 {
        let id = format!("r{round}");
        // A queue of one frame, filled by the first part: every later chunk finds it full.
        let (tx, mut rx) = ws_peer::queue::<BridgeFrame>(1);
        broker.invoke(1, invoke(&id), tx, false);
        let h = take(&broker).await;
        broker.submit(&id, &h.lease, part("first")).unwrap();
        let start = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [part("more"), done("last")]
            .into_iter()
            .map(|p| {
                let (broker, start) = (broker.clone(), start.clone());
                let (id, lease) = (id.clone(), h.lease.clone());
                let runtime = tokio::runtime::Handle::current();
                std::thread::spawn(move || {
                    let _in_runtime = runtime.enter();
                    start.wait();
                    broker.submit(&id, &lease, p).is_ok()
                })
            })
            .collect();
        let accepted: Vec<bool> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(accepted, [false, false], "both found the queue full");
        let mut results = 0;
        while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
        {
            if let BridgeFrame::ModelResult(result) = frame {
                assert_eq!(result.id, id);
                results += 1;
            }
        }
        assert_eq!(
            results, 1,
            "round {round}: {results} results for one request"
        );
    }
}

#[tokio::test]
async fn a_request_goes_to_the_poll_that_waited_longest_and_back_when_it_is_dropped() {
    let broker = broker().await;
    let (tx, _rx) = ws_peer::queue::<BridgeFrame>(8);
    let first = Caller::until(CancellationToken::new());
    let second = Caller::until(CancellationToken::new());
    let wait = Duration::from_secs(5);
    let first_poll = tokio::spawn({
        let broker = broker.clone();
        async move { broker.next_request(wait, &first).await }
    });
    wait_polls(&broker, 1).await;
    let second_poll = tokio::spawn({
        let (broker, second) = (broker.clone(), second.clone());
        async move { broker.next_request(wait, &second).await }
    });
    wait_polls(&broker, 2).await;
    // The first poll is dropped (its call was cancelled) before a request comes.
    first_poll.abort();
    let _ = first_poll.await;
    broker.invoke(1, invoke("a"), tx, false);
    let got = second_poll.await.unwrap().expect("the second poll got it");
    assert_eq!((got.id.as_str(), got.attempt), ("a", 1));
}

#[tokio::test]
async fn a_hand_out_dropped_before_it_was_delivered_goes_back_to_the_front() {
    let broker = broker().await;
    let (tx, _rx) = ws_peer::queue::<BridgeFrame>(8);
    broker.invoke(1, invoke("a"), tx, false);
    let h = take(&broker).await;
    drop(broker.hold(&h));
    let again = take(&broker).await;
    assert_eq!((again.id.as_str(), again.attempt), ("a", 2));
    broker.hold(&again).deliver(&Caller::default());
    assert_eq!(broker.leased_count(), 1, "delivered: the lease stands");
}

async fn wait_polls(broker: &Broker, n: usize) {
    for _ in 0..500 {
        if broker.queue().waiting_polls() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{n} polls never waited");
}
