//! Serving one request: wait for the bridge, send `model_invoke`, relay chunks, and answer the
//! gateway with exactly one `result`, whatever happens.
use std::sync::Arc;
use std::time::{Duration, Instant};

use provider_shared::bridge::{codes, BridgeFrame, ModelInvoke, ModelResult, Outcome as Status};
use provider_shared::ipc::IpcFrame;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout};

use crate::hub::{Hub, Link};
use crate::metrics::{self, Outcome};
use crate::table::{Event, Ticket};

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

pub async fn serve(
    hub: Arc<Hub>,
    invoke: ModelInvoke,
    ticket: Ticket,
    mut events: mpsc::UnboundedReceiver<Event>,
    out: mpsc::Sender<IpcFrame>,
) {
    let id = invoke.id.clone();
    let received = Instant::now();
    let ending = relay(&hub, invoke, &mut events, &out).await;
    // Forget the id before answering, so the gateway may reuse it as soon as it hears back.
    hub.requests.remove(&id, ticket);
    metrics::count_request(ending.outcome);
    ::metrics::histogram!(metrics::REQUEST_DURATION).record(received.elapsed().as_secs_f64());
    tracing::debug!(outcome = ending.outcome.as_str(), "request ended");
    if let Some(result) = ending.result {
        // A closed connection has nobody left to tell.
        let _ = to_gateway(&hub, &out, IpcFrame::Result(result)).await;
    }
}

async fn relay(
    hub: &Hub,
    invoke: ModelInvoke,
    events: &mut mpsc::UnboundedReceiver<Event>,
    out: &mpsc::Sender<IpcFrame>,
) -> Ending {
    let id = invoke.id.clone();
    let (generation, tx) = match wait_for_link(hub, &id, events).await {
        Ok(link) => link,
        Err(ending) => return ending,
    };
    let sent = Instant::now();
    if tx.send(BridgeFrame::ModelInvoke(invoke)).await.is_err() {
        return disconnected(&id);
    }
    let first_deadline = sent + hub.config.request_timeout();
    let last_deadline = sent + hub.config.response_timeout();
    let mut first_seen = false;
    let mut link_rx = hub.link.subscribe();
    let cancel_at_peer = || async {
        // The connection may be gone already; then there is nothing to cancel.
        let _ = tx.send(BridgeFrame::ModelCancel { id: id.clone() }).await;
    };
    loop {
        tokio::select! {
            // Frames already received win over a disconnect noticed at the same moment.
            biased;
            event = events.recv() => match event {
                Some(Event::Chunk(chunk)) => {
                    if !first_seen {
                        first_seen = true;
                        first_chunk(sent);
                    }
                    if !to_gateway(hub, out, IpcFrame::Chunk(chunk)).await {
                        cancel_at_peer().await;
                        return Ending { result: None, outcome: Outcome::Cancelled };
                    }
                }
                Some(Event::Result(result)) => {
                    if !first_seen {
                        first_chunk(sent);
                    }
                    let outcome = match result.outcome {
                        Status::Ok { .. } => Outcome::Ok,
                        Status::Error { .. } => Outcome::Error,
                    };
                    return Ending { result: Some(result), outcome };
                }
                Some(Event::Cancel) => {
                    cancel_at_peer().await;
                    return Ending::error(&id, Outcome::Cancelled, codes::CANCELLED,
                        "cancelled by the gateway");
                }
                Some(Event::GatewayGone) | None => {
                    cancel_at_peer().await;
                    return Ending { result: None, outcome: Outcome::Cancelled };
                }
            },
            () = link_gone(&mut link_rx, generation) => {
                return disconnected(&id);
            }
            _ = sleep_until(first_deadline.into()), if !first_seen => {
                cancel_at_peer().await;
                let secs = hub.config.request_timeout().as_secs_f64();
                return Ending::error(&id, Outcome::Timeout, codes::REQUEST_TIMEOUT,
                    format!("the agent did not start answering within {secs}s"));
            }
            _ = sleep_until(last_deadline.into()) => {
                cancel_at_peer().await;
                let secs = hub.config.response_timeout().as_secs_f64();
                return Ending::error(&id, Outcome::Timeout, codes::RESPONSE_TIMEOUT,
                    format!("the agent did not finish answering within {secs}s"));
            }
            _ = hub.hard_stop.cancelled() => {
                cancel_at_peer().await;
                let (code, message) = hub.stop_reason();
                return Ending::error(&id, Outcome::Error, code, message);
            }
        }
    }
}

/// Queues `frame` for the gateway; false when it is gone, or when its queue stays full after
/// requests are being ended (a stuck gateway must not hold up shutdown).
async fn to_gateway(hub: &Hub, out: &mpsc::Sender<IpcFrame>, frame: IpcFrame) -> bool {
    tokio::select! {
        biased;
        sent = out.send(frame) => sent.is_ok(),
        _ = hub.hard_stop.cancelled() => false,
    }
}

/// Resolves once connection `generation` is no longer the link.
async fn link_gone(link_rx: &mut watch::Receiver<Link>, generation: u64) {
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

/// Waits up to `CONNECTION_TIMEOUT` for the WebSocket to be up.
async fn wait_for_link(
    hub: &Hub,
    id: &str,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<(u64, mpsc::Sender<BridgeFrame>), Ending> {
    let mut link_rx = hub.link.subscribe();
    let wait = hub.config.connection_timeout();
    let up = timeout(wait, async {
        let link = link_rx
            .wait_for(|l| matches!(l, Link::Up { .. }))
            .await
            .map(|guard| guard.clone());
        match link {
            Ok(Link::Up { generation, tx }) => Some((generation, tx)),
            _ => None,
        }
    });
    tokio::pin!(up);
    loop {
        tokio::select! {
            link = &mut up => {
                return match link {
                    Ok(Some(link)) => Ok(link),
                    _ => Err(unavailable(hub, id, wait)),
                };
            }
            event = events.recv() => match event {
                Some(Event::Cancel) => {
                    return Err(Ending::error(id, Outcome::Cancelled, codes::CANCELLED,
                        "cancelled by the gateway"));
                }
                Some(Event::GatewayGone) | None => {
                    return Err(Ending { result: None, outcome: Outcome::Cancelled });
                }
                // Nothing was sent yet, so these are not ours to relay.
                Some(Event::Chunk(_) | Event::Result(_)) => {
                    metrics::frame_dropped("not_sent");
                }
            },
            _ = hub.hard_stop.cancelled() => {
                let (code, message) = hub.stop_reason();
                return Err(Ending::error(id, Outcome::Error, code, message));
            }
        }
    }
}

fn unavailable(hub: &Hub, id: &str, waited: Duration) -> Ending {
    Ending::error(
        id,
        Outcome::Unavailable,
        codes::AGENT_UNAVAILABLE,
        format!(
            "not connected to the MCP bridge at {} (waited {}s); bridge-agent is reconnecting",
            hub.config.mcp_bridge_url,
            waited.as_secs_f64()
        ),
    )
}
