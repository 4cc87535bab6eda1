//! The bridge WebSocket protocol (bridge-agent ↔ MCP bridge), version 2 (1 still spoken): one JSON
//! object per text frame, discriminated by `type`. The same request/response types also travel over the Unix socket
//! between the gateway and bridge-agent (see [`crate::ipc`]), so nothing is translated twice.
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::prompt::{Payload, RawJson};
use crate::tagged::Decoded;

mod result_decode;

/// The newest protocol version, sent in `hello` as `max_protocol`; `welcome` answers with the
/// version both speak.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version still spoken: no `model_resume`, no frame limits in `hello`/`welcome`.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// From this version on, a request can be resumed on a new connection with `model_resume`.
pub const RESUME_PROTOCOL_VERSION: u32 = 2;
/// The largest frame either side accepts unless it says otherwise in `hello`/`welcome`
/// (`LOCAL_PROVIDER_MAX_FRAME_BYTES`): 48 MiB, so that a request at the gateway's default body
/// cap (32 MiB) fits as a `model_invoke`, with room for its conversion to the chat payload.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 48 * 1024 * 1024;

/// In `hello`'s `capabilities`: the sender needs no repetition of a streamed answer in its
/// `model_result` once chunks carried it (see docs/PROTOCOL.md).
pub const CAP_RESULT_AFTER_CHUNKS: &str = "result_after_chunks";

/// The version two peers speak: the lower of theirs and ours, if we still speak it.
pub fn negotiate(theirs: u32) -> Option<u32> {
    let agreed = theirs.min(PROTOCOL_VERSION);
    (agreed >= MIN_PROTOCOL_VERSION).then_some(agreed)
}

crate::tagged::frame_enum! {
/// Every frame of the bridge WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeFrame {
    Hello {
        agent_id: String,
        /// The oldest version the sender speaks (1), which every bridge accepts.
        protocol: u32,
        #[serde(default)]
        capabilities: Vec<String>,
        /// The newest version the sender speaks; a bridge that knows it answers with the
        /// version both speak, one that does not ignores it and answers 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_protocol: Option<u32>,
        /// The largest frame this side accepts (protocol 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_frame_bytes: Option<u64>,
    },
    Welcome {
        protocol: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bridge_id: Option<String>,
        /// The largest frame this side accepts (protocol 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_frame_bytes: Option<u64>,
    },
    ModelInvoke(ModelInvoke),
    ModelStreamChunk(StreamChunk),
    ModelResult(ModelResult),
    ModelCancel {
        id: String,
    },
    /// Protocol 2: carry on with request `id` (sent on an earlier connection of the same
    /// `agent_id`) on this connection, replaying every chunk after `after_chunk_index` (all of
    /// them when it is null).
    ModelResume {
        id: String,
        after_chunk_index: Option<u64>,
    },
    Ping {
        ts: u64,
    },
    Pong {
        ts: u64,
    },
    /// mcp-bridge → bridge-agent, on change and periodically: the queue and the agents polling
    /// it. Older bridge-agents ignore it as an unknown type, so it needs no new version.
    BridgeStatus(BridgeReport),
}
}

/// What mcp-bridge reports of its queue and of the agents asking it for work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeReport {
    /// Requests waiting for an agent.
    pub queue_depth: u64,
    /// Requests handed to an agent and not yet answered.
    pub leased: u64,
    /// `wait_for_request` long-polls open right now.
    pub waiting_polls: u64,
    /// MCP clients asked through sampling (`MCP_SAMPLING`).
    #[serde(default)]
    pub sampling_clients: u64,
    /// While a long-poll is open: since when an agent has been polling without a pause (Unix
    /// milliseconds). Polls following each other closely count as one stretch.
    #[serde(default)]
    pub polling_since_ms: Option<u64>,
    /// The last moment a long-poll was open (Unix milliseconds), if ever.
    #[serde(default)]
    pub last_poll_ms: Option<u64>,
    #[serde(default)]
    pub connected_bridge_agents: u64,
    #[serde(default)]
    pub answered: u64,
    #[serde(default)]
    pub failed: u64,
    /// When mcp-bridge took this report (Unix milliseconds).
    #[serde(default)]
    pub at_ms: u64,
}

/// Why a text frame could not be used. Neither is fatal to the connection.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of unknown type {0:?} ignored")]
    UnknownType(String),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl BridgeFrame {
    /// Parses one text frame, telling an unknown `type` (to be ignored) from a malformed frame.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        match serde_json::from_str::<Decoded<BridgeFrame>>(text) {
            Ok(Decoded::Known(frame)) => Ok(frame),
            Ok(Decoded::Unknown(kind)) => Err(FrameError::UnknownType(kind)),
            Err(err) => Err(FrameError::Malformed(crate::frame_summary::without_values(
                &err.to_string(),
            ))),
        }
    }

    /// The JSON text of this frame.
    pub fn to_text(&self) -> String {
        // Serialising these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One request for the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInvoke {
    pub id: String,
    pub session_id: Option<String>,
    pub model_meta: ModelMeta,
    pub payload: Payload,
}

impl ModelInvoke {
    /// The length of this request's `model_invoke` frame, counted without writing it: the
    /// prompt's bytes are only counted, never copied or decoded.
    pub fn frame_len(&self) -> u64 {
        crate::prompt::encoded_len(&FrameRef::ModelInvoke(self))
    }
}

/// A `model_invoke` frame of a borrowed request, for [`ModelInvoke::frame_len`]: the same tag and
/// fields as [`BridgeFrame::ModelInvoke`].
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FrameRef<'a> {
    ModelInvoke(&'a ModelInvoke),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub provider: String,
    pub label: String,
    #[serde(default)]
    pub requested_scopes: Vec<String>,
}

/// One streamed piece of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    pub id: String,
    pub chunk_index: u64,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// OpenAI-shaped tool-call deltas: `index`, and `id`/`type`/`function.name` in a call's first
    /// delta, `function.arguments` fragments after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One tool call's piece in a [`Delta`], or a whole call in a result's message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which call this piece belongs to; absent, its position in the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Always `function`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A fragment of the arguments' JSON text. Some agents send the arguments as a JSON object
    /// (or another JSON value); OpenAI clients need a string, so any value other than a string
    /// or null is decoded as its JSON text.
    #[serde(
        default,
        deserialize_with = "arguments_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub arguments: Option<String>,
}

fn arguments_text<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(match Value::deserialize(deserializer)? {
        Value::Null => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    })
}

impl ToolCallDelta {
    /// The arguments fragment, empty when none came.
    pub fn arguments(&self) -> &str {
        self.function
            .as_ref()
            .and_then(|f| f.arguments.as_deref())
            .unwrap_or_default()
    }

    /// The function's name, when this piece carries it.
    pub fn name(&self) -> Option<&str> {
        self.function.as_ref().and_then(|f| f.name.as_deref())
    }
}

impl StreamChunk {
    /// Roughly what this chunk costs to hold: its text plus a fixed allowance for the rest, so
    /// that many tiny chunks count for what they really take.
    pub fn approx_bytes(&self) -> usize {
        self.delta.approx_bytes()
    }
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.content.as_deref().is_none_or(str::is_empty)
            && self.reasoning_content.as_deref().is_none_or(str::is_empty)
            && self.tool_calls.as_ref().is_none_or(Vec::is_empty)
    }

    /// Roughly what this delta costs to hold: its text plus a fixed allowance per piece.
    pub fn approx_bytes(&self) -> usize {
        const OVERHEAD: usize = 256;
        const PER_CALL: usize = 64;
        let len = |s: &Option<String>| s.as_deref().map_or(0, str::len);
        OVERHEAD
            + len(&self.content)
            + len(&self.reasoning_content)
            + self.tool_calls.as_ref().map_or(0, |calls| {
                calls
                    .iter()
                    .map(|c| {
                        PER_CALL + len(&c.id) + c.name().map_or(0, str::len) + c.arguments().len()
                    })
                    .sum::<usize>()
            })
    }
}

/// The end of a request, sent exactly once. Decoded field by field (`bridge/result_decode.rs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelResult {
    pub id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Ok { result: ResultBody },
    Error { error: ErrorBody },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultBody {
    #[serde(default)]
    pub choices: Vec<ResultChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultChoice {
    #[serde(default)]
    pub index: u32,
    /// `role`, `content`, and optionally `reasoning_content` and `tool_calls`. When the request
    /// was streamed, its chunks carried output and the receiver listed
    /// [`CAP_RESULT_AFTER_CHUNKS`], only `role`: the text is not repeated.
    pub message: Value,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    /// Whether it says anything: all zeros is what an agent sends that counted nothing.
    pub fn is_reported(&self) -> bool {
        self.prompt_tokens.saturating_add(self.completion_tokens) > 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ModelResult {
    /// A failed result with `code` and `message`.
    pub fn error(
        id: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            outcome: Outcome::Error {
                error: ErrorBody {
                    code: code.into(),
                    message: message.into(),
                    details: None,
                },
            },
        }
    }
}

/// Error codes bridge-agent itself puts in a failed `model_result`.
pub mod codes {
    /// No bridge connection came up within `CONNECTION_TIMEOUT`.
    pub const AGENT_UNAVAILABLE: &str = "agent_unavailable";
    /// The bridge connection dropped while the request was in flight.
    pub const BRIDGE_DISCONNECTED: &str = "bridge_disconnected";
    /// No first chunk or result within `REQUEST_TIMEOUT`.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    /// The whole answer took longer than `RESPONSE_TIMEOUT`.
    pub const RESPONSE_TIMEOUT: &str = "response_timeout";
    /// bridge-agent is shutting down.
    pub const SHUTTING_DOWN: &str = "shutting_down";
    /// A request with this id is already in flight.
    pub const DUPLICATE_ID: &str = "duplicate_request_id";
    /// The gateway cancelled the request.
    pub const CANCELLED: &str = "cancelled";
    /// The encoded `model_invoke` is larger than the bridge accepts in one frame.
    pub const REQUEST_TOO_LARGE: &str = "request_too_large";
    /// The reader of the answer fell more than `STREAM_BUFFER_BYTES` behind.
    pub const SLOW_CLIENT: &str = "slow_client";

    /// The codes above: they speak of the machinery between editor and agent, and some change
    /// how the gateway answers (status, `retry-after`), so the agent cannot give them.
    pub const TRANSPORT: &[&str] = &[
        AGENT_UNAVAILABLE,
        BRIDGE_DISCONNECTED,
        REQUEST_TIMEOUT,
        RESPONSE_TIMEOUT,
        SHUTTING_DOWN,
        DUPLICATE_ID,
        CANCELLED,
        REQUEST_TOO_LARGE,
        SLOW_CLIENT,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tagged::Tagged;
    use serde_json::json;

    #[test]
    fn bridge_status_has_the_documented_shape_and_tolerates_missing_fields() {
        let frame = BridgeFrame::BridgeStatus(BridgeReport {
            queue_depth: 2,
            leased: 1,
            waiting_polls: 1,
            polling_since_ms: Some(1_700_000_000_000),
            last_poll_ms: Some(1_700_000_005_000),
            at_ms: 1_700_000_006_000,
            ..BridgeReport::default()
        });
        let v: Value = serde_json::from_str(&frame.to_text()).unwrap();
        assert_eq!(v["type"], "bridge_status");
        assert_eq!(v["queue_depth"], 2);
        assert_eq!(v["polling_since_ms"], 1_700_000_000_000u64);
        assert_eq!(BridgeFrame::parse(&frame.to_text()).unwrap(), frame);
        // A newer mcp-bridge may add fields; an older one may send fewer.
        let sparse =
            r#"{"type":"bridge_status","queue_depth":0,"leased":0,"waiting_polls":0,"later":1}"#;
        assert!(matches!(
            BridgeFrame::parse(sparse),
            Ok(BridgeFrame::BridgeStatus(BridgeReport {
                last_poll_ms: None,
                ..
            }))
        ));
    }

    #[test]
    fn invoke_has_the_documented_shape() {
        let frame = BridgeFrame::ModelInvoke(ModelInvoke {
            id: "r1".into(),
            session_id: None,
            model_meta: ModelMeta {
                provider: "local".into(),
                label: "cursor-agent-local".into(),
                requested_scopes: vec![],
            },
            payload: Payload::Chat {
                messages: RawJson::encode(&json!([{"role": "user", "content": "hi"}])).unwrap(),
                parameters: RawJson::encode(&json!({"stream": true})).unwrap(),
            },
        });
        let BridgeFrame::ModelInvoke(invoke) = &frame else {
            unreachable!()
        };
        assert_eq!(invoke.frame_len(), frame.to_text().len() as u64);
        let v: Value = serde_json::from_str(&frame.to_text()).unwrap();
        assert_eq!(v["type"], "model_invoke");
        assert_eq!(v["session_id"], Value::Null);
        assert_eq!(v["payload"]["kind"], "chat");
        assert_eq!(v["payload"]["parameters"]["stream"], true);
        assert_eq!(BridgeFrame::parse(&frame.to_text()).unwrap(), frame);
    }

    #[test]
    fn result_status_is_flattened() {
        let ok = r#"{"type":"model_result","id":"r1","status":"ok","result":{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}}"#;
        let BridgeFrame::ModelResult(res) = BridgeFrame::parse(ok).unwrap() else {
            panic!("not a result")
        };
        assert!(matches!(res.outcome, Outcome::Ok { .. }));
        let err = ModelResult::error("r2", "boom", "it broke");
        let v: Value = serde_json::to_value(BridgeFrame::ModelResult(err)).unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["error"]["code"], "boom");
    }

    fn chunk() -> StreamChunk {
        StreamChunk {
            id: "r1".into(),
            chunk_index: 3,
            delta: Delta {
                content: Some("hé \"quoted\"".into()),
                tool_calls: Some(vec![ToolCallDelta {
                    index: Some(0),
                    function: Some(FunctionDelta {
                        arguments: Some("{}".into()),
                        ..FunctionDelta::default()
                    }),
                    ..ToolCallDelta::default()
                }]),
                ..Delta::default()
            },
            finish_reason: Some("stop".into()),
        }
    }

    #[test]
    fn every_frame_round_trips_with_type_first_and_in_any_order() {
        let frames = [
            BridgeFrame::Hello {
                agent_id: "a".into(),
                protocol: 1,
                capabilities: vec!["stream".into()],
                max_protocol: Some(2),
                max_frame_bytes: Some(10),
            },
            BridgeFrame::Welcome {
                protocol: 2,
                bridge_id: Some("b".into()),
                max_frame_bytes: None,
            },
            BridgeFrame::ModelInvoke(ModelInvoke {
                id: "r1".into(),
                session_id: Some("s".into()),
                model_meta: ModelMeta {
                    provider: "local".into(),
                    label: "l".into(),
                    requested_scopes: vec!["x".into()],
                },
                payload: Payload::Completion {
                    prompt: "p".into(),
                    suffix: Some("s".into()),
                    system: None,
                    parameters: RawJson::encode(&json!({})).unwrap(),
                },
            }),
            BridgeFrame::ModelStreamChunk(chunk()),
            BridgeFrame::ModelResult(ModelResult::error("r1", "boom", "it broke")),
            BridgeFrame::ModelCancel { id: "r1".into() },
            BridgeFrame::ModelResume {
                id: "r1".into(),
                after_chunk_index: None,
            },
            BridgeFrame::Ping { ts: 5 },
            BridgeFrame::Pong { ts: 6 },
            BridgeFrame::BridgeStatus(BridgeReport::default()),
        ];
        let names: Vec<String> = frames
            .iter()
            .map(|frame| {
                let text = frame.to_text();
                assert_eq!(BridgeFrame::parse(&text).unwrap(), *frame, "{text}");
                // The same fields with `type` last decode the same.
                let Value::Object(mut fields) = serde_json::from_str(&text).unwrap() else {
                    panic!("not an object: {text}")
                };
                let kind = fields.remove("type").unwrap();
                fields.insert("type".into(), kind.clone());
                let moved = Value::Object(fields).to_string();
                assert!(!moved.starts_with(r#"{"type""#), "{moved}");
                assert_eq!(BridgeFrame::parse(&moved).unwrap(), *frame, "{moved}");
                assert!(text.starts_with(&format!(r#"{{"type":{kind}"#)), "{text}");
                kind.as_str().unwrap().to_owned()
            })
            .collect();
        // The known types are the variants' names, as docs/PROTOCOL.md lists them.
        assert_eq!(BridgeFrame::types(), names);
    }

    #[test]
    fn a_chunk_counts_its_tool_calls_about_as_long_as_they_encode() {
        let with = chunk();
        let encoded = serde_json::to_string(&with.delta.tool_calls.as_ref().unwrap()[0])
            .unwrap()
            .len();
        let mut without = chunk();
        without.delta.tool_calls = None;
        let counted = with.approx_bytes() - without.approx_bytes();
        assert!(
            counted * 2 >= encoded && counted <= encoded * 2,
            "{counted} for {encoded} bytes"
        );
    }

    #[test]
    fn unknown_type_is_told_from_malformed() {
        assert_eq!(
            BridgeFrame::parse(r#"{"type":"telemetry","x":1}"#),
            Err(FrameError::UnknownType("telemetry".into()))
        );
        assert!(matches!(
            BridgeFrame::parse(r#"{"type":"ping"}"#),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            BridgeFrame::parse("not json"),
            Err(FrameError::Malformed(_))
        ));
        let Err(FrameError::Malformed(why)) = BridgeFrame::parse(r#"{"type":"ping","ts":"x"}"#)
        else {
            panic!("a ping with a text ts is malformed")
        };
        assert!(why.contains("invalid type: string"), "{why}");
        assert_eq!(
            BridgeFrame::parse(r#"{"id":"r1","type":"model_cancel"}"#),
            Ok(BridgeFrame::ModelCancel { id: "r1".into() })
        );
    }
}
