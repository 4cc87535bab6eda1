//! Serving one request: wait for the bridge, send `model_invoke` (or `model_resume`), relay
//! chunks, carry the request over to a new WebSocket when the old one drops (protocol 2), keep
//! it for the gateway's `resume` when the gateway's connection drops (`gateway.rs`), leave it to
//! the next bridge-agent on an orderly stop, and answer the gateway with exactly one `result`,
//! whatever happens.
use std::sync::Arc;
use std::time::{Duration, Instant};

use provider_shared::bridge::{
    codes, BridgeFrame, ModelInvoke, ModelResult, Outcome, StreamChunk, RESUME_PROTOCOL_VERSION,
};
use provider_shared::ipc::IpcFrame;
use provider_shared::routes::{Routed, Ticket};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use crate::metrics::{self, OutcomeLabel};
use crate::Hub;

mod bridge;
mod gateway;

use bridge::{
    cancel_at_peer, carry_over, disconnected, first_chunk, link_gone, not_resumable, resume_on,
    too_large, unavailable, unknown_to_bridge, wait_for_link, Waited,
};
pub use gateway::Reattach;
use gateway::{Resync, Sent};

/// The request's inbox: what the bridge sends for it (routed by `Hub::requests` straight from
/// the WebSocket reader in `link.rs`), and what its gateway says.
pub type Inbox = provider_shared::routes::Inbox<RequestEvent>;

/// What happens to a request, delivered to the task serving it.
#[derive(Debug)]
pub enum RequestEvent {
    Chunk(StreamChunk),
    Result(ModelResult),
    /// The gateway asked to cancel it.
    Cancel,
    /// The gateway connection that sent it closed.
    GatewayGone,
    /// A gateway connection took it up again (IPC `resume` of a request still here).
    Reattach(Reattach),
    /// More than `STREAM_BUFFER_BYTES` of chunks waited for it: its gateway is not keeping up.
    Overflow,
}

impl Routed for RequestEvent {
    fn cost(&self) -> usize {
        match self {
            RequestEvent::Chunk(chunk) => chunk.approx_bytes(),
            _ => 0,
        }
    }

    fn is_last(&self) -> bool {
        matches!(self, RequestEvent::Result(_))
    }

    fn overflow() -> Self {
        RequestEvent::Overflow
    }
}

/// How a request ended: what to tell the gateway (if it is still there) and the metric label.
struct Ending {
    result: Option<ModelResult>,
    outcome: OutcomeLabel,
}

impl Ending {
    fn error(id: &str, outcome: OutcomeLabel, code: &str, message: impl Into<String>) -> Self {
        Ending {
            result: Some(ModelResult::error(id, code, message)),
            outcome,
        }
    }

    fn silent(outcome: OutcomeLabel) -> Self {
        Ending {
            result: None,
            outcome,
        }
    }
}

/// How the request begins on the bridge.
pub enum Start {
    /// A new request.
    Invoke(ModelInvoke),
    /// A request a gateway re-attaches after the bridge-agent it was sent to went away.
    Resume {
        after_chunk_index: Option<u64>,
        /// How long it has been running, so its deadlines stay where they were.
        elapsed: Duration,
        /// The request, while no chunk has come (see [`Fallback`]).
        invoke: Option<ModelInvoke>,
    },
}

pub async fn handle_request(
    hub: Arc<Hub>,
    id: String,
    start: Start,
    ticket: Ticket,
    mut inbox: Inbox,
    mut out: mpsc::Sender<IpcFrame>,
) {
    let received = Instant::now();
    let ending = relay(&hub, &id, start, &mut inbox, &mut out).await;
    // Forget the id before answering, so the gateway may reuse it as soon as it hears back.
    hub.requests.remove(&id, ticket);
    metrics::gauge_in_flight(hub.requests.len());
    metrics::count_request(ending.outcome);
    ::metrics::histogram!(metrics::REQUEST_DURATION).record(received.elapsed().as_secs_f64());
    tracing::debug!(outcome = ending.outcome.as_str(), "request ended");
    if let Some(result) = ending.result {
        // A closed connection has nobody left to tell.
        let _ = gateway::send(&out, IpcFrame::Result(result), hub.hard_stop.cancelled()).await;
    }
}

async fn relay(
    hub: &Hub,
    id: &str,
    start: Start,
    inbox: &mut Inbox,
    out: &mut mpsc::Sender<IpcFrame>,
) -> Ending {
    let (begun, mut last_forwarded) = match &start {
        Start::Invoke(_) => (Instant::now(), None),
        Start::Resume {
            after_chunk_index,
            elapsed,
            ..
        } => (
            Instant::now()
                .checked_sub(*elapsed)
                .unwrap_or_else(Instant::now),
            *after_chunk_index,
        ),
    };
    let first_deadline = begun + hub.config.request_timeout();
    let last_deadline = begun + hub.config.response_timeout();
    let wait_until = Instant::now() + hub.config.connection_timeout();
    // A gateway that takes the request up while it waits for a WebSocket.
    let mut pending: Option<Reattach> = None;
    let mut link = match wait_for_link(hub, id, inbox, wait_until, &mut pending).await {
        Ok(link) => link,
        Err(Waited::Ended(ending)) => return ending,
        Err(Waited::TimedOut) => return unavailable(hub, id),
    };
    if let Some(again) = pending.take() {
        // Nothing reached the bridge yet: the new connection just takes the answer.
        *out = again.out;
    }
    // Until the first chunk, the request is kept: a bridge that answers a resume with "no such
    // request" never got it (it was still on its way), so it is sent afresh.
    let mut fallback: Option<ModelInvoke>;
    let mut asked_resume = false;
    let opening = match start {
        Start::Invoke(invoke) => {
            // The frame is this object plus its `"type":"model_invoke",` tag.
            let size = serde_json::to_vec(&invoke).map_or(0, |v| v.len()) as u64 + 24;
            if size > link.max_frame_bytes {
                return too_large(id, size, link.max_frame_bytes);
            }
            fallback = (link.protocol >= RESUME_PROTOCOL_VERSION).then(|| invoke.clone());
            BridgeFrame::ModelInvoke(invoke)
        }
        Start::Resume {
            after_chunk_index,
            invoke,
            ..
        } => {
            if link.protocol < RESUME_PROTOCOL_VERSION {
                return not_resumable(id, link.protocol);
            }
            fallback = invoke;
            asked_resume = true;
            BridgeFrame::ModelResume {
                id: id.to_owned(),
                after_chunk_index,
            }
        }
    };
    let sent = Instant::now();
    if link.tx.send(opening).await.is_err() {
        return disconnected(id);
    }
    let mut first_seen = last_forwarded.is_some();
    // Set while a resume on the connection the request is already on is sorted out.
    let mut resync: Option<Resync> = None;
    let mut link_rx = hub.link.subscribe();
    // Made once for the whole answer: the deadlines do not move, and rebuilding these on every
    // chunk would cost a timer registration and a waiter each time.
    let first_timeout = sleep_until(first_deadline.into());
    let last_timeout = sleep_until(last_deadline.into());
    let stopped = hub.hard_stop.cancelled();
    let handing_over = hub.hand_over.cancelled();
    tokio::pin!(first_timeout, last_timeout, stopped, handing_over);
    loop {
        // What to do when the gateway's connection is found gone, outside the select.
        let mut gateway_gone = false;
        tokio::select! {
            // Frames already received win over a disconnect noticed at the same moment.
            biased;
            event = inbox.recv() => match event {
                Some(RequestEvent::Chunk(chunk)) => {
                    if let Some(sorting) = &mut resync {
                        if !sorting.take_chunk(chunk.chunk_index) {
                            metrics::frame_dropped("replayed");
                            continue;
                        }
                        resync = None;
                        hub.requests.replay(id, false);
                    }
                    if last_forwarded.is_some_and(|last| chunk.chunk_index <= last) {
                        metrics::frame_dropped("replayed");
                        continue;
                    }
                    last_forwarded = Some(chunk.chunk_index);
                    fallback = None;
                    if !first_seen {
                        first_seen = true;
                        first_chunk(sent);
                    }
                    match gateway::send(out, IpcFrame::Chunk(chunk), &mut stopped).await {
                        Sent::Yes => {}
                        Sent::Gone => gateway_gone = true,
                        Sent::Stopped => {
                            cancel_at_peer(&link, id).await;
                            let (code, message) = hub.stop_reason();
                            return Ending::error(id, OutcomeLabel::Error, code, message);
                        }
                    }
                }
                Some(RequestEvent::Result(result)) => {
                    let unknown = asked_resume.then(|| unknown_to_bridge(&result, &mut fallback));
                    if let Some(invoke) = unknown.flatten() {
                        asked_resume = false;
                        tracing::info!("the bridge never got this request; sending it afresh");
                        resync = None;
                        hub.requests.replay(id, false);
                        hub.requests.reopen(id);
                        if link.tx.send(BridgeFrame::ModelInvoke(invoke)).await.is_err() {
                            return disconnected(id);
                        }
                        continue;
                    }
                    let ok = matches!(result.outcome, Outcome::Ok { .. });
                    if resync.as_ref().is_some_and(|sorting| !sorting.take_result(ok)) {
                        // The result that came live ahead of the replay; the replay repeats it.
                        metrics::frame_dropped("replayed");
                        continue;
                    }
                    if !first_seen {
                        first_chunk(sent);
                    }
                    let outcome = if ok { OutcomeLabel::Ok } else { OutcomeLabel::Error };
                    return Ending { result: Some(result), outcome };
                }
                Some(RequestEvent::Cancel) => {
                    cancel_at_peer(&link, id).await;
                    return Ending::error(id, OutcomeLabel::Cancelled, codes::CANCELLED,
                        "cancelled by the gateway");
                }
                Some(RequestEvent::GatewayGone) => gateway_gone = true,
                Some(RequestEvent::Reattach(again)) => {
                    // The gateway came back before its old connection was seen to end.
                    match gateway::reattach(hub, id, out, again, &mut last_forwarded, &link).await {
                        Ok(sorting) => resync = sorting,
                        Err(ending) => return ending,
                    }
                    asked_resume = true;
                }
                None => {
                    cancel_at_peer(&link, id).await;
                    return Ending::silent(OutcomeLabel::Cancelled);
                }
                Some(RequestEvent::Overflow) => {
                    cancel_at_peer(&link, id).await;
                    return Ending::error(id, OutcomeLabel::Error, codes::SLOW_CLIENT, format!(
                        "the gateway fell more than {} bytes (LOCAL_PROVIDER_STREAM_BUFFER_BYTES) behind this answer",
                        hub.config.stream_buffer_bytes()));
                }
            },
            () = link_gone(&mut link_rx, link.generation) => {
                link = match carry_over(hub, id, &link, inbox, last_deadline, &mut pending).await {
                    Ok(next) => next,
                    Err(ending) => return ending,
                };
                if let Some(again) = pending.take() {
                    *out = again.out;
                    last_forwarded = again.after_chunk_index;
                    ::metrics::counter!(metrics::REATTACHED).increment(1);
                }
                // A new connection: the replay comes ahead of anything live.
                resync = None;
                hub.requests.replay(id, false);
                if let Err(ending) = resume_on(&link, id, last_forwarded).await {
                    return ending;
                }
                asked_resume = true;
            }
            () = &mut first_timeout, if !first_seen => {
                cancel_at_peer(&link, id).await;
                let secs = hub.config.request_timeout().as_secs_f64();
                return Ending::error(id, OutcomeLabel::Timeout, codes::REQUEST_TIMEOUT,
                    format!("the agent did not start answering within {secs}s"));
            }
            () = &mut last_timeout => {
                cancel_at_peer(&link, id).await;
                let secs = hub.config.response_timeout().as_secs_f64();
                return Ending::error(id, OutcomeLabel::Timeout, codes::RESPONSE_TIMEOUT,
                    format!("the agent did not finish answering within {secs}s"));
            }
            () = &mut handing_over => {
                // An orderly stop: the gateway resumes this at the next bridge-agent, and
                // mcp-bridge keeps it for that; nothing is cancelled.
                return Ending::silent(OutcomeLabel::HandedOver);
            }
            () = &mut stopped => {
                cancel_at_peer(&link, id).await;
                let (code, message) = hub.stop_reason();
                return Ending::error(id, OutcomeLabel::Error, code, message);
            }
        }
        if gateway_gone {
            match gateway::orphaned(hub, id, inbox, &link, last_deadline).await {
                gateway::Orphan::Reattached(again) => {
                    match gateway::reattach(hub, id, out, again, &mut last_forwarded, &link).await {
                        Ok(sorting) => resync = sorting,
                        Err(ending) => return ending,
                    }
                    asked_resume = true;
                }
                gateway::Orphan::HandedOver => return Ending::silent(OutcomeLabel::HandedOver),
                gateway::Orphan::Abandoned => {
                    cancel_at_peer(&link, id).await;
                    return Ending::silent(OutcomeLabel::Cancelled);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
