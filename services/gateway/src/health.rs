//! `/health` (+ `/live`, `/ready`) and `/models`: what a supervisor and a client ask first.
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use provider_shared::ipc::LinkState;
use serde_json::{json, Value};

use crate::auth::{self, Accept};
use crate::error::Error;
use crate::state::{AppState, Shared};

fn status_of(state: &AppState) -> (&'static str, Value) {
    let link = state.agent.link();
    let bridge_up = link.agent_connected && link.bridge.state == LinkState::Connected;
    let status = if state.shutdown.is_cancelled() {
        "unhealthy"
    } else if bridge_up && state.store.is_available() {
        "healthy"
    } else {
        "degraded"
    };
    let mcp_status = if link.agent_connected {
        link.bridge.state.as_str()
    } else {
        "unknown"
    };
    let body = json!({
        "status": status,
        "version": provider_shared::VERSION,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "timestamp": provider_shared::audit::timestamp(),
        "mcp_connection": {"status": mcp_status, "last_ping": link.bridge.last_ping},
        "bridge_agent": {
            "status": if link.agent_connected { "connected" } else { "disconnected" },
            "socket": state.settings.bridge_socket.display().to_string(),
        },
        "store": state.store.health(),
        "audit": state.audit.stats(),
    });
    (status, body)
}

pub async fn health(State(state): State<Shared>) -> Response {
    // Counting the sessions also probes the store, so the status below is current.
    let sessions = state.store.count_sessions().await.ok();
    let (status, mut body) = status_of(&state);
    body["active_sessions"] = json!(sessions);
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

pub async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

pub async fn ready(State(state): State<Shared>) -> Response {
    let _probe = state.store.count_sessions().await;
    let (status, body) = status_of(&state);
    let code = if status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        provider_shared::telemetry::render_metrics(),
    )
        .into_response()
}

fn model_object(state: &AppState, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": state.models_created,
        "owned_by": "mcp-local-provider",
    })
}

pub async fn list_models(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    auth::authenticate(&state, &headers, peer.ip(), Accept::KeyOrSession).await?;
    let data: Vec<Value> = state
        .models
        .listed()
        .into_iter()
        .map(|name| model_object(&state, name))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_model(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    auth::authenticate(&state, &headers, peer.ip(), Accept::KeyOrSession).await?;
    // Any name the generating routes would serve is a model here, under the name asked for.
    state.models.resolve(&id)?;
    Ok(Json(model_object(&state, &id)))
}
