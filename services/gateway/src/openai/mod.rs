//! The OpenAI-compatible generating routes: chat completions and legacy (fill-in-the-middle)
//! completions, and the SSE framing every streamed API shares.
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use crate::error::Error;
use crate::generate::overhead::{self, Overhead};
use crate::generate::Running;

pub mod chat;
pub mod completions;
mod reply;

/// The comment sent when nothing else went out for a keep-alive interval.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// An SSE response of ready frames (see [`frame`]) with keep-alive comments, the rate-limit
/// headers and the request id. The frames are written as they are: each answer piece is
/// serialised once, straight into the bytes of its frame.
pub fn sse_response<S>(frames: S, keepalive: Duration, running_headers: &Headers) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let body = async_stream::stream! {
        let mut frames = std::pin::pin!(frames);
        let idle = tokio::time::sleep(keepalive);
        tokio::pin!(idle);
        loop {
            let next = tokio::select! {
                frame = frames.next() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
                _ = &mut idle => Bytes::from_static(KEEPALIVE),
            };
            idle.as_mut().reset(tokio::time::Instant::now() + keepalive);
            yield Ok::<_, Infallible>(next);
        }
    };
    let response = Response::new(Body::from_stream(body));
    let mut response = overhead::timed(response, running_headers.overhead.clone());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    running_headers.apply(headers);
    response
}

/// One SSE frame: `event: <kind>` when given, then `data: <value as JSON>`. JSON text holds no
/// line break (serde_json escapes them in strings), so one `data:` line carries it.
pub fn frame(kind: Option<&str>, value: &impl Serialize) -> Bytes {
    let mut out = BytesMut::with_capacity(128).writer();
    if let Some(kind) = kind {
        out.get_mut().extend_from_slice(b"event: ");
        out.get_mut().extend_from_slice(kind.as_bytes());
        out.get_mut().put_u8(b'\n');
    }
    out.get_mut().extend_from_slice(b"data: ");
    // Serialising these types cannot fail: every map key is a string.
    let _ = serde_json::to_writer(&mut out, value);
    out.get_mut().extend_from_slice(b"\n\n");
    out.into_inner().freeze()
}

/// A named frame of [`frame`] taken apart again: its `event` and its JSON `data`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub fn parse_frame(bytes: &Bytes) -> (String, serde_json::Value) {
    let text = std::str::from_utf8(bytes).unwrap();
    let (event, data) = text.split_once('\n').unwrap();
    let kind = event.strip_prefix("event: ").unwrap().to_owned();
    let value = serde_json::from_str(data.strip_prefix("data: ").unwrap().trim_end()).unwrap();
    (kind, value)
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

fn error_frame(err: &Error) -> Bytes {
    frame(None, &err.body())
}

fn done_frame() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_are_one_data_line_even_for_text_with_line_breaks() {
        let value = serde_json::json!({"text": "a\nb\r\nc"});
        let bytes = frame(Some("message_delta"), &value);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(
            text,
            "event: message_delta\ndata: {\"text\":\"a\\nb\\r\\nc\"}\n\n"
        );
        assert_eq!(&frame(None, &1)[..], b"data: 1\n\n");
    }
}
