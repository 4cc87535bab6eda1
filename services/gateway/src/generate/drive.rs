//! Turns the agent's frames for one request into [`Piece`]s: output deltas as they arrive, then
//! exactly one ending, answered or failed. The request runs in its own task, so its deadline,
//! its cancellation and a lost bridge-agent are handled whether or not the client reads; what
//! the client has not read yet waits in a bounded [`Outbox`]. Dropping the pieces before their
//! end cancels the request all the way to the agent and closes its books.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use provider_shared::answer::AnswerAccumulator;
use provider_shared::bridge::{codes, Delta, ErrorBody, Outcome, Usage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::account::Accounting;
use super::outbox::Outbox;
use crate::agent_client::{Call, CallEvent};
use crate::error::Error;
use crate::state::{AppState, Shared};
use crate::tokens;

pub enum Piece {
    /// A delta shaped for OpenAI clients ([`AnswerAccumulator::absorb`]): `content`,
    /// `reasoning_content` and/or `tool_calls`.
    Delta(Delta),
    /// The answer is complete.
    Done {
        answer: Box<AnswerAccumulator>,
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
    Bridge(CallEvent),
    Backstop,
    GraceOver,
    ReaderGone,
}

/// Maps a failed result from bridge-agent or the agent to the client's error.
pub fn agent_error(err: &ErrorBody) -> Error {
    use axum::http::StatusCode;
    let (status, retry_after) = match err.code.as_str() {
        codes::AGENT_UNAVAILABLE => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(5)),
        ),
        codes::SHUTTING_DOWN => (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(1)),
        ),
        codes::REQUEST_TIMEOUT | codes::RESPONSE_TIMEOUT => (StatusCode::GATEWAY_TIMEOUT, None),
        codes::REQUEST_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, None),
        _ => (StatusCode::BAD_GATEWAY, None),
    };
    Error::Agent {
        status,
        code: err.code.clone(),
        message: err.message.clone(),
        retry_after,
    }
}

/// How long the gateway waits for bridge-agent's own timeouts before it gives up by itself.
fn backstop(state: &AppState) -> Duration {
    state.settings.response_timeout + state.settings.connection_timeout + Duration::from_secs(5)
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
        code: codes::SHUTTING_DOWN.into(),
        message: "the gateway shut down before the answer was complete; try again".into(),
        retry_after: Some(Duration::from_secs(1)),
    }
}

fn lost_error(grace: Duration) -> Error {
    Error::Agent {
        status: axum::http::StatusCode::BAD_GATEWAY,
        code: "bridge_agent_disconnected".into(),
        message: format!(
            "the connection to bridge-agent broke before the answer was complete, and no bridge-agent resumed it within {:.0}s (LOCAL_PROVIDER_RESUME_GRACE)",
            grace.as_secs_f64()
        ),
        retry_after: None,
    }
}

fn slow_client_error(limit: usize) -> Error {
    Error::Agent {
        status: axum::http::StatusCode::BAD_GATEWAY,
        code: codes::SLOW_CLIENT.into(),
        message: format!(
            "the client fell more than {limit} bytes (LOCAL_PROVIDER_STREAM_BUFFER_BYTES) behind the answer and it was ended; read the stream as it comes"
        ),
        retry_after: None,
    }
}

/// Starts the request and returns what it produces. A streamed answer runs in a task of its own,
/// so its deadline, its cancellation and a lost bridge-agent are handled whether or not the
/// client reads. A whole answer runs in the task that waits for it ([`inline`]).
pub fn drive(state: Shared, call: Call, account: Accounting) -> Pieces {
    let outbox = Outbox::new(state.settings.stream_buffer_bytes);
    let reader_gone = CancellationToken::new();
    let span = tracing::info_span!("request", request_id = %call.id);
    let streamed = account.stream;
    let request = run(
        state.clone(),
        call,
        account,
        outbox.clone(),
        reader_gone.clone(),
    )
    .instrument(span);
    let pieces = outbox.reader(reader_gone);
    if streamed {
        state.tasks.spawn(request);
        Box::pin(pieces)
    } else {
        Box::pin(inline(request, pieces))
    }
}

/// A whole answer's request, run by whoever reads its pieces: each frame wakes the handler
/// waiting for the answer, not a task of the request's own that would wake it in turn. The
/// request is polled whenever no piece is ready, so its deltas never pile up in the outbox.
/// Dropped before its end (the client went away, or the server stopped), the request is cancelled
/// at bridge-agent (`Call`'s drop) and its books closed with what was relayed (`Accounting`'s
/// drop), as a streamed request is when its reader goes.
fn inline(
    request: impl Future<Output = ()> + Send + 'static,
    pieces: impl Stream<Item = Piece> + Send + 'static,
) -> impl Stream<Item = Piece> + Send {
    let state = (Box::pin(request), Box::pin(pieces), false);
    futures_util::stream::unfold(state, |(mut request, mut pieces, mut ended)| async move {
        loop {
            tokio::select! {
                biased;
                piece = pieces.next() => {
                    return piece.map(|piece| (piece, (request, pieces, ended)));
                }
                () = &mut request, if !ended => ended = true,
            }
        }
    })
}

async fn run(
    state: Shared,
    mut call: Call,
    mut account: Accounting,
    outbox: Arc<Outbox<Piece>>,
    reader_gone: CancellationToken,
) {
    // The whole answer is kept, streamed or not: the completion tokens are counted from its
    // text at the end unless the agent's result reports usage, which only the result tells
    // (docs/ARCHITECTURE.md, "Where state lives").
    let mut answer = AnswerAccumulator::default();
    let limit = backstop(&state);
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    // Made once and polled by reference every turn, not rebuilt per frame.
    let backstop = tokio::time::sleep_until(deadline);
    let reader_left = reader_gone.clone().cancelled_owned();
    let grace_over = state.grace_over.clone().cancelled_owned();
    tokio::pin!(backstop, reader_left, grace_over);
    // The last chunk taken, so a resumed answer continues right after it, and a chunk seen
    // twice is taken once.
    let mut last_chunk: Option<u64> = None;
    let failure = loop {
        let event = tokio::select! {
            biased;
            _ = &mut reader_left => Next::ReaderGone,
            event = call.next() => Next::Bridge(event),
            _ = &mut backstop => Next::Backstop,
            _ = &mut grace_over => Next::GraceOver,
        };
        let busy_since = Instant::now();
        // The reader's time for this frame (read, decode, route) is this request's too.
        account.overhead.add(call.take_ipc_time());
        match event {
            Next::Bridge(CallEvent::Chunk(c)) => {
                if last_chunk.is_some_and(|last| c.chunk_index <= last) {
                    continue;
                }
                last_chunk = Some(c.chunk_index);
                account.mark_first_chunk();
                let bytes = c.approx_bytes();
                let delta = answer.absorb(c.delta);
                account.relayed_bytes = answer.text_bytes();
                if c.finish_reason.is_some() {
                    answer.finish_reason = c.finish_reason;
                }
                if let Some(delta) = delta {
                    if outbox.push(Piece::Delta(delta), bytes).is_err() {
                        break slow_client(&state, &account);
                    }
                }
                account.overhead.add_since(busy_since);
            }
            Next::Bridge(CallEvent::Result(result)) => match result.outcome {
                Outcome::Ok { result } => {
                    account.mark_first_chunk();
                    // No chunk carried output: the result's message is the answer.
                    let delta = answer.absorb_result(&result);
                    account.relayed_bytes = answer.text_bytes();
                    if let Some(delta) = delta {
                        // The ending follows at once, so this one piece is not held back.
                        let _ = outbox.push(Piece::Delta(delta), 0);
                    }
                    let usage = match result.usage.filter(Usage::is_reported) {
                        // The agent's figure, held to what is possible, is what the client
                        // sees: the answer is not tokenized for a figure nobody reads.
                        Some(reported) => {
                            account.finish_reported("ok", reported, estimate_tokens(&answer))
                        }
                        None => {
                            // Boxed: the count runs once per request, and inline its future
                            // would enlarge every waiting request's task.
                            let completion =
                                Box::pin(tokens::count_answer(answer.completion_text())).await;
                            account.finish("ok", completion)
                        }
                    };
                    let finish_reason = answer.finish_reason();
                    account.overhead.add_since(busy_since);
                    let done = Piece::Done {
                        answer: Box::new(answer),
                        finish_reason,
                        usage,
                        overhead: account.overhead.total(),
                    };
                    outbox.end(done, false);
                    return;
                }
                Outcome::Error { error } => break agent_error(&error),
            },
            Next::Bridge(CallEvent::Lost) => {
                let grace = state.settings.resume_grace;
                let until = deadline.min(tokio::time::Instant::now() + grace);
                // Boxed for the same reason: rare, and larger than the rest of the task.
                let resuming = Box::pin(call.resume(last_chunk, started.elapsed(), until));
                let resumed = tokio::select! {
                    resumed = resuming => resumed,
                    _ = &mut reader_left => false,
                    _ = &mut grace_over => false,
                };
                if resumed {
                    tracing::info!(after_chunk_index = ?last_chunk, "request resumed on a new bridge-agent connection");
                    metrics::counter!("gateway_requests_resumed_total").increment(1);
                    continue;
                }
                break lost_error(grace);
            }
            Next::Bridge(CallEvent::Overflow) => break slow_client(&state, &account),
            Next::Backstop => break backstop_error(limit),
            Next::GraceOver => break shutdown_error(),
            Next::ReaderGone => {
                // Dropping the call cancels the request at bridge-agent.
                drop(call);
                account.finish("cancelled", estimate_tokens(&answer));
                outbox.close();
                return;
            }
        }
    };
    // Cancel at bridge-agent first (a no-op when its result already came).
    drop(call);
    let slow = failure.code() == codes::SLOW_CLIENT;
    account.finish(&failure.code(), estimate_tokens(&answer));
    outbox.end(Piece::Failed(failure), slow);
}

/// The tokens of an answer that ended early, for the budget: about four bytes each. Counting
/// exactly costs a tokenizer pass over all of it (seconds and many megabytes for a long run of
/// one character), which a failed request must not cost. An answer whose usage the agent reported
/// is charged this too (`Accounting::finish_reported`): the tokenizer would run only for the
/// budget.
fn estimate_tokens(answer: &AnswerAccumulator) -> u64 {
    (answer.text_bytes() as u64).div_ceil(4)
}

/// The client is too far behind: the request ends alone, with a metric and a log line (the
/// audit record comes with its books).
fn slow_client(state: &AppState, account: &Accounting) -> Error {
    metrics::counter!("gateway_slow_clients_total").increment(1);
    tracing::warn!(client_ip = %account.client_ip, limit = state.settings.stream_buffer_bytes,
        "client fell too far behind the answer; ending the request");
    slow_client_error(state.settings.stream_buffer_bytes)
}

/// Waits for the end of a non-streamed answer.
pub async fn finish(
    mut pieces: Pieces,
) -> Result<(AnswerAccumulator, String, Usage, Duration), Error> {
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
