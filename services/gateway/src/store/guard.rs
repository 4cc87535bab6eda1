//! The store as the gateway sees it: every operation bounded by `STORE_TIMEOUT`, timed and
//! counted, and an unreachable store handled by `STORE_FAILURE_POLICY` (docs/configuration.md,
//! "Several gateways: the Redis store"): `closed` answers 503 `store_unavailable`; `open` lets
//! rate limits and auth throttling pass while sessions, which only the store knows, still fail.
//! Outages are audited once each way.
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{BucketKey, Created, Session, Store};
use crate::config::FailurePolicy;
use crate::error::Error;
use crate::ratelimit::{BucketSpec, Take};
use provider_shared::audit::Audit;

pub struct Guarded {
    inner: Arc<dyn Store>,
    /// `memory` or `redis`.
    kind: &'static str,
    /// Where the store is (no credentials), for health.
    address: Option<String>,
    timeout: Duration,
    policy: FailurePolicy,
    audit: Audit,
    outage: Mutex<Option<Outage>>,
}

struct Outage {
    since: Instant,
    failures: u64,
    last_error: String,
}

impl Guarded {
    pub fn new(
        inner: Arc<dyn Store>,
        kind: &'static str,
        address: Option<String>,
        timeout: Duration,
        policy: FailurePolicy,
        audit: Audit,
    ) -> Self {
        metrics::gauge!("gateway_store_up").set(1.0);
        Self {
            inner,
            kind,
            address,
            timeout,
            policy,
            audit,
            outage: Mutex::new(None),
        }
    }

    /// Runs one operation within the timeout, recording its latency, errors and pool state.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(Error::StoreUnavailable {
                kind: "timeout",
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        };
        metrics::histogram!("gateway_store_operation_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        if let Some(pool) = self.inner.pool_status() {
            metrics::gauge!("gateway_store_pool_connections").set(pool.size as f64);
            metrics::gauge!("gateway_store_pool_idle").set(pool.idle as f64);
            metrics::gauge!("gateway_store_pool_waiting").set(pool.waiting as f64);
            metrics::gauge!("gateway_store_pool_max").set(pool.max as f64);
        }
        match &result {
            Ok(_) => self.recovered(),
            Err(Error::StoreUnavailable { kind, message }) => self.failed(op, kind, message),
            Err(_) => {}
        }
        result
    }

    fn failed(&self, op: &'static str, kind: &'static str, message: &str) {
        metrics::counter!("gateway_store_errors_total", "op" => op, "kind" => kind).increment(1);
        let Ok(mut outage) = self.outage.lock() else {
            return;
        };
        match outage.as_mut() {
            Some(o) => {
                o.failures += 1;
                o.last_error = format!("{kind}: {message}");
            }
            None => {
                *outage = Some(Outage {
                    since: Instant::now(),
                    failures: 1,
                    last_error: format!("{kind}: {message}"),
                });
                metrics::gauge!("gateway_store_up").set(0.0);
                tracing::error!(store = self.kind, op, kind, %message, policy = self.policy_name(),
                    "the session and rate-limit store is unavailable");
                self.audit.record(
                    "store_unavailable",
                    json!({"store": self.kind, "operation": op, "error_kind": kind,
                           "details": message, "policy": self.policy_name()}),
                );
            }
        }
    }

    fn recovered(&self) {
        let Ok(mut outage) = self.outage.lock() else {
            return;
        };
        if let Some(o) = outage.take() {
            metrics::gauge!("gateway_store_up").set(1.0);
            let seconds = o.since.elapsed().as_secs_f64();
            tracing::info!(
                store = self.kind,
                outage_s = seconds,
                failures = o.failures,
                "the store is reachable again"
            );
            self.audit.record(
                "store_recovered",
                json!({"store": self.kind, "outage_seconds": seconds, "failed_operations": o.failures}),
            );
        }
    }

    fn policy_name(&self) -> &'static str {
        match self.policy {
            FailurePolicy::Closed => "closed",
            FailurePolicy::Open => "open",
        }
    }

    /// Under the `open` policy, a rate-limit answer that lets the request through.
    fn fail_open<T>(
        &self,
        op: &'static str,
        result: Result<T, Error>,
        open: T,
    ) -> Result<T, Error> {
        match result {
            Err(Error::StoreUnavailable { .. }) if self.policy == FailurePolicy::Open => {
                metrics::counter!("gateway_store_fail_open_total", "op" => op).increment(1);
                Ok(open)
            }
            other => other,
        }
    }

    pub fn is_available(&self) -> bool {
        self.outage.lock().map(|o| o.is_none()).unwrap_or(false)
    }

    /// The `store` section of `/health`.
    pub fn health(&self) -> Value {
        let mut body = json!({
            "kind": self.kind,
            "status": if self.is_available() { "available" } else { "unavailable" },
            "failure_policy": self.policy_name(),
        });
        if let Some(address) = &self.address {
            body["address"] = json!(address);
        }
        if let Ok(Some(o)) = self.outage.lock().as_deref() {
            body["unavailable_for_seconds"] = json!(o.since.elapsed().as_secs_f64());
            body["failed_operations"] = json!(o.failures);
            body["last_error"] = json!(o.last_error);
        }
        if let Some(pool) = self.inner.pool_status() {
            body["pool"] = json!({"max": pool.max, "connections": pool.size,
                                  "idle": pool.idle, "waiting": pool.waiting});
        }
        body
    }

    pub async fn take(&self, key: &str, spec: BucketSpec, cost: u64) -> Result<Take, Error> {
        let result = self.call("take", self.inner.take(key, spec, cost)).await;
        self.fail_open("take", result, unlimited(spec))
    }

    pub async fn adjust(&self, key: &str, spec: BucketSpec, delta: i64) -> Result<(), Error> {
        let result = self
            .call("adjust", self.inner.adjust(key, spec, delta))
            .await;
        self.fail_open("adjust", result, ())
    }

    pub async fn peek(&self, key: &str, spec: BucketSpec) -> Result<Take, Error> {
        let result = self.call("peek", self.inner.peek(key, spec)).await;
        self.fail_open("peek", result, unlimited(spec))
    }

    pub async fn take_request(
        &self,
        requests: BucketKey<'_>,
        tokens: BucketKey<'_>,
    ) -> Result<(Take, Take), Error> {
        let result = self
            .call("take_request", self.inner.take_request(requests, tokens))
            .await;
        let open = (unlimited(requests.spec), unlimited(tokens.spec));
        self.fail_open("take_request", result, open)
    }

    pub async fn reserve_tokens(
        &self,
        tokens: BucketKey<'_>,
        cost: u64,
        requests: BucketKey<'_>,
    ) -> Result<Take, Error> {
        let result = self
            .call(
                "reserve_tokens",
                self.inner.reserve_tokens(tokens, cost, requests),
            )
            .await;
        self.fail_open("reserve_tokens", result, unlimited(tokens.spec))
    }

    pub async fn create_session(&self, session: Session, max: u64) -> Result<Created, Error> {
        self.call("create_session", self.inner.create_session(session, max))
            .await
    }

    pub async fn use_session(&self, token_digest: &[u8; 32]) -> Result<Option<Session>, Error> {
        self.call("use_session", self.inner.use_session(token_digest))
            .await
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<Session>, Error> {
        self.call("get_session", self.inner.get_session(id)).await
    }

    pub async fn remove_session(&self, id: &str) -> Result<Option<Session>, Error> {
        self.call("remove_session", self.inner.remove_session(id))
            .await
    }

    pub async fn list_sessions(&self) -> Result<Vec<Session>, Error> {
        self.call("list_sessions", self.inner.list_sessions()).await
    }

    pub async fn remove_all_sessions(&self) -> Result<Vec<Session>, Error> {
        self.call("remove_all_sessions", self.inner.remove_all_sessions())
            .await
    }

    pub async fn purge_expired(&self) -> Result<Vec<Session>, Error> {
        self.call("purge_expired", self.inner.purge_expired()).await
    }

    pub async fn count_sessions(&self) -> Result<u64, Error> {
        self.call("count_sessions", self.inner.count_sessions())
            .await
    }
}

/// What a fail-open rate limit reports: a full bucket.
fn unlimited(spec: BucketSpec) -> Take {
    Take {
        allowed: true,
        remaining: spec.capacity as u64,
        reset_after: Duration::ZERO,
        retry_after: Duration::ZERO,
    }
}

pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "gateway_store_operation_seconds",
        Unit::Seconds,
        "Session and rate-limit store operations, by op"
    );
    describe_counter!(
        "gateway_store_errors_total",
        "Failed store operations, by op and kind (timeout, connection, pool, response)"
    );
    describe_counter!(
        "gateway_store_fail_open_total",
        "Rate-limit checks let through while the store was unavailable (policy open)"
    );
    describe_gauge!("gateway_store_up", "1 while the store answers");
    describe_gauge!("gateway_store_pool_connections", "Redis connections open");
    describe_gauge!(
        "gateway_store_pool_idle",
        "Redis connections open and not in use"
    );
    describe_gauge!(
        "gateway_store_pool_waiting",
        "Operations waiting for a Redis connection"
    );
    describe_gauge!("gateway_store_pool_max", "Largest Redis pool allowed");
}
