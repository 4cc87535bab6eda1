//! bridge-agent: owns the WebSocket to the MCP bridge (connect, heartbeat, reconnect) and serves
//! gateways over a local Unix socket, routing each request and its streamed answer between the
//! two (`request/`).
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
use std::sync::Arc;
use std::time::Instant;

use provider_shared::bridge::codes;
use provider_shared::ipc::{BridgeStatus, LinkState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};

pub use config::Config;
pub use socket::{bind_socket, lock_path, OwnedSocket, TAKEOVER_WAIT};

use request::Requests;

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
    /// Gateways connect here (see [`bind_socket`]).
    pub ipc: OwnedSocket,
    /// `/health` and `/metrics`.
    pub http: TcpListener,
}

/// Runs until `shutdown` (then `Ok`) or until the bridge stays unreachable for
/// `RECONNECT_ATTEMPTS` attempts in a row (then an error, for the supervisor to restart us).
/// The socket is given up at once (file and lock, for the next bridge-agent). On `shutdown` the
/// requests in flight are handed over: they end here without a result, the gateway resumes each
/// at the next bridge-agent within `RESUME_GRACE`, as after a crash. Where they cannot be
/// resumed (a bridge of protocol 1, `RESUME_GRACE=0`) they get `SHUTDOWN_GRACE` to finish and end
/// with `shutting_down`; after an error every request ends with `agent_unavailable`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    provider_shared::telemetry::metrics();
    metrics::describe();
    let grace = config.shutdown_grace();
    let hub = Arc::new(Hub::new(config));
    let tracker = TaskTracker::new();

    let http_stop = CancellationToken::new();
    let http = tokio::spawn(
        health::serve_health(listeners.http, hub.clone(), http_stop.clone())
            .instrument(info_span!("health")),
    );
    tracker.spawn(request::run_timers(hub.clone()).instrument(info_span!("deadlines")));
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
    match &failure {
        None if hub.can_hand_over() => {
            tracing::info!(
                in_flight = hub.requests.len(),
                resume_grace = ?hub.config.resume_grace(),
                "shutting down: the requests in flight are left to the next bridge-agent, which the gateway resumes them at"
            );
            hub.hand_over.cancel();
            hub.requests.stop_all(None);
        }
        None => {
            tracing::info!(in_flight = hub.requests.len(), ?grace, "shutting down");
            if tokio::time::timeout(grace, hub.requests.drained())
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
    hub.requests.drained().await;
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
    match failure {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(err) => Err(err),
    }
}

/// The current WebSocket connection, as a stop sees it (the requests' own view of it is in
/// their table, `request/table.rs`).
#[derive(Debug, Clone)]
pub enum CurrentWebSocket {
    Down,
    Up {
        /// The bridge protocol version agreed in `hello`/`welcome`.
        protocol: u32,
    },
}

/// State shared by the link, the gateway connections, the deadline task and the health endpoint.
pub struct Hub {
    pub config: Config,
    pub started: Instant,
    /// What gateways and /health are told; every change goes out as an IPC `status`.
    pub status: watch::Sender<BridgeStatus>,
    pub link: watch::Sender<CurrentWebSocket>,
    /// The requests in flight: where the bridge's frames for each go (which gateway
    /// connection, none while it waits for a `resume`), and their state and deadlines.
    pub requests: Requests,
    pub gateway_connections: AtomicUsize,
    /// Shutdown began: accept no new gateway connections or requests.
    pub draining: CancellationToken,
    /// An orderly stop: requests end without a result or a cancel, for the next bridge-agent.
    pub hand_over: CancellationToken,
    /// Requests are done: close the WebSocket and the gateway connections.
    pub closing: CancellationToken,
}

impl Hub {
    pub fn new(config: Config) -> Self {
        Self {
            requests: Requests::new(&config),
            config,
            started: Instant::now(),
            status: watch::Sender::new(BridgeStatus::disconnected()),
            link: watch::Sender::new(CurrentWebSocket::Down),
            gateway_connections: AtomicUsize::new(0),
            draining: CancellationToken::new(),
            hand_over: CancellationToken::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Ends every request now with error `code`.
    pub fn stop_requests(&self, code: &'static str, message: String) {
        self.requests.stop_all(Some((code, message)));
    }

    /// Whether a stop can leave the requests to the next bridge-agent: the gateway and the
    /// bridge resume them (a WebSocket of protocol 2, or none yet; a resume grace).
    pub fn can_hand_over(&self) -> bool {
        let resumable = match &*self.link.borrow() {
            CurrentWebSocket::Up { protocol, .. } => {
                *protocol >= provider_shared::bridge::RESUME_PROTOCOL_VERSION
            }
            CurrentWebSocket::Down => true,
        };
        resumable && !self.config.resume_grace().is_zero()
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
