//! Where sessions and rate-limit buckets live. Every operation is one atomic step in the store,
//! so several gateways sharing a store would admit exactly what one gateway admits.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::error::Error;
use crate::ratelimit::{BucketSpec, Take};

mod memory;
pub use memory::MemoryStore;

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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Atomically takes `cost` from the bucket `key` if it fits.
    async fn take(&self, key: &str, spec: BucketSpec, cost: u64) -> Result<Take, Error>;
    /// Gives back (positive) or charges (negative) `delta` on the bucket `key`.
    async fn adjust(&self, key: &str, spec: BucketSpec, delta: i64) -> Result<(), Error>;
    /// Looks at the bucket `key` without taking anything.
    async fn peek(&self, key: &str, spec: BucketSpec) -> Result<Take, Error>;

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
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
