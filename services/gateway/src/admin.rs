//! Admin routes, behind `Authorization: Bearer $LOCAL_PROVIDER_ADMIN_TOKEN`.
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use crate::auth;
use crate::error::Error;
use crate::sessions::refresh_gauge;
use crate::state::Shared;

pub async fn list_sessions(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    auth::authenticate_admin(&state, &headers, peer.ip()).await?;
    let sessions = state.store.list_sessions().await?;
    let data: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "session_id": s.id,
                "created_at": s.created_ms / 1000,
                "expires_at": s.expires_ms / 1000,
                "last_used_at": s.last_used_ms / 1000,
                "idle_expires_at": s.last_used_ms.saturating_add(s.idle_ms) / 1000,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn revoke_all(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    auth::authenticate_admin(&state, &headers, peer.ip()).await?;
    let revoked = state.store.remove_all_sessions().await?;
    for s in &revoked {
        state.audit.record(
            "session_revoked",
            json!({"client_ip": peer.ip().to_string(), "session_id": s.id, "by": "admin"}),
        );
    }
    metrics::counter!("gateway_sessions_revoked_total").increment(revoked.len() as u64);
    refresh_gauge(&state).await;
    tracing::warn!(count = revoked.len(), "all sessions revoked by the admin");
    Ok(Json(json!({"revoked": revoked.len()})))
}
