//! `/health`, `/health/live`, `/health/ready` and `/metrics` over HTTP, behind the web guard
//! (`Host`, `Origin`, body type: `provider_shared::web_guard`), as the other services' routes.
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use provider_shared::http_server::{guarded, no_plain_errors, Refusals};
use provider_shared::ipc::LinkState;
use provider_shared::web_guard::WebGuard;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Hub;

pub fn router(hub: Arc<Hub>) -> Router {
    let config = &hub.config;
    let guard = WebGuard::new(
        &config.allowed_hosts.0,
        &config.bridge_agent_host,
        &config.allowed_origins.0,
    );
    let refusals = Refusals {
        counter: crate::metrics::REFUSED,
        audit: None,
        plain_errors: no_plain_errors,
    };
    let routes = Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(hub);
    guarded(routes, guard, refusals)
}

/// Serves the health and metrics endpoints until `stop` fires.
pub async fn serve_health(listener: TcpListener, hub: Arc<Hub>, stop: CancellationToken) {
    let limits = hub.config.connections.clone();
    provider_shared::http_server::serve(listener, router(hub), limits, stop).await;
}

async fn health(State(hub): State<Arc<Hub>>) -> Json<Value> {
    let status = hub.status.borrow().clone();
    let overall = if status.state == LinkState::Connected {
        "healthy"
    } else {
        "degraded"
    };
    Json(json!({
        "status": overall,
        "version": provider_shared::VERSION,
        "uptime_seconds": hub.started.elapsed().as_secs(),
        "mcp_connection": {
            "status": status.state.as_str(),
            "last_ping": status.last_ping,
            "bridge_id": status.bridge_id,
            "reconnects": status.reconnects,
        },
        "gateway_connections": hub.gateway_count(),
        "in_flight": hub.requests.len(),
    }))
}

async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

async fn ready(State(hub): State<Arc<Hub>>) -> (StatusCode, Json<Value>) {
    let state = hub.status.borrow().state;
    let code = if state == LinkState::Connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if code == StatusCode::OK {
        "ready"
    } else {
        "not_ready"
    };
    (
        code,
        Json(json!({"status": word, "mcp_connection": state.as_str()})),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        provider_shared::telemetry::render_metrics(),
    )
}
