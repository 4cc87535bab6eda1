//! The requests in flight, by id: where the bridge's frames for each one go. Each request may
//! have at most the table's byte bound of chunks waiting for its task; past that it is told
//! [`Event::Overflow`] and gets nothing more, so the WebSocket reader never waits for anyone.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use provider_shared::bridge::{ModelResult, StreamChunk};
use tokio::sync::mpsc;

use crate::metrics;

/// What happens to a request, delivered to the task serving it.
#[derive(Debug)]
pub enum Event {
    Chunk(StreamChunk),
    Result(ModelResult),
    /// The gateway asked to cancel it.
    Cancel,
    /// The gateway connection that sent it closed.
    GatewayGone,
    /// More than the byte bound of chunks waited for it: its gateway is not keeping up.
    Overflow,
}

/// Which gateway connection a request came from.
pub type ConnId = u64;

struct Entry {
    serial: u64,
    conn: ConnId,
    events: mpsc::UnboundedSender<Event>,
    /// Bytes of chunks sent on `events` and not yet taken by the request's task.
    queued: Arc<AtomicUsize>,
    /// Its `model_result` arrived (or it overflowed); anything after it is dropped.
    finished: bool,
}

/// Why a frame from the bridge could not be delivered, with the id it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undeliverable {
    UnknownId(String),
    AfterResult(String),
}

impl Event {
    /// The request a chunk or result names (taken from the frame, so no copy is made).
    fn id(&self) -> Option<&str> {
        match self {
            Event::Chunk(chunk) => Some(&chunk.id),
            Event::Result(result) => Some(&result.id),
            _ => None,
        }
    }

    fn into_id(self) -> String {
        match self {
            Event::Chunk(chunk) => chunk.id,
            Event::Result(result) => result.id,
            _ => String::new(),
        }
    }
}

pub struct RequestTable {
    inner: Mutex<Inner>,
    buffer_bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    next_serial: u64,
}

/// Proof of registration; removing with it never removes a later request reusing the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl RequestTable {
    pub fn new(buffer_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            buffer_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every change is one statement.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `id` for `conn`; `None` when that id is already in flight. The counter is
    /// what the request's task gives back as it takes chunks (see [`Taken`]).
    pub fn insert(
        &self,
        id: &str,
        conn: ConnId,
        events: mpsc::UnboundedSender<Event>,
        queued: Arc<AtomicUsize>,
    ) -> Option<Ticket> {
        let mut inner = self.lock();
        if inner.entries.contains_key(id) {
            return None;
        }
        inner.next_serial += 1;
        let serial = inner.next_serial;
        inner.entries.insert(
            id.to_owned(),
            Entry {
                serial,
                conn,
                events,
                queued,
                finished: false,
            },
        );
        metrics::gauge_in_flight(inner.entries.len());
        Some(Ticket(serial))
    }

    /// Forgets the request registered with `ticket`.
    pub fn remove(&self, id: &str, ticket: Ticket) {
        let mut inner = self.lock();
        if inner.entries.get(id).is_some_and(|e| e.serial == ticket.0) {
            inner.entries.remove(id);
        }
        metrics::gauge_in_flight(inner.entries.len());
    }

    /// Hands a chunk or result from the bridge to the request it names.
    pub fn route(&self, event: Event) -> Result<(), Undeliverable> {
        let mut inner = self.lock();
        let Some(entry) = event.id().and_then(|id| inner.entries.get_mut(id)) else {
            return Err(Undeliverable::UnknownId(event.into_id()));
        };
        if entry.finished {
            return Err(Undeliverable::AfterResult(event.into_id()));
        }
        if let Event::Chunk(chunk) = &event {
            let size = chunk.approx_bytes();
            if entry.queued.fetch_add(size, Ordering::Relaxed) + size > self.buffer_bytes {
                entry.finished = true;
                let _ = entry.events.send(Event::Overflow);
                return Ok(());
            }
        }
        if matches!(event, Event::Result(_)) {
            entry.finished = true;
        }
        // A closed receiver means the request just ended; the frame is moot.
        let _ = entry.events.send(event);
        Ok(())
    }

    /// The result `id` got was a refused resume and the request is sent afresh: what the bridge
    /// sends for it now is delivered again.
    pub fn reopen(&self, id: &str) {
        if let Some(entry) = self.lock().entries.get_mut(id) {
            entry.finished = false;
        }
    }

    /// Cancels `id` if `conn` sent it; false when there is no such request.
    pub fn cancel(&self, id: &str, conn: ConnId) -> bool {
        let inner = self.lock();
        match inner.entries.get(id) {
            Some(entry) if entry.conn == conn => entry.events.send(Event::Cancel).is_ok(),
            _ => false,
        }
    }

    /// Tells every request of `conn` that its gateway is gone; returns how many there were.
    pub fn gateway_gone(&self, conn: ConnId) -> usize {
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter(|e| e.conn == conn)
            .filter(|e| e.events.send(Event::GatewayGone).is_ok())
            .count()
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Gives a chunk's bytes back to its request's bound once its task has taken it.
pub fn taken(queued: &AtomicUsize, event: &Event) {
    if let Event::Chunk(chunk) = event {
        queued.fetch_sub(chunk.approx_bytes(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use provider_shared::bridge::Delta;

    fn chunk(id: &str) -> Event {
        Event::Chunk(StreamChunk {
            id: id.into(),
            chunk_index: 0,
            delta: Delta::default(),
            finish_reason: None,
        })
    }

    #[test]
    fn duplicate_ids_are_refused_until_removed() {
        let table = RequestTable::new(1 << 20);
        let (tx, _rx) = mpsc::unbounded_channel();
        let t1 = table.insert("a", 1, tx.clone(), Arc::default()).unwrap();
        assert!(table.insert("a", 2, tx.clone(), Arc::default()).is_none());
        table.remove("a", t1);
        assert!(table.insert("a", 2, tx, Arc::default()).is_some());
    }

    #[test]
    fn a_stale_ticket_does_not_remove_a_reused_id() {
        let table = RequestTable::new(1 << 20);
        let (tx, _rx) = mpsc::unbounded_channel();
        let old = table.insert("a", 1, tx.clone(), Arc::default()).unwrap();
        table.remove("a", old);
        let _new = table.insert("a", 1, tx, Arc::default()).unwrap();
        table.remove("a", old);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn routes_by_id_and_drops_after_result() {
        let table = RequestTable::new(1 << 20);
        let (tx, mut rx) = mpsc::unbounded_channel();
        table.insert("a", 1, tx, Arc::default()).unwrap();
        assert_eq!(
            table.route(chunk("b")),
            Err(Undeliverable::UnknownId("b".into()))
        );
        table.route(chunk("a")).unwrap();
        table
            .route(Event::Result(provider_shared::bridge::ModelResult::error(
                "a", "x", "y",
            )))
            .unwrap();
        assert_eq!(
            table.route(chunk("a")),
            Err(Undeliverable::AfterResult("a".into()))
        );
        assert!(matches!(rx.try_recv().unwrap(), Event::Chunk(_)));
        assert!(matches!(rx.try_recv().unwrap(), Event::Result(_)));
        assert!(rx.try_recv().is_err());
        table.reopen("a");
        table.route(chunk("a")).unwrap();
        assert!(matches!(rx.try_recv().unwrap(), Event::Chunk(_)));
    }

    #[test]
    fn cancel_only_from_the_owning_connection_and_gone_reaches_all_of_it() {
        let table = RequestTable::new(1 << 20);
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let (tx3, mut rx3) = mpsc::unbounded_channel();
        table.insert("a", 1, tx1, Arc::default()).unwrap();
        table.insert("b", 1, tx2, Arc::default()).unwrap();
        table.insert("c", 2, tx3, Arc::default()).unwrap();
        assert!(!table.cancel("a", 2));
        assert!(table.cancel("a", 1));
        assert!(matches!(rx1.try_recv().unwrap(), Event::Cancel));
        assert_eq!(table.gateway_gone(1), 2);
        assert!(matches!(rx1.try_recv().unwrap(), Event::GatewayGone));
        assert!(matches!(rx2.try_recv().unwrap(), Event::GatewayGone));
        assert!(rx3.try_recv().is_err());
    }

    #[test]
    fn a_request_past_its_byte_bound_is_told_once_and_gets_nothing_more() {
        let table = RequestTable::new(600);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (other_tx, mut other_rx) = mpsc::unbounded_channel();
        table.insert("a", 1, tx, Arc::default()).unwrap();
        table.insert("b", 1, other_tx, Arc::default()).unwrap();
        table.route(chunk("a")).unwrap();
        table.route(chunk("a")).unwrap();
        table.route(chunk("a")).unwrap();
        assert_eq!(
            table.route(chunk("a")),
            Err(Undeliverable::AfterResult("a".into()))
        );
        table.route(chunk("b")).unwrap();
        assert!(matches!(rx.try_recv().unwrap(), Event::Chunk(_)));
        assert!(matches!(rx.try_recv().unwrap(), Event::Chunk(_)));
        assert!(matches!(rx.try_recv().unwrap(), Event::Overflow));
        assert!(rx.try_recv().is_err());
        assert!(matches!(other_rx.try_recv().unwrap(), Event::Chunk(_)));
    }
}
