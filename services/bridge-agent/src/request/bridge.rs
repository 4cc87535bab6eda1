//! The bridge side of a request: the WebSocket it goes out on, the frames it sends there, and the
//! errors that end it on the bridge's account.
use std::time::Instant;

use provider_shared::bridge::{codes, BridgeFrame, ModelInvoke, ModelResult, Outcome};
use provider_shared::ws_peer::Outbound;

use super::Ending;
use crate::metrics::{self, OutcomeLabel};

/// A WebSocket connection to the bridge, as requests go out on it.
#[derive(Debug, Clone)]
pub struct Link {
    /// Counts connections: a request knows which one it went out on.
    pub generation: u64,
    /// The connection's writer queue (`link.rs`).
    pub tx: Outbound<BridgeFrame>,
    /// The bridge protocol version agreed in `hello`/`welcome`.
    pub protocol: u32,
    /// The largest frame the bridge takes on this connection.
    pub max_frame_bytes: u64,
}

impl Link {
    /// Queues a control frame without waiting (the callers hold the table's lock): when the
    /// queue is full, one task per request waits for room. A connection that is gone needs
    /// nothing: its requests are carried over or ended when it is seen to end.
    pub(super) fn push(&self, frame: BridgeFrame) {
        let _ = self.tx.push_last(frame);
    }

    pub(super) fn cancel(&self, id: &str) {
        self.push(BridgeFrame::ModelCancel { id: id.to_owned() });
    }

    /// Asks the bridge to carry on with request `id` after `after_chunk_index`.
    pub(super) fn resume(&self, id: &str, after_chunk_index: Option<u64>) {
        self.push(BridgeFrame::ModelResume {
            id: id.to_owned(),
            after_chunk_index,
        });
    }
}

/// A failed result for a resume of a request the bridge does not hold, while the request itself is
/// still kept: the request to send afresh.
pub(super) fn unknown_to_bridge(
    result: &ModelResult,
    fallback: &mut Option<ModelInvoke>,
) -> Option<ModelInvoke> {
    match &result.outcome {
        // `withdrawn`: the bridge had it and dropped it (its early chunks were gone), so sending
        // it afresh would start the answer over under an id the editor already saw fail.
        Outcome::Error { error }
            if error.code == codes::BRIDGE_DISCONNECTED
                && !error
                    .details
                    .as_ref()
                    .is_some_and(|d| d["withdrawn"] == true) =>
        {
            fallback.take()
        }
        _ => None,
    }
}

pub(super) fn first_chunk(sent: Instant) {
    ::metrics::histogram!(metrics::TIME_TO_FIRST_CHUNK).record(sent.elapsed().as_secs_f64());
}

/// The frame `invoke` makes, in bytes, counted without writing it: the prompt is raw text whose
/// length is known; it is never decoded here.
pub(super) fn invoke_size(invoke: &ModelInvoke) -> u64 {
    invoke.frame_len()
}

pub(super) fn disconnected(id: &str) -> Ending {
    Ending::error(
        id,
        OutcomeLabel::Disconnected,
        codes::BRIDGE_DISCONNECTED,
        "the MCP bridge connection dropped while the request was in flight",
    )
}

pub(super) fn not_resumable(id: &str, protocol: u32) -> Ending {
    Ending::error(
        id,
        OutcomeLabel::Disconnected,
        codes::BRIDGE_DISCONNECTED,
        format!("the connection to the agent broke mid-answer, and the MCP bridge speaks protocol {protocol}, which cannot resume a request"),
    )
}

pub(super) fn too_large(id: &str, size: u64, limit: u64) -> Ending {
    Ending::error(
        id,
        OutcomeLabel::Error,
        codes::REQUEST_TOO_LARGE,
        format!("this request is {size} bytes once encoded for the MCP bridge, more than the {limit} bytes the bridge accepts in one frame (LOCAL_PROVIDER_MAX_FRAME_BYTES); shorten the conversation or its attachments"),
    )
}

pub(super) fn unavailable(id: &str, url: &str, waited: std::time::Duration) -> Ending {
    Ending::error(
        id,
        OutcomeLabel::Unavailable,
        codes::AGENT_UNAVAILABLE,
        format!(
            "not connected to the MCP bridge at {url} (waited {}s); bridge-agent is reconnecting",
            waited.as_secs_f64()
        ),
    )
}
