#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::bridge::unknown_to_bridge;
use super::*;
use provider_shared::bridge::{codes, ModelMeta, Outcome, Payload, RawJson};

fn invoke() -> ModelInvoke {
    ModelInvoke {
        id: "r1".into(),
        session_id: None,
        model_meta: ModelMeta {
            provider: "cursor".into(),
            label: "agent".into(),
            requested_scopes: vec![],
        },
        payload: Payload::Chat {
            messages: RawJson::from_text("[]".into()).unwrap(),
            parameters: RawJson::from_text("{}".into()).unwrap(),
        },
    }
}

#[test]
fn a_resume_of_a_request_the_bridge_never_got_sends_it_afresh_once() {
    let refused = ModelResult::error("r1", codes::BRIDGE_DISCONNECTED, "holds no request r1");
    let mut fallback = Some(invoke());
    assert!(unknown_to_bridge(&refused, &mut fallback).is_some());
    assert!(unknown_to_bridge(&refused, &mut fallback).is_none());
}

#[test]
fn a_resume_the_bridge_withdrew_is_not_sent_afresh() {
    let mut refused = ModelResult::error("r1", codes::BRIDGE_DISCONNECTED, "no longer held");
    if let Outcome::Error { error } = &mut refused.outcome {
        error.details = Some(serde_json::json!({ "withdrawn": true }));
    }
    let mut fallback = Some(invoke());
    assert!(unknown_to_bridge(&refused, &mut fallback).is_none());
}

mod table {
    //! The table routes frames with no task per request: these drive it as the readers and the
    //! timer do, and read what lands on the WebSocket's and the gateway's queues.
    use std::time::{Duration, Instant};

    use provider_shared::bridge::{BridgeFrame, ModelResult, StreamChunk};
    use provider_shared::ipc::IpcFrame;
    use provider_shared::ws_peer;
    use tokio::sync::mpsc;

    use super::invoke;
    use crate::request::{GatewayQueue, Link, Requests, Start, Started};
    use crate::Config;

    fn table(pairs: &[(&str, &str)]) -> Requests {
        let vars: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (format!("LOCAL_PROVIDER_{k}"), (*v).to_owned()))
            .collect();
        Requests::new(&Config::from_vars(vars).unwrap())
    }

    fn link(generation: u64, protocol: u32) -> (Link, mpsc::Receiver<BridgeFrame>) {
        let (tx, rx) = ws_peer::queue(256);
        let link = Link {
            generation,
            tx,
            protocol,
            max_frame_bytes: 1 << 20,
        };
        (link, rx)
    }

    fn invoke_as(id: &str) -> Start {
        let mut invoke = invoke();
        invoke.id = id.into();
        Start::Invoke(invoke)
    }

    fn chunk(id: &str, index: u64, text: &str) -> StreamChunk {
        serde_json::from_value(serde_json::json!({
            "id": id, "chunk_index": index, "delta": {"content": text}
        }))
        .unwrap()
    }

    fn done(id: &str) -> ModelResult {
        ModelResult {
            id: id.into(),
            outcome: provider_shared::bridge::Outcome::Ok {
                result: Default::default(),
            },
        }
    }

    fn sent(rx: &mut mpsc::Receiver<BridgeFrame>) -> Vec<String> {
        let mut kinds = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            kinds.push(match frame {
                BridgeFrame::ModelInvoke(i) => format!("invoke {}", i.id),
                BridgeFrame::ModelResume {
                    id,
                    after_chunk_index,
                } => format!("resume {id} {after_chunk_index:?}"),
                BridgeFrame::ModelCancel { id } => format!("cancel {id}"),
                other => format!("{other:?}"),
            });
        }
        kinds
    }

    fn received(rx: &mut GatewayQueue) -> Vec<String> {
        let mut frames = Vec::new();
        while let Ok(item) = rx.try_recv() {
            frames.push(match item.into_frame() {
                IpcFrame::Chunk(c) => format!("chunk {} {}", c.id, c.chunk_index),
                IpcFrame::Result(r) => match r.outcome {
                    provider_shared::bridge::Outcome::Ok { .. } => format!("result {} ok", r.id),
                    provider_shared::bridge::Outcome::Error { error } => {
                        format!("result {} {}", r.id, error.code)
                    }
                },
                other => format!("{other:?}"),
            });
        }
        frames
    }

    #[test]
    fn a_request_waits_for_a_link_and_its_frames_are_routed_both_ways() {
        let table = table(&[]);
        let (out, mut gateway) = mpsc::unbounded_channel();
        assert!(matches!(
            table.start(1, out.clone(), "a".into(), invoke_as("a")),
            Started::Taken
        ));
        assert!(matches!(
            table.start(1, out, "a".into(), invoke_as("a")),
            Started::Duplicate
        ));
        let (up, mut bridge) = link(1, 2);
        table.link_up(&up);
        assert_eq!(sent(&mut bridge), ["invoke a"]);
        table.on_chunk(chunk("a", 0, "hel"));
        table.on_chunk(chunk("a", 0, "hel"));
        table.on_chunk(chunk("a", 1, "lo"));
        table.on_result(done("a"));
        assert_eq!(
            received(&mut gateway),
            ["chunk a 0", "chunk a 1", "result a ok"],
            "the repeated chunk is dropped"
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_chunk_past_the_bound_ends_that_request_alone() {
        let table = table(&[("STREAM_BUFFER_BYTES", "65536")]);
        let (up, mut bridge) = link(1, 2);
        table.link_up(&up);
        let (out, mut gateway) = mpsc::unbounded_channel();
        table.start(1, out.clone(), "slow".into(), invoke_as("slow"));
        table.start(1, out, "fast".into(), invoke_as("fast"));
        table.on_chunk(chunk("slow", 0, &"x".repeat(40_000)));
        table.on_chunk(chunk("fast", 0, "y"));
        table.on_chunk(chunk("slow", 1, &"x".repeat(40_000)));
        table.on_chunk(chunk("fast", 1, "y"));
        assert_eq!(
            sent(&mut bridge),
            ["invoke slow", "invoke fast", "cancel slow"]
        );
        assert_eq!(
            received(&mut gateway),
            [
                "chunk slow 0",
                "chunk fast 0",
                "result slow slow_client",
                "chunk fast 1"
            ]
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn requests_carry_over_to_the_next_websocket_or_end_on_protocol_1() {
        let table = table(&[]);
        let (first, mut bridge) = link(1, 2);
        table.link_up(&first);
        let (out, mut gateway) = mpsc::unbounded_channel();
        table.start(1, out, "a".into(), invoke_as("a"));
        table.on_chunk(chunk("a", 0, "hel"));
        table.link_down(1);
        table.on_chunk(chunk("a", 1, "lo"));
        let (second, mut bridge2) = link(2, 2);
        table.link_up(&second);
        assert_eq!(sent(&mut bridge), ["invoke a"]);
        assert_eq!(sent(&mut bridge2), ["resume a Some(0)"]);
        table.on_chunk(chunk("a", 1, "lo"));
        assert_eq!(received(&mut gateway), ["chunk a 0", "chunk a 1"]);

        let (old, _bridge3) = link(3, 1);
        table.link_up(&old);
        let (out, mut gateway) = mpsc::unbounded_channel();
        table.start(1, out, "b".into(), invoke_as("b"));
        table.link_down(3);
        assert_eq!(received(&mut gateway), ["result b bridge_disconnected"]);
    }

    #[test]
    fn a_gateway_that_left_takes_its_request_up_again_and_the_replay_is_sorted_out() {
        let table = table(&[]);
        let (up, mut bridge) = link(1, 2);
        table.link_up(&up);
        let (out, mut old) = mpsc::unbounded_channel();
        table.start(1, out, "a".into(), invoke_as("a"));
        table.on_chunk(chunk("a", 0, "a"));
        table.on_chunk(chunk("a", 1, "b"));
        assert_eq!(table.gateway_gone(1), 1);
        table.on_chunk(chunk("a", 2, "c"));
        let (out, mut new) = mpsc::unbounded_channel();
        assert_eq!(
            table.reattach("a", 2, out, Some(0)),
            provider_shared::routes::Rebind::Rebound
        );
        // Live frames ahead of the replay, then the replay from chunk 1.
        table.on_chunk(chunk("a", 3, "d"));
        table.on_result(done("a"));
        for i in 1..=3 {
            table.on_chunk(chunk("a", i, "x"));
        }
        table.on_result(done("a"));
        assert_eq!(sent(&mut bridge), ["invoke a", "resume a Some(0)"]);
        assert_eq!(received(&mut old), ["chunk a 0", "chunk a 1"]);
        assert_eq!(
            received(&mut new),
            ["chunk a 1", "chunk a 2", "chunk a 3", "result a ok"]
        );
    }

    #[test]
    fn deadlines_end_requests_from_one_timer_structure() {
        let table = table(&[("REQUEST_TIMEOUT", "5"), ("CONNECTION_TIMEOUT", "2")]);
        let (out, mut gateway) = mpsc::unbounded_channel();
        table.start(1, out.clone(), "waits".into(), invoke_as("waits"));
        let now = Instant::now();
        assert!(table.fire_due(now).is_some());
        assert!(received(&mut gateway).is_empty());
        table.fire_due(now + Duration::from_secs(3));
        assert_eq!(received(&mut gateway), ["result waits agent_unavailable"]);

        let (up, mut bridge) = link(1, 2);
        table.link_up(&up);
        table.start(1, out, "silent".into(), invoke_as("silent"));
        table.fire_due(Instant::now() + Duration::from_secs(6));
        assert_eq!(sent(&mut bridge), ["invoke silent", "cancel silent"]);
        assert_eq!(received(&mut gateway), ["result silent request_timeout"]);
        assert_eq!(table.len(), 0);
        assert_eq!(table.fire_due(Instant::now()), None);
    }
}
