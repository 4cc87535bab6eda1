//! Ollama's API on the same port (root paths), for editors whose "local model" setting speaks
//! Ollama: metadata (`/api/version`, `/api/tags`, `/api/ps`, `/api/show`) answered without a key, and
//! generation (`/api/chat`, `/api/generate`) on the same agent path, auth, limits and audit as
//! the OpenAI routes, streamed as newline-delimited JSON.
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::state::{AppState, Shared};
use crate::validate::{self, Limits};

pub mod chat;
mod convert;
pub mod generate;

/// The Ollama version reported: recent enough for clients that refuse older servers.
pub const OLLAMA_VERSION: &str = "0.12.0";

/// Ollama's routes, under `/api`. Every error on `/api/*` is Ollama-shaped, `{"error": "…"}`,
/// an unknown path or a wrong method included (`app.rs` `not_found`, `method_not_allowed`):
/// Ollama clients read that shape.
pub fn routes() -> axum::Router<Shared> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/api/show", post(show))
        .route("/api/chat", post(chat::chat))
        .route("/api/generate", post(generate::generate))
        .route("/api/hello", get(hello))
}

/// `HEAD /api/hello`, without a key: Claude Code's connectivity check at start (it sends it to
/// its base URL before its first request). Answered so that it is not logged as a refusal.
pub async fn hello() -> Json<Value> {
    Json(json!({"message": "hello"}))
}

/// Whether `path` is Ollama's, so that its errors are answered in Ollama's shape.
pub fn owns(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// An error in Ollama's shape, `{"error": "…"}`, with the status and headers of the gateway's
/// one mapping of errors.
pub struct OllamaError(pub Box<Error>);

impl From<Error> for OllamaError {
    fn from(err: Error) -> Self {
        OllamaError(Box::new(err))
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let message = match &*self.0 {
            // Ollama's own wording, which its clients recognise.
            Error::ModelNotFound { requested, .. } => {
                format!("model \"{requested}\" not found, try pulling it first")
            }
            other => other.to_string(),
        };
        let mut response = self.0.into_response();
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(json!({"error": message}).to_string());
        response
    }
}

fn invalid(message: String) -> OllamaError {
    Error::invalid(message, None).into()
}

/// The model a request names (`model`, or the older `name`), as sent.
fn requested_model(body: &Map<String, Value>) -> Result<String, OllamaError> {
    match body.get("model").or_else(|| body.get("name")) {
        Some(Value::String(m)) => Ok(m.clone()),
        Some(other) => Err(invalid(format!(
            "model: expected a string, got {}",
            validate::describe(other)
        ))),
        None => Err(invalid("model: required".into())),
    }
}

/// Parses a JSON object body.
fn object(body: &[u8]) -> Result<Map<String, Value>, OllamaError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(invalid("the request body must be a JSON object".into())),
        Err(e) => Err(invalid(format!("the request body is not valid JSON: {e}"))),
    }
}

/// Ollama's `created_at`: RFC 3339 with fractions.
fn created_at() -> String {
    provider_shared::audit::timestamp()
}

fn digest(name: &str) -> String {
    provider_shared::digest::sha256_hex(name.as_bytes())
}

fn details() -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "cursor-agent",
        "families": ["cursor-agent"],
        "parameter_size": "unknown",
        "quantization_level": "unknown",
    })
}

fn modified_at(state: &AppState) -> String {
    let started = time::OffsetDateTime::from_unix_timestamp(state.models_created as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    started
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_VERSION}))
}

/// The listed models (`MODEL_NAME` and the plain names of `MODEL_ALIASES`), as Ollama lists one.
fn listing(state: &AppState) -> Vec<Map<String, Value>> {
    state
        .models
        .listed()
        .into_iter()
        .map(|name| {
            let mut model = Map::new();
            model.insert("name".into(), json!(name));
            model.insert("model".into(), json!(name));
            model.insert("size".into(), json!(0));
            model.insert("digest".into(), json!(digest(name)));
            model.insert("details".into(), details());
            model
        })
        .collect()
}

pub async fn tags(State(state): State<Shared>) -> Json<Value> {
    let modified = modified_at(&state);
    let models: Vec<Value> = listing(&state)
        .into_iter()
        .map(|mut model| {
            model.insert("modified_at".into(), json!(modified));
            Value::Object(model)
        })
        .collect();
    Json(json!({ "models": models }))
}

/// When a listed model would be unloaded: never, as the agent is not loaded into memory here.
const NEVER_UNLOADED: &str = "9999-12-31T23:59:59Z";

/// `GET /api/ps`: the models "loaded": the listed ones, always ready, sized 0 (the agent's
/// memory is not this machine's), with the context length `CONTEXT_WINDOW`.
pub async fn ps(State(state): State<Shared>) -> Json<Value> {
    let models: Vec<Value> = listing(&state)
        .into_iter()
        .map(|mut model| {
            model.insert("expires_at".into(), json!(NEVER_UNLOADED));
            model.insert("size_vram".into(), json!(0));
            model.insert(
                "context_length".into(),
                json!(state.settings.context_window),
            );
            Value::Object(model)
        })
        .collect();
    Json(json!({ "models": models }))
}

/// Answered without a key, so its body is read within `SMALL_BODY_BYTES` only.
pub async fn show(State(state): State<Shared>, body: Body) -> Result<Json<Value>, OllamaError> {
    let body = crate::generate::read_body(body, crate::generate::SMALL_BODY_BYTES).await?;
    let request = object(&body)?;
    state.models.resolve(&requested_model(&request)?)?;
    let window = state.settings.context_window;
    Ok(Json(json!({
        "license": "",
        "modelfile": format!(
            "# served by mcp-local-provider\nFROM {}\nPARAMETER num_ctx {window}\n",
            state.settings.model_name
        ),
        // Ollama's layout: one parameter a line, the name padded to 30 columns.
        "parameters": format!("{:<30} {window}", "num_ctx"),
        "template": "{{ .Prompt }}",
        "details": details(),
        "model_info": {
            "general.architecture": "cursor-agent",
            "general.basename": state.settings.model_name,
            "cursor-agent.context_length": window,
        },
        "capabilities": ["completion", "tools"],
        "modified_at": modified_at(&state),
    })))
}

/// Sampling options of Ollama's `options` as OpenAI-named parameters for the agent, checked by
/// the rules the OpenAI routes use (`validate.rs` `sampling`, errors naming `options.…`).
/// Returns the parameters and the answer's token cap.
fn parameters(
    limits: &Limits,
    request: &Map<String, Value>,
    stream: bool,
) -> Result<(Map<String, Value>, Option<u64>), Error> {
    validate::check_no_logprobs(request)?;
    let mut out = Map::new();
    out.insert("stream".into(), json!(stream));
    let empty = Map::new();
    let options = match request.get("options") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(validate::invalid(
                "options",
                format!("expected an object, got {}", validate::describe(other)),
            ))
        }
    };
    let sampling = validate::sampling(&validate::OLLAMA, options, limits)?;
    for (key, x) in sampling.numbers {
        out.insert(key.into(), json!(x));
    }
    if let Some(seed) = options.get("seed").filter(|v| !v.is_null()) {
        out.insert("seed".into(), seed.clone());
    }
    if let Some(n) = sampling.max_tokens {
        out.insert("max_tokens".into(), json!(n));
    }
    if let Some(stop) = sampling.stop {
        out.insert("stop".into(), Value::Array(stop));
    }
    for key in ["format", "think", "raw", "template"] {
        if let Some(v) = request.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    Ok((out, sampling.max_tokens))
}

/// `stream`, which Ollama defaults to true.
fn wants_stream(request: &Map<String, Value>) -> Result<bool, Error> {
    validate::bool_or(request, "stream", true)
}

/// Ollama's closing counters, in nanoseconds and tokens.
fn counters(
    started: Instant,
    first: Option<Instant>,
    usage: &provider_shared::bridge::Usage,
) -> Map<String, Value> {
    let total = started.elapsed();
    let until_first = first.map_or(total, |f| f.duration_since(started));
    let nanos = |d: Duration| d.as_nanos() as u64;
    let mut out = Map::new();
    out.insert("total_duration".into(), json!(nanos(total)));
    out.insert("load_duration".into(), json!(0));
    out.insert("prompt_eval_count".into(), json!(usage.prompt_tokens));
    out.insert("prompt_eval_duration".into(), json!(nanos(until_first)));
    out.insert("eval_count".into(), json!(usage.completion_tokens));
    out.insert(
        "eval_duration".into(),
        json!(nanos(total.saturating_sub(until_first))),
    );
    out
}

/// Ollama's `done_reason` for an OpenAI `finish_reason`.
fn done_reason(finish_reason: &str) -> &str {
    match finish_reason {
        "length" => "length",
        _ => "stop",
    }
}

/// One NDJSON line: `value` serialised straight into its bytes, then the newline.
fn ndjson_line(value: &impl serde::Serialize) -> Bytes {
    let mut out = Vec::with_capacity(128);
    // Serialising these types cannot fail: every map key is a string.
    let _ = serde_json::to_writer(&mut out, value);
    out.push(b'\n');
    Bytes::from(out)
}

/// A newline-delimited JSON response of ready lines (see [`ndjson_line`]).
fn ndjson<S>(lines: S, headers: &crate::openai::Headers) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let body = lines.map(Ok::<_, std::convert::Infallible>);
    let response = Response::new(Body::from_stream(body));
    let mut response = crate::generate::overhead::timed(response, headers.overhead.clone());
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.apply(h);
    *response.status_mut() = StatusCode::OK;
    response
}
