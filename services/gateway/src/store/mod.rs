//! Where sessions and rate-limit buckets live. Every operation is one atomic step in the store,
//! so several gateways sharing a store would admit exactly what one gateway admits.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::error::Error;
use crate::ratelimit::{BucketSpec, Take};

mod guard;
mod memory;
mod redis;
pub use guard::Guarded;
pub use memory::MemoryStore;
pub use redis::RedisStore;

use std::sync::Arc;

use crate::config::{Settings, StoreKind};
use provider_shared::audit::Audit;

/// A session as stored: the token itself is never kept, only its SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub token_digest: [u8; 32],
    /// The rate-limit client the session counts against.
    pub owner: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub idle_ms: u64,
    pub last_used_ms: u64,
}

impl Session {
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms && now_ms < self.last_used_ms.saturating_add(self.idle_ms)
    }

    /// When the session ends if it is not used again.
    pub fn ends_ms(&self) -> u64 {
        self.expires_ms
            .min(self.last_used_ms.saturating_add(self.idle_ms))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Yes,
    /// The store already holds `max` live sessions; the earliest ends after `retry_after`.
    LimitReached {
        retry_after: Duration,
    },
}

/// A rate-limit bucket as an operation names it: its key and its shape.
#[derive(Debug, Clone, Copy)]
pub struct BucketKey<'a> {
    pub key: &'a str,
    pub spec: BucketSpec,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Atomically takes `cost` from the bucket `key` if it fits.
    async fn take(&self, key: &str, spec: BucketSpec, cost: u64) -> Result<Take, Error>;
    /// Gives back (positive) or charges (negative) `delta` on the bucket `key`.
    async fn adjust(&self, key: &str, spec: BucketSpec, delta: i64) -> Result<(), Error>;
    /// Looks at the bucket `key` without taking anything.
    async fn peek(&self, key: &str, spec: BucketSpec) -> Result<Take, Error>;
    /// Admission's first step, in one atomic step: takes one from `requests`, and looks at
    /// `tokens` (whose level a refusal's rate headers report).
    async fn take_request(
        &self,
        requests: BucketKey<'_>,
        tokens: BucketKey<'_>,
    ) -> Result<(Take, Take), Error>;
    /// Admission's last step, in one atomic step: takes `cost` from `tokens`; when it does not
    /// fit, gives back to `requests` the request [`Store::take_request`] took.
    async fn reserve_tokens(
        &self,
        tokens: BucketKey<'_>,
        cost: u64,
        requests: BucketKey<'_>,
    ) -> Result<Take, Error>;

    /// Adds `session` unless `max` live sessions exist already.
    async fn create_session(&self, session: Session, max: u64) -> Result<Created, Error>;
    /// The live session whose token has this digest, marked as used now.
    async fn use_session(&self, token_digest: &[u8; 32]) -> Result<Option<Session>, Error>;
    async fn get_session(&self, id: &str) -> Result<Option<Session>, Error>;
    async fn remove_session(&self, id: &str) -> Result<Option<Session>, Error>;
    async fn list_sessions(&self) -> Result<Vec<Session>, Error>;
    async fn remove_all_sessions(&self) -> Result<Vec<Session>, Error>;
    /// Removes and returns the sessions that have ended; also drops full, idle buckets.
    async fn purge_expired(&self) -> Result<Vec<Session>, Error>;
    async fn count_sessions(&self) -> Result<u64, Error>;

    /// The connection pool's state, for stores that have one.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub max: usize,
    /// Connections open.
    pub size: usize,
    /// Open and not in use.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// The store `SESSION_STORE` names. The Redis store must answer a `PING` first: start-up waits
/// up to `CONNECTION_TIMEOUT` for it (Redis may be starting beside the gateway), then stops
/// with one line and its supervisor retries.
pub async fn open(settings: &Settings, audit: Audit) -> Result<Guarded, Error> {
    guard::describe_metrics();
    let (inner, kind, address): (Arc<dyn Store>, _, _) =
        match (settings.session_store, &settings.redis) {
            (StoreKind::Redis, Some(redis)) => {
                let store = RedisStore::new(redis, settings.store_timeout)?;
                wait_for_redis(&store, settings.connection_timeout)
                    .await
                    .map_err(|detail| {
                        Error::Config(provider_shared::config::ConfigError::new(
                            "REDIS_URL",
                            format!("cannot use Redis at {}: {detail}", redis.address),
                        ))
                    })?;
                tracing::info!(address = %store.address(), prefix = %redis.prefix,
                    "sessions and rate limits in Redis");
                (Arc::new(store), "redis", Some(redis.address.clone()))
            }
            _ => (Arc::new(MemoryStore::new()), "memory", None),
        };
    Ok(Guarded::new(
        inner,
        kind,
        address,
        settings.store_timeout,
        settings.store_failure_policy,
        audit,
    ))
}

/// Retries `PING` until Redis answers or `patience` is over; the last failure otherwise.
async fn wait_for_redis(store: &RedisStore, patience: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut warned = false;
    loop {
        let detail = match tokio::time::timeout_at(deadline, store.ping()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(Error::StoreUnavailable { message, .. })) => message,
            Ok(Err(other)) => other.to_string(),
            Err(_) => format!("no answer within {} ms", patience.as_millis()),
        };
        // Refusals that no wait can cure (a wrong password, a missing database) stop at once.
        let lasting = [
            "NOAUTH",
            "WRONGPASS",
            "invalid password",
            "DB index is out of range",
        ]
        .iter()
        .any(|m| detail.contains(m));
        if lasting || tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
            return Err(detail);
        }
        if !warned {
            warned = true;
            tracing::warn!(address = %store.address(), error = %detail,
                wait_s = patience.as_secs_f64(), "Redis does not answer yet; retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
