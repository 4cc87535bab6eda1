//! Coalescing repeated lines, so that a flood of the same event cannot fill a log: the first
//! occurrence of each key in an interval is written in full, the rest of that interval are only
//! counted, and the count is written once the interval is over (by [`Coalescer::flush`], called
//! on a timer, or with the key's next occurrence). The gateway logs its refusals this way, one
//! key per (route, status, code); any other repeated line (audit lines per client and reason,
//! in `audit/repeats.rs`) use the same mechanism with their own key.
//!
//! Bounded: at most `max_keys` keys are tracked at once. A new key that finds the table full
//! (after expired keys with nothing held back are dropped) is counted in one overflow figure,
//! reported by the next flush, and not written on its own: past the bound a flood costs one
//! line per flush, whatever its keys.
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What to do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it. `held_back` occurrences of the same key were counted, not written, in the
    /// interval before this one (when the flush has not reported them yet).
    Write { held_back: u64 },
    /// Count it only: its key was written within the interval.
    Hold,
}

/// What a flush reports: per key, the occurrences held back in an interval that is over, and
/// the occurrences of keys that found the table full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flushed<K> {
    pub held_back: Vec<(K, u64)>,
    pub overflow: u64,
}

struct Entry {
    /// When the key was last written: its interval runs from here.
    written: Instant,
    held_back: u64,
}

struct Table<K> {
    entries: HashMap<K, Entry>,
    overflow: u64,
}

pub struct Coalescer<K> {
    interval: Duration,
    max_keys: usize,
    table: Mutex<Table<K>>,
}

impl<K: Eq + Hash + Clone> Coalescer<K> {
    pub fn new(interval: Duration, max_keys: usize) -> Self {
        Self {
            interval,
            max_keys,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                overflow: 0,
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table<K>> {
        // Counts only: a panic elsewhere cannot leave them worse than off by one.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes one occurrence of `key` at `now`.
    pub fn note(&self, key: &K, now: Instant) -> Verdict {
        let interval = self.interval;
        let mut table = self.table();
        if let Some(entry) = table.entries.get_mut(key) {
            if now.saturating_duration_since(entry.written) < interval {
                entry.held_back += 1;
                return Verdict::Hold;
            }
            let held_back = std::mem::take(&mut entry.held_back);
            entry.written = now;
            return Verdict::Write { held_back };
        }
        if table.entries.len() >= self.max_keys {
            table.entries.retain(|_, e| {
                e.held_back > 0 || now.saturating_duration_since(e.written) < interval
            });
            if table.entries.len() >= self.max_keys {
                table.overflow += 1;
                return Verdict::Hold;
            }
        }
        table.entries.insert(
            key.clone(),
            Entry {
                written: now,
                held_back: 0,
            },
        );
        Verdict::Write { held_back: 0 }
    }

    /// The counts of every key whose interval is over at `now` with occurrences held back, and
    /// of the overflow; those keys are forgotten (their next occurrence is written), and so are
    /// the expired keys with nothing held back.
    pub fn flush(&self, now: Instant) -> Flushed<K> {
        self.flush_where(|e| now.saturating_duration_since(e.written) >= self.interval)
    }

    /// The counts of every key, whatever its interval, and of the overflow; the table is left
    /// empty (for a service that is stopping).
    pub fn drain(&self) -> Flushed<K> {
        self.flush_where(|_| true)
    }

    fn flush_where(&self, over: impl Fn(&Entry) -> bool) -> Flushed<K> {
        let mut table = self.table();
        let mut held_back = Vec::new();
        table.entries.retain(|key, e| {
            if !over(e) {
                return true;
            }
            if e.held_back > 0 {
                held_back.push((key.clone(), e.held_back));
            }
            false
        });
        Flushed {
            held_back,
            overflow: std::mem::take(&mut table.overflow),
        }
    }

    /// Keys tracked now (at most `max_keys`).
    pub fn len(&self) -> usize {
        self.table().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_of_an_interval_is_written_the_rest_counted_and_reported() {
        let c = Coalescer::new(10 * SECOND, 8);
        let t0 = Instant::now();
        assert_eq!(c.note(&"a", t0), Verdict::Write { held_back: 0 });
        for i in 1..=5 {
            assert_eq!(c.note(&"a", t0 + i * SECOND), Verdict::Hold);
        }
        // Another key has its own interval.
        assert_eq!(c.note(&"b", t0 + SECOND), Verdict::Write { held_back: 0 });
        // Nothing is over yet.
        assert_eq!(c.flush(t0 + 9 * SECOND).held_back, vec![]);
        let flushed = c.flush(t0 + 10 * SECOND);
        assert_eq!(flushed.held_back, vec![("a", 5)]);
        assert_eq!(flushed.overflow, 0);
        assert!(c.note(&"a", t0 + 11 * SECOND) == Verdict::Write { held_back: 0 });
        assert_eq!(c.len(), 2, "b is kept until its interval ends");
        assert!(c.flush(t0 + 12 * SECOND).held_back.is_empty());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn without_a_flush_the_next_occurrence_carries_the_count() {
        let c = Coalescer::new(10 * SECOND, 8);
        let t0 = Instant::now();
        c.note(&1, t0);
        c.note(&1, t0 + SECOND);
        c.note(&1, t0 + 2 * SECOND);
        assert_eq!(
            c.note(&1, t0 + 30 * SECOND),
            Verdict::Write { held_back: 2 }
        );
        assert_eq!(c.note(&1, t0 + 31 * SECOND), Verdict::Hold);
    }

    #[test]
    fn a_drain_reports_every_count_whatever_its_interval() {
        let c = Coalescer::new(10 * SECOND, 8);
        let t0 = Instant::now();
        c.note(&"a", t0);
        c.note(&"a", t0);
        c.note(&"b", t0);
        let drained = c.drain();
        assert_eq!(drained.held_back, vec![("a", 1)]);
        assert!(c.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_a_flood_of_new_keys_is_one_count() {
        let c = Coalescer::new(10 * SECOND, 4);
        let t0 = Instant::now();
        let written = (0..1000)
            .filter(|k| matches!(c.note(k, t0), Verdict::Write { .. }))
            .count();
        assert_eq!(written, 4);
        assert_eq!(c.len(), 4);
        let flushed = c.flush(t0 + SECOND);
        assert_eq!(flushed.overflow, 996);
        assert_eq!(c.flush(t0 + 2 * SECOND).overflow, 0, "reported once");
        // Once the table's keys expire, new keys are written again.
        assert_eq!(
            c.note(&5000, t0 + 20 * SECOND),
            Verdict::Write { held_back: 0 }
        );
    }
}
