//! bridge-agent: owns the WebSocket to the MCP bridge (connect, heartbeat, reconnect) and serves
//! gateways over a local Unix socket, relaying each request and its streamed answer.
#![forbid(unsafe_code)]

pub mod config;
mod health;
mod ipc_server;
mod link;
mod metrics;
mod request;
mod socket;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use provider_shared::bridge::{codes, BridgeFrame};
use provider_shared::ipc::{BridgeStatus, LinkState};
use provider_shared::routes::RouteTable;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};

pub use config::Config;
pub use socket::{bind_socket, remove_socket};

use ipc_server::ConnId;
use request::RequestEvent;

/// Everything that ends bridge-agent (or stops it starting).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("another bridge-agent is already listening on {}", .0.display())]
    AlreadyListening(PathBuf),
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("gave up on the MCP bridge at {url} after {attempts} failed connection attempts (last: {last})")]
    ReconnectExhausted {
        url: String,
        attempts: u64,
        last: String,
    },
    #[error("internal task failed: {0}")]
    Task(String),
}

/// The already-bound sockets bridge-agent serves on.
pub struct Listeners {
    /// Gateways connect here: bound at `BRIDGE_SOCKET` by [`bind_socket`], removed from there at
    /// the end.
    pub ipc: UnixListener,
    /// `/health` and `/metrics`.
    pub http: TcpListener,
}

/// Runs until `shutdown` (then `Ok`) or until the bridge stays unreachable for
/// `RECONNECT_ATTEMPTS` attempts in a row (then an error, for the supervisor to restart us).
/// Either way every request gets its result, and the socket file is removed.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    provider_shared::telemetry::metrics();
    metrics::describe();
    // Not the listener's own address: `bind_socket` binds in a staging directory and links the
    // socket into place, so only the configured path names it now.
    let socket_path = config.bridge_socket.clone();
    let grace = config.shutdown_grace();
    let hub = Arc::new(Hub::new(config));
    let tracker = TaskTracker::new();

    let http_stop = CancellationToken::new();
    let http = tokio::spawn(
        health::serve_health(listeners.http, hub.clone(), http_stop.clone())
            .instrument(info_span!("health")),
    );
    tracker.spawn(
        ipc_server::accept_loop(hub.clone(), listeners.ipc, tracker.clone())
            .instrument(info_span!("ipc")),
    );
    let mut link = tokio::spawn(link::supervise(hub.clone()).instrument(info_span!("link")));

    let failure = tokio::select! {
        _ = shutdown.cancelled() => None,
        res = &mut link => Some(match res {
            Ok(Ok(())) => Error::Task("the link supervisor stopped unexpectedly".into()),
            Ok(Err(err)) => err,
            Err(join) => Error::Task(join.to_string()),
        }),
    };

    hub.draining.cancel();
    hub.request_tasks.close();
    match &failure {
        None => {
            tracing::info!(in_flight = hub.requests.len(), ?grace, "shutting down");
            if tokio::time::timeout(grace, hub.request_tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    in_flight = hub.requests.len(),
                    "grace period over; ending requests"
                );
                hub.stop_requests(codes::SHUTTING_DOWN, "bridge-agent is shutting down".into());
            }
        }
        Some(err) => {
            tracing::error!(%err, "giving up");
            hub.stop_requests(codes::AGENT_UNAVAILABLE, err.to_string());
        }
    }
    hub.request_tasks.wait().await;
    // Requests are answered: now close the WebSocket and the gateway connections.
    hub.closing.cancel();
    if failure.is_none() {
        if let Err(err) = link.await {
            tracing::warn!(%err, "link task failed");
        }
    }
    tracker.close();
    tracker.wait().await;
    http_stop.cancel();
    let _ = http.await;
    remove_socket(&socket_path);
    match failure {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(err) => Err(err),
    }
}

/// The current WebSocket connection, as request tasks see it.
#[derive(Debug, Clone)]
pub enum CurrentWebSocket {
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

impl CurrentWebSocket {
    pub fn generation(&self) -> Option<u64> {
        match self {
            CurrentWebSocket::Down => None,
            CurrentWebSocket::Up { generation, .. } => Some(*generation),
        }
    }
}

/// State shared by the link, the gateway connections, the request tasks and the health endpoint.
pub struct Hub {
    pub config: Config,
    pub started: Instant,
    /// What gateways and /health are told; every change goes out as an IPC `status`.
    pub status: watch::Sender<BridgeStatus>,
    pub link: watch::Sender<CurrentWebSocket>,
    /// Where the bridge's frames for each request go, and which gateway connection sent it.
    pub requests: RouteTable<RequestEvent, ConnId>,
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
            link: watch::Sender::new(CurrentWebSocket::Down),
            requests: RouteTable::new(buffer_bytes),
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
