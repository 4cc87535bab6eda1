//! The gateway: an OpenAI-compatible HTTP front (docs/http-api.md) for the agent behind bridge-agent.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use provider_shared::audit;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub mod admin;
pub mod agent_client;
pub mod anthropic;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod generate;
pub mod health;
pub mod keygen;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod parts;
pub mod ratelimit;
pub mod refusals;
pub mod responses;
pub mod secrets;
pub mod sessions;
pub mod state;
pub mod status;
pub mod store;
pub mod tokens;
pub mod validate;

pub use config::Settings;
pub use error::Error;

/// Serves on `listener` until `shutdown` fires, then lets in-flight answers finish within
/// `SHUTDOWN_GRACE` and ends the rest with an error event.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    provider_shared::telemetry::metrics();
    describe_metrics();
    audit::describe_metrics();

    let tracker = TaskTracker::new();
    let (audit, audit_writer) = audit::Audit::open(
        settings.audit_log.as_deref(),
        "gateway",
        settings.audit_rotation,
    )
    .await
    .map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!(
                "cannot open the audit log {}: {e}",
                settings
                    .audit_log
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ),
        ))
    })?;
    // Before anything is spawned: a store that cannot be reached stops start-up.
    let store = Arc::new(store::open(&settings, audit.clone()).await?);
    let links_down = CancellationToken::new();
    let agent = agent_client::AgentClient::start(
        settings.bridge_socket.clone(),
        settings.stream_buffer_bytes,
        links_down.clone(),
        &tracker,
    );
    let grace_over = CancellationToken::new();
    let key_client = format!("key:{}", hex::encode(&settings.api_key_digest[..6]));
    let state = Arc::new(state::AppState {
        concurrency: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        bodies: generate::body::Budget::new(settings.max_body_bytes_in_flight),
        store,
        agent,
        audit,
        started: Instant::now(),
        shutdown: shutdown.clone(),
        grace_over: grace_over.clone(),
        key_client,
        models_created: store::now_ms() / 1000,
        models: models::Models::of(&settings),
        status: status::board::Board::default(),
        refusals: refusals::RefusalLog::default(),
        tasks: tracker.clone(),
        settings,
    });
    tracker.spawn(
        status::sample(state.clone(), links_down.clone())
            .instrument(tracing::info_span!("status_history")),
    );

    tracker.spawn(
        sessions::sweep(state.clone(), links_down.clone())
            .instrument(tracing::info_span!("session_sweep")),
    );
    let grace = state.settings.shutdown_grace;
    tracker.spawn({
        let (shutdown, grace_over, done) =
            (shutdown.clone(), grace_over.clone(), links_down.clone());
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = done.cancelled() => return,
            }
            tracing::info!(
                grace_s = grace.as_secs_f64(),
                "shutting down: finishing in-flight answers"
            );
            tokio::select! {
                _ = tokio::time::sleep(grace) => grace_over.cancel(),
                // Everything finished before the grace period ended.
                _ = done.cancelled() => {}
            }
        }
        .instrument(tracing::info_span!("shutdown_grace"))
    });

    let app = app::router(state.clone());
    let limits = state.settings.connections.clone();
    let server = provider_shared::http_server::serve(listener, app, limits, shutdown.clone());
    tokio::select! {
        _ = server => {}
        // A client that stops reading must not hold shutdown forever.
        _ = async { grace_over.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => {}
    }
    grace_over.cancel();
    links_down.cancel();
    tracker.close();
    tracker.wait().await;
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(2), audit_writer.finish()).await;
    tracing::info!("gateway stopped");
    Ok(())
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "gateway_http_requests_total",
        "HTTP requests by matched route (unmatched for none), method (other for any HTTP does not define) and status"
    );
    describe_histogram!(
        "gateway_http_request_duration_seconds",
        Unit::Seconds,
        "Time to the response head, by route"
    );
    describe_histogram!(
        "gateway_time_to_first_chunk_seconds",
        Unit::Seconds,
        "From request to the agent's first output"
    );
    describe_histogram!(
        "gateway_chat_duration_seconds",
        Unit::Seconds,
        "Whole chat requests, answered or not"
    );
    describe_counter!(
        "gateway_chat_requests_total",
        "Chat requests by stream and outcome"
    );
    describe_gauge!(
        "gateway_body_bytes_in_flight",
        "Bytes of MAX_BODY_BYTES_IN_FLIGHT held by request bodies being read or handled (to the KiB)"
    );
    metrics::gauge!("gateway_body_bytes_in_flight").set(0.0);
    describe_histogram!(
        "gateway_prompt_count_seconds",
        Unit::Seconds,
        "Time counting one prompt's tokens (admitted requests and count_tokens)"
    );
    describe_histogram!(
        "gateway_overhead_seconds",
        Unit::Seconds,
        "The gateway's own time per request, outside waiting for the agent"
    );
    describe_counter!(
        "gateway_rate_limited_total",
        "Requests refused by a limit, by kind: auth, concurrency, requests, counts, tokens, bodies"
    );
    describe_counter!(
        "gateway_context_length_exceeded_total",
        "Requests refused because prompt plus output tokens exceed CONTEXT_WINDOW"
    );
    metrics::counter!("gateway_context_length_exceeded_total").absolute(0);
    describe_counter!("gateway_auth_failures_total", "Failed authentications");
    describe_counter!(
        "gateway_requests_refused_total",
        "Requests refused before routing, by reason: host_not_allowed, origin_not_allowed, unsupported_media_type"
    );
    describe_counter!(
        "gateway_slow_clients_total",
        "Requests ended with slow_client: their client fell more than STREAM_BUFFER_BYTES behind"
    );
    describe_counter!(
        "gateway_requests_resumed_total",
        "Requests re-attached to a new bridge-agent connection after the old one broke"
    );
    describe_counter!("gateway_tokens_total", "Tokens processed, by kind");
    describe_gauge!("gateway_requests_in_flight", "Chat requests being answered");
    describe_gauge!("gateway_sessions_active", "Live sessions");
    describe_counter!("gateway_sessions_created_total", "Sessions created");
    describe_counter!(
        "gateway_sessions_expired_total",
        "Sessions ended by TTL or idle time"
    );
    describe_counter!(
        "gateway_sessions_revoked_total",
        "Sessions ended by a client or the admin"
    );
    describe_gauge!(
        "gateway_bridge_agent_connected",
        "1 while the Unix socket to bridge-agent is up"
    );
    describe_gauge!(
        "gateway_bridge_connected",
        "1 while bridge-agent reports its WebSocket up"
    );
    describe_counter!(
        "gateway_bridge_agent_reconnects_total",
        "Reconnects to bridge-agent after a loss"
    );
    metrics::gauge!("gateway_bridge_agent_connected").set(0.0);
    metrics::gauge!("gateway_bridge_connected").set(0.0);
    metrics::gauge!("gateway_requests_in_flight").set(0.0);
    metrics::gauge!("gateway_sessions_active").set(0.0);
}
