//! The OpenAI-compatible generating routes: chat completions and legacy (fill-in-the-middle)
//! completions.
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use crate::error::Error;
use crate::generate::overhead::{self, Overhead};
use crate::generate::Running;

pub mod chat;
pub mod completions;

/// An SSE response with keep-alive comments, the rate-limit headers and the request id.
pub fn sse_response<S>(
    events: S,
    keepalive: std::time::Duration,
    running_headers: &Headers,
) -> Response
where
    S: Stream<Item = Result<SseEvent, std::convert::Infallible>> + Send + 'static,
{
    let response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"))
        .into_response();
    let mut response = overhead::timed(response, running_headers.overhead.clone());
    let headers = response.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    running_headers.apply(headers);
    response
}

/// The headers every answer of a running job carries, and the job's overhead meter.
pub struct Headers {
    rate: crate::ratelimit::RateHeaders,
    id: String,
    /// The gateway's own time so far, when `LOCAL_PROVIDER_OVERHEAD_HEADER` is on.
    header: Option<std::time::Duration>,
    /// The request's meter: a streamed body adds its polls, a whole answer its rendering.
    pub(crate) overhead: std::sync::Arc<Overhead>,
    /// When a whole answer's rendering began (its end is [`Headers::apply`]).
    rendering: Option<std::time::Instant>,
}

impl Headers {
    pub fn of(state: &crate::state::AppState, running: &Running) -> Self {
        Self {
            rate: running.rate.clone(),
            id: running.id.clone(),
            header: state
                .settings
                .overhead_header
                .then_some(running.pre_dispatch),
            overhead: running.overhead.clone(),
            rendering: None,
        }
    }

    /// The request's overhead up to a non-streamed answer's end; building its body, until
    /// [`Headers::apply`], is added to the meter.
    pub fn with_overhead(mut self, overhead: std::time::Duration) -> Self {
        if self.header.is_some() {
            self.header = Some(overhead);
        }
        self.rendering = Some(std::time::Instant::now());
        self
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(began) = self.rendering {
            self.overhead.add_since(began);
        }
        self.rate.apply(headers);
        if let Ok(id) = HeaderValue::from_str(&self.id) {
            headers.insert("x-request-id", id);
        }
        if let Some(overhead) = self.header {
            let ms = format!("{:.3}", overhead.as_secs_f64() * 1000.0);
            if let Ok(value) = HeaderValue::from_str(&ms) {
                headers.insert("x-gateway-overhead-ms", value);
            }
        }
    }
}

fn data(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

fn error_event(err: &Error) -> SseEvent {
    data(&err.body())
}

fn done_event() -> SseEvent {
    SseEvent::default().data("[DONE]")
}
