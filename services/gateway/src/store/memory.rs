//! The default store: everything in this process, behind short-held locks.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{now_ms, BucketKey, Created, Session, Store};
use crate::error::Error;
use crate::ratelimit::{self, BucketSpec, BucketState, Take};

#[derive(Default)]
pub struct MemoryStore {
    buckets: Mutex<Buckets>,
    sessions: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    by_digest: HashMap<[u8; 32], Session>,
    digest_by_id: HashMap<String, [u8; 32]>,
}

impl Sessions {
    fn remove_digest(&mut self, digest: &[u8; 32]) -> Option<Session> {
        let session = self.by_digest.remove(digest)?;
        self.digest_by_id.remove(&session.id);
        Some(session)
    }

    fn purge(&mut self, now: u64) -> Vec<Session> {
        let dead: Vec<[u8; 32]> = self
            .by_digest
            .iter()
            .filter(|(_, s)| !s.is_live(now))
            .map(|(d, _)| *d)
            .collect();
        dead.iter().filter_map(|d| self.remove_digest(d)).collect()
    }
}

type Buckets = HashMap<String, (BucketState, BucketSpec)>;

/// Stores a bucket's new state; the key is copied only for a bucket not held yet.
fn set(buckets: &mut Buckets, key: &str, state: BucketState, spec: BucketSpec) {
    match buckets.get_mut(key) {
        Some(held) => *held = (state, spec),
        None => {
            buckets.insert(key.to_owned(), (state, spec));
        }
    }
}

fn poisoned() -> Error {
    Error::Internal("memory store lock poisoned".into())
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn take(&self, key: &str, spec: BucketSpec, cost: u64) -> Result<Take, Error> {
        let mut buckets = self.buckets.lock().map_err(|_| poisoned())?;
        let state = buckets.get(key).map(|(s, _)| *s);
        let (next, take) = ratelimit::take(state, spec, cost as f64, now_ms());
        set(&mut buckets, key, next, spec);
        Ok(take)
    }

    async fn adjust(&self, key: &str, spec: BucketSpec, delta: i64) -> Result<(), Error> {
        let mut buckets = self.buckets.lock().map_err(|_| poisoned())?;
        let state = buckets.get(key).map(|(s, _)| *s);
        let next = ratelimit::adjust(state, spec, delta as f64, now_ms());
        set(&mut buckets, key, next, spec);
        Ok(())
    }

    async fn peek(&self, key: &str, spec: BucketSpec) -> Result<Take, Error> {
        let buckets = self.buckets.lock().map_err(|_| poisoned())?;
        let state = buckets.get(key).map(|(s, _)| *s);
        Ok(ratelimit::take(state, spec, 0.0, now_ms()).1)
    }

    async fn take_request(
        &self,
        requests: BucketKey<'_>,
        tokens: BucketKey<'_>,
    ) -> Result<(Take, Take), Error> {
        let now = now_ms();
        let mut buckets = self.buckets.lock().map_err(|_| poisoned())?;
        let state = buckets.get(requests.key).map(|(s, _)| *s);
        let (next, took) = ratelimit::take(state, requests.spec, 1.0, now);
        set(&mut buckets, requests.key, next, requests.spec);
        let state = buckets.get(tokens.key).map(|(s, _)| *s);
        let (_, seen) = ratelimit::take(state, tokens.spec, 0.0, now);
        Ok((took, seen))
    }

    async fn reserve_tokens(
        &self,
        tokens: BucketKey<'_>,
        cost: u64,
        requests: BucketKey<'_>,
    ) -> Result<Take, Error> {
        let now = now_ms();
        let mut buckets = self.buckets.lock().map_err(|_| poisoned())?;
        let state = buckets.get(tokens.key).map(|(s, _)| *s);
        let (next, took) = ratelimit::take(state, tokens.spec, cost as f64, now);
        set(&mut buckets, tokens.key, next, tokens.spec);
        if !took.allowed {
            let state = buckets.get(requests.key).map(|(s, _)| *s);
            let next = ratelimit::adjust(state, requests.spec, 1.0, now);
            set(&mut buckets, requests.key, next, requests.spec);
        }
        Ok(took)
    }

    async fn create_session(&self, session: Session, max: u64) -> Result<Created, Error> {
        let now = now_ms();
        let mut sessions = self.sessions.lock().map_err(|_| poisoned())?;
        // Ended sessions never count against the cap, even before the sweeper removes them.
        let live: Vec<u64> = sessions
            .by_digest
            .values()
            .filter(|s| s.is_live(now))
            .map(Session::ends_ms)
            .collect();
        if live.len() as u64 >= max {
            let first_end = live.iter().min().copied().unwrap_or(now + 1000);
            return Ok(Created::LimitReached {
                retry_after: Duration::from_millis(first_end.saturating_sub(now)),
            });
        }
        sessions
            .digest_by_id
            .insert(session.id.clone(), session.token_digest);
        sessions.by_digest.insert(session.token_digest, session);
        Ok(Created::Yes)
    }

    async fn use_session(&self, token_digest: &[u8; 32]) -> Result<Option<Session>, Error> {
        let now = now_ms();
        let mut sessions = self.sessions.lock().map_err(|_| poisoned())?;
        match sessions.by_digest.get_mut(token_digest) {
            Some(s) if s.is_live(now) => {
                s.last_used_ms = now;
                Ok(Some(s.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, Error> {
        let now = now_ms();
        let sessions = self.sessions.lock().map_err(|_| poisoned())?;
        Ok(sessions
            .digest_by_id
            .get(id)
            .and_then(|d| sessions.by_digest.get(d))
            .filter(|s| s.is_live(now))
            .cloned())
    }

    async fn remove_session(&self, id: &str) -> Result<Option<Session>, Error> {
        let mut sessions = self.sessions.lock().map_err(|_| poisoned())?;
        let Some(digest) = sessions.digest_by_id.get(id).copied() else {
            return Ok(None);
        };
        Ok(sessions.remove_digest(&digest))
    }

    async fn list_sessions(&self) -> Result<Vec<Session>, Error> {
        let now = now_ms();
        let sessions = self.sessions.lock().map_err(|_| poisoned())?;
        let mut list: Vec<Session> = sessions
            .by_digest
            .values()
            .filter(|s| s.is_live(now))
            .cloned()
            .collect();
        list.sort_by_key(|s| s.created_ms);
        Ok(list)
    }

    async fn remove_all_sessions(&self) -> Result<Vec<Session>, Error> {
        let mut sessions = self.sessions.lock().map_err(|_| poisoned())?;
        sessions.digest_by_id.clear();
        Ok(sessions.by_digest.drain().map(|(_, s)| s).collect())
    }

    async fn purge_expired(&self) -> Result<Vec<Session>, Error> {
        let now = now_ms();
        {
            let mut buckets = self.buckets.lock().map_err(|_| poisoned())?;
            // A full bucket carries no information; dropping it bounds memory by active clients.
            buckets.retain(|_, (state, spec)| {
                ratelimit::take(Some(*state), *spec, 0.0, now).1.remaining < spec.capacity as u64
            });
        }
        let mut sessions = self.sessions.lock().map_err(|_| poisoned())?;
        Ok(sessions.purge(now))
    }

    async fn count_sessions(&self) -> Result<u64, Error> {
        let now = now_ms();
        let sessions = self.sessions.lock().map_err(|_| poisoned())?;
        Ok(sessions
            .by_digest
            .values()
            .filter(|s| s.is_live(now))
            .count() as u64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn session(id: &str, digest: u8, ttl_ms: u64, idle_ms: u64) -> Session {
        let now = now_ms();
        Session {
            id: id.into(),
            token_digest: [digest; 32],
            owner: "key:test".into(),
            created_ms: now,
            expires_ms: now + ttl_ms,
            idle_ms,
            last_used_ms: now,
        }
    }

    #[tokio::test]
    async fn session_cap_counts_only_live_sessions() {
        let store = MemoryStore::new();
        assert_eq!(
            store
                .create_session(session("a", 1, 60_000, 60_000), 2)
                .await
                .unwrap(),
            Created::Yes
        );
        assert_eq!(
            store
                .create_session(session("b", 2, 60_000, 60_000), 2)
                .await
                .unwrap(),
            Created::Yes
        );
        let Created::LimitReached { retry_after } = store
            .create_session(session("c", 3, 60_000, 60_000), 2)
            .await
            .unwrap()
        else {
            panic!("cap not enforced")
        };
        assert!(retry_after <= Duration::from_secs(60));
        store.remove_session("a").await.unwrap().unwrap();
        assert_eq!(
            store
                .create_session(session("c", 3, 60_000, 60_000), 2)
                .await
                .unwrap(),
            Created::Yes
        );
        assert_eq!(store.count_sessions().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn ended_sessions_are_unusable_and_purged() {
        let store = MemoryStore::new();
        store
            .create_session(session("old", 9, 0, 60_000), 5)
            .await
            .unwrap();
        assert!(store.use_session(&[9; 32]).await.unwrap().is_none());
        assert!(store.get_session("old").await.unwrap().is_none());
        let purged = store.purge_expired().await.unwrap();
        assert_eq!(purged.len(), 1);
        assert_eq!(purged[0].id, "old");
        assert!(store.remove_session("old").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn buckets_are_shared_by_key() {
        let store = MemoryStore::new();
        let spec = BucketSpec::per_minute(60, 2);
        assert!(store.take("k", spec, 1).await.unwrap().allowed);
        assert!(store.take("k", spec, 1).await.unwrap().allowed);
        assert!(!store.take("k", spec, 1).await.unwrap().allowed);
        assert!(store.take("other", spec, 1).await.unwrap().allowed);
        store.adjust("k", spec, 1).await.unwrap();
        assert_eq!(store.peek("k", spec).await.unwrap().remaining, 1);
    }
}
