//! Anthropic's Messages API: `POST /v1/messages` on the shared generation path (auth by
//! `x-api-key` or bearer, limits, sessions, audit, cancellation), reaching the agent as a `chat`
//! payload ([`convert`]); and `POST /v1/messages/count_tokens` with the gateway's counter. Errors
//! in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, also in a stream.
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::error::Error;
use crate::generate::{self, drive, Ask, Job, Piece};
use crate::openai::{sse_response, Headers};
use crate::parts::Parts;
use crate::state::Shared;
use crate::validate;

pub mod convert;
mod events;

use convert::Purpose;
use events::Render;

/// An error in Anthropic's shape, with the headers of the gateway's one mapping of errors
/// (`retry-after`, `x-should-retry`, the rate-limit headers).
pub struct AnthropicError(pub Box<Error>);

impl From<Error> for AnthropicError {
    fn from(err: Error) -> Self {
        AnthropicError(Box::new(err))
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let (status, body) = self.0.anthropic();
        let mut response = self.0.into_response();
        *response.status_mut() = status;
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(body.to_string());
        response
    }
}

pub async fn messages(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AnthropicError> {
    let (caller, body) = generate::arrive(&state, &headers, peer, body).await?;
    let limits = validate::Limits::of(&state.settings);
    let request = generate::off_thread_if_large(body.len(), move || {
        convert::request(&validate::object_of(&body)?, &limits, Purpose::Generate)
    })
    .await?;
    let ask = Ask {
        model: request.model,
        max_tokens: request.max_tokens,
        stream: request.stream,
    };
    let job = Job::chat(ask.clone(), request.messages, request.parameters, "msg_");
    let running = caller.start(&state, job).await?;
    let headers = Headers::of(&state, &running);
    let shell = Shell {
        id: running.id.clone(),
        model: ask.model,
        prompt_tokens: running.prompt_tokens,
    };
    let mut pieces = running.pieces;
    if !ask.stream {
        let (answer, finish_reason, usage, overhead) = drive::finish(pieces).await?;
        let headers = headers.with_overhead(overhead);
        let mut parts = Parts::default();
        if let Some(delta) = answer.as_single_delta() {
            parts.absorb(&delta);
        }
        let content: Vec<Value> = parts.list.iter().map(events::block).collect();
        let mut message = shell.message(content, Some(stop_reason(&finish_reason)));
        message["usage"] = json!({
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        });
        let mut response = Json(message).into_response();
        headers.apply(response.headers_mut());
        return Ok(response);
    }
    let events = async_stream::stream! {
        let mut render = Render::new(shell);
        yield render.start();
        while let Some(piece) = pieces.next().await {
            let events = match piece {
                Piece::Delta(delta) => render.delta(&delta),
                Piece::Done { finish_reason, usage, .. } => {
                    render.done(stop_reason(&finish_reason), &usage)
                }
                Piece::Failed(err) => render.failed(&err),
            };
            for event in events {
                yield event;
            }
        }
    };
    Ok(sse_response(
        events,
        state.settings.keepalive_interval,
        &headers,
    ))
}

/// `{"input_tokens": n}`, counted the way requests are counted for the token budget. The key or
/// a session only (counting reaches no agent, so keyless callers have no use for it); the body
/// within the same bounds as a generating request's; admitted like one (a concurrency permit,
/// one request from a bucket of its own at `RATE_LIMIT_RPM`) before anything is counted.
pub async fn count_tokens(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, AnthropicError> {
    let accept = crate::auth::Accept::KeyOrSession;
    let (caller, body) = generate::arrive_as(&state, &headers, peer, body, accept).await?;
    let limits = validate::Limits::of(&state.settings);
    let mut request = generate::off_thread_if_large(body.len(), move || {
        convert::request(&validate::object_of(&body)?, &limits, Purpose::CountTokens)
    })
    .await?;
    state.models.resolve(&request.model)?;
    let mut parameters = serde_json::Map::new();
    if let Some(tools) = request.parameters.remove("tools") {
        parameters.insert("tools".into(), tools);
    }
    let payload = generate::Prompt::Chat {
        messages: request.messages,
        parameters,
    };
    let input_tokens = caller.count(&state, payload).await?;
    Ok(Json(json!({"input_tokens": input_tokens})))
}

/// Anthropic's `stop_reason` for a chat `finish_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// The fields of the message that do not depend on the answer.
pub struct Shell {
    id: String,
    model: String,
    prompt_tokens: u64,
}

impl Shell {
    fn message(&self, content: Vec<Value>, stop_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_and_blocks() {
        assert_eq!(stop_reason("stop"), "end_turn");
        assert_eq!(stop_reason("length"), "max_tokens");
        assert_eq!(stop_reason("tool_calls"), "tool_use");
        let mut parts = Parts::default();
        parts.absorb(
            &serde_json::from_value(json!({"reasoning_content": "hm", "tool_calls": [
            {"index": 0, "id": "toolu_1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}))
            .unwrap(),
        );
        let blocks: Vec<Value> = parts.list.iter().map(events::block).collect();
        assert_eq!(
            blocks[0],
            json!({"type": "thinking", "thinking": "hm", "signature": ""})
        );
        assert_eq!(
            blocks[1],
            json!({"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}})
        );
    }
}
