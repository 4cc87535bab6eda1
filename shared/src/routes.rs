//! Requests in flight on one multiplexed connection, by id: each id leads to the inbox of the task
//! serving that request. The gateway's client of bridge-agent routes through this table
//! (docs/ARCHITECTURE.md, "One streamed chat"); bridge-agent keeps its requests in a table of its
//! own, with no task per request, and uses only [`Rebind`] from here.
//!
//! Each request's inbox holds at most the table's byte bound of the items that cost something
//! (chunks: their text plus 256 bytes, docs/PROTOCOL.md "Bounds"); an item that would go past it
//! ends that request alone with the type's overflow item, and nothing more is delivered to it.
//! Routing never waits, so the reader of the shared connection is never held up by one request.
//!
//! The inbox is a plain queue under its own lock with a [`Notify`], not a tokio channel: tokio's
//! channels (bounded or not) allocate a block of 32 slots when made, a cost paid by every open
//! stream, while an empty queue here allocates nothing and the bound is exact in bytes rather
//! than a count of frames. What an inbox can hold: the byte bound of costed items, plus one last
//! item from upstream (a result or the overflow; one more only after [`RouteTable::reopen`]) and
//! one signal from the owning side (cancel, connection gone).
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// An item routed to a request's task.
pub trait Routed {
    /// Bytes it counts against the request's bound while it waits; 0 for control items.
    fn cost(&self) -> usize;
    /// Upstream sends nothing more for the request after this one (its result).
    fn is_last(&self) -> bool;
    /// What the request's task is told when its inbox would have gone past the bound.
    fn overflow() -> Self;
}

/// Why [`RouteTable::insert`] refused an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertRefused {
    /// A request with this id is in the table.
    Duplicate,
    /// The table was closed ([`RouteTable::close`]): its connection has ended.
    Closed,
}

/// What [`RouteTable::rebind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebind {
    Rebound,
    /// The request belongs to an owner the caller may not take it from.
    NotOwned,
    /// No request with this id.
    Unknown,
}

/// Why an item from upstream was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undeliverable {
    UnknownId,
    /// The request already had its last item (or overflowed).
    AfterLast,
}

/// What became of an item from upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Queued,
    /// It would have gone past the bound: the request was told so and gets nothing more. The
    /// caller cancels it upstream.
    Overflowed,
}

/// Proof of registration; removing with it never removes a later request reusing the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The requests of one connection (or one process), with `M` kept beside each (which gateway
/// connection sent it, for bridge-agent).
pub struct RouteTable<T, M = ()> {
    inner: Mutex<Inner<T, M>>,
    bound: usize,
}

struct Inner<T, M> {
    open: bool,
    entries: HashMap<String, Entry<T, M>>,
    next_serial: u64,
}

struct Entry<T, M> {
    serial: u64,
    meta: M,
    lane: Sender<T>,
    /// Its last item (or the overflow) went in; upstream items are dropped until `reopen`.
    finished: bool,
    /// A signal went in; the task ends on it, so one is enough.
    signalled: bool,
    /// Its upstream replays what it sent (a resume on the same connection): a last item may be
    /// followed by the replay of the chunks before it, so it does not finish the request.
    replaying: bool,
}

fn lock<X>(mutex: &Mutex<X>) -> MutexGuard<'_, X> {
    // Every change under these locks is complete before anything can panic, so a poisoned lock
    // still holds a consistent state.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Routed, M> RouteTable<T, M> {
    /// A table whose requests may each have `bound` bytes of items waiting.
    pub fn new(bound: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                open: true,
                entries: HashMap::new(),
                next_serial: 0,
            }),
            bound,
        }
    }

    /// Registers `id`; its task reads the returned inbox.
    pub fn insert(&self, id: &str, meta: M) -> Result<(Ticket, Inbox<T>), InsertRefused> {
        let mut inner = lock(&self.inner);
        if !inner.open {
            return Err(InsertRefused::Closed);
        }
        if inner.entries.contains_key(id) {
            return Err(InsertRefused::Duplicate);
        }
        inner.next_serial += 1;
        let serial = inner.next_serial;
        let lane = Arc::new(Lane {
            state: Mutex::new(LaneState {
                items: VecDeque::new(),
                bytes: 0,
                open: true,
            }),
            ready: Notify::new(),
        });
        inner.entries.insert(
            id.to_owned(),
            Entry {
                serial,
                meta,
                lane: Sender(lane.clone()),
                finished: false,
                signalled: false,
                replaying: false,
            },
        );
        Ok((Ticket(serial), Inbox { lane }))
    }

    /// Forgets the request registered with `ticket`; false when it was no longer there.
    pub fn remove(&self, id: &str, ticket: Ticket) -> bool {
        let mut inner = lock(&self.inner);
        if inner.entries.get(id).is_some_and(|e| e.serial == ticket.0) {
            inner.entries.remove(id);
            return true;
        }
        false
    }

    /// Hands an item from upstream to its request, without ever waiting.
    pub fn route(&self, id: &str, item: T) -> Result<Delivered, Undeliverable> {
        let mut inner = lock(&self.inner);
        let entry = inner.entries.get_mut(id).ok_or(Undeliverable::UnknownId)?;
        if entry.finished {
            return Err(Undeliverable::AfterLast);
        }
        let cost = item.cost();
        let last = item.is_last();
        let mut lane = lock(&entry.lane.0.state);
        if lane.bytes.saturating_add(cost) > self.bound {
            entry.finished = true;
            lane.items.push_back((T::overflow(), 0));
            drop(lane);
            entry.lane.0.ready.notify_one();
            return Ok(Delivered::Overflowed);
        }
        entry.finished = last && !entry.replaying;
        lane.bytes += cost;
        lane.items.push_back((item, cost));
        drop(lane);
        entry.lane.0.ready.notify_one();
        Ok(Delivered::Queued)
    }

    /// The last item `id` got did not end it after all (a refused resume, sent afresh): what
    /// upstream sends for it now is delivered again.
    pub fn reopen(&self, id: &str) {
        if let Some(entry) = lock(&self.inner).entries.get_mut(id) {
            entry.finished = false;
        }
    }

    /// While `on`, upstream replays what it sent for `id` (docs/PROTOCOL.md, resume): its last
    /// item does not end the request, whose task sorts out what it has seen.
    pub fn replay(&self, id: &str, on: bool) {
        if let Some(entry) = lock(&self.inner).entries.get_mut(id) {
            entry.replaying = on;
            if on {
                entry.finished = false;
            }
        }
    }

    /// Hands request `id` to a new owner: its meta becomes `to` and its task gets `item`, as
    /// the one signal from that owner, if `owns` its current meta.
    pub fn rebind(&self, id: &str, owns: impl Fn(&M) -> bool, to: M, item: T) -> Rebind {
        let mut inner = lock(&self.inner);
        match inner.entries.get_mut(id) {
            None => Rebind::Unknown,
            Some(entry) if !owns(&entry.meta) => Rebind::NotOwned,
            Some(entry) => {
                entry.meta = to;
                entry.signalled = false;
                entry.lane.push_signal(item);
                Rebind::Rebound
            }
        }
    }

    /// Gives every request whose meta `owns` matches the item `make` makes and the meta `to`
    /// makes (their owner left: they wait for a new one), once each; returns how many.
    pub fn orphan_all(
        &self,
        owns: impl Fn(&M) -> bool,
        to: impl Fn() -> M,
        make: impl Fn() -> T,
    ) -> usize {
        let mut inner = lock(&self.inner);
        let mut reached = 0;
        for entry in inner.entries.values_mut() {
            if owns(&entry.meta) {
                entry.meta = to();
                if !entry.signalled {
                    entry.signalled = true;
                    entry.lane.push_signal(make());
                }
                reached += 1;
            }
        }
        reached
    }

    /// Gives `id` the owning side's `item` (a cancel) if `owns` its meta; false when there is
    /// no such request, or it has had a signal already.
    pub fn signal(&self, id: &str, owns: impl Fn(&M) -> bool, item: T) -> bool {
        let mut inner = lock(&self.inner);
        match inner.entries.get_mut(id) {
            Some(entry) if owns(&entry.meta) && !entry.signalled => {
                entry.signalled = true;
                entry.lane.push_signal(item);
                true
            }
            _ => false,
        }
    }

    /// Gives every request whose meta `owns` matches the item `make` makes, once each; returns
    /// how many it reached.
    pub fn signal_all(&self, owns: impl Fn(&M) -> bool, make: impl Fn() -> T) -> usize {
        let mut inner = lock(&self.inner);
        let mut reached = 0;
        for entry in inner.entries.values_mut() {
            if owns(&entry.meta) && !entry.signalled {
                entry.signalled = true;
                entry.lane.push_signal(make());
                reached += 1;
            }
        }
        reached
    }

    /// The connection ended: refuses every later `insert`, and empties the table, giving each
    /// request not yet signalled the item `make` makes. Returns how many there were.
    pub fn close(&self, make: impl Fn() -> T) -> usize {
        let mut inner = lock(&self.inner);
        inner.open = false;
        let mut reached = 0;
        for (_, entry) in inner.entries.drain() {
            if !entry.signalled {
                entry.lane.push_signal(make());
                reached += 1;
            }
        }
        reached
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// The ids of the requests in the table.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.inner).entries.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Lane<T> {
    state: Mutex<LaneState<T>>,
    ready: Notify,
}

struct LaneState<T> {
    /// Each item with the cost it was counted at.
    items: VecDeque<(T, usize)>,
    bytes: usize,
    /// The table still holds this request; once not, nothing more arrives.
    open: bool,
}

/// The table's end of a request's inbox; dropping it (the request left the table) lets the
/// inbox end once it is empty.
struct Sender<T>(Arc<Lane<T>>);

impl<T> Sender<T> {
    fn push_signal(&self, item: T) {
        lock(&self.0.state).items.push_back((item, 0));
        self.0.ready.notify_one();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        lock(&self.0.state).open = false;
        self.0.ready.notify_one();
    }
}

/// What one request's task reads its items from.
pub struct Inbox<T> {
    lane: Arc<Lane<T>>,
}

impl<T> Inbox<T> {
    /// The next item; `None` once the request has left the table and every item is taken.
    /// Cancel-safe: an item is only taken in the call that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut lane = lock(&self.lane.state);
                if let Some((item, cost)) = lane.items.pop_front() {
                    lane.bytes = lane.bytes.saturating_sub(cost);
                    return Some(item);
                }
                if !lane.open {
                    return None;
                }
            }
            // A push between the check above and this wait leaves a permit, so it is not missed.
            self.lane.ready.notified().await;
        }
    }

    /// Bytes of items waiting.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.lane.state).bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Item {
        Chunk(usize),
        Last,
        Cancel,
        Gone,
        Overflow,
    }

    impl Routed for Item {
        fn cost(&self) -> usize {
            match self {
                Item::Chunk(n) => *n,
                _ => 0,
            }
        }
        fn is_last(&self) -> bool {
            matches!(self, Item::Last)
        }
        fn overflow() -> Self {
            Item::Overflow
        }
    }

    /// Everything waiting in `inbox`, without waiting for more.
    fn waiting(inbox: &mut Inbox<Item>) -> Vec<Item> {
        let mut lane = lock(&inbox.lane.state);
        lane.bytes = 0;
        lane.items.drain(..).map(|(item, _)| item).collect()
    }

    #[test]
    fn duplicate_ids_are_refused_until_removed_and_a_stale_ticket_removes_nothing() {
        let table = RouteTable::<Item, u8>::new(1000);
        let (old, _inbox) = table.insert("a", 1).unwrap();
        assert_eq!(table.insert("a", 2).err(), Some(InsertRefused::Duplicate));
        assert!(table.remove("a", old));
        let (_new, _inbox) = table.insert("a", 2).unwrap();
        assert!(!table.remove("a", old));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn routes_by_id_and_drops_after_the_last_item_until_reopened() {
        let table = RouteTable::<Item>::new(1000);
        let (_, mut a) = table.insert("a", ()).unwrap();
        let (_, mut b) = table.insert("b", ()).unwrap();
        assert_eq!(
            table.route("x", Item::Chunk(1)),
            Err(Undeliverable::UnknownId)
        );
        assert_eq!(table.route("a", Item::Chunk(10)), Ok(Delivered::Queued));
        assert_eq!(table.route("b", Item::Chunk(20)), Ok(Delivered::Queued));
        assert_eq!(a.queued_bytes(), 10);
        assert_eq!(table.route("a", Item::Last), Ok(Delivered::Queued));
        assert_eq!(
            table.route("a", Item::Chunk(1)),
            Err(Undeliverable::AfterLast)
        );
        assert_eq!(waiting(&mut a), vec![Item::Chunk(10), Item::Last]);
        assert_eq!(waiting(&mut b), vec![Item::Chunk(20)]);
        table.reopen("a");
        assert_eq!(table.route("a", Item::Chunk(1)), Ok(Delivered::Queued));
        assert_eq!(waiting(&mut a), vec![Item::Chunk(1)]);
    }

    #[tokio::test]
    async fn past_the_bound_a_request_is_told_once_and_others_go_on() {
        let table = RouteTable::<Item>::new(600);
        let (_, mut slow) = table.insert("slow", ()).unwrap();
        let (_, mut fast) = table.insert("fast", ()).unwrap();
        assert_eq!(table.route("slow", Item::Chunk(300)), Ok(Delivered::Queued));
        assert_eq!(table.route("slow", Item::Chunk(300)), Ok(Delivered::Queued));
        // Taking one gives its bytes back: exactly the bound may wait, not more.
        assert_eq!(slow.recv().await, Some(Item::Chunk(300)));
        assert_eq!(table.route("slow", Item::Chunk(300)), Ok(Delivered::Queued));
        assert_eq!(
            table.route("slow", Item::Chunk(1)),
            Ok(Delivered::Overflowed)
        );
        assert_eq!(
            table.route("slow", Item::Chunk(1)),
            Err(Undeliverable::AfterLast)
        );
        assert_eq!(table.route("fast", Item::Chunk(600)), Ok(Delivered::Queued));
        assert_eq!(
            waiting(&mut slow),
            vec![Item::Chunk(300), Item::Chunk(300), Item::Overflow]
        );
        assert_eq!(waiting(&mut fast), vec![Item::Chunk(600)]);
    }

    #[test]
    fn a_signal_reaches_only_the_owner_and_only_once() {
        let table = RouteTable::<Item, u8>::new(1000);
        let (_, mut a) = table.insert("a", 1).unwrap();
        let (_, mut b) = table.insert("b", 1).unwrap();
        let (_, mut c) = table.insert("c", 2).unwrap();
        assert!(!table.signal("a", |conn| *conn == 2, Item::Cancel));
        assert!(table.signal("a", |conn| *conn == 1, Item::Cancel));
        assert!(!table.signal("a", |conn| *conn == 1, Item::Cancel));
        assert_eq!(table.signal_all(|conn| *conn == 1, || Item::Gone), 1);
        assert_eq!(waiting(&mut a), vec![Item::Cancel]);
        assert_eq!(waiting(&mut b), vec![Item::Gone]);
        assert_eq!(waiting(&mut c), vec![]);
    }

    #[test]
    fn an_orphaned_request_waits_for_a_new_owner_and_a_replay_does_not_end_it() {
        let table = RouteTable::<Item, Option<u8>>::new(1000);
        let (_, mut a) = table.insert("a", Some(1)).unwrap();
        let (_, mut b) = table.insert("b", Some(2)).unwrap();
        assert_eq!(
            table.orphan_all(|m| *m == Some(1), || None, || Item::Gone),
            1
        );
        assert_eq!(waiting(&mut a), vec![Item::Gone]);
        // Cancels of the old owner no longer reach it; a new owner takes it.
        assert!(!table.signal("a", |m| *m == Some(1), Item::Cancel));
        assert_eq!(
            table.rebind("b", |m| m.is_none(), Some(3), Item::Cancel),
            Rebind::NotOwned
        );
        assert_eq!(
            table.rebind("x", |m| m.is_none(), Some(3), Item::Cancel),
            Rebind::Unknown
        );
        assert_eq!(
            table.rebind("a", |m| m.is_none(), Some(3), Item::Last),
            Rebind::Rebound
        );
        assert!(table.signal("a", |m| *m == Some(3), Item::Cancel));
        assert_eq!(waiting(&mut a), vec![Item::Last, Item::Cancel]);
        assert_eq!(waiting(&mut b), vec![]);
        // A replay: the result that came live, then the chunks before it, then the result again.
        table.route("a", Item::Last).unwrap();
        table.replay("a", true);
        table.route("a", Item::Chunk(1)).unwrap();
        table.route("a", Item::Last).unwrap();
        table.replay("a", false);
        table.route("a", Item::Last).unwrap();
        assert_eq!(
            table.route("a", Item::Chunk(1)),
            Err(Undeliverable::AfterLast)
        );
        assert_eq!(
            waiting(&mut a),
            vec![Item::Last, Item::Chunk(1), Item::Last, Item::Last]
        );
    }

    #[tokio::test]
    async fn closing_tells_everyone_refuses_later_requests_and_ends_the_inboxes() {
        let table = RouteTable::<Item>::new(1000);
        let (_, mut a) = table.insert("a", ()).unwrap();
        let (_, mut b) = table.insert("b", ()).unwrap();
        table.route("a", Item::Chunk(5)).unwrap();
        assert_eq!(table.close(|| Item::Gone), 2);
        assert!(table.is_empty());
        assert_eq!(table.insert("c", ()).err(), Some(InsertRefused::Closed));
        assert_eq!(a.recv().await, Some(Item::Chunk(5)));
        assert_eq!(a.recv().await, Some(Item::Gone));
        assert_eq!(a.recv().await, None);
        assert_eq!(b.recv().await, Some(Item::Gone));
        assert_eq!(b.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_task_wakes_for_an_item_routed_later() {
        let table = Arc::new(RouteTable::<Item>::new(1000));
        let (ticket, mut inbox) = table.insert("a", ()).unwrap();
        let waiter = tokio::spawn(async move {
            let first = inbox.recv().await;
            let after_removal = inbox.recv().await;
            (first, after_removal)
        });
        tokio::task::yield_now().await;
        table.route("a", Item::Chunk(3)).unwrap();
        table.remove("a", ticket);
        assert_eq!(waiter.await.unwrap(), (Some(Item::Chunk(3)), None));
    }
}
