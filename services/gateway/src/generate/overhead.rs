//! The gateway's own time for one request, `gateway_overhead_seconds` (docs/performance.md,
//! "What `gateway_overhead_seconds` counts"): every part of the request's path that runs gateway
//! code adds to one meter, and the meter records the sum when the last part lets go of it, so that
//! time spent after the answer's end (writing its last events) is in it too. What adds, and where:
//!
//! - before dispatch (`generate/preamble.rs`): authentication, body, validation, limits, prompt count,
//!   as wall time, less any wait for a bridge-agent connection;
//! - per IPC frame (`bridge.rs` reader): the poll that reads and decodes the frame, and routing it;
//! - per frame in the request's task (`drive.rs` `run`): absorbing it, queueing its piece, and at
//!   the end counting the answer's tokens and closing the books;
//! - per body poll that yields data ([`timed`]): taking a piece, rendering it, encoding the event;
//! - a whole (non-streamed) answer: building its body (`openai::Headers`).
//!
//! Not in it: waiting for the agent, for a slow client, or for the runtime to schedule a task,
//! and the socket writes hyper makes between body polls.
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::response::Response;
use bytes::Bytes;

#[derive(Default)]
pub struct Overhead {
    nanos: AtomicU64,
}

impl Overhead {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn add(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Adds the time since `since`.
    pub fn add_since(&self, since: Instant) {
        self.add(since.elapsed());
    }

    /// The time so far.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

impl Drop for Overhead {
    fn drop(&mut self) {
        metrics::histogram!("gateway_overhead_seconds").record(self.total().as_secs_f64());
    }
}

/// `response` with each poll of its body that yields data added to `overhead`.
pub fn timed(response: Response, overhead: Arc<Overhead>) -> Response {
    response.map(|inner| Body::new(TimedBody { inner, overhead }))
}

struct TimedBody {
    inner: Body,
    overhead: Arc<Overhead>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let began = Instant::now();
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A poll that only finds nothing ready yet is the runtime's cost, not this request's.
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.overhead.add_since(began);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Keeps this thread busy for `d` (work, as opposed to waiting).
    fn busy(d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn polls_that_yield_data_count_and_waiting_does_not() {
        let overhead = Overhead::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let stream = async_stream::stream! {
            while let Some(bytes) = rx.recv().await {
                // Rendering work the meter must see.
                busy(Duration::from_millis(20));
                yield Ok::<_, std::convert::Infallible>(bytes);
            }
        };
        let response = timed(Response::new(Body::from_stream(stream)), overhead.clone());
        let reading = tokio::spawn(axum::body::to_bytes(response.into_body(), 1024));
        // The reader polls an empty body, then waits 200 ms for data: none of it counts (this
        // runtime has one thread, so the reader is idle while this one is busy).
        tokio::task::yield_now().await;
        busy(Duration::from_millis(200));
        tx.send(Bytes::from_static(b"one ")).await.unwrap();
        tx.send(Bytes::from_static(b"two")).await.unwrap();
        drop(tx);
        let body = reading.await.unwrap().unwrap();
        assert_eq!(&body[..], b"one two", "the body passes unchanged");
        let total = overhead.total();
        assert!(
            total >= Duration::from_millis(40) && total < Duration::from_millis(200),
            "{total:?}"
        );
    }
}
