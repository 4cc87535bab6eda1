//! `POST /api/generate`: Ollama's completion, also fill-in-the-middle with `suffix`; reaches the
//! agent as a `completion` job.
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use super::{
    counters, created_at, done_reason, invalid, ndjson, ndjson_line, object, parameters,
    requested_model, wants_stream, OllamaError,
};
use crate::generate::{self, Ask, Job, Piece};
use crate::openai::Headers;
use crate::state::Shared;
use crate::validate::Limits;

fn text_field(request: &Map<String, Value>, key: &str) -> Result<Option<String>, OllamaError> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "{key}: expected a string, got {}",
            crate::validate::kind_of(other)
        ))),
    }
}

pub async fn generate(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OllamaError> {
    let (caller, body) = generate::arrive(&state, &headers, peer, body).await?;
    let started = caller.started;
    let limits = Limits::of(&state.settings);
    let (model, job) = generate::off_thread_if_large(body.len(), move || {
        let request = object(&body)?;
        let model = requested_model(&request)?;
        let job = job(&model, &request, &limits)?;
        Ok::<_, OllamaError>((model, job))
    })
    .await?;
    let Some(job) = job else {
        // Ollama answers an empty prompt by loading the model: nothing to ask the agent.
        state.models.resolve(&model)?;
        return Ok(Json(
            json!({"model": model, "created_at": created_at(), "response": "",
            "done": true, "done_reason": "load"}),
        )
        .into_response());
    };
    let stream = job.ask.stream;
    let running = caller.start(&state, job).await?;
    let headers = Headers::of(&state, &running);
    let mut pieces = running.pieces;
    if !stream {
        let (answer, finish_reason, usage, overhead) = generate::drive::finish(pieces).await?;
        let headers = headers.with_overhead(overhead);
        let mut out = line(&model, &answer.content, true);
        out.insert("done_reason".into(), json!(done_reason(&finish_reason)));
        out.insert("context".into(), json!([]));
        out.extend(counters(started, None, &usage));
        let mut response = Json(Value::Object(out)).into_response();
        headers.apply(response.headers_mut());
        return Ok(response);
    }
    let lines = async_stream::stream! {
        let mut first = None;
        while let Some(piece) = pieces.next().await {
            match piece {
                Piece::Delta(delta) => {
                    first.get_or_insert_with(Instant::now);
                    if let Some(text) = delta.content.as_deref() {
                        yield ndjson_line(&TextLine {
                            model: &model,
                            created_at: created_at(),
                            response: text,
                            done: false,
                        });
                    }
                }
                Piece::Done { finish_reason, usage, .. } => {
                    let mut out = line(&model, "", true);
                    out.insert("done_reason".into(), json!(done_reason(&finish_reason)));
                    out.insert("context".into(), json!([]));
                    out.extend(counters(started, first, &usage));
                    yield ndjson_line(&out);
                }
                Piece::Failed(err) => yield ndjson_line(&json!({"error": err.to_string()})),
            }
        }
    };
    Ok(ndjson(lines, &headers))
}

/// The agent's job for a `/api/generate` body naming `model`; `None` for an empty prompt.
pub fn job(
    model: &str,
    request: &Map<String, Value>,
    limits: &Limits,
) -> Result<Option<Job>, OllamaError> {
    let stream = wants_stream(request)?;
    let prompt = text_field(request, "prompt")?.unwrap_or_default();
    let suffix = text_field(request, "suffix")?.filter(|s| !s.is_empty());
    let system = text_field(request, "system")?.filter(|s| !s.is_empty());
    if prompt.is_empty() && suffix.is_none() {
        return Ok(None);
    }
    let (params, max_tokens) = parameters(limits, request, stream)?;
    let ask = Ask {
        model: model.to_owned(),
        max_tokens,
        stream,
    };
    Ok(Some(Job::completion(
        ask, prompt, suffix, system, params, "cmpl-",
    )))
}

/// A streamed line of the answer, borrowing its text.
#[derive(serde::Serialize)]
struct TextLine<'a> {
    model: &'a str,
    created_at: String,
    response: &'a str,
    done: bool,
}

fn line(model: &str, response: &str, done: bool) -> Map<String, Value> {
    let mut l = Map::new();
    l.insert("model".into(), json!(model));
    l.insert("created_at".into(), json!(created_at()));
    l.insert("response".into(), json!(response));
    l.insert("done".into(), json!(done));
    l
}
