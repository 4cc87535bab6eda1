//! Request bodies, read within bounds (docs/security.md, "Bodies and admission"):
//!
//! - **Per route.** A body is read up to its route's bound: `MAX_BODY_BYTES` on the
//!   authenticated routes that take one (the generating routes, `count_tokens`),
//!   [`SMALL_BODY_BYTES`] on the one route that reads a body without credentials (`/api/show`).
//!   A body whose declared `Content-Length` is over the bound is refused with 413 before a byte
//!   of it is read; a body without a declared length is read up to the bound and refused there.
//!   Routes that take no body never read one.
//! - **In time.** A body must arrive whole within [`READ_TIMEOUT`] (then 408).
//! - **In flight.** On the authenticated routes a body holds its size (its declared length, or
//!   `MAX_BODY_BYTES` when undeclared) of a budget shared by every request
//!   (`MAX_BODY_BYTES_IN_FLIGHT`) from before it is read until its request has been handed to
//!   bridge-agent or refused, so the bodies the gateway holds at once are bounded in bytes, not
//!   only by the number of open connections. A body that finds the budget taken waits up to
//!   [`BUDGET_WAIT`] for room, then gets a 503 with `retry-after`.
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The most a route without credentials reads: `/api/show` takes `{"model": "<name>"}`.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// How long a whole body may take to arrive once reading it begins: 32 MiB at about 4.5 Mbit/s.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a body waits for room in the budget before its request is refused.
pub const BUDGET_WAIT: Duration = Duration::from_secs(10);

/// The budget is counted in KiB, so that any size up to 4 TiB fits a semaphore's permits.
const UNIT: u64 = 1024;

/// The bytes of bodies in flight on the authenticated routes (`MAX_BODY_BYTES_IN_FLIGHT`).
pub struct Budget {
    room: Arc<Semaphore>,
    bytes: u64,
}

/// Room taken in the [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    room: OwnedSemaphorePermit,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = self.room.num_permits() as u64 * UNIT;
        metrics::gauge!("gateway_body_bytes_in_flight").decrement(bytes as f64);
    }
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        Budget {
            room: Arc::new(Semaphore::new(units)),
            bytes,
        }
    }

    /// Takes room for `bytes`, waiting up to [`BUDGET_WAIT`]. `bytes` is at most
    /// `MAX_BODY_BYTES`, which the configuration keeps within the budget.
    async fn reserve(&self, bytes: u64) -> Result<Reservation, Error> {
        self.reserve_within(bytes, BUDGET_WAIT).await
    }

    async fn reserve_within(&self, bytes: u64, wait: Duration) -> Result<Reservation, Error> {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        let room = self.room.clone().acquire_many_owned(units);
        match tokio::time::timeout(wait, room).await {
            Ok(Ok(room)) => {
                let bytes = u64::from(units) * UNIT;
                metrics::gauge!("gateway_body_bytes_in_flight").increment(bytes as f64);
                Ok(Reservation { room })
            }
            // The semaphore is never closed; either way the request cannot go on.
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("gateway_rate_limited_total", "kind" => "bodies").increment(1);
                Err(Error::BodiesInFlight { limit: self.bytes })
            }
        }
    }

    /// Bytes free in the budget now (to the KiB).
    pub fn available(&self) -> u64 {
        self.room.available_permits() as u64 * UNIT
    }
}

/// The body's declared length, when it declares one (`Content-Length`).
fn declared(body: &Body) -> Option<u64> {
    http_body::Body::size_hint(body).exact()
}

/// Reads a body of an authenticated route: refused on a declared length over `limit`, then
/// room for it taken in `budget`, then read within `limit` and [`READ_TIMEOUT`]. The room is
/// held as long as the returned [`Reservation`].
pub async fn read_within_budget(
    body: Body,
    limit: usize,
    budget: &Budget,
) -> Result<(Bytes, Reservation), Error> {
    refuse_declared_over(&body, limit)?;
    let size = declared(&body).unwrap_or(limit as u64);
    let reservation = budget.reserve(size).await?;
    let bytes = read_body(body, limit).await?;
    Ok((bytes, reservation))
}

fn refuse_declared_over(body: &Body, limit: usize) -> Result<(), Error> {
    // The lower bound is the declared length when there is one, else 0.
    if http_body::Body::size_hint(body).lower() > limit as u64 {
        return Err(Error::BodyTooLarge { limit });
    }
    Ok(())
}

/// Reads a request body up to `limit` bytes within [`READ_TIMEOUT`]; a declared length over
/// `limit` is refused before anything is read.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    read_body_within(body, limit, READ_TIMEOUT).await
}

async fn read_body_within(body: Body, limit: usize, within: Duration) -> Result<Bytes, Error> {
    refuse_declared_over(&body, limit)?;
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(within, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) if is_length_limit(&err) => Err(Error::BodyTooLarge { limit }),
        Ok(Err(err)) => Err(Error::invalid(
            format!("could not read the request body: {err}"),
            None,
        )),
        Err(_) => Err(Error::BodyTimeout { after: within }),
    }
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::StreamExt;

    /// A body that declares `length` bytes and fails if anything reads it.
    struct Declared(u64);

    impl http_body::Body for Declared {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            panic!("the body was read")
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.0)
        }
    }

    #[tokio::test]
    async fn a_declared_length_over_the_bound_is_refused_unread() {
        let err = read_body(Body::new(Declared(50 << 20)), SMALL_BODY_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BodyTooLarge { limit } if limit == SMALL_BODY_BYTES));
        let budget = Budget::new(1 << 20);
        let err = read_within_budget(Body::new(Declared(2 << 20)), 1 << 20, &budget)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BodyTooLarge { .. }));
        assert_eq!(budget.available(), 1 << 20, "nothing was reserved");
    }

    #[tokio::test]
    async fn an_undeclared_body_is_read_up_to_the_bound() {
        let chunks = futures_util::stream::iter(
            (0..100).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024]))),
        );
        let err = read_body(Body::from_stream(chunks), SMALL_BODY_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BodyTooLarge { .. }));
        assert_eq!(
            read_body(Body::from("{}"), SMALL_BODY_BYTES).await.unwrap(),
            "{}"
        );
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_refused_with_a_408() {
        let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("{"))])
            .chain(futures_util::stream::pending());
        let err = read_body_within(
            Body::from_stream(stalled),
            SMALL_BODY_BYTES,
            Duration::from_millis(20),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::BodyTimeout { .. }));
        assert_eq!(err.status().as_u16(), 408);
        assert_eq!(err.code(), "body_timeout");
    }

    #[tokio::test]
    async fn bodies_hold_their_size_of_the_budget_until_done() {
        let budget = Arc::new(Budget::new(64 * 1024));
        let body = || Body::from(vec![b'x'; 40 * 1024]);
        let (bytes, held) = read_within_budget(body(), 1 << 20, &budget).await.unwrap();
        assert_eq!(bytes.len(), 40 * 1024);
        assert_eq!(budget.available(), 24 * 1024);
        // A second body of that size waits for room, and past the wait is refused with a 503.
        let err = budget
            .reserve_within(40 * 1024, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BodiesInFlight { limit: 65536 }));
        assert_eq!(err.status().as_u16(), 503);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move {
                let read = read_within_budget(body(), 1 << 20, &budget).await;
                let _ = tx.send(());
                read.map(|(bytes, _)| bytes.len())
            }
        });
        // One thread: each yield lets the reader run until it waits.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(rx.try_recv().is_err(), "it waits while the room is held");
        // Room given back, it is read.
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), 40 * 1024);
        assert_eq!(budget.available(), 64 * 1024, "and gives it back");
    }
}
