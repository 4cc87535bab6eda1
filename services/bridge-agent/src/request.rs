//! Serving one request: wait for the bridge, send `model_invoke` (or `model_resume`), relay
//! chunks, carry the request over to a new WebSocket when the old one drops (protocol 2), and
//! answer the gateway with exactly one `result`, whatever happens.
use std::sync::Arc;
use std::time::{Duration, Instant};

use provider_shared::bridge::{
    codes, BridgeFrame, ModelInvoke, ModelResult, Outcome as Status, StreamChunk,
    RESUME_PROTOCOL_VERSION,
};
use provider_shared::ipc::IpcFrame;
use provider_shared::routes::{Routed, Ticket};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout_at};

use crate::metrics::{self, Outcome};
use crate::{CurrentWebSocket, Hub};

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
    outcome: Outcome,
}

impl Ending {
    fn error(id: &str, outcome: Outcome, code: &str, message: impl Into<String>) -> Self {
        Ending {
            result: Some(ModelResult::error(id, code, message)),
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
    out: mpsc::Sender<IpcFrame>,
) {
    let received = Instant::now();
    let ending = relay(&hub, &id, start, &mut inbox, &out).await;
    // Forget the id before answering, so the gateway may reuse it as soon as it hears back.
    hub.requests.remove(&id, ticket);
    metrics::gauge_in_flight(hub.requests.len());
    metrics::count_request(ending.outcome);
    ::metrics::histogram!(metrics::REQUEST_DURATION).record(received.elapsed().as_secs_f64());
    tracing::debug!(outcome = ending.outcome.as_str(), "request ended");
    if let Some(result) = ending.result {
        // A closed connection has nobody left to tell.
        let _ = to_gateway(&out, IpcFrame::Result(result), hub.hard_stop.cancelled()).await;
    }
}

/// The WebSocket a request is on.
struct OnLink {
    generation: u64,
    tx: mpsc::Sender<BridgeFrame>,
    protocol: u32,
    max_frame_bytes: u64,
}

async fn relay(
    hub: &Hub,
    id: &str,
    start: Start,
    inbox: &mut Inbox,
    out: &mpsc::Sender<IpcFrame>,
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
    let mut link = match wait_for_link(hub, id, inbox, wait_until).await {
        Ok(link) => link,
        Err(Waited::Ended(ending)) => return ending,
        Err(Waited::TimedOut) => return unavailable(hub, id),
    };
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
    let mut link_rx = hub.link.subscribe();
    // Made once for the whole answer: the deadlines do not move, and rebuilding these on every
    // chunk would cost a timer registration and a waiter each time.
    let first_timeout = sleep_until(first_deadline.into());
    let last_timeout = sleep_until(last_deadline.into());
    let stopped = hub.hard_stop.cancelled();
    tokio::pin!(first_timeout, last_timeout, stopped);
    loop {
        tokio::select! {
            // Frames already received win over a disconnect noticed at the same moment.
            biased;
            event = inbox.recv() => match event {
                Some(RequestEvent::Chunk(chunk)) => {
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
                    if !to_gateway(out, IpcFrame::Chunk(chunk), &mut stopped).await {
                        cancel_at_peer(&link, id).await;
                        return Ending { result: None, outcome: Outcome::Cancelled };
                    }
                }
                Some(RequestEvent::Result(result)) => {
                    let unknown = asked_resume.then(|| unknown_to_bridge(&result, &mut fallback));
                    if let Some(invoke) = unknown.flatten() {
                        asked_resume = false;
                        tracing::info!("the bridge never got this request; sending it afresh");
                        hub.requests.reopen(id);
                        if link.tx.send(BridgeFrame::ModelInvoke(invoke)).await.is_err() {
                            return disconnected(id);
                        }
                        continue;
                    }
                    if !first_seen {
                        first_chunk(sent);
                    }
                    let outcome = match result.outcome {
                        Status::Ok { .. } => Outcome::Ok,
                        Status::Error { .. } => Outcome::Error,
                    };
                    return Ending { result: Some(result), outcome };
                }
                Some(RequestEvent::Cancel) => {
                    cancel_at_peer(&link, id).await;
                    return Ending::error(id, Outcome::Cancelled, codes::CANCELLED,
                        "cancelled by the gateway");
                }
                Some(RequestEvent::GatewayGone) | None => {
                    cancel_at_peer(&link, id).await;
                    return Ending { result: None, outcome: Outcome::Cancelled };
                }
                Some(RequestEvent::Overflow) => {
                    cancel_at_peer(&link, id).await;
                    return Ending::error(id, Outcome::Error, codes::SLOW_CLIENT, format!(
                        "the gateway fell more than {} bytes (LOCAL_PROVIDER_STREAM_BUFFER_BYTES) behind this answer",
                        hub.config.stream_buffer_bytes()));
                }
            },
            () = link_gone(&mut link_rx, link.generation) => {
                match carry_over(hub, id, &link, inbox, last_forwarded, last_deadline).await {
                    Ok(next) => {
                        link = next;
                        asked_resume = true;
                    }
                    Err(ending) => return ending,
                }
            }
            () = &mut first_timeout, if !first_seen => {
                cancel_at_peer(&link, id).await;
                let secs = hub.config.request_timeout().as_secs_f64();
                return Ending::error(id, Outcome::Timeout, codes::REQUEST_TIMEOUT,
                    format!("the agent did not start answering within {secs}s"));
            }
            () = &mut last_timeout => {
                cancel_at_peer(&link, id).await;
                let secs = hub.config.response_timeout().as_secs_f64();
                return Ending::error(id, Outcome::Timeout, codes::RESPONSE_TIMEOUT,
                    format!("the agent did not finish answering within {secs}s"));
            }
            () = &mut stopped => {
                cancel_at_peer(&link, id).await;
                let (code, message) = hub.stop_reason();
                return Ending::error(id, Outcome::Error, code, message);
            }
        }
    }
}

/// A failed result for a resume of a request the bridge does not hold, while the request itself is
/// still kept: the request to send afresh.
fn unknown_to_bridge(
    result: &ModelResult,
    fallback: &mut Option<ModelInvoke>,
) -> Option<ModelInvoke> {
    match &result.outcome {
        // `withdrawn`: the bridge had it and dropped it (its early chunks were gone), so sending
        // it afresh would start the answer over under an id the editor already saw fail.
        Status::Error { error }
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

/// The WebSocket the request was on dropped: with a bridge that resumes (protocol 2), waits up
/// to `RESUME_GRACE` (never past the request's deadline) for the next one and asks it to carry
/// on after the last chunk relayed; otherwise the request ends with `bridge_disconnected`.
async fn carry_over(
    hub: &Hub,
    id: &str,
    old: &OnLink,
    inbox: &mut Inbox,
    after_chunk_index: Option<u64>,
    deadline: Instant,
) -> Result<OnLink, Ending> {
    let grace = hub.config.resume_grace();
    if old.protocol < RESUME_PROTOCOL_VERSION || grace.is_zero() {
        return Err(disconnected(id));
    }
    let until = (Instant::now() + grace).min(deadline);
    let link = match wait_for_link(hub, id, inbox, until).await {
        Ok(link) => link,
        Err(Waited::Ended(ending)) => return Err(ending),
        Err(Waited::TimedOut) => return Err(disconnected(id)),
    };
    if link.protocol < RESUME_PROTOCOL_VERSION {
        return Err(not_resumable(id, link.protocol));
    }
    let resume = BridgeFrame::ModelResume {
        id: id.to_owned(),
        after_chunk_index,
    };
    if link.tx.send(resume).await.is_err() {
        return Err(disconnected(id));
    }
    ::metrics::counter!(metrics::RESUMED).increment(1);
    tracing::info!(?after_chunk_index, "request resumed on the new WebSocket");
    Ok(link)
}

async fn cancel_at_peer(link: &OnLink, id: &str) {
    // The connection may be gone already; then there is nothing to cancel.
    let _ = link
        .tx
        .send(BridgeFrame::ModelCancel { id: id.to_owned() })
        .await;
}

/// Queues `frame` for the gateway; false when it is gone, or when its queue stays full after
/// requests are being ended (`stopped`, `Hub::hard_stop`: a stuck gateway must not hold up
/// shutdown).
async fn to_gateway(
    out: &mpsc::Sender<IpcFrame>,
    frame: IpcFrame,
    stopped: impl std::future::Future<Output = ()>,
) -> bool {
    tokio::select! {
        biased;
        sent = out.send(frame) => sent.is_ok(),
        () = stopped => false,
    }
}

/// Resolves once connection `generation` is no longer the link.
async fn link_gone(link_rx: &mut watch::Receiver<CurrentWebSocket>, generation: u64) {
    let _ = link_rx
        .wait_for(|l| l.generation() != Some(generation))
        .await;
}

fn first_chunk(sent: Instant) {
    ::metrics::histogram!(metrics::TIME_TO_FIRST_CHUNK).record(sent.elapsed().as_secs_f64());
}

fn disconnected(id: &str) -> Ending {
    Ending::error(
        id,
        Outcome::Disconnected,
        codes::BRIDGE_DISCONNECTED,
        "the MCP bridge connection dropped while the request was in flight",
    )
}

fn not_resumable(id: &str, protocol: u32) -> Ending {
    Ending::error(
        id,
        Outcome::Disconnected,
        codes::BRIDGE_DISCONNECTED,
        format!("the connection to the agent broke mid-answer, and the MCP bridge speaks protocol {protocol}, which cannot resume a request"),
    )
}

fn too_large(id: &str, size: u64, limit: u64) -> Ending {
    Ending::error(
        id,
        Outcome::Error,
        codes::REQUEST_TOO_LARGE,
        format!("this request is {size} bytes once encoded for the MCP bridge, more than the {limit} bytes the bridge accepts in one frame (LOCAL_PROVIDER_MAX_FRAME_BYTES); shorten the conversation or its attachments"),
    )
}

enum Waited {
    Ended(Ending),
    TimedOut,
}

/// Waits until `until` for the WebSocket to be up.
async fn wait_for_link(
    hub: &Hub,
    id: &str,
    inbox: &mut Inbox,
    until: Instant,
) -> Result<OnLink, Waited> {
    let mut link_rx = hub.link.subscribe();
    let up = timeout_at(until.into(), async {
        let link = link_rx
            .wait_for(|l| matches!(l, CurrentWebSocket::Up { .. }))
            .await
            .map(|guard| guard.clone());
        match link {
            Ok(CurrentWebSocket::Up {
                generation,
                tx,
                protocol,
                max_frame_bytes,
            }) => Some(OnLink {
                generation,
                tx,
                protocol,
                max_frame_bytes,
            }),
            _ => None,
        }
    });
    let stopped = hub.hard_stop.cancelled();
    tokio::pin!(up, stopped);
    loop {
        tokio::select! {
            link = &mut up => {
                return match link {
                    Ok(Some(link)) => Ok(link),
                    _ => Err(Waited::TimedOut),
                };
            }
            event = inbox.recv() => match event {
                Some(RequestEvent::Cancel) => {
                    return Err(Waited::Ended(Ending::error(id, Outcome::Cancelled, codes::CANCELLED,
                        "cancelled by the gateway")));
                }
                Some(RequestEvent::GatewayGone) | None => {
                    return Err(Waited::Ended(Ending { result: None, outcome: Outcome::Cancelled }));
                }
                // Nothing is being answered on a link that is down, so these are not ours.
                Some(RequestEvent::Chunk(_) | RequestEvent::Result(_) | RequestEvent::Overflow) => {
                    metrics::frame_dropped("not_sent");
                }
            },
            () = &mut stopped => {
                let (code, message) = hub.stop_reason();
                return Err(Waited::Ended(Ending::error(id, Outcome::Error, code, message)));
            }
        }
    }
}

fn unavailable(hub: &Hub, id: &str) -> Ending {
    Ending::error(
        id,
        Outcome::Unavailable,
        codes::AGENT_UNAVAILABLE,
        format!(
            "not connected to the MCP bridge at {} (waited {}s); bridge-agent is reconnecting",
            hub.config.mcp_bridge_url,
            hub.config.connection_timeout().as_secs_f64()
        ),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use provider_shared::bridge::{ModelMeta, Payload};

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
                messages: vec![],
                parameters: serde_json::Map::new(),
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
        if let Status::Error { error } = &mut refused.outcome {
            error.details = Some(serde_json::json!({ "withdrawn": true }));
        }
        let mut fallback = Some(invoke());
        assert!(unknown_to_bridge(&refused, &mut fallback).is_none());
    }
}
