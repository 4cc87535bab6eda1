//! The audit lines of repeated refusals and throttles, coalesced with the one mechanism for
//! repeated lines (`shared/src/coalesce.rs`), so that a flood of refused requests cannot rotate
//! the history away: the first event of a kind (its type and the fields that name it, such as
//! the client's address and the reason) in [`INTERVAL`] is written whole, the rest of that
//! interval are counted, and one line with the count is written once the interval is over.
//! At most [`MAX_KINDS`] kinds are tracked at once; events of new kinds past that are counted in
//! one `coalesced_overflow` line per flush.
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::coalesce::{Coalescer, Flushed, Verdict};

/// How long an audit line stands for the repeats of its kind.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Kinds of repeated event tracked at once.
pub const MAX_KINDS: usize = 256;
/// How often the writer writes the counts of the intervals that are over.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// A kind: the event's type and its naming fields, as JSON text (fields in a fixed order).
type Kind = (String, String);

/// One line to write: the event's type and its fields.
pub type Line = (String, Map<String, Value>);

pub struct Repeats {
    kinds: Coalescer<Kind>,
}

impl Default for Repeats {
    fn default() -> Self {
        Repeats {
            kinds: Coalescer::new(INTERVAL, MAX_KINDS),
        }
    }
}

impl Repeats {
    /// The lines one occurrence of `event` writes: none when its kind was written within the
    /// interval (it is counted); else the count of the interval before, when the flush has not
    /// written it yet, then the event itself. Its kind is named by its fields other than
    /// `details`.
    pub fn note(
        &self,
        event: &str,
        fields: Map<String, Value>,
        details: &[&str],
        now: Instant,
    ) -> Vec<Line> {
        let naming = Naming {
            fields: &fields,
            details,
        };
        let kind = (
            event.to_owned(),
            serde_json::to_string(&naming).unwrap_or_default(),
        );
        match self.kinds.note(&kind, now) {
            Verdict::Hold => vec![],
            Verdict::Write { held_back: 0 } => vec![(event.to_owned(), fields)],
            Verdict::Write { held_back } => {
                vec![repeated(kind, held_back), (event.to_owned(), fields)]
            }
        }
    }

    /// The count lines of every kind whose interval is over at `now`, and of the overflow.
    pub fn flush(&self, now: Instant) -> Vec<Line> {
        self.lines(self.kinds.flush(now))
    }

    /// Every count still held, whatever its interval (the service is stopping).
    pub fn flush_all(&self) -> Vec<Line> {
        self.lines(self.kinds.drain())
    }

    fn lines(&self, flushed: Flushed<Kind>) -> Vec<Line> {
        let mut lines: Vec<Line> = flushed
            .held_back
            .into_iter()
            .map(|(kind, n)| repeated(kind, n))
            .collect();
        if flushed.overflow > 0 {
            let fields = json!({
                "repeated": flushed.overflow,
                "within_seconds": INTERVAL.as_secs(),
                "details": format!("refusals and throttles of more kinds (client and reason) than the {MAX_KINDS} the audit log tracks at once, counted, not written one by one"),
            });
            if let Value::Object(fields) = fields {
                lines.push(("coalesced_overflow".to_owned(), fields));
            }
        }
        lines
    }
}

/// The line counting `n` events of `kind` that were not written one by one: the kind's naming
/// fields, `repeated` and `within_seconds`.
/// The fields that name a kind (all but `details`), written as JSON without copying them first:
/// every authentication is noted here.
struct Naming<'a> {
    fields: &'a Map<String, Value>,
    details: &'a [&'a str],
}

impl serde::Serialize for Naming<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.fields {
            if !self.details.contains(&name.as_str()) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

fn repeated((event, naming): Kind, n: u64) -> Line {
    let mut fields = match serde_json::from_str::<Value>(&naming) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    fields.insert("repeated".into(), json!(n));
    fields.insert("within_seconds".into(), json!(INTERVAL.as_secs()));
    (event, fields)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn refused(client: &str, key: &str) -> Map<String, Value> {
        fields(json!({"client_ip": client, "reason": "wrong", "key_fingerprint": key}))
    }

    #[test]
    fn one_line_per_client_and_reason_then_its_count() {
        let r = Repeats::default();
        let t0 = Instant::now();
        let first = r.note(
            "authentication",
            refused("a", "k1"),
            &["key_fingerprint"],
            t0,
        );
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1["key_fingerprint"], "k1", "the first is whole");
        // Other keys, same client and reason: counted, whatever the details.
        for n in 0..999 {
            let key = format!("k{n}");
            let later = t0 + Duration::from_millis(n);
            assert!(r
                .note(
                    "authentication",
                    refused("a", &key),
                    &["key_fingerprint"],
                    later
                )
                .is_empty());
        }
        // Another client is its own kind.
        assert_eq!(
            r.note(
                "authentication",
                refused("b", "k1"),
                &["key_fingerprint"],
                t0
            )
            .len(),
            1
        );
        assert!(r.flush(t0 + Duration::from_secs(59)).is_empty());
        let lines = r.flush(t0 + INTERVAL);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (event, count) = &lines[0];
        assert_eq!(event, "authentication");
        assert_eq!(
            Value::Object(count.clone()),
            json!({"client_ip": "a", "reason": "wrong", "repeated": 999, "within_seconds": 60})
        );
    }

    #[test]
    fn a_count_not_yet_flushed_comes_before_the_next_line_and_stopping_flushes_all() {
        let r = Repeats::default();
        let t0 = Instant::now();
        let f = || fields(json!({"client_ip": "a", "limit_type": "requests", "current": 5}));
        r.note("rate_limit_exceeded", f(), &["current"], t0);
        r.note("rate_limit_exceeded", f(), &["current"], t0);
        let lines = r.note("rate_limit_exceeded", f(), &["current"], t0 + INTERVAL);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].1["repeated"], 1);
        assert!(
            lines[0].1.get("current").is_none(),
            "details are the first's"
        );
        assert_eq!(lines[1].1["current"], 5);
        r.note("rate_limit_exceeded", f(), &["current"], t0 + INTERVAL);
        let rest = r.flush_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1["repeated"], 1);
    }

    #[test]
    fn past_the_bound_new_kinds_are_one_overflow_line() {
        let r = Repeats::default();
        let t0 = Instant::now();
        let mut written = 0;
        for n in 0..MAX_KINDS + 100 {
            let client = format!("127.0.0.{n}");
            written += r
                .note(
                    "security_violation",
                    fields(json!({"client_ip": client, "violation_type": "host_not_allowed"})),
                    &[],
                    t0,
                )
                .len();
        }
        assert_eq!(written, MAX_KINDS);
        let lines = r.flush(t0 + Duration::from_secs(1));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, "coalesced_overflow");
        assert_eq!(lines[0].1["repeated"], 100);
    }

    #[test]
    fn a_kind_is_named_by_its_fields_but_the_details_as_json() {
        let all = refused("10.0.0.1", "abc");
        let naming = Naming {
            fields: &all,
            details: &["key_fingerprint"],
        };
        assert_eq!(
            serde_json::to_string(&naming).unwrap(),
            r#"{"client_ip":"10.0.0.1","reason":"wrong"}"#
        );
    }
}
