//! What the status page shows that only the gateway knows: requests in flight (never their
//! content), recent errors, rate-limit hits, and 15 minutes of history in fixed-size rings.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One history point covers this long.
pub const BUCKET: Duration = Duration::from_secs(5);
/// 15 minutes of points; the oldest is dropped when a new one comes.
pub const HISTORY_POINTS: usize = 180;
/// Recent errors kept; the oldest is dropped when a new one comes.
pub const RECENT_ERRORS: usize = 50;
/// Requests listed in flight; beyond it they are counted, not listed (the concurrency limit
/// bounds them anyway).
pub const IN_FLIGHT_LISTED: usize = 100;
/// Refusal codes counted one by one; refusals of further codes are counted under `other`.
pub const REFUSAL_CODES: usize = 64;

/// A request the agent is working on, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub request_id: String,
    /// `chat` or `completion`.
    pub kind: &'static str,
    pub stream: bool,
    /// Whose budget it counts against: `key:` and the first hex digits of the key's digest.
    pub client: String,
    pub age_ms: u64,
    /// Time to the agent's first output, once it came.
    pub first_chunk_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub at_ms: u64,
    /// The route, or `stream` for an error after a stream began.
    pub route: String,
    /// The HTTP status; 200 for an error inside a started stream.
    pub status: u16,
    pub code: String,
}

/// One history point.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Point {
    /// The end of the interval (Unix milliseconds).
    pub at_ms: u64,
    pub requests_per_second: f64,
    pub ttfc_ms_avg: Option<f64>,
    pub ttfc_ms_max: Option<f64>,
    /// As mcp-bridge last reported it; `None` when it was not known.
    pub queue_depth: Option<u64>,
    pub in_flight: u64,
}

/// A request in flight, as the page lists it.
struct Listed {
    started: Instant,
    kind: &'static str,
    stream: bool,
    client: String,
    first_chunk: Option<Duration>,
}

#[derive(Default)]
struct Accumulating {
    requests: u64,
    ttfc_sum_ms: f64,
    ttfc_count: u64,
    ttfc_max_ms: f64,
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Listed>,
    errors: VecDeque<RecentError>,
    rate_limited: BTreeMap<String, u64>,
    /// Every 4xx answer, by code.
    refused: BTreeMap<String, u64>,
    requests_total: u64,
    last_request_ms: Option<u64>,
    now: Accumulating,
    history: VecDeque<Point>,
}

#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

impl Board {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Plain records: a panic elsewhere cannot leave them in a state worse than a gap.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn started(&self, id: &str, kind: &'static str, stream: bool, client: &str) {
        let mut inner = self.inner();
        inner.requests_total += 1;
        inner.last_request_ms = Some(crate::store::now_ms());
        inner.now.requests += 1;
        inner.running.insert(
            id.to_owned(),
            Listed {
                started: Instant::now(),
                kind,
                stream,
                client: client.to_owned(),
                first_chunk: None,
            },
        );
    }

    pub fn first_chunk(&self, id: &str, after: Duration) {
        let mut inner = self.inner();
        if let Some(r) = inner.running.get_mut(id) {
            r.first_chunk = Some(after);
        }
        let ms = after.as_secs_f64() * 1000.0;
        inner.now.ttfc_sum_ms += ms;
        inner.now.ttfc_count += 1;
        inner.now.ttfc_max_ms = inner.now.ttfc_max_ms.max(ms);
    }

    /// The request ended; a failure of a stream already under way is recorded as an error here,
    /// because its HTTP status was 200.
    pub fn finished(&self, id: &str, outcome: &str) {
        let mut inner = self.inner();
        let Some(r) = inner.running.remove(id) else {
            return;
        };
        if r.stream && !matches!(outcome, "ok" | "cancelled") {
            push_error(
                &mut inner,
                RecentError {
                    at_ms: crate::store::now_ms(),
                    route: "stream".into(),
                    status: 200,
                    code: outcome.to_owned(),
                },
            );
        }
    }

    /// An error answer (status 400 or more) left the gateway.
    pub fn http_error(&self, route: &str, status: u16, code: Option<&str>) {
        let mut inner = self.inner();
        // The concurrency limit answers 503; it is a limit hit like the 429s.
        if status == 429 || code == Some("server_overloaded") {
            let kind = code.unwrap_or("rate_limited").to_owned();
            *inner.rate_limited.entry(kind).or_default() += 1;
        }
        if (400..500).contains(&status) {
            let code = code.unwrap_or("error");
            let known = inner.refused.contains_key(code) || inner.refused.len() < REFUSAL_CODES;
            let key = if known { code } else { "other" };
            *inner.refused.entry(key.to_owned()).or_default() += 1;
        }
        push_error(
            &mut inner,
            RecentError {
                at_ms: crate::store::now_ms(),
                route: route.to_owned(),
                status,
                code: code.unwrap_or("error").to_owned(),
            },
        );
    }

    /// Closes the current history point (called every [`BUCKET`]).
    pub fn close_point(&self, queue_depth: Option<u64>) {
        let mut inner = self.inner();
        let acc = std::mem::take(&mut inner.now);
        let avg = (acc.ttfc_count > 0).then(|| acc.ttfc_sum_ms / acc.ttfc_count as f64);
        let point = Point {
            at_ms: crate::store::now_ms(),
            requests_per_second: acc.requests as f64 / BUCKET.as_secs_f64(),
            ttfc_ms_avg: avg,
            ttfc_ms_max: avg.map(|_| acc.ttfc_max_ms),
            queue_depth,
            in_flight: inner.running.len() as u64,
        };
        if inner.history.len() == HISTORY_POINTS {
            inner.history.pop_front();
        }
        inner.history.push_back(point);
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner();
        let mut in_flight: Vec<InFlight> = inner
            .running
            .iter()
            .map(|(id, r)| InFlight {
                request_id: id.clone(),
                kind: r.kind,
                stream: r.stream,
                client: r.client.clone(),
                age_ms: millis(r.started.elapsed()),
                first_chunk_ms: r.first_chunk.map(millis),
            })
            .collect();
        in_flight.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
        let in_flight_total = in_flight.len();
        in_flight.truncate(IN_FLIGHT_LISTED);
        Snapshot {
            in_flight,
            in_flight_total,
            recent_errors: inner.errors.iter().rev().cloned().collect(),
            rate_limited: inner.rate_limited.clone(),
            refused: inner.refused.clone(),
            requests_total: inner.requests_total,
            last_request_ms: inner.last_request_ms,
            history: inner.history.iter().cloned().collect(),
        }
    }
}

fn push_error(inner: &mut Inner, error: RecentError) {
    if inner.errors.len() == RECENT_ERRORS {
        inner.errors.pop_front();
    }
    inner.errors.push_back(error);
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The board at one moment; errors newest first, requests in flight oldest first.
pub struct Snapshot {
    pub in_flight: Vec<InFlight>,
    pub in_flight_total: usize,
    pub recent_errors: Vec<RecentError>,
    pub rate_limited: BTreeMap<String, u64>,
    pub refused: BTreeMap<String, u64>,
    pub requests_total: u64,
    pub last_request_ms: Option<u64>,
    pub history: Vec<Point>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_come_and_go_and_only_failed_streams_are_errors() {
        let board = Board::default();
        board.started("a", "chat", true, "key:abc");
        board.started("b", "completion", false, "key:abc");
        board.first_chunk("a", Duration::from_millis(40));
        let snap = board.snapshot();
        assert_eq!(snap.in_flight_total, 2);
        let a = snap.in_flight.iter().find(|r| r.request_id == "a").unwrap();
        assert_eq!((a.kind, a.first_chunk_ms), ("chat", Some(40)));
        board.finished("a", "response_timeout");
        board.finished("b", "cancelled");
        let snap = board.snapshot();
        assert!(snap.in_flight.is_empty());
        assert_eq!(snap.recent_errors.len(), 1);
        assert_eq!(snap.recent_errors[0].code, "response_timeout");
        assert_eq!(snap.requests_total, 2);
    }

    #[test]
    fn refusals_are_counted_by_code_within_a_bound() {
        let board = Board::default();
        for i in 0..REFUSAL_CODES + 10 {
            board.http_error("/v1/models", 400, Some(&format!("code_{i}")));
        }
        board.http_error("/v1/models", 404, Some("code_0"));
        board.http_error("/v1/models", 502, Some("bridge_disconnected"));
        let refused = board.snapshot().refused;
        assert_eq!(refused.len(), REFUSAL_CODES + 1, "the codes and `other`");
        assert_eq!(refused["code_0"], 2);
        assert_eq!(refused["other"], 10);
        assert!(
            !refused.contains_key("bridge_disconnected"),
            "5xx is not a refusal"
        );
    }

    #[test]
    fn rings_keep_their_bounds_and_points_average_the_interval() {
        let board = Board::default();
        for _ in 0..RECENT_ERRORS + 7 {
            board.http_error("/v1/chat/completions", 429, Some("rate_limit_exceeded"));
        }
        board.started("x", "chat", false, "key:abc");
        board.first_chunk("x", Duration::from_millis(100));
        board.first_chunk("x", Duration::from_millis(300));
        board.close_point(Some(4));
        for _ in 0..HISTORY_POINTS + 3 {
            board.close_point(None);
        }
        let snap = board.snapshot();
        assert_eq!(snap.recent_errors.len(), RECENT_ERRORS);
        assert_eq!(
            snap.rate_limited["rate_limit_exceeded"],
            (RECENT_ERRORS + 7) as u64
        );
        assert_eq!(snap.history.len(), HISTORY_POINTS);
        assert_eq!(
            snap.refused["rate_limit_exceeded"],
            (RECENT_ERRORS + 7) as u64
        );
        let board = Board::default();
        board.started("x", "chat", false, "key:abc");
        board.first_chunk("x", Duration::from_millis(100));
        board.first_chunk("y", Duration::from_millis(300));
        board.close_point(Some(4));
        let p = &board.snapshot().history[0];
        assert_eq!(p.requests_per_second, 1.0 / BUCKET.as_secs_f64());
        assert_eq!((p.ttfc_ms_avg, p.ttfc_ms_max), (Some(200.0), Some(300.0)));
        assert_eq!((p.queue_depth, p.in_flight), (Some(4), 1));
    }
}
