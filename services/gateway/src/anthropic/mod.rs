//! Anthropic's Messages API: `POST /v1/messages` on the shared generation path (auth by
//! `x-api-key` or bearer, limits, sessions, audit, cancellation), reaching the agent as a `chat`
//! payload ([`convert`]); and `POST /v1/messages/count_tokens` with the gateway's counter. Errors
//! in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`, also in a stream.
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::generate::{self, drive, Job, Piece};
use crate::openai::{sse_response, Headers};
use crate::parts::Parts;
use crate::state::{AppState, Shared};
use crate::{tokens, validate};

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

/// The body as an object naming our model; another model is Anthropic's `not_found_error`.
fn parse(state: &AppState, body: &[u8]) -> Result<Map<String, Value>, Error> {
    let obj = validate::object_of(body)?;
    let configured = &state.settings.model_name;
    match obj.get("model") {
        Some(Value::String(m)) if validate::model_matches(m, configured) => Ok(obj),
        Some(Value::String(m)) => Err(Error::NotFound {
            message: format!("model: the model `{m}` does not exist here; use `{configured}`"),
            code: "model_not_found",
        }),
        Some(v) => Err(validate::invalid(
            "model",
            format!("expected a string, got {}", validate::describe(v)),
        )),
        None => Err(validate::invalid(
            "model",
            format!("required; use `{configured}`"),
        )),
    }
}

pub async fn messages(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AnthropicError> {
    let started = Instant::now();
    let (principal, body) = generate::caller_and_body(&state, &headers, peer, body).await?;
    let obj = parse(&state, &body)?;
    let limits = validate::Limits::of(&state.settings);
    let request = convert::request(&obj, &limits, Purpose::Generate)?;
    let job = Job::chat(
        request.messages,
        request.parameters,
        request.tools.is_some(),
        request.max_tokens,
        request.stream,
        "msg_",
    );
    let running = generate::start(&state, &principal, peer, started, job).await?;
    let headers = Headers::of(&state, &running);
    let shell = Shell {
        id: running.id.clone(),
        model: state.settings.model_name.clone(),
        prompt_tokens: running.prompt_tokens,
    };
    let mut pieces = running.pieces;
    if !request.stream {
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

/// `{"input_tokens": n}`, counted the way requests are counted for the token budget. Counting
/// takes nothing from the rate limits.
pub async fn count_tokens(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, AnthropicError> {
    let (_principal, body) = generate::caller_and_body(&state, &headers, peer, body).await?;
    let obj = parse(&state, &body)?;
    let limits = validate::Limits::of(&state.settings);
    let request = convert::request(&obj, &limits, Purpose::CountTokens)?;
    tokens::ready().await;
    let input_tokens = tokens::count_prompt(&request.messages, request.tools.as_ref());
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
