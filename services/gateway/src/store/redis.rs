//! The shared store: sessions and rate-limit buckets in Redis, so several gateways on one Redis
//! admit exactly what one gateway would. Every operation is one Lua script (sent by its SHA,
//! `EVALSHA`, and loaded again when Redis has forgotten it), so each check-and-consume is atomic
//! in Redis; nothing is read, decided here, then written.
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError, Script};
use deadpool_redis::{Manager, Pool, PoolError, Runtime};

use super::{BucketKey, Created, PoolStatus, Session, Store};
use crate::config::RedisSettings;
use crate::error::Error;
use crate::ratelimit::{self, BucketSpec, BucketState, Take};

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/prelude.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

/// A bucket script: the prelude, the one bucket operation they share, then `$file`.
macro_rules! bucket_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("lua/prelude.lua"),
            include_str!("lua/bucket_op.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

struct Scripts {
    bucket: Script,
    take_request: Script,
    reserve_tokens: Script,
    create: Script,
    use_: Script,
    get: Script,
    remove: Script,
    list: Script,
    remove_all: Script,
    purge: Script,
    count: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            bucket: bucket_script!("bucket.lua"),
            take_request: bucket_script!("take_request.lua"),
            reserve_tokens: bucket_script!("reserve_tokens.lua"),
            create: script!("session_create.lua"),
            use_: script!("session_use.lua"),
            get: script!("session_get.lua"),
            remove: script!("session_remove.lua"),
            list: script!("session_list.lua"),
            remove_all: script!("session_remove_all.lua"),
            purge: script!("session_purge.lua"),
            count: script!("session_count.lua"),
        }
    }
}

/// How many ended sessions one sweep removes at most (the rest wait for the next tick).
const PURGE_BATCH: usize = 1000;

pub struct RedisStore {
    pool: Pool,
    prefix: String,
    address: String,
    scripts: Scripts,
}

impl RedisStore {
    /// A pool whose every step (waiting for a slot, connecting, the health check on reuse, each
    /// reply) is bounded by `timeout`. Connects lazily; see [`RedisStore::ping`].
    pub fn new(settings: &RedisSettings, timeout: Duration) -> Result<Self, Error> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let manager = Manager::new_with_config(settings.url.as_str(), connection)
            .map_err(|e| unavailable(&e.into()))?;
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::StoreUnavailable {
                kind: "pool",
                message: format!("cannot build the Redis pool: {e}"),
            })?;
        Ok(Self {
            pool,
            prefix: settings.prefix.clone(),
            address: settings.address.clone(),
            scripts: Scripts::new(),
        })
    }

    /// `PING`, and the scripts loaded, to check at start-up that Redis answers.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.pool.get().await.map_err(|e| unavailable(&e))?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e.into()))?;
        if pong != "PONG" {
            return Err(Error::StoreUnavailable {
                kind: "response",
                message: format!("PING answered {pong:?}"),
            });
        }
        let s = &self.scripts;
        for script in [
            &s.bucket,
            &s.take_request,
            &s.reserve_tokens,
            &s.create,
            &s.use_,
            &s.get,
            &s.remove,
            &s.list,
            &s.remove_all,
            &s.purge,
            &s.count,
        ] {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| unavailable(&e.into()))?;
        }
        Ok(())
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<T, Error> {
        let mut conn = self.pool.get().await.map_err(|e| unavailable(&e))?;
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.prefix);
        for arg in args {
            invocation.arg(*arg);
        }
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e.into()))
    }

    /// The bucket script; returns whether it allowed the op, the refilled level it saw, and
    /// Redis's clock.
    async fn bucket(
        &self,
        key: &str,
        op: &str,
        spec: BucketSpec,
        amount: f64,
    ) -> Result<(bool, BucketState), Error> {
        let (allowed, level, now): (u8, String, String) = self
            .run(
                &self.scripts.bucket,
                &[
                    key,
                    op,
                    &spec.capacity.to_string(),
                    &spec.per_second.to_string(),
                    &amount.to_string(),
                ],
            )
            .await?;
        let state = BucketState {
            level: level.parse().map_err(|_| bad_reply("bucket level"))?,
            at_ms: now.parse().map_err(|_| bad_reply("bucket time"))?,
        };
        Ok((allowed == 1, state))
    }

    async fn sessions(&self, script: &Script, args: &[&str]) -> Result<Vec<Session>, Error> {
        let flat: Vec<String> = self.run(script, args).await?;
        flat.chunks(7).map(parse_session).collect()
    }

    async fn session(&self, script: &Script, args: &[&str]) -> Result<Option<Session>, Error> {
        let record: Option<Vec<String>> = self.run(script, args).await?;
        record.as_deref().map(parse_session).transpose()
    }
}

/// A bucket's level as the script reported it, on the script's clock.
fn state_of(level: &str, at_ms: u64) -> Result<BucketState, Error> {
    Ok(BucketState {
        level: level.parse().map_err(|_| bad_reply("bucket level"))?,
        at_ms,
    })
}

/// The answer `ratelimit::take` gives for `cost` on a bucket that stood at `seen` (already
/// refilled to the script's clock): the same pure function the memory store uses.
fn answer(seen: BucketState, spec: BucketSpec, cost: f64, allowed: bool) -> Take {
    let (_, take) = ratelimit::take(Some(seen), spec, cost, seen.at_ms);
    Take { allowed, ..take }
}

#[async_trait]
impl Store for RedisStore {
    async fn take(&self, key: &str, spec: BucketSpec, cost: u64) -> Result<Take, Error> {
        let (allowed, seen) = self.bucket(key, "take", spec, cost as f64).await?;
        Ok(answer(seen, spec, cost as f64, allowed))
    }

    async fn adjust(&self, key: &str, spec: BucketSpec, delta: i64) -> Result<(), Error> {
        self.bucket(key, "adjust", spec, delta as f64).await?;
        Ok(())
    }

    async fn peek(&self, key: &str, spec: BucketSpec) -> Result<Take, Error> {
        let (_, seen) = self.bucket(key, "peek", spec, 0.0).await?;
        Ok(ratelimit::take(Some(seen), spec, 0.0, seen.at_ms).1)
    }

    async fn take_request(
        &self,
        requests: BucketKey<'_>,
        tokens: BucketKey<'_>,
    ) -> Result<(Take, Take), Error> {
        let (allowed, request_level, token_level, now): (u8, String, String, String) = self
            .run(
                &self.scripts.take_request,
                &[
                    requests.key,
                    &requests.spec.capacity.to_string(),
                    &requests.spec.per_second.to_string(),
                    tokens.key,
                    &tokens.spec.capacity.to_string(),
                    &tokens.spec.per_second.to_string(),
                ],
            )
            .await?;
        let at_ms = now.parse().map_err(|_| bad_reply("bucket time"))?;
        let requests_seen = state_of(&request_level, at_ms)?;
        let tokens_seen = state_of(&token_level, at_ms)?;
        Ok((
            answer(requests_seen, requests.spec, 1.0, allowed == 1),
            ratelimit::take(Some(tokens_seen), tokens.spec, 0.0, at_ms).1,
        ))
    }

    async fn reserve_tokens(
        &self,
        tokens: BucketKey<'_>,
        cost: u64,
        requests: BucketKey<'_>,
    ) -> Result<Take, Error> {
        let (allowed, level, now): (u8, String, String) = self
            .run(
                &self.scripts.reserve_tokens,
                &[
                    tokens.key,
                    &tokens.spec.capacity.to_string(),
                    &tokens.spec.per_second.to_string(),
                    &(cost as f64).to_string(),
                    requests.key,
                    &requests.spec.capacity.to_string(),
                    &requests.spec.per_second.to_string(),
                ],
            )
            .await?;
        let at_ms = now.parse().map_err(|_| bad_reply("bucket time"))?;
        let seen = state_of(&level, at_ms)?;
        Ok(answer(seen, tokens.spec, cost as f64, allowed == 1))
    }

    async fn create_session(&self, session: Session, max: u64) -> Result<Created, Error> {
        let ttl = session.expires_ms.saturating_sub(session.created_ms);
        let (created, end, now): (u8, String, String) = self
            .run(
                &self.scripts.create,
                &[
                    &session.id,
                    &hex::encode(session.token_digest),
                    &session.owner,
                    &ttl.to_string(),
                    &session.idle_ms.to_string(),
                    &max.to_string(),
                ],
            )
            .await?;
        if created == 1 {
            return Ok(Created::Yes);
        }
        let end: u64 = end.parse().map_err(|_| bad_reply("session end"))?;
        let now: u64 = now.parse().map_err(|_| bad_reply("time"))?;
        Ok(Created::LimitReached {
            retry_after: Duration::from_millis(end.saturating_sub(now)),
        })
    }

    async fn use_session(&self, token_digest: &[u8; 32]) -> Result<Option<Session>, Error> {
        self.session(&self.scripts.use_, &[&hex::encode(token_digest)])
            .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>, Error> {
        self.session(&self.scripts.get, &[id]).await
    }

    async fn remove_session(&self, id: &str) -> Result<Option<Session>, Error> {
        self.session(&self.scripts.remove, &[id]).await
    }

    async fn list_sessions(&self) -> Result<Vec<Session>, Error> {
        let mut list = self.sessions(&self.scripts.list, &[]).await?;
        list.sort_by_key(|s| s.created_ms);
        Ok(list)
    }

    async fn remove_all_sessions(&self) -> Result<Vec<Session>, Error> {
        self.sessions(&self.scripts.remove_all, &[]).await
    }

    async fn purge_expired(&self) -> Result<Vec<Session>, Error> {
        // Buckets need no sweeping here: each carries a Redis expiry for when it is full again.
        self.sessions(&self.scripts.purge, &[&PURGE_BATCH.to_string()])
            .await
    }

    async fn count_sessions(&self) -> Result<u64, Error> {
        self.run(&self.scripts.count, &[]).await
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let s = self.pool.status();
        Some(PoolStatus {
            max: s.max_size,
            size: s.size,
            idle: s.available,
            waiting: s.waiting,
        })
    }
}

fn parse_session(f: &[String]) -> Result<Session, Error> {
    let [id, digest, owner, created, expires, idle, last_used] = f else {
        return Err(bad_reply("session record"));
    };
    let mut token_digest = [0u8; 32];
    hex::decode_to_slice(digest, &mut token_digest).map_err(|_| bad_reply("token digest"))?;
    let ms = |v: &String| v.parse::<u64>().map_err(|_| bad_reply("session time"));
    Ok(Session {
        id: id.clone(),
        token_digest,
        owner: owner.clone(),
        created_ms: ms(created)?,
        expires_ms: ms(expires)?,
        idle_ms: ms(idle)?,
        last_used_ms: ms(last_used)?,
    })
}

fn bad_reply(what: &str) -> Error {
    Error::StoreUnavailable {
        kind: "response",
        message: format!("Redis answered an unreadable {what}"),
    }
}

/// Names the failure by kind, the label on `gateway_store_errors_total`.
fn unavailable(err: &PoolError) -> Error {
    let (kind, message) = match err {
        PoolError::Timeout(t) => ("timeout", format!("Redis pool timed out ({t:?})")),
        PoolError::Backend(e) => (redis_kind(e), e.to_string()),
        other => ("pool", other.to_string()),
    };
    Error::StoreUnavailable { kind, message }
}

fn redis_kind(e: &RedisError) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        "connection"
    } else {
        "response"
    }
}
