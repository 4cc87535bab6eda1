//! bridge-agent: owns the WebSocket to the MCP bridge (connect, heartbeat, reconnect) and serves
//! gateways over a local Unix socket, relaying each request and its streamed answer.
#![forbid(unsafe_code)]

pub mod config;
mod health;
mod hub;
mod ipc_server;
mod link;
mod metrics;
mod request;
mod socket;
mod table;

use std::path::PathBuf;
use std::sync::Arc;

use provider_shared::bridge::codes;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};

pub use config::Config;
pub use socket::{bind_socket, remove_socket};

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
    let socket_path = listeners
        .ipc
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(ToOwned::to_owned));
    let grace = config.shutdown_grace();
    let hub = Arc::new(hub::Hub::new(config));
    let tracker = TaskTracker::new();

    let http_stop = CancellationToken::new();
    let http = tokio::spawn(
        health::serve(listeners.http, hub.clone(), http_stop.clone())
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
    if let Some(path) = socket_path {
        remove_socket(&path);
    }
    match failure {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(err) => Err(err),
    }
}
