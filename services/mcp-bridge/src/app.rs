//! The one HTTP listener: bridge-agent's WebSocket at `/`, MCP (Streamable HTTP) at `/mcp`,
//! and `/health`, `/health/live`, `/health/ready`, `/metrics` beside them, all behind the web
//! guard (`Host`, `Origin`, body type: `provider_shared::web_guard`).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use provider_shared::http_server::{guarded, no_plain_errors, Refusals};
use provider_shared::web_guard::WebGuard;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::mcp::McpServer;
use crate::state::App;
use crate::{metrics, ws};

/// SSE keep-alive comments on MCP responses, so that idle long-polls are not cut by proxies and
/// a stateless client that went away is noticed (a closed connection shows on the next write).
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(3);

/// How long an MCP session lives without any request.
const SESSION_IDLE: Duration = Duration::from_secs(3600);

pub fn router(app: Arc<App>, mcp_stop: CancellationToken) -> Router {
    let broker = app.broker.clone();
    // Sessions for clients that open one (Cursor's protocol versions): `notifications/cancelled`
    // then reaches the call it names, so a cancelled long-poll never takes a request. Clients
    // of MCP 2026-07-28 are served statelessly by rmcp; dropping their POST cancels the call.
    // rmcp's own Host check is off: the web guard below checks `Host` and `Origin` on every
    // route, `/mcp` included, with the same rules as the gateway.
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(SSE_KEEP_ALIVE))
        .with_cancellation_token(mcp_stop)
        .disable_allowed_hosts();
    let guard = WebGuard::new(
        &broker.config.allowed_hosts,
        &broker.config.host,
        &broker.config.allowed_origins,
    );
    let service: StreamableHttpService<McpServer, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(McpServer::new(broker.clone())),
        Arc::new(sessions()),
        config,
    );
    // Outermost the token check; inside it every response body is watched (`caller.rs`).
    let mcp = Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            crate::caller::watch,
        ))
        .layer(middleware::from_fn(session_ended))
        .layer(middleware::from_fn_with_state(app.clone(), mcp_auth));
    let routes = Router::new()
        .route("/", get(ws::upgrade))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(app.clone())
        .merge(mcp);
    let refusals = Refusals {
        counter: metrics::REFUSED,
        audit: Some(app.broker.audit.clone()),
        plain_errors: no_plain_errors,
    };
    guarded(routes, guard, refusals)
}

/// An agent may stop polling for a while (a paused Cursor chat); its session outlives that, so
/// it does not have to reconnect. Sessions whose connection vanished end after this idle time.
fn sessions() -> LocalSessionManager {
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(SESSION_IDLE);
    manager
}

/// A client ending its MCP session (`DELETE /mcp` with its `mcp-session-id`) gets `204 No
/// Content`. rmcp closes the session and answers `202 Accepted`, which it does not let a server
/// change; the official clients take only 200 or 204 as success and log anything else (the
/// Python `mcp` client: "Session termination failed: 202") on every disconnect. The session is
/// closed by then, so 204 says what happened; every other answer passes unchanged.
async fn session_ended(request: Request, next: Next) -> Response {
    let deleting = request.method() == axum::http::Method::DELETE;
    let mut response = next.run(request).await;
    if deleting && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
        response.headers_mut().remove(header::CONTENT_LENGTH);
        response.headers_mut().remove(header::CONTENT_TYPE);
        *response.body_mut() = axum::body::Body::empty();
    }
    response
}

/// `MCP_HTTP_TOKEN`, when set, guards `/mcp`; refusals are audited.
async fn mcp_auth(
    State(app): State<Arc<App>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match app.http_token.check(request.headers(), addr.ip()) {
        Ok(()) => next.run(request).await,
        Err((why, fingerprint)) => {
            metrics::auth_failed("mcp");
            app.broker.audit.record_repeated(
                "authentication",
                json!({"client_ip": addr.ip().to_string(), "endpoint": "mcp",
                       "credential": "mcp_http_token", "key_fingerprint": fingerprint,
                       "success": false, "reason": why.as_str()}),
                &["key_fingerprint"],
            );
            let body = json!({"error": {
                "message": format!("/mcp: {}", why.message("MCP_HTTP_TOKEN")),
                "type": "authentication_error", "code": "invalid_mcp_token"}});
            (
                why.status(),
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(body),
            )
                .into_response()
        }
    }
}

fn overall(app: &App) -> &'static str {
    if app.broker.stopping.is_cancelled() {
        "unhealthy"
    } else if app.broker.agent_count() > 0 {
        "healthy"
    } else {
        "degraded"
    }
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    let mut body = app.broker.status();
    body["status"] = json!(overall(&app));
    body["version"] = json!(provider_shared::VERSION);
    body["uptime_seconds"] = json!(app.broker.started.elapsed().as_secs());
    body["audit"] = json!(app.broker.audit.stats());
    Json(body)
}

async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

async fn ready(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let status = overall(&app);
    let code = if status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"status": status})))
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        provider_shared::telemetry::render_metrics(),
    )
}
