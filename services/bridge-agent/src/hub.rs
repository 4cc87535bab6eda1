//! State shared by the link, the gateway connections and the health endpoint.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use provider_shared::bridge::BridgeFrame;
use provider_shared::ipc::{BridgeStatus, LinkState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics;
use crate::table::RequestTable;

/// The current WebSocket connection, as request tasks see it.
#[derive(Debug, Clone)]
pub enum Link {
    Down,
    /// Frames sent on `tx` go out on connection number `generation`.
    Up {
        generation: u64,
        tx: mpsc::Sender<BridgeFrame>,
        /// The bridge protocol version agreed in `hello`/`welcome`.
        protocol: u32,
        /// The largest frame the bridge takes on this connection.
        max_frame_bytes: u64,
    },
}

impl Link {
    pub fn generation(&self) -> Option<u64> {
        match self {
            Link::Down => None,
            Link::Up { generation, .. } => Some(*generation),
        }
    }
}

pub struct Hub {
    pub config: Config,
    pub started: Instant,
    /// What gateways and /health are told; every change goes out as an IPC `status`.
    pub status: watch::Sender<BridgeStatus>,
    pub link: watch::Sender<Link>,
    pub requests: RequestTable,
    /// Request tasks only, so shutdown can wait for them apart from everything else.
    pub request_tasks: TaskTracker,
    pub gateway_connections: AtomicUsize,
    /// Shutdown began: accept no new gateway connections or requests.
    pub draining: CancellationToken,
    /// End every request now, with [`Hub::stop_reason`].
    pub hard_stop: CancellationToken,
    /// Requests are done: close the WebSocket and the gateway connections.
    pub closing: CancellationToken,
    stop_reason: OnceLock<(&'static str, String)>,
}

impl Hub {
    pub fn new(config: Config) -> Self {
        let buffer_bytes = config.stream_buffer_bytes();
        Self {
            config,
            started: Instant::now(),
            status: watch::Sender::new(BridgeStatus::disconnected()),
            link: watch::Sender::new(Link::Down),
            requests: RequestTable::new(buffer_bytes),
            request_tasks: TaskTracker::new(),
            gateway_connections: AtomicUsize::new(0),
            draining: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            closing: CancellationToken::new(),
            stop_reason: OnceLock::new(),
        }
    }

    /// Ends every request now with error `code` (the first reason given wins).
    pub fn stop_requests(&self, code: &'static str, message: String) {
        let _ = self.stop_reason.set((code, message));
        self.hard_stop.cancel();
    }

    pub fn stop_reason(&self) -> (&'static str, String) {
        self.stop_reason.get().cloned().unwrap_or((
            provider_shared::bridge::codes::SHUTTING_DOWN,
            "bridge-agent is shutting down".into(),
        ))
    }

    pub fn set_state(&self, state: LinkState) {
        metrics::ws_connected(state == LinkState::Connected);
        self.status.send_if_modified(|s| {
            let changed = s.state != state;
            s.state = state;
            changed
        });
    }

    pub fn gateway_connected(&self) -> GatewayGuard<'_> {
        let n = self.gateway_connections.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gateway_connections(n);
        GatewayGuard(self)
    }

    pub fn gateway_count(&self) -> usize {
        self.gateway_connections.load(Ordering::SeqCst)
    }
}

/// Counts one open gateway connection while it lives.
pub struct GatewayGuard<'a>(&'a Hub);

impl Drop for GatewayGuard<'_> {
    fn drop(&mut self) {
        let n = self.0.gateway_connections.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gateway_connections(n);
    }
}
