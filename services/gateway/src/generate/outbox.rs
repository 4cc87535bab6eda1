//! What one request's task has produced and its client has not read yet: bounded in bytes.
//! Past the bound the request ends alone (`slow_client`) and what waited is freed at once, so a
//! client that stops reading costs at most the bound, and nobody else waits for it.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::Stream;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Generic over what it holds, so that it needs nothing from `drive.rs`, its one user.
pub struct Outbox<T> {
    inner: Mutex<Inner<T>>,
    ready: Notify,
    limit: usize,
}

struct Inner<T> {
    pieces: VecDeque<(T, usize)>,
    bytes: usize,
    /// The last piece is in; nothing follows.
    closed: bool,
}

/// The client is further behind than the bound allows.
#[derive(Debug)]
pub struct Full;

impl<T: Send + 'static> Outbox<T> {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                pieces: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            ready: Notify::new(),
            limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Every change is a few plain statements; a poisoned lock still holds usable state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a piece costing `bytes`; refused when that would pass the bound.
    pub fn push(&self, piece: T, bytes: usize) -> Result<(), Full> {
        {
            let mut inner = self.lock();
            if inner.bytes + bytes > self.limit {
                return Err(Full);
            }
            inner.bytes += bytes;
            inner.pieces.push_back((piece, bytes));
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues the last piece. With `discard`, everything still unread is dropped first (the
    /// client gets the ending next, and the memory comes back now).
    pub fn end(&self, piece: T, discard: bool) {
        {
            let mut inner = self.lock();
            if discard {
                inner.pieces = VecDeque::new();
                inner.bytes = 0;
            }
            inner.pieces.push_back((piece, 0));
            inner.closed = true;
        }
        self.ready.notify_one();
    }

    /// Ends without a last piece (nobody is reading any more).
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Option<T>> {
        let mut inner = self.lock();
        match inner.pieces.pop_front() {
            Some((piece, bytes)) => {
                inner.bytes -= bytes;
                Some(Some(piece))
            }
            None if inner.closed => Some(None),
            None => None,
        }
    }

    /// The pieces in order, for the one reader. Dropping the stream fires `reader_gone`.
    pub fn reader(self: Arc<Self>, reader_gone: CancellationToken) -> impl Stream<Item = T> + Send {
        let guard: DropGuard = reader_gone.drop_guard();
        async_stream::stream! {
            let _guard = guard;
            loop {
                // `notify_one` keeps a permit when nobody waits, so no wake-up is lost.
                match self.pop() {
                    Some(Some(piece)) => yield piece,
                    Some(None) => break,
                    None => self.ready.notified().await,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::generate::Piece;
    use futures_util::StreamExt;
    use provider_shared::bridge::Delta;

    fn text(t: impl ToString) -> Piece {
        Piece::Delta(Delta {
            content: Some(t.to_string()),
            ..Delta::default()
        })
    }

    #[tokio::test]
    async fn past_the_bound_the_unread_pieces_are_dropped_and_the_ending_comes_next() {
        let outbox = Outbox::new(100);
        outbox.push(text("a"), 60).unwrap();
        assert!(outbox.push(text("b"), 60).is_err());
        outbox.end(
            Piece::Failed(crate::error::Error::Internal("slow".into())),
            true,
        );
        let gone = CancellationToken::new();
        let pieces: Vec<Piece> = outbox.clone().reader(gone.clone()).collect().await;
        assert_eq!(pieces.len(), 1);
        assert!(matches!(pieces[0], Piece::Failed(_)));
        assert!(gone.is_cancelled(), "the reader's end is announced");
    }

    #[tokio::test]
    async fn pieces_arrive_in_order_while_within_the_bound() {
        let outbox = Outbox::new(1000);
        let gone = CancellationToken::new();
        let reader = outbox.clone().reader(gone.clone());
        tokio::pin!(reader);
        for n in 0..5 {
            outbox.push(text(n), 100).unwrap();
        }
        let Some(Piece::Delta(first)) = reader.next().await else {
            panic!("no first piece")
        };
        assert!(!gone.is_cancelled(), "the reader is still there");
        outbox.close();
        let mut seen = vec![first.content.unwrap()];
        while let Some(Piece::Delta(d)) = reader.next().await {
            seen.push(d.content.unwrap());
        }
        assert_eq!(seen, ["0", "1", "2", "3", "4"]);
    }
}
