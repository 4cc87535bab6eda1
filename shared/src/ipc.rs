//! The local protocol between the gateway and bridge-agent over the Unix socket.
//!
//! Framing: each frame is a 4-byte big-endian length followed by that many bytes of one JSON
//! object, discriminated by `type`. A connection opens with `hello` from the gateway (naming
//! [`IPC_PROTOCOL`] and [`IPC_VERSION`]); bridge-agent answers `welcome` or `reject` and closes.
//! After that, one connection carries any number of concurrent requests, told apart by `id`:
//! `invoke` and `cancel` go to bridge-agent, `chunk` and `result` come back (exactly one
//! `result` per `invoke`), and `status` reports the bridge WebSocket's state whenever it changes.
//! Frames of an unknown `type` are skipped, so a newer peer can add frames within a version.
//! Peers that both list [`CAP_HEARTBEAT`] keep the link watched: the gateway sends `ping` every
//! [`HEARTBEAT_EVERY`], bridge-agent answers `pong`, and either side drops a connection it heard
//! nothing on for [`SILENCE_LIMIT`], or whose write did not finish within [`WRITE_TIMEOUT`].
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::bridge::{BridgeReport, ModelInvoke, ModelResult, StreamChunk};
use crate::tagged::Decoded;

pub const IPC_PROTOCOL: &str = "local-provider-ipc";
pub const IPC_VERSION: u32 = 1;
/// Largest frame either side accepts; larger ones end the connection with an error.
pub const MAX_IPC_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// In `welcome`'s `capabilities`: this bridge-agent takes `resume`.
pub const CAP_RESUME: &str = "resume";
/// In `hello`'s and `welcome`'s `capabilities`: this side sends (gateway) or answers
/// (bridge-agent) `ping`, and drops a connection that stays silent.
pub const CAP_HEARTBEAT: &str = "heartbeat";
/// How often the gateway pings bridge-agent.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// Nothing heard on a heartbeat connection for this long: the peer has stalled.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(6);
/// A frame not written within this long: the peer stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

crate::tagged::frame_enum! {
/// Every frame of the local socket.
#[derive(Debug, Clone, PartialEq)]
pub enum IpcFrame {
    Hello {
        protocol: String,
        version: u32,
        client: String,
        /// What this gateway does beyond version 1's frames, e.g. [`CAP_HEARTBEAT`]; absent
        /// from older gateways.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        capabilities: Vec<String>,
    },
    Welcome {
        version: u32,
        agent_id: String,
        bridge: BridgeStatus,
        /// What this bridge-agent can do beyond version 1's frames, e.g. [`CAP_RESUME`].
        #[serde(default)]
        capabilities: Vec<String>,
    },
    Reject {
        reason: String,
    },
    Invoke(ModelInvoke),
    Cancel {
        id: String,
    },
    /// Re-attaches request `id`, sent to an earlier bridge-agent connection, to this one: the
    /// gateway has every chunk up to `after_chunk_index` (none when null), and the request has
    /// been running for `elapsed_ms`. Only sent when `welcome` listed [`CAP_RESUME`].
    Resume {
        id: String,
        after_chunk_index: Option<u64>,
        elapsed_ms: u64,
        /// The request itself, while no chunk has come: when the bridge never got it (it was
        /// still on its way when bridge-agent went), it is sent afresh.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invoke: Option<ModelInvoke>,
    },
    Chunk(StreamChunk),
    Result(ModelResult),
    Status(BridgeStatus),
    /// Heartbeat, gateway → bridge-agent, between peers that listed [`CAP_HEARTBEAT`]; `ts` is
    /// the sender's Unix milliseconds.
    Ping {
        ts: u64,
    },
    /// The answer to a `ping`, with its `ts`.
    Pong {
        ts: u64,
    },
}
}

/// The state of bridge-agent's WebSocket to the MCP bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeStatus {
    pub state: LinkState,
    /// When the last heartbeat answer arrived (RFC 3339), if ever.
    #[serde(default)]
    pub last_ping: Option<String>,
    #[serde(default)]
    pub bridge_id: Option<String>,
    /// Successful reconnects since bridge-agent started.
    #[serde(default)]
    pub reconnects: u64,
    /// mcp-bridge's last `bridge_status` on the current connection; absent while the link is
    /// down or when mcp-bridge sends none (an older one). Older gateways ignore the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_bridge: Option<BridgeReport>,
    /// The largest `model_invoke` frame the bridge takes (the lower of its limit and
    /// bridge-agent's), while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connected,
    Connecting,
    Disconnected,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connected => "connected",
            LinkState::Connecting => "connecting",
            LinkState::Disconnected => "disconnected",
        }
    }
}

impl BridgeStatus {
    pub fn disconnected() -> Self {
        Self {
            state: LinkState::Disconnected,
            last_ping: None,
            bridge_id: None,
            reconnects: 0,
            mcp_bridge: None,
            max_frame_bytes: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("socket i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Shown without the values serde quotes (`frame_summary::without_values`).
    #[error("malformed frame: {}", crate::frame_summary::without_values(&.0.to_string()))]
    Malformed(#[from] serde_json::Error),
}

/// Length-delimited JSON frames of [`IpcFrame`].
pub struct IpcCodec {
    inner: LengthDelimitedCodec,
}

impl IpcFrame {
    /// Roughly what this frame takes on the wire, for the bound of a batched write
    /// (`crate::batch`): a chunk by its text, anything else a small fixed allowance (a request is
    /// one frame, however large, and ends a batch no later than the frame bound does).
    pub fn approx_bytes(&self) -> usize {
        match self {
            IpcFrame::Chunk(chunk) => chunk.approx_bytes(),
            _ => 256,
        }
    }
}

impl Default for IpcCodec {
    fn default() -> Self {
        Self {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(MAX_IPC_FRAME_BYTES)
                .new_codec(),
        }
    }
}

impl Decoder for IpcCodec {
    type Item = IpcFrame;
    type Error = IpcError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<IpcFrame>, IpcError> {
        while let Some(bytes) = self.inner.decode(src)? {
            match serde_json::from_slice::<Decoded<IpcFrame>>(&bytes)? {
                Decoded::Known(frame) => return Ok(Some(frame)),
                Decoded::Unknown(kind) => {
                    tracing::debug!(kind, "ignoring an ipc frame of unknown type")
                }
            }
        }
        Ok(None)
    }
}

impl Encoder<IpcFrame> for IpcCodec {
    type Error = IpcError;

    /// Writes the frame's JSON straight after its length prefix in `dst`: a request's prompt is
    /// copied once, from its raw text into the write buffer.
    fn encode(&mut self, frame: IpcFrame, dst: &mut BytesMut) -> Result<(), IpcError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(err) = serde_json::to_writer((&mut *dst).writer(), &frame) {
            dst.truncate(start);
            return Err(err.into());
        }
        let len = dst.len() - start - 4;
        if len > MAX_IPC_FRAME_BYTES {
            dst.truncate(start);
            return Err(IpcError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("frame of {len} bytes is over the limit of {MAX_IPC_FRAME_BYTES}"),
            )));
        }
        // The length fits 4 bytes: the limit is below 4 GiB.
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::Delta;
    use bytes::Bytes;

    #[test]
    fn frames_round_trip_and_unknown_types_are_skipped() {
        let mut codec = IpcCodec::default();
        let mut buf = BytesMut::new();
        let chunk = IpcFrame::Chunk(StreamChunk {
            id: "r1".into(),
            chunk_index: 0,
            delta: Delta {
                content: Some("hé".into()),
                ..Delta::default()
            },
            finish_reason: None,
        });
        // A frame from a newer peer, then a known one.
        LengthDelimitedCodec::new()
            .encode(
                Bytes::from_static(br#"{"type":"future_thing","x":1}"#),
                &mut buf,
            )
            .unwrap();
        codec.encode(chunk.clone(), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(chunk));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn every_frame_round_trips_with_type_first() {
        use crate::bridge::{ModelMeta, Payload};
        use crate::tagged::Tagged;
        let invoke = ModelInvoke {
            id: "r1".into(),
            session_id: None,
            model_meta: ModelMeta {
                provider: "local".into(),
                label: "l".into(),
                requested_scopes: vec![],
            },
            payload: Payload::Chat {
                messages: crate::bridge::RawJson::encode(
                    &serde_json::json!([{"role": "user", "content": "hi"}]),
                )
                .unwrap(),
                parameters: crate::bridge::RawJson::encode(&serde_json::json!({})).unwrap(),
            },
        };
        let frames = [
            IpcFrame::Hello {
                protocol: IPC_PROTOCOL.into(),
                version: IPC_VERSION,
                client: "gateway/test".into(),
                capabilities: vec![CAP_HEARTBEAT.into()],
            },
            IpcFrame::Welcome {
                version: IPC_VERSION,
                agent_id: "a".into(),
                bridge: BridgeStatus::disconnected(),
                capabilities: vec![CAP_RESUME.into()],
            },
            IpcFrame::Reject {
                reason: "no".into(),
            },
            IpcFrame::Invoke(invoke.clone()),
            IpcFrame::Cancel { id: "r1".into() },
            IpcFrame::Resume {
                id: "r1".into(),
                after_chunk_index: Some(2),
                elapsed_ms: 30,
                invoke: Some(invoke),
            },
            IpcFrame::Chunk(StreamChunk {
                id: "r1".into(),
                chunk_index: 0,
                delta: Delta::default(),
                finish_reason: None,
            }),
            IpcFrame::Result(ModelResult::error("r1", "boom", "it broke")),
            IpcFrame::Status(BridgeStatus {
                state: LinkState::Connected,
                last_ping: None,
                bridge_id: Some("b".into()),
                reconnects: 1,
                mcp_bridge: Some(BridgeReport::default()),
                max_frame_bytes: Some(9),
            }),
            IpcFrame::Ping { ts: 7 },
            IpcFrame::Pong { ts: 7 },
        ];
        let mut codec = IpcCodec::default();
        let mut names = Vec::new();
        for frame in frames {
            let mut buf = BytesMut::new();
            codec.encode(frame.clone(), &mut buf).unwrap();
            let text = String::from_utf8(buf[4..].to_vec()).unwrap();
            let kind = text.split('"').nth(3).unwrap().to_owned();
            assert!(text.starts_with(&format!(r#"{{"type":"{kind}""#)), "{text}");
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
            names.push(kind);
        }
        assert_eq!(IpcFrame::types(), names);
    }

    #[test]
    fn a_hello_from_an_older_gateway_has_no_capabilities() {
        let mut codec = IpcCodec::default();
        let mut buf = BytesMut::new();
        LengthDelimitedCodec::new()
            .encode(
                Bytes::from_static(
                    br#"{"type":"hello","protocol":"local-provider-ipc","version":1,"client":"gateway/0.1"}"#,
                ),
                &mut buf,
            )
            .unwrap();
        match codec.decode(&mut buf).unwrap() {
            Some(IpcFrame::Hello { capabilities, .. }) => assert!(capabilities.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_known_frame_is_an_error() {
        let mut codec = IpcCodec::default();
        let mut buf = BytesMut::new();
        LengthDelimitedCodec::new()
            .encode(Bytes::from_static(br#"{"type":"cancel"}"#), &mut buf)
            .unwrap();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, IpcError::Malformed(_)));
        assert!(err.to_string().contains("missing field `id`"), "{err}");
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec = IpcCodec::default();
        let mut full = BytesMut::new();
        codec
            .encode(IpcFrame::Cancel { id: "abc".into() }, &mut full)
            .unwrap();
        let mut part = full.split_to(5);
        assert_eq!(codec.decode(&mut part).unwrap(), None);
        part.unsplit(full);
        assert_eq!(
            codec.decode(&mut part).unwrap(),
            Some(IpcFrame::Cancel { id: "abc".into() })
        );
    }
}
