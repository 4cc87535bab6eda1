//! The router: routes, the web guard (`Host`, `Origin`, body type) before anything else, CORS
//! limited to `ALLOWED_ORIGINS`, security headers, request metrics, and OpenAI-shaped answers for
//! unknown routes and methods.
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use provider_shared::http_server::{guarded, Refusals};
use provider_shared::web_guard::{origin_allowed, WebGuard};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::Error;
use crate::state::Shared;
use crate::{admin, anthropic, health, ollama, openai, responses, sessions, status};

pub fn router(state: Shared) -> Router {
    let cors = cors(&state.settings.allowed_origins);
    let settings = &state.settings;
    let guard = WebGuard::new(
        &settings.allowed_hosts,
        &settings.host,
        &settings.allowed_origins,
    );
    let audit = state.audit.clone();
    let api = Router::new()
        .route("/v1/chat/completions", post(openai::chat::completions))
        .route("/v1/completions", post(openai::completions::completions))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::not_stored).delete(responses::not_stored),
        )
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/models", get(health::list_models))
        .route("/v1/models/{id}", get(health::get_model))
        // The `/v1` prefix is easy to leave out of an editor's base URL.
        .route("/chat/completions", post(openai::chat::completions))
        .route("/completions", post(openai::completions::completions))
        .route("/models", get(health::list_models))
        .route("/models/{id}", get(health::get_model))
        .route("/v1/sessions", post(sessions::create))
        .route("/v1/sessions/{id}", delete(sessions::delete))
        .merge(ollama::routes())
        .route("/admin/sessions", get(admin::list_sessions))
        .route("/admin/revoke_all_sessions", post(admin::revoke_all))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/status", get(status::page))
        .route("/status.json", get(status::data))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // These two read the route that matched, so they wrap each route. The layers below need no
    // route: they wrap the router once (as its fallback), so that a request clones them and the
    // router's handle rather than its route's whole stack of layers (BENCHMARKS.md,
    // "Tokenizer and the audit line", its allocations).
    let api = api
        .layer(middleware::from_fn_with_state(state, status::record_errors))
        .layer(middleware::from_fn(record_metrics));
    let api = Router::new().fallback_service(api).layer(cors);
    let refusals = Refusals {
        counter: "gateway_requests_refused_total",
        audit: Some(audit),
        plain_errors: ollama::owns,
    };
    let mut app = guarded(api, guard, refusals);
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("cross-origin-resource-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        app = app.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    app
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    let err = Error::NotFound {
        message: format!("no route {} {path}", req.method()),
        code: "unknown_url",
    };
    if ollama::owns(path) {
        let err = Error::NotFound {
            message: format!("{err}: this gateway answers Ollama's /api/version, /api/tags, /api/ps, /api/show, /api/chat and /api/generate"),
            code: "unknown_url",
        };
        return ollama::OllamaError::from(err).into_response();
    }
    err.into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path();
    let err = Error::MethodNotAllowed(format!("{} is not allowed on {path}", req.method()));
    if ollama::owns(path) {
        return ollama::OllamaError::from(err).into_response();
    }
    err.into_response()
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("gateway_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("gateway_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: one of the methods HTTP defines, else `other`, so that invented methods
/// cannot add series (every label of every metric comes from a closed set, docs/operations.md).
fn method_label(method: &Method) -> &'static str {
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

fn cors(patterns: &[String]) -> CorsLayer {
    let patterns = patterns.to_vec();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| origin_allowed(&patterns, o))
        }))
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ])
        .max_age(Duration::from_secs(600))
}
