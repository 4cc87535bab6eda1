//! mcp-bridge: the peer of bridge-agent on `:8787` and an MCP server for the Cursor agent. Editor
//! requests arrive on bridge-agent's WebSocket, wait in a queue, are leased to the agent through
//! MCP tools, and its answers go back as chunks and one result.
#![forbid(unsafe_code)]

mod activity;
mod answer;
mod app;
mod auth;
mod broker;
mod caller;
pub mod config;
mod conversation;
mod described;
mod mcp;
mod metrics;
mod queue;
pub mod relay;
mod resume;
mod sampling;
mod shared_queue;
mod state;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};

pub use config::Config;

/// Everything that stops mcp-bridge (or its start).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("audit log {}: {source}", path.display())]
    Audit {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("stdio relay: {0}")]
    Relay(String),
    #[error("the request queue on Redis ({address}): {message}")]
    Queue { address: String, message: String },
}

/// Serves on `listener` until `shutdown`. Queued requests then end at once with
/// `shutting_down`; leased ones get `SHUTDOWN_GRACE` to be answered.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    provider_shared::telemetry::metrics();
    metrics::describe();
    provider_shared::audit::describe_metrics();
    let (audit, audit_writer) = provider_shared::audit::Audit::open(
        config.audit_log.as_deref(),
        "mcp-bridge",
        config.audit_rotation,
    )
    .await
    .map_err(|source| Error::Audit {
        path: config.audit_log.clone().unwrap_or_default(),
        source,
    })?;
    let grace = config.shutdown_grace;
    let limits = config.connections.clone();
    let shared = match &config.queue {
        config::QueueKind::Memory => None,
        config::QueueKind::Redis(settings) => {
            let queue = shared_queue::SharedQueue::new(
                settings.clone(),
                config.lease_timeout,
                config.resume_grace,
            )?;
            tracing::info!(redis = %queue.address(), consumer = %queue.instance, "the request queue is on Redis");
            Some(Arc::new(queue))
        }
    };
    let app = Arc::new(state::App {
        bridge_token: auth::Token::new(config.bridge_token.as_ref()),
        http_token: auth::Token::new(config.http_token.as_ref()),
        broker: Arc::new(broker::Broker::new(config, audit, shared.clone())),
        bridge_id: format!("mcp-bridge/{}", provider_shared::VERSION),
        tasks: TaskTracker::new(),
        closing: CancellationToken::new(),
    });
    let broker = app.broker.clone();
    let queue_tasks = shared.as_ref().map(|q| q.start(&broker));
    let sweeper = tokio::spawn({
        let broker = broker.clone();
        async move { broker.sweep_leases().await }.instrument(info_span!("leases"))
    });
    let mcp_stop = CancellationToken::new();
    let http_stop = CancellationToken::new();
    let router = app::router(app.clone(), mcp_stop.clone());
    let server = tokio::spawn(
        provider_shared::http_server::serve(listener, router, limits, http_stop.clone())
            .instrument(info_span!("http")),
    );

    shutdown.cancelled().await;
    tracing::info!(
        queued = broker.queue_depth(),
        leased = broker.leased_count(),
        ?grace,
        "shutting down"
    );
    broker.begin_shutdown().await;
    let deadline = tokio::time::Instant::now() + grace;
    while broker.leased_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if broker.leased_count() > 0 {
        tracing::warn!(
            leased = broker.leased_count(),
            "grace period over; ending requests"
        );
    }
    broker.end_leased().await;
    // Sampling loops see `stopping` and end; a call still waiting on its client is dropped.
    broker.samplers.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), broker.samplers.wait()).await;
    app.closing.cancel();
    app.tasks.close();
    app.tasks.wait().await;
    if let Some(running) = queue_tasks {
        // The last results and the closed connections' requests reach Redis.
        running.finish(Duration::from_secs(3)).await;
    }
    mcp_stop.cancel();
    http_stop.cancel();
    let served = server.await;
    let _ = sweeper.await;
    drop(app);
    drop(broker);
    // The writer ends once every handle is gone; a handle still held elsewhere must not hang us.
    let _ = tokio::time::timeout(Duration::from_secs(2), audit_writer.finish()).await;
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(())
        }
        Err(join) => Err(Error::Serve(std::io::Error::other(join.to_string()))),
    }
}
