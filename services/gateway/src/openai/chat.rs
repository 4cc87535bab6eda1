//! `POST /v1/chat/completions`, streamed as strict clients need it (README, "The HTTP API") or whole.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use provider_shared::bridge::Usage;
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
    let request = validate::chat(&body, &validate::Limits::of(&state.settings))?;
    let job = Job::chat(
        request.messages,
        request.parameters,
        request.tools.is_some(),
        request.max_tokens,
        request.stream,
        "chatcmpl-",
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

struct Reply {
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    }

    fn usage_chunk(&self, usage: &Usage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage,
        })
    }
}

/// Headers and a role chunk at once, keep-alive comments while the agent thinks, `choices` in
/// every chunk, one chunk with `finish_reason`, the usage chunk when asked, errors as
/// `data: {"error": …}`, then `[DONE]`.
fn stream(state: &Shared, running: Running, reply: Reply, include_usage: bool) -> Response {
    let headers = Headers::of(state, &running);
    let mut pieces = running.pieces;
    let events = async_stream::stream! {
        yield Ok::<_, Infallible>(data(&reply.chunk(json!({"role": "assistant", "content": ""}), None)));
        while let Some(piece) = pieces.next().await {
            match piece {
                Piece::Delta(delta) => yield Ok(data(&reply.chunk(delta, None))),
                Piece::Done { finish_reason, usage, .. } => {
                    yield Ok(data(&reply.chunk(json!({}), Some(&finish_reason))));
                    if include_usage {
                        yield Ok(data(&reply.usage_chunk(&usage)));
                    }
                }
                Piece::Failed(err) => yield Ok(error_event(&err)),
            }
        }
        yield Ok(done_event());
    };
    sse_response(events, state.settings.keepalive_interval, &headers)
}

/// One `chat.completion` object with `usage`.
async fn whole(state: &Shared, running: Running, reply: Reply) -> Result<Response, Error> {
    let headers = Headers::of(state, &running);
    let (answer, finish_reason, usage, overhead) = drive::finish(running.pieces).await?;
    let headers = headers.with_overhead(overhead);
    let body = json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": answer.message(),
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
    });
    let mut response = Json(body).into_response();
    headers.apply(response.headers_mut());
    Ok(response)
}
