//! What the bridge side does to the table: the WebSocket reader hands each chunk and result
//! straight to the queue of the gateway connection that holds the request; a new WebSocket takes
//! the requests that waited for one, and resumes those carried over from the last.
use std::time::Instant;

use provider_shared::bridge::{
    codes, BridgeFrame, ModelResult, Outcome, StreamChunk, RESUME_PROTOCOL_VERSION,
};
use provider_shared::ipc::IpcFrame;

use super::bridge::{self, first_chunk, unknown_to_bridge, Link};
use super::state::Leg;
use super::table::Requests;
use super::Ending;
use crate::metrics::{self, OutcomeLabel};

fn unknown(id: &str) {
    tracing::warn!(%id, "bridge frame for an unknown request id dropped");
    metrics::frame_dropped("unknown_id");
}

impl Requests {
    /// A chunk from the bridge: queued for the request's gateway, unless a resume's replay
    /// repeats it, or it would put the request more than `STREAM_BUFFER_BYTES` behind (then the
    /// request alone ends with `slow_client`). Never waits.
    pub fn on_chunk(&self, chunk: StreamChunk) {
        let mut inner = self.lock();
        let Some(request) = inner.entries.get_mut(&chunk.id) else {
            return unknown(&chunk.id);
        };
        if request.link().is_none() || request.gateway.is_none() {
            // Not on a connection, or its gateway is gone: the bridge replays it after a resume.
            return metrics::frame_dropped("not_sent");
        }
        let index = chunk.chunk_index;
        if let Some(sorting) = &mut request.resync {
            if !sorting.take_chunk(index) {
                return metrics::frame_dropped("replayed");
            }
            request.resync = None;
        }
        if request.last_forwarded.is_some_and(|last| index <= last) {
            return metrics::frame_dropped("replayed");
        }
        let bytes = chunk.approx_bytes();
        let bound = self.limits.stream_buffer_bytes;
        if request.queued_bytes().saturating_add(bytes) > bound {
            let id = chunk.id;
            request.cancel_at_peer(&id);
            let ending = Ending::error(&id, OutcomeLabel::Error, codes::SLOW_CLIENT, format!(
                "the gateway fell more than {bound} bytes (LOCAL_PROVIDER_STREAM_BUFFER_BYTES) behind this answer"));
            return self.finish(&mut inner, &id, ending);
        }
        request.last_forwarded = Some(index);
        request.fallback = None;
        let first = !request.first_seen;
        if first {
            request.first_seen = true;
            first_chunk(request.sent);
        }
        let id = first.then(|| chunk.id.clone());
        if let Some(IpcFrame::Chunk(chunk)) =
            Self::to_gateway(request, IpcFrame::Chunk(chunk), bytes.max(1))
        {
            // Its connection is gone, not yet seen to end by its reader.
            return self.orphan(&mut inner, &chunk.id);
        }
        if let Some(id) = id {
            // Its first chunk: only `RESPONSE_TIMEOUT` is left.
            self.schedule(&mut inner, &id);
        }
    }

    /// A result from the bridge: it ends the request, unless it answers a resume of a request
    /// the bridge never got (then it is sent afresh) or came live ahead of a replay.
    pub fn on_result(&self, result: ModelResult) {
        let mut inner = self.lock();
        let Some(request) = inner.entries.get_mut(&result.id) else {
            return unknown(&result.id);
        };
        let Some(link) = request.link().cloned() else {
            return metrics::frame_dropped("not_sent");
        };
        if request.gateway.is_none() {
            return metrics::frame_dropped("not_sent");
        }
        if request.asked_resume {
            if let Some(invoke) = unknown_to_bridge(&result, &mut request.fallback) {
                request.asked_resume = false;
                tracing::info!(id = %result.id, "the bridge never got this request; sending it afresh");
                request.resync = None;
                link.push(BridgeFrame::ModelInvoke(invoke));
                return;
            }
        }
        let ok = matches!(result.outcome, Outcome::Ok { .. });
        if request
            .resync
            .as_ref()
            .is_some_and(|sorting| !sorting.take_result(ok))
        {
            // The result that came live ahead of the replay; the replay repeats it.
            return metrics::frame_dropped("replayed");
        }
        if !request.first_seen {
            first_chunk(request.sent);
        }
        let outcome = if ok {
            OutcomeLabel::Ok
        } else {
            OutcomeLabel::Error
        };
        let id = result.id.clone();
        let ending = Ending {
            result: Some(result),
            outcome,
        };
        self.finish(&mut inner, &id, ending);
    }

    /// WebSocket `link` is up: the requests that waited go out on it, and those carried over
    /// from the last one are resumed after the last chunk relayed.
    pub fn link_up(&self, link: &Link) {
        let mut inner = self.lock();
        inner.link = Some(link.clone());
        let ids: Vec<String> = inner.entries.keys().cloned().collect();
        for id in &ids {
            let Some(request) = inner.entries.get_mut(id) else {
                continue;
            };
            match &request.leg {
                Leg::Waiting { .. } => {
                    if let Some(frame) = self.open_on(&mut inner, id, link) {
                        link.push(frame);
                    }
                }
                Leg::CarryOver { .. } => {
                    if link.protocol < RESUME_PROTOCOL_VERSION {
                        let ending = bridge::not_resumable(id, link.protocol);
                        self.finish(&mut inner, id, ending);
                        continue;
                    }
                    // A new connection: the replay comes ahead of anything live.
                    request.resync = None;
                    request.asked_resume = true;
                    request.leg = Leg::On(link.clone());
                    let after = request.last_forwarded;
                    link.resume(id, after);
                    ::metrics::counter!(metrics::RESUMED).increment(1);
                    tracing::info!(%id, after_chunk_index = ?after, "request resumed on the new WebSocket");
                    self.schedule(&mut inner, id);
                }
                Leg::On(_) => {}
            }
        }
    }

    /// WebSocket connection `generation` ended: with a bridge that resumes (protocol 2), its
    /// requests wait up to `RESUME_GRACE` (never past their deadline) for the next one; otherwise
    /// they end with `bridge_disconnected`.
    pub fn link_down(&self, generation: u64) {
        let mut inner = self.lock();
        if inner
            .link
            .as_ref()
            .is_some_and(|l| l.generation == generation)
        {
            inner.link = None;
        }
        let grace = self.limits.resume_grace;
        let now = Instant::now();
        let ids: Vec<String> = inner
            .entries
            .iter()
            .filter(|(_, r)| r.link().is_some_and(|l| l.generation == generation))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            let Some(request) = inner.entries.get_mut(id) else {
                continue;
            };
            let resumes = request
                .link()
                .is_some_and(|l| l.protocol >= RESUME_PROTOCOL_VERSION);
            if !resumes || grace.is_zero() {
                self.finish(&mut inner, id, bridge::disconnected(id));
                continue;
            }
            request.leg = Leg::CarryOver {
                until: (now + grace).min(request.last_deadline),
            };
            self.schedule(&mut inner, id);
        }
    }
}
