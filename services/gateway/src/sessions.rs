//! Ephemeral session tokens (docs/http-api.md, "Sessions"): made with the API key, usable as bearers until their
//! TTL or idle time runs out or they are revoked, at most `MAX_SESSIONS` at once. Only the
//! token's SHA-256 digest is stored.
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use provider_shared::digest;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Accept, Principal};
use crate::error::Error;
use crate::secrets;
use crate::state::{AppState, Shared};
use crate::store::{now_ms, Created, Session};

pub async fn create(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    auth::authenticate(&state, &headers, peer.ip(), Accept::KeyOnly).await?;
    let token = secrets::session_token();
    let now = now_ms();
    let session = Session {
        id: format!("sess-{}", secrets::random_hex(16)),
        token_digest: digest::sha256(token.as_bytes()),
        owner: state.key_client.clone(),
        created_ms: now,
        expires_ms: now + state.settings.session_ttl.as_millis() as u64,
        idle_ms: state.settings.session_idle.as_millis() as u64,
        last_used_ms: now,
    };
    match state
        .store
        .create_session(session.clone(), state.settings.max_sessions)
        .await?
    {
        Created::Yes => {}
        Created::LimitReached { retry_after } => {
            state.audit.record_repeated(
                "security_violation",
                json!({"client_ip": peer.ip().to_string(), "violation_type": "session_limit",
                       "details": format!("{} sessions already live", state.settings.max_sessions)}),
                &["details"],
            );
            return Err(Error::SessionLimit {
                message: format!(
                    "at most {} sessions may be live at once; end one with DELETE /v1/sessions/{{id}} or wait for one to expire",
                    state.settings.max_sessions
                ),
                retry_after: retry_after.max(Duration::from_secs(1)),
            });
        }
    }
    metrics::counter!("gateway_sessions_created_total").increment(1);
    refresh_gauge(&state).await;
    state.audit.record(
        "session_created",
        json!({"client_ip": peer.ip().to_string(), "session_id": session.id,
               "expires_at": session.expires_ms / 1000}),
    );
    Ok(Json(json!({
        "object": "session",
        "session_id": session.id,
        "token": token,
        "created_at": session.created_ms / 1000,
        "expires_at": session.expires_ms / 1000,
        "idle_timeout_seconds": state.settings.session_idle.as_secs(),
    })))
}

pub async fn delete(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    let principal = auth::authenticate(&state, &headers, peer.ip(), Accept::KeyOrSession).await?;
    if let Principal::Session(own) = &principal {
        if own.id != id {
            return Err(Error::Forbidden(
                "a session token can end only its own session".into(),
            ));
        }
    }
    let Some(removed) = state.store.remove_session(&id).await? else {
        return Err(Error::NotFound {
            message: format!("no live session {id}"),
            code: "session_not_found",
        });
    };
    metrics::counter!("gateway_sessions_revoked_total").increment(1);
    refresh_gauge(&state).await;
    state.audit.record(
        "session_revoked",
        json!({"client_ip": peer.ip().to_string(), "session_id": removed.id, "by": match principal {
            Principal::ApiKey | Principal::Keyless => "api_key", Principal::Session(_) => "session" }}),
    );
    Ok(Json(
        json!({"id": removed.id, "object": "session", "deleted": true}),
    ))
}

pub async fn refresh_gauge(state: &AppState) {
    if let Ok(n) = state.store.count_sessions().await {
        metrics::gauge!("gateway_sessions_active").set(n as f64);
    }
}

/// Removes ended sessions and audits each, until `shutdown`.
pub async fn sweep(state: Shared, shutdown: CancellationToken) {
    let shortest = state.settings.session_ttl.min(state.settings.session_idle);
    let every = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match state.store.purge_expired().await {
            Ok(ended) => {
                for s in &ended {
                    let now = now_ms();
                    let reason = if now >= s.expires_ms { "ttl" } else { "idle" };
                    state.audit.record(
                        "session_expired",
                        json!({"session_id": s.id, "reason": reason}),
                    );
                }
                if !ended.is_empty() {
                    metrics::counter!("gateway_sessions_expired_total")
                        .increment(ended.len() as u64);
                }
                refresh_gauge(&state).await;
            }
            Err(err) => tracing::warn!(%err, "session sweep failed"),
        }
    }
}
