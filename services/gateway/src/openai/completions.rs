//! `POST /v1/completions`: OpenAI's legacy completions, used by editors for fill-in-the-middle
//! autocomplete (`prompt` before the cursor, `suffix` after it). Reaches the agent as a
//! `completion` job; answers `text_completion` objects, streamed or whole.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use provider_shared::bridge::{Payload, Usage};
use provider_shared::digest;
use serde_json::{json, Value};

use super::{data, done_event, error_event, sse_response, Headers};
use crate::error::Error;
use crate::generate::{self, drive, Job, Piece, Running};
use crate::state::Shared;
use crate::validate;

pub async fn completions(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let started = Instant::now();
    let (principal, body) = generate::caller_and_body(&state, &headers, peer, body).await?;
    let request = validate::completion(&body, &validate::Limits::of(&state.settings))?;
    let job = completion_job(
        request.prompt,
        request.suffix,
        None,
        request.parameters,
        request.max_tokens,
        request.stream,
        "cmpl-",
    );
    let running = generate::start(&state, &principal, peer, started, job).await?;
    let reply = Reply {
        id: running.id.clone(),
        created: running.created,
        model: state.settings.model_name.clone(),
    };
    if request.stream {
        Ok(stream(&state, running, reply, request.include_usage))
    } else {
        whole(&state, running, reply).await
    }
}

/// A `completion` job for the agent: the text around the cursor, counted as the prompt.
pub fn completion_job(
    prompt: String,
    suffix: Option<String>,
    system: Option<String>,
    parameters: serde_json::Map<String, Value>,
    max_tokens: Option<u64>,
    stream: bool,
    id_prefix: &'static str,
) -> Job {
    let texts = [Some(&prompt), suffix.as_ref(), system.as_ref()];
    let mut hashed = String::new();
    for text in texts.iter().flatten() {
        hashed.push_str(text);
        hashed.push('\0');
    }
    Job {
        prompt_sha256: digest::sha256_hex(hashed.as_bytes()),
        payload: Payload::Completion {
            prompt,
            suffix,
            system,
            parameters,
        },
        max_tokens,
        stream,
        scopes: vec!["completion".to_owned()],
        id_prefix,
    }
}

struct Reply {
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn object(&self, text: &str, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}],
        })
    }
}

fn stream(state: &Shared, running: Running, reply: Reply, include_usage: bool) -> Response {
    let headers = Headers::of(state, &running);
    let mut pieces = running.pieces;
    let events = async_stream::stream! {
        while let Some(piece) = pieces.next().await {
            match piece {
                Piece::Delta(delta) => {
                    if let Some(text) = delta.get("content").and_then(Value::as_str) {
                        yield Ok::<_, Infallible>(data(&reply.object(text, None)));
                    }
                }
                Piece::Done { finish_reason, usage, .. } => {
                    yield Ok(data(&reply.object("", Some(&finish_reason))));
                    if include_usage {
                        let mut chunk = reply.object("", None);
                        chunk["choices"] = json!([]);
                        chunk["usage"] = json!(usage);
                        yield Ok(data(&chunk));
                    }
                }
                Piece::Failed(err) => yield Ok(error_event(&err)),
            }
        }
        yield Ok(done_event());
    };
    sse_response(events, state.settings.keepalive_interval, &headers)
}

async fn whole(state: &Shared, running: Running, reply: Reply) -> Result<Response, Error> {
    let headers = Headers::of(state, &running);
    let (answer, finish_reason, usage, overhead): (_, _, Usage, _) =
        drive::finish(running.pieces).await?;
    let headers = headers.with_overhead(overhead);
    let mut body = reply.object(&answer.content, Some(&finish_reason));
    body["usage"] = json!(usage);
    let mut response = Json(body).into_response();
    headers.apply(response.headers_mut());
    Ok(response)
}
