//! The gateway side of a request: the queue of the gateway connection that holds it, where its
//! frames are put straight from the WebSocket reader, and the sorting out of a replay after the
//! gateway took the request up again on a new connection (IPC `resume` while bridge-agent stayed
//! up). That replay comes on the WebSocket the request's live frames already come on, so frames
//! sent before mcp-bridge handled the resume may arrive ahead of it; [`Resync`] sorts them out.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use provider_shared::ipc::IpcFrame;
use tokio::sync::mpsc;

/// What a gateway connection's writer (`ipc_server.rs` `writer`) is handed. Never full: what it
/// holds is bounded per request instead ([`Outgoing::charged`]), so the WebSocket reader that
/// queues a chunk never waits for one slow gateway.
pub type GatewayOut = mpsc::UnboundedSender<Outgoing>;
pub type GatewayQueue = mpsc::UnboundedReceiver<Outgoing>;

/// A frame for a gateway, with the bytes it counts against its request's bound while it waits.
#[derive(Debug)]
pub struct Outgoing {
    frame: IpcFrame,
    charge: Option<(Arc<AtomicUsize>, usize)>,
}

impl Outgoing {
    pub fn plain(frame: IpcFrame) -> Self {
        Self {
            frame,
            charge: None,
        }
    }

    /// `frame`, counted as `bytes` in `queued` until the writer takes it.
    pub(super) fn charged(frame: IpcFrame, queued: &Arc<AtomicUsize>, bytes: usize) -> Self {
        queued.fetch_add(bytes, Ordering::Relaxed);
        Self {
            frame,
            charge: Some((queued.clone(), bytes)),
        }
    }

    /// Takes the frame out of the queue, giving its bytes back to its request.
    pub fn into_frame(mut self) -> IpcFrame {
        if let Some((queued, bytes)) = self.charge.take() {
            queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.frame
    }
}

/// A gateway connection that holds a request.
#[derive(Debug)]
pub(super) struct Holder {
    pub conn: crate::ipc_server::ConnId,
    pub out: GatewayOut,
}

/// Whether the gateway already had a chunk past `after` (relayed to it, or seen since): then a
/// result that comes live ahead of the replay is repeated by the replay.
pub(super) fn beyond(relayed: Option<u64>, after: Option<u64>) -> bool {
    match (relayed, after) {
        (Some(relayed), Some(has)) => relayed > has,
        (relayed, has) => relayed.is_some() && has.is_none(),
    }
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
