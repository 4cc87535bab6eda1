//! Property tests of what parses bytes from another process: the IPC frame codec and the bridge
//! frame decoder. Any input, in any pieces, gives frames or a clean error, never a panic.
//! `PROPTEST_CASES` sets the number of cases (256 by default, as in CI);
//! `scripts/proptest-long.sh` runs them much longer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};
use tokio_util::codec::{Decoder, Encoder};

use crate::bridge::{
    BridgeFrame, Delta, FrameError, ModelInvoke, ModelMeta, ModelResult, Payload, RawJson,
    StreamChunk,
};
use crate::ipc::{IpcCodec, IpcError, IpcFrame, MAX_IPC_FRAME_BYTES};
use crate::property::check;

/// Field names the frames use, so that generated objects often come close to real frames.
const FIELDS: &[&str] = &[
    "type",
    "id",
    "version",
    "protocol",
    "client",
    "agent_id",
    "bridge",
    "state",
    "reason",
    "session_id",
    "model_meta",
    "provider",
    "label",
    "payload",
    "kind",
    "messages",
    "parameters",
    "prompt",
    "chunk_index",
    "delta",
    "content",
    "finish_reason",
    "status",
    "result",
    "error",
    "code",
    "message",
    "choices",
    "usage",
    "ts",
    "capabilities",
    "bridge_id",
    "tool_calls",
];
const TYPES: &[&str] = &[
    "hello",
    "welcome",
    "reject",
    "invoke",
    "cancel",
    "chunk",
    "result",
    "status",
    "model_invoke",
    "model_stream_chunk",
    "model_result",
    "model_cancel",
    "ping",
    "pong",
    "connected",
    "chat",
    "completion",
    "ok",
    "error",
    "newer_frame",
];

/// JSON values without floats that lose precision (the round trips compare exactly).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0.5, -2.25, 1e300]).prop_map(Value::from),
        prop::sample::select(TYPES).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// An object with a `type` (known or not) and fields that frames use.
fn frame_like() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(TYPES),
        prop::collection::vec((field_name(), json_value()), 0..8),
    )
        .prop_map(|(kind, fields)| {
            let mut object: Map<String, Value> = fields.into_iter().collect();
            object.insert("type".into(), json!(kind));
            Value::Object(object)
        })
}

/// Real frames of every kind, from generated field values.
fn ipc_frame() -> impl Strategy<Value = IpcFrame> {
    prop_oneof![
        (any::<String>(), any::<u32>(), any::<String>()).prop_map(|(protocol, version, client)| {
            IpcFrame::Hello {
                protocol,
                version,
                client,
                capabilities: vec![],
            }
        }),
        any::<String>().prop_map(|reason| IpcFrame::Reject { reason }),
        any::<String>().prop_map(|id| IpcFrame::Cancel { id }),
        any::<u64>().prop_map(|ts| IpcFrame::Ping { ts }),
        any::<u64>().prop_map(|ts| IpcFrame::Pong { ts }),
        (
            any::<String>(),
            any::<u64>(),
            any::<Option<String>>(),
            any::<Option<String>>()
        )
            .prop_map(|(id, chunk_index, content, finish_reason)| {
                IpcFrame::Chunk(StreamChunk {
                    id,
                    chunk_index,
                    delta: Delta {
                        content,
                        ..Delta::default()
                    },
                    finish_reason,
                })
            }),
        (any::<String>(), any::<String>(), any::<String>()).prop_map(|(id, code, message)| {
            IpcFrame::Result(ModelResult::error(id, code, message))
        }),
        (
            any::<String>(),
            any::<Option<String>>(),
            prop::collection::vec(json_value(), 0..4),
            prop::collection::vec((field_name(), json_value()), 0..4),
        )
            .prop_map(|(id, session_id, messages, parameters)| {
                IpcFrame::Invoke(ModelInvoke {
                    id,
                    session_id,
                    model_meta: ModelMeta {
                        provider: "p".into(),
                        label: "l".into(),
                        requested_scopes: Vec::new(),
                    },
                    payload: Payload::Chat {
                        messages: RawJson::encode(&messages).unwrap(),
                        parameters: RawJson::encode(
                            &parameters.into_iter().collect::<Map<String, Value>>(),
                        )
                        .unwrap(),
                    },
                })
            }),
    ]
}

/// `bytes` cut at `cuts` (positions taken modulo the length).
fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
        .collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

/// What a connection sees: each frame decoded as the pieces arrive, up to the first error (which
/// ends the connection).
fn decode_all(pieces: &[Vec<u8>]) -> (Vec<IpcFrame>, Option<String>) {
    let mut codec = IpcCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => return (frames, Some(clean(&err))),
            }
        }
    }
    (frames, None)
}

fn clean(err: &IpcError) -> String {
    let text = err.to_string();
    assert!(!text.is_empty(), "an error says what went wrong");
    text
}

fn length_prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.put_u32(body.len() as u32);
    out.extend_from_slice(body);
    out
}

#[test]
fn ipc_decoder_takes_any_bytes_in_any_pieces() {
    let input = (
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(any::<usize>(), 0..8),
    );
    check("ipc_any_bytes", input, |(bytes, cuts)| {
        let whole = decode_all(std::slice::from_ref(&bytes));
        let split = decode_all(&pieces(&bytes, &cuts));
        prop_assert_eq!(whole, split);
        Ok(())
    });
}

#[test]
fn ipc_frames_of_frame_like_json_decode_the_same_in_any_pieces() {
    let input = (
        prop::collection::vec(frame_like(), 1..6),
        prop::collection::vec(any::<usize>(), 0..10),
    );
    check("ipc_frame_like_json", input, |(values, cuts)| {
        let mut stream = Vec::new();
        for value in &values {
            stream.extend(length_prefixed(value.to_string().as_bytes()));
        }
        let (frames, error) = decode_all(&pieces(&stream, &cuts));
        // Each known frame that parses comes out in order; unknown types are skipped; the first
        // malformed known frame ends the stream with an error.
        let mut expected = Vec::new();
        let mut expected_error = false;
        for value in &values {
            match serde_json::from_value::<IpcFrame>(value.clone()) {
                Ok(frame) => expected.push(frame),
                Err(_) if is_known_ipc_type(value) => {
                    expected_error = true;
                    break;
                }
                Err(_) => {}
            }
        }
        prop_assert_eq!(frames, expected);
        prop_assert_eq!(error.is_some(), expected_error);
        Ok(())
    });
}

fn is_known_ipc_type(value: &Value) -> bool {
    [
        "hello", "welcome", "reject", "invoke", "cancel", "resume", "chunk", "result", "status",
        "ping", "pong",
    ]
    .contains(&value["type"].as_str().unwrap_or_default())
}

#[test]
fn ipc_frames_round_trip_through_the_codec() {
    let input = (
        prop::collection::vec(ipc_frame(), 1..5),
        prop::collection::vec(any::<usize>(), 0..6),
    );
    check("ipc_round_trip", input, |(frames, cuts)| {
        let mut codec = IpcCodec::default();
        let mut buf = BytesMut::new();
        for frame in &frames {
            codec.encode(frame.clone(), &mut buf).unwrap();
        }
        let (decoded, error) = decode_all(&pieces(&buf, &cuts));
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded, frames);
        Ok(())
    });
}

#[test]
fn ipc_lengths_past_the_limit_are_a_clean_error() {
    let input = (
        (MAX_IPC_FRAME_BYTES as u32 + 1)..=u32::MAX,
        any::<Vec<u8>>(),
    );
    check("ipc_oversized_length", input, |(length, rest)| {
        let mut bytes = length.to_be_bytes().to_vec();
        bytes.extend(rest);
        let (frames, error) = decode_all(&[bytes]);
        prop_assert!(frames.is_empty());
        prop_assert!(
            error.is_some(),
            "a frame of {} bytes must be refused",
            length
        );
        Ok(())
    });
}

#[test]
fn bridge_frames_parse_any_text_cleanly() {
    check("bridge_any_text", any::<String>(), |text| {
        check_bridge_text(&text)
    });
}

#[test]
fn bridge_frames_parse_frame_like_json_cleanly_and_round_trip() {
    check("bridge_frame_like_json", frame_like(), |value| {
        check_bridge_text(&value.to_string())
    });
}

/// Parses `text` as a bridge frame: a frame that re-serialises to itself, or an error that says
/// which kind of failure it is.
fn check_bridge_text(text: &str) -> Result<(), TestCaseError> {
    match BridgeFrame::parse(text) {
        Ok(frame) => {
            let again = BridgeFrame::parse(&frame.to_text());
            prop_assert_eq!(again, Ok(frame));
        }
        Err(FrameError::UnknownType(kind)) => {
            prop_assert!(!kind.is_empty() || text.contains("\"type\""));
        }
        Err(FrameError::Malformed(message)) => prop_assert!(!message.is_empty()),
    }
    Ok(())
}
