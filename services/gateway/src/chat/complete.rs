//! The non-streamed answer: one OpenAI `chat.completion` object with `usage`.
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use provider_shared::bridge::Outcome;
use serde_json::json;

use super::account::Accounting;
use super::convert::Answer;
use super::stream::{backstop, backstop_error, next, shutdown_error, Next};
use super::{agent_error, lost_error, Reply};
use crate::bridge::{Call, Event};
use crate::error::Error;
use crate::state::AppState;
use crate::tokens;

pub async fn respond(
    state: &AppState,
    mut call: Call,
    mut account: Accounting,
    reply: Reply,
) -> Result<Response, Error> {
    let mut answer = Answer::default();
    let limit = backstop(state);
    let deadline = tokio::time::Instant::now() + limit;
    let (usage, finish_reason) = loop {
        let failure = match next(state, &mut call, deadline).await {
            Next::Bridge(Event::Chunk(c)) => {
                account.mark_first_chunk();
                answer.absorb(&c.delta);
                if c.finish_reason.is_some() {
                    answer.finish_reason = c.finish_reason;
                }
                continue;
            }
            Next::Bridge(Event::Result(result)) => match result.outcome {
                Outcome::Ok { result } => {
                    account.mark_first_chunk();
                    answer.absorb_result(&result);
                    let completion = tokens::count_text(&answer.completion_text());
                    break (
                        account.finish("ok", result.usage, completion),
                        answer.finish_reason(),
                    );
                }
                Outcome::Error { error } => agent_error(&error),
            },
            Next::Bridge(Event::Lost) => lost_error(),
            Next::Backstop => backstop_error(limit),
            Next::GraceOver => shutdown_error(),
        };
        account.finish(&failure.code(), None, 0);
        return Err(failure);
    };
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
    reply.rate.apply(response.headers_mut());
    if let Ok(id) = HeaderValue::from_str(&reply.id) {
        response.headers_mut().insert("x-request-id", id);
    }
    Ok(response)
}
