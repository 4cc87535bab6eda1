//! Turns the agent's frames for one request into [`Piece`]s: output deltas as they arrive, then
//! exactly one ending, answered or failed. Dropping the stream before its end cancels the request
//! all the way to the agent and closes its books.
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::Stream;
use provider_shared::bridge::{Outcome, Usage};
use serde_json::Value;

use super::account::Accounting;
use super::agent_error;
use super::convert::Answer;
use crate::bridge::{Call, Event};
use crate::error::Error;
use crate::state::{AppState, Shared};
use crate::tokens;

pub enum Piece {
    /// An OpenAI-shaped delta: `content`, `reasoning_content` and/or `tool_calls`.
    Delta(Value),
    /// The answer is complete.
    Done {
        answer: Box<Answer>,
        finish_reason: String,
        usage: Usage,
        /// The gateway's own time for the whole request.
        overhead: Duration,
    },
    /// The request failed; nothing follows.
    Failed(Error),
}

pub type Pieces = Pin<Box<dyn Stream<Item = Piece> + Send>>;

enum Next {
    Bridge(Event),
    Backstop,
    GraceOver,
}

/// How long the gateway waits for bridge-agent's own timeouts before it gives up by itself.
fn backstop(state: &AppState) -> Duration {
    state.settings.response_timeout + state.settings.connection_timeout + Duration::from_secs(5)
}

async fn next(state: &AppState, call: &mut Call, deadline: tokio::time::Instant) -> Next {
    tokio::select! {
        event = call.next() => Next::Bridge(event),
        _ = tokio::time::sleep_until(deadline) => Next::Backstop,
        _ = state.grace_over.cancelled() => Next::GraceOver,
    }
}

fn backstop_error(after: Duration) -> Error {
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

fn shutdown_error() -> Error {
    Error::Agent {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: provider_shared::bridge::codes::SHUTTING_DOWN.into(),
        message: "the gateway shut down before the answer was complete; try again".into(),
        retry_after: Some(Duration::from_secs(1)),
    }
}

fn lost_error() -> Error {
    Error::Agent {
        status: axum::http::StatusCode::BAD_GATEWAY,
        code: "bridge_agent_disconnected".into(),
        message: "the connection to bridge-agent broke before the answer was complete".into(),
        retry_after: None,
    }
}

pub fn drive(state: Shared, mut call: Call, mut account: Accounting) -> Pieces {
    Box::pin(async_stream::stream! {
        let mut answer = Answer::default();
        let mut streamed = false;
        let limit = backstop(&state);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let event = next(&state, &mut call, deadline).await;
            let busy_since = Instant::now();
            let failure = match event {
                Next::Bridge(Event::Chunk(c)) => {
                    account.mark_first_chunk();
                    let delta = answer.absorb(&c.delta);
                    account.busy += busy_since.elapsed();
                    if let Some(delta) = delta {
                        streamed = true;
                        yield Piece::Delta(delta);
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
                                yield Piece::Delta(delta);
                            }
                        }
                        let completion = tokens::count_answer(answer.completion_text()).await;
                        account.busy += busy_since.elapsed();
                        let overhead = account.overhead();
                        let usage = account.finish("ok", result.usage, completion);
                        let finish_reason = answer.finish_reason();
                        yield Piece::Done { answer: Box::new(answer), finish_reason, usage, overhead };
                        break;
                    }
                    Outcome::Error { error } => agent_error(&error),
                },
                Next::Bridge(Event::Lost) => lost_error(),
                Next::Backstop => backstop_error(limit),
                Next::GraceOver => shutdown_error(),
            };
            let completion = tokens::count_answer(answer.completion_text()).await;
            account.finish(&failure.code(), None, completion);
            yield Piece::Failed(failure);
            break;
        }
    })
}

/// Waits for the end of a non-streamed answer.
pub async fn finish(mut pieces: Pieces) -> Result<(Answer, String, Usage, Duration), Error> {
    use futures_util::StreamExt;
    while let Some(piece) = pieces.next().await {
        match piece {
            Piece::Delta(_) => {}
            Piece::Done {
                answer,
                finish_reason,
                usage,
                overhead,
            } => return Ok((*answer, finish_reason, usage, overhead)),
            Piece::Failed(err) => return Err(err),
        }
    }
    Err(Error::Internal("the answer ended without a result".into()))
}
