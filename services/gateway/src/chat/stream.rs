//! The streamed answer as strict clients need it (PRODUCT §2): headers and a role chunk at once,
//! keep-alive comments while the agent thinks, `choices` in every chunk, one final chunk with
//! `finish_reason`, the usage chunk when asked, errors as `data: {"error": …}`, then `[DONE]`.
use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use provider_shared::bridge::{Outcome, Usage};
use serde_json::{json, Value};

use super::account::Accounting;
use super::convert::Answer;
use super::{agent_error, lost_error, Reply};
use crate::bridge::{Call, Event};
use crate::error::Error;
use crate::state::Shared;
use crate::tokens;

pub enum Next {
    Bridge(Event),
    Backstop,
    GraceOver,
}

/// How long the gateway waits for bridge-agent's own timeouts before it gives up by itself.
pub fn backstop(state: &crate::state::AppState) -> Duration {
    state.settings.response_timeout + state.settings.connection_timeout + Duration::from_secs(5)
}

pub async fn next(
    state: &crate::state::AppState,
    call: &mut Call,
    deadline: tokio::time::Instant,
) -> Next {
    tokio::select! {
        event = call.next() => Next::Bridge(event),
        _ = tokio::time::sleep_until(deadline) => Next::Backstop,
        _ = state.grace_over.cancelled() => Next::GraceOver,
    }
}

pub fn backstop_error(after: Duration) -> Error {
    Error::Agent {
        status: axum::http::StatusCode::GATEWAY_TIMEOUT,
        code: "response_timeout".into(),
        message: format!(
            "no answer from bridge-agent within {:.0}s",
            after.as_secs_f64()
        ),
        retry_after: None,
    }
}

pub fn shutdown_error() -> Error {
    Error::Agent {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: provider_shared::bridge::codes::SHUTTING_DOWN.into(),
        message: "the gateway shut down before the answer was complete; try again".into(),
        retry_after: Some(Duration::from_secs(1)),
    }
}

fn chunk(reply: &Reply, delta: Value, finish_reason: Option<&str>) -> SseEvent {
    SseEvent::default().data(
        json!({
            "id": reply.id,
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
        .to_string(),
    )
}

fn usage_chunk(reply: &Reply, usage: &Usage) -> SseEvent {
    SseEvent::default().data(
        json!({
            "id": reply.id,
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage,
        })
        .to_string(),
    )
}

fn error_event(err: &Error) -> SseEvent {
    SseEvent::default().data(err.body().to_string())
}

pub fn respond(state: Shared, mut call: Call, mut account: Accounting, reply: Reply) -> Response {
    let keepalive = state.settings.keepalive_interval;
    let rate = reply.rate.clone();
    let request_id = reply.id.clone();
    let events = async_stream::stream! {
        yield Ok::<_, Infallible>(chunk(&reply, json!({"role": "assistant", "content": ""}), None));
        let mut answer = Answer::default();
        let mut streamed = false;
        let limit = backstop(&state);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let failure = match next(&state, &mut call, deadline).await {
                Next::Bridge(Event::Chunk(c)) => {
                    account.mark_first_chunk();
                    if let Some(delta) = answer.absorb(&c.delta) {
                        streamed = true;
                        yield Ok(chunk(&reply, delta, None));
                    }
                    if c.finish_reason.is_some() {
                        answer.finish_reason = c.finish_reason;
                    }
                    continue;
                }
                Next::Bridge(Event::Result(result)) => match result.outcome {
                    Outcome::Ok { result } => {
                        account.mark_first_chunk();
                        answer.absorb_result(&result);
                        if !streamed {
                            if let Some(delta) = answer.as_single_delta() {
                                yield Ok(chunk(&reply, delta, None));
                            }
                        }
                        yield Ok(chunk(&reply, json!({}), Some(&answer.finish_reason())));
                        let completion = tokens::count_text(&answer.completion_text());
                        let usage = account.finish("ok", result.usage, completion);
                        if reply.include_usage {
                            yield Ok(usage_chunk(&reply, &usage));
                        }
                        break;
                    }
                    Outcome::Error { error } => agent_error(&error),
                },
                Next::Bridge(Event::Lost) => lost_error(),
                Next::Backstop => backstop_error(limit),
                Next::GraceOver => shutdown_error(),
            };
            let completion = tokens::count_text(&answer.completion_text());
            account.finish(&failure.code(), None, completion);
            yield Ok(error_event(&failure));
            break;
        }
        yield Ok(SseEvent::default().data("[DONE]"));
    };
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"))
        .into_response();
    let headers = response.headers_mut();
    rate.apply(headers);
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", id);
    }
    response
}
