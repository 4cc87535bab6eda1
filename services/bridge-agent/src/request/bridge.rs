//! The bridge side of a request: waiting for the WebSocket, carrying the request over to a new
//! one, cancelling it there, and the errors that end it on the bridge's account.
use std::time::Instant;

use provider_shared::bridge::{
    codes, BridgeFrame, ModelInvoke, ModelResult, Outcome, RESUME_PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout_at;

use super::{Ending, Inbox, Reattach, RequestEvent};
use crate::metrics::{self, OutcomeLabel};
use crate::{CurrentWebSocket, Hub};

/// The WebSocket a request is on.
pub(super) struct OnLink {
    pub generation: u64,
    pub tx: mpsc::Sender<BridgeFrame>,
    pub protocol: u32,
    pub max_frame_bytes: u64,
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

/// The WebSocket the request was on dropped: with a bridge that resumes (protocol 2), waits up
/// to `RESUME_GRACE` (never past the request's deadline) for the next one, for the caller to
/// ask it to carry on ([`resume_on`]); otherwise the request ends with `bridge_disconnected`.
pub(super) async fn carry_over(
    hub: &Hub,
    id: &str,
    old: &OnLink,
    inbox: &mut Inbox,
    deadline: Instant,
    pending: &mut Option<Reattach>,
) -> Result<OnLink, Ending> {
    let grace = hub.config.resume_grace();
    if old.protocol < RESUME_PROTOCOL_VERSION || grace.is_zero() {
        return Err(disconnected(id));
    }
    let until = (Instant::now() + grace).min(deadline);
    let link = match wait_for_link(hub, id, inbox, until, pending).await {
        Ok(link) => link,
        Err(Waited::Ended(ending)) => return Err(ending),
        Err(Waited::TimedOut) => return Err(disconnected(id)),
    };
    if link.protocol < RESUME_PROTOCOL_VERSION {
        return Err(not_resumable(id, link.protocol));
    }
    Ok(link)
}

/// Asks the bridge on `link`, a connection other than the one the request was sent on, to carry
/// on after `after_chunk_index`.
pub(super) async fn resume_on(
    link: &OnLink,
    id: &str,
    after_chunk_index: Option<u64>,
) -> Result<(), Ending> {
    let resume = BridgeFrame::ModelResume {
        id: id.to_owned(),
        after_chunk_index,
    };
    if link.tx.send(resume).await.is_err() {
        return Err(disconnected(id));
    }
    ::metrics::counter!(metrics::RESUMED).increment(1);
    tracing::info!(?after_chunk_index, "request resumed on the new WebSocket");
    Ok(())
}

pub(super) async fn cancel_at_peer(link: &OnLink, id: &str) {
    // The connection may be gone already; then there is nothing to cancel.
    let _ = link
        .tx
        .send(BridgeFrame::ModelCancel { id: id.to_owned() })
        .await;
}

/// Resolves once connection `generation` is no longer the link.
pub(super) async fn link_gone(link_rx: &mut watch::Receiver<CurrentWebSocket>, generation: u64) {
    let _ = link_rx
        .wait_for(|l| l.generation() != Some(generation))
        .await;
}

pub(super) fn first_chunk(sent: Instant) {
    ::metrics::histogram!(metrics::TIME_TO_FIRST_CHUNK).record(sent.elapsed().as_secs_f64());
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

pub(super) enum Waited {
    Ended(Ending),
    TimedOut,
}

/// Waits until `until` for the WebSocket to be up. A gateway that takes the request up again
/// meanwhile leaves its [`Reattach`] in `pending`.
pub(super) async fn wait_for_link(
    hub: &Hub,
    id: &str,
    inbox: &mut Inbox,
    until: Instant,
    pending: &mut Option<Reattach>,
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
    let handing_over = hub.hand_over.cancelled();
    tokio::pin!(up, stopped, handing_over);
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
                    return Err(Waited::Ended(Ending::error(id, OutcomeLabel::Cancelled, codes::CANCELLED,
                        "cancelled by the gateway")));
                }
                Some(RequestEvent::GatewayGone) | None => {
                    return Err(Waited::Ended(Ending::silent(OutcomeLabel::Cancelled)));
                }
                Some(RequestEvent::Reattach(again)) => *pending = Some(again),
                // Nothing is being answered on a link that is down, so these are not ours.
                Some(RequestEvent::Chunk(_) | RequestEvent::Result(_) | RequestEvent::Overflow) => {
                    metrics::frame_dropped("not_sent");
                }
            },
            () = &mut handing_over => {
                return Err(Waited::Ended(Ending::silent(OutcomeLabel::HandedOver)));
            }
            () = &mut stopped => {
                let (code, message) = hub.stop_reason();
                return Err(Waited::Ended(Ending::error(id, OutcomeLabel::Error, code, message)));
            }
        }
    }
}

pub(super) fn unavailable(hub: &Hub, id: &str) -> Ending {
    Ending::error(
        id,
        OutcomeLabel::Unavailable,
        codes::AGENT_UNAVAILABLE,
        format!(
            "not connected to the MCP bridge at {} (waited {}s); bridge-agent is reconnecting",
            hub.config.mcp_bridge_url,
            hub.config.connection_timeout().as_secs_f64()
        ),
    )
}
