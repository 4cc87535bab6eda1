//! The gateway side of a request: queueing its frames for the gateway's connection, and keeping
//! the request when that connection drops while bridge-agent stays up. The gateway reconnects and
//! sends IPC `resume` for it; the request's task, still running, is re-attached to the new
//! connection ([`Reattach`]) and asks mcp-bridge to replay what came after the last chunk the
//! gateway has. That replay comes on the WebSocket the request's live frames already come on, so
//! frames sent before mcp-bridge handled the resume may arrive ahead of it; [`Resync`] sorts them
//! out.
use std::future::Future;
use std::time::Instant;

use provider_shared::bridge::{BridgeFrame, RESUME_PROTOCOL_VERSION};
use provider_shared::ipc::IpcFrame;
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::bridge::{not_resumable, OnLink};
use super::{Ending, Inbox, RequestEvent};
use crate::metrics;
use crate::Hub;

/// What became of a frame for the gateway.
pub(super) enum Sent {
    Yes,
    /// Its connection is gone.
    Gone,
    /// Requests are being ended (`Hub::hard_stop`) and its queue stayed full: a stuck gateway
    /// must not hold up shutdown.
    Stopped,
}

/// Queues `frame` for the gateway, waiting while its connection's queue is full.
pub(super) async fn send(
    out: &mpsc::Sender<IpcFrame>,
    frame: IpcFrame,
    stopped: impl Future<Output = ()>,
) -> Sent {
    tokio::select! {
        biased;
        sent = out.send(frame) => if sent.is_ok() { Sent::Yes } else { Sent::Gone },
        () = stopped => Sent::Stopped,
    }
}

/// A gateway connection takes a request up again: where its frames go now, and the last chunk
/// the gateway has.
#[derive(Debug)]
pub struct Reattach {
    pub out: mpsc::Sender<IpcFrame>,
    pub after_chunk_index: Option<u64>,
}

/// How the wait of a request whose gateway left ended.
pub(super) enum Orphan {
    Reattached(Reattach),
    /// bridge-agent is stopping in order: the next one takes the gateway's resume.
    HandedOver,
    /// No gateway took it up within `RESUME_GRACE` (or it cannot be resumed): cancel it.
    Abandoned,
}

/// The gateway's connection closed: waits up to `RESUME_GRACE` (never past `deadline`) for a
/// gateway to take the request up again. What the bridge sends meanwhile is dropped; the bridge
/// replays it after the resume.
pub(super) async fn orphaned(
    hub: &Hub,
    id: &str,
    inbox: &mut Inbox,
    link: &OnLink,
    deadline: Instant,
) -> Orphan {
    let grace = hub.config.resume_grace();
    if grace.is_zero() || link.protocol < RESUME_PROTOCOL_VERSION {
        return Orphan::Abandoned;
    }
    tracing::info!(
        ?grace,
        "the gateway's connection closed; keeping the request for its resume"
    );
    let until = sleep_until((Instant::now() + grace).min(deadline).into());
    let stopped = hub.hard_stop.cancelled();
    let handing_over = hub.hand_over.cancelled();
    tokio::pin!(until, stopped, handing_over);
    loop {
        tokio::select! {
            biased;
            event = inbox.recv() => match event {
                Some(RequestEvent::Reattach(again)) => return Orphan::Reattached(again),
                Some(RequestEvent::Chunk(_) | RequestEvent::Result(_) | RequestEvent::Overflow) => {
                    metrics::frame_dropped("not_sent");
                }
                // Signals of the connection that left.
                Some(RequestEvent::Cancel | RequestEvent::GatewayGone) => {}
                None => return Orphan::Abandoned,
            },
            () = &mut until => {
                tracing::info!(%id, "no gateway resumed the request within RESUME_GRACE; cancelling it");
                return Orphan::Abandoned;
            }
            () = &mut handing_over => return Orphan::HandedOver,
            () = &mut stopped => return Orphan::Abandoned,
        }
    }
}

/// Re-attaches the request to `again`'s connection: its frames go there from now on, and the
/// bridge replays what came after the gateway's last chunk. `last_forwarded` becomes that chunk.
/// Returns how to sort out the replay, or `None` when none is needed.
pub(super) async fn reattach(
    hub: &Hub,
    id: &str,
    out: &mut mpsc::Sender<IpcFrame>,
    again: Reattach,
    last_forwarded: &mut Option<u64>,
    link: &OnLink,
) -> Result<Option<Resync>, Ending> {
    *out = again.out;
    let after = again.after_chunk_index;
    ::metrics::counter!(metrics::REATTACHED).increment(1);
    tracing::info!(
        after_chunk_index = ?after,
        relayed = ?*last_forwarded,
        "request taken up again by a new gateway connection"
    );
    let beyond = match (*last_forwarded, after) {
        (Some(relayed), Some(has)) => relayed > has,
        (relayed, has) => relayed.is_some() && has.is_none(),
    };
    *last_forwarded = after;
    if link.protocol < RESUME_PROTOCOL_VERSION {
        // Nothing can be replayed: only a gateway that has every chunk relayed can go on.
        return if beyond {
            Err(not_resumable(id, link.protocol))
        } else {
            Ok(None)
        };
    }
    // From here the request's result does not end it until the replay is sorted out.
    hub.requests.replay(id, true);
    let resume = BridgeFrame::ModelResume {
        id: id.to_owned(),
        after_chunk_index: after,
    };
    // A link that is gone is noticed by the caller, which resumes on the next one.
    let _ = link.tx.send(resume).await;
    Ok(Some(Resync::new(after, beyond)))
}

/// Sorts out the frames of a request after a `model_resume` on the connection its live frames
/// come on: the replay starts with the chunk after the resume point; live frames the bridge sent
/// before it handled the resume may come first, and the replay repeats them.
#[derive(Debug)]
pub(super) struct Resync {
    /// The chunk the replay starts with.
    expect: u64,
    /// A chunk past the resume point exists (relayed to the old connection, or seen since): a
    /// result that comes before the replay came live, and the replay repeats it.
    beyond: bool,
}

impl Resync {
    pub(super) fn new(after: Option<u64>, beyond: bool) -> Self {
        Self {
            expect: after.map_or(0, |a| a + 1),
            beyond,
        }
    }

    /// Whether chunk `index` is the one the replay starts with (or the stream goes on from the
    /// resume point without one): then it is relayed and the sorting out is over. Any other
    /// chunk is dropped (the replay brings it in order).
    pub(super) fn take_chunk(&mut self, index: u64) -> bool {
        if index == self.expect {
            return true;
        }
        if index > self.expect {
            self.beyond = true;
        }
        false
    }

    /// Whether a result that comes now ends the request: an error always (a refused resume says
    /// why), a success only when no chunk past the resume point exists.
    pub(super) fn take_result(&self, ok: bool) -> bool {
        !ok || !self.beyond
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_frames_ahead_of_the_replay_are_dropped_and_the_replay_is_taken() {
        // The gateway has chunks up to 7; chunks up to 10 were relayed to its old connection.
        let mut sorting = Resync::new(Some(7), true);
        assert!(!sorting.take_chunk(11), "live, ahead of the replay");
        assert!(
            !sorting.take_result(true),
            "the live result: the replay repeats it"
        );
        assert!(sorting.take_chunk(8), "the replay begins");
    }

    #[test]
    fn with_nothing_past_the_resume_point_the_stream_goes_on() {
        let mut sorting = Resync::new(Some(7), false);
        assert!(!sorting.take_chunk(7), "a repeat");
        assert!(sorting.take_chunk(8));
        let sorting = Resync::new(Some(7), false);
        assert!(
            sorting.take_result(true),
            "the answer ended at the resume point"
        );
        let mut sorting = Resync::new(None, false);
        assert!(!sorting.take_chunk(3));
        assert!(
            !sorting.take_result(true),
            "chunk 3 exists, so the replay repeats the result"
        );
        assert!(sorting.take_result(false), "a refused resume ends it");
        assert!(sorting.take_chunk(0));
    }
}
