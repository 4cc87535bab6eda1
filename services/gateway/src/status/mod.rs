//! The live status page: `GET /status` (one HTML page with its CSS, script and plots inline, no
//! external assets) and `GET /status.json` (what the page draws, refreshed every 2 s).
//!
//! Access: the page itself holds no data and is served to anyone who reaches the gateway; the
//! JSON is served to loopback clients while the gateway binds a loopback address, and otherwise
//! only with the admin token as a bearer token (the page asks for it and keeps it for the tab).
use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::error::{Error, ErrorReport};
use crate::state::Shared;

pub mod board;
mod view;

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");
const BODY: &str = include_str!("page.html");

/// The page, and a Content-Security-Policy that allows exactly its inline style and script.
static PAGE: LazyLock<(String, String)> = LazyLock::new(|| {
    let hash = |text: &str| {
        let digest = provider_shared::digest::sha256(text.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    let csp = format!(
        "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(STYLE),
        hash(SCRIPT)
    );
    let html = BODY
        .replace("/*STYLE*/", STYLE)
        .replace("/*SCRIPT*/", SCRIPT);
    (html, csp)
});

pub async fn page() -> Response {
    let (html, csp) = &*PAGE;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(csp) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    (headers, html.clone()).into_response()
}

pub async fn data(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    allowed(&state, peer, &headers).await?;
    let sessions = state.store.count_sessions().await.ok();
    Ok(Json(snapshot(&state, sessions)))
}

/// Loopback clients of a loopback-bound gateway; anyone else needs the admin token.
async fn allowed(state: &Shared, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Error> {
    if !state.settings.binds_non_loopback() && peer.ip().is_loopback() {
        return Ok(());
    }
    let Some(expected) = state.settings.admin_token_digest else {
        return Err(Error::Forbidden(format!(
            "/status.json is served to loopback clients only while LOCAL_PROVIDER_HOST is loopback; \
             this gateway binds {:?}: set LOCAL_PROVIDER_ADMIN_TOKEN and send it as a bearer token",
            state.settings.host
        )));
    };
    // A page refreshing every 2 s must not write an audit line each time: a good token passes
    // quietly; anything else goes through the admin check, which audits and throttles it.
    if let Some(token) = auth::bearer(headers) {
        let digest = provider_shared::digest::sha256(token.as_bytes());
        if bool::from(digest.ct_eq(&expected)) {
            return Ok(());
        }
    }
    auth::authenticate_admin(state, headers, peer.ip()).await
}

fn snapshot(state: &Shared, sessions: Option<u64>) -> Value {
    let now = crate::store::now_ms();
    let link = state.agent.link();
    let board = state.status.snapshot();
    let socket = state.settings.bridge_socket.display().to_string();
    let (to_agent, to_bridge) = view::links(&link, &socket);
    let agent = view::agent(&link, now, state.settings.status_agent_gone_after);
    let editor = json!({
        "state": if state.shutdown.is_cancelled() { "stopping" } else { "serving" },
        "detail": match board.last_request_ms {
            Some(at) => format!("last request {} ago · {} requests since start",
                view::words(now.saturating_sub(at)), board.requests_total),
            None => "no request since start".to_owned(),
        },
    });
    json!({
        "generated_at_ms": now,
        "version": provider_shared::VERSION,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "model": state.settings.model_name,
        "chain": {
            "editor_to_gateway": editor,
            "gateway_to_bridge_agent": to_agent,
            "bridge_agent_to_mcp_bridge": to_bridge,
            "mcp_bridge_to_agent": {"state": agent["state"], "detail": agent["summary"]},
        },
        "agent": agent,
        "queue": view::queue(&link, now),
        "in_flight": board.in_flight,
        "in_flight_total": board.in_flight_total,
        "sessions": {"active": sessions, "store": state.store.health()},
        "rate_limits": {
            "hits_total": board.rate_limited.values().sum::<u64>(),
            "by_code": board.rate_limited,
        },
        // Every 4xx answer since start (refusals.rs logs them), by code.
        "refusals": {
            "total": board.refused.values().sum::<u64>(),
            "by_code": board.refused,
        },
        "recent_errors": board.recent_errors,
        "history": {
            "bucket_seconds": board::BUCKET.as_secs(),
            "points": board.history,
        },
        // The audit writer's figures, as in /health: its bounded queue and what it dropped.
        "audit": state.audit.stats(),
    })
}

/// Closes one history point every 5 s until `stop`.
pub async fn sample(state: Shared, stop: CancellationToken) {
    let mut tick = tokio::time::interval(board::BUCKET);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let link = state.agent.link();
        let depth = view::report(&link).map(|r| r.queue_depth);
        state.status.close_point(depth);
        state.refusals.flush();
    }
}

/// Notes every error answer (status 400 or more) for the recent-errors list, and logs and counts
/// every refusal (4xx, `refusals.rs`).
pub async fn record_errors(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if status >= 400 {
        let report = response.extensions().get::<ErrorReport>();
        let code = report.map(|r| r.code.as_str());
        state.status.http_error(&route, status, code);
        if status < 500 {
            let message = report.map_or("", |r| r.message.as_str());
            state
                .refusals
                .record(&route, status, code.unwrap_or("error"), message);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_whole_and_its_policy_allows_only_its_own_inline_code() {
        let (html, csp) = &*PAGE;
        assert!(html.contains("<style>") && html.contains("<script>"));
        assert!(!html.contains("/*STYLE*/") && !html.contains("/*SCRIPT*/"));
        // The one link is the empty icon, so the browser asks for no /favicon.ico.
        assert_eq!(html.matches(" href=").count(), 1);
        assert!(html.contains(r#"<link rel="icon" href="data:,">"#));
        for outside in [" src=", "@import", "url("] {
            assert!(!html.contains(outside), "no external assets: {outside}");
        }
        assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe-inline"));
    }
}
