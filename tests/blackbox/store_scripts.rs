//! The Redis store's Lua scripts, called through the gateway's `Store` trait against a real
//! `redis-server`: the same answers as the memory store, exact under concurrency from several
//! pools (as from several gateways), and Redis expiry on what it stores.
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use gateway::config::RedisSettings;
use gateway::ratelimit::BucketSpec;
use gateway::store::{now_ms, BucketKey, Created, MemoryStore, RedisStore, Session, Store};
use integration_tests::harness::wait_for;
use integration_tests::redis::RedisServer;

use crate::SOON;

fn store(redis: &RedisServer, prefix: &str) -> RedisStore {
    let settings = RedisSettings {
        url: redis.url(),
        address: format!("127.0.0.1:{}", redis.port),
        prefix: prefix.into(),
        pool_size: 8,
    };
    RedisStore::new(&settings, Duration::from_secs(5)).unwrap()
}

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
async fn buckets_answer_as_the_memory_store_does() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let shared = store(&redis, "same:");
    shared.ping().await.unwrap();
    let memory = MemoryStore::new();
    // A minute per unit: no refill between steps changes a whole unit.
    let spec = BucketSpec::per_minute(1, 5);
    let steps: &[(&str, i64)] = &[
        ("take", 1),
        ("take", 3),
        ("take", 2),
        ("peek", 0),
        ("adjust", 2),
        ("take", 2),
        ("adjust", -4),
        ("take", 1),
        ("peek", 0),
        ("adjust", 100),
        ("take", 5),
        ("take", 6),
        // A charge beyond any budget saturates at one bucket of debt, in both stores.
        ("adjust", i64::MIN),
        ("peek", 0),
        ("take", 1),
        ("adjust", 100),
        ("take", 5),
    ];
    for (i, &(op, n)) in steps.iter().enumerate() {
        let stores: [&dyn Store; 2] = [&memory, &shared];
        let mut answers = vec![];
        for s in stores {
            let answer = match op {
                "take" => Some(s.take("k", spec, n as u64).await.unwrap()),
                "peek" => Some(s.peek("k", spec).await.unwrap()),
                _ => {
                    s.adjust("k", spec, n).await.unwrap();
                    None
                }
            };
            answers.push(answer);
        }
        let [memory, shared] =
            [answers[0], answers[1]].map(|a| a.map(|t| (t.allowed, t.remaining)));
        assert_eq!(memory, shared, "step {i}: {op} {n}");
        // The two stores ran a few milliseconds apart; their waits differ by that much only.
        if let (Some(m), Some(s)) = (answers[0], answers[1]) {
            let apart = m.retry_after.abs_diff(s.retry_after);
            assert!(
                apart < Duration::from_millis(500),
                "step {i}: {m:?} / {s:?}"
            );
        }
    }
}

#[tokio::test]
async fn admission_steps_answer_as_the_memory_store_does() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let shared = store(&redis, "admit:");
    shared.ping().await.unwrap();
    let memory = MemoryStore::new();
    // A minute per unit: no refill between steps changes a whole unit.
    let requests = BucketKey {
        key: "rpm:c",
        spec: BucketSpec::per_minute(1, 3),
    };
    let tokens = BucketKey {
        key: "tpm:c",
        spec: BucketSpec::per_minute(1, 100),
    };
    for s in [&memory as &dyn Store, &shared] {
        // Admitted, then 60 tokens reserved: 2 requests and 40 tokens left.
        let (took, seen) = s.take_request(requests, tokens).await.unwrap();
        assert!(took.allowed);
        assert_eq!((took.remaining, seen.remaining), (2, 100));
        let reserved = s.reserve_tokens(tokens, 60, requests).await.unwrap();
        assert!(reserved.allowed);
        assert_eq!(reserved.remaining, 40);
        // Admitted, but 60 more tokens do not fit: the request is given back in the same step.
        let (took, seen) = s.take_request(requests, tokens).await.unwrap();
        assert_eq!(
            (took.allowed, took.remaining, seen.remaining),
            (true, 1, 40)
        );
        let refused = s.reserve_tokens(tokens, 60, requests).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 40);
        assert!(refused.retry_after > Duration::from_secs(60 * 19));
        assert_eq!(
            s.peek(requests.key, requests.spec).await.unwrap().remaining,
            2
        );
        // Two more requests empty the bucket; the next is refused, with the tokens' level.
        for left in [1, 0] {
            let (took, _) = s.take_request(requests, tokens).await.unwrap();
            assert_eq!((took.allowed, took.remaining), (true, left));
        }
        let (took, seen) = s.take_request(requests, tokens).await.unwrap();
        assert!(!took.allowed);
        assert_eq!(seen.remaining, 40);
    }
}

#[tokio::test]
async fn concurrent_takes_from_several_pools_admit_exactly_the_capacity() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gateways: Vec<Arc<RedisStore>> =
        (0..3).map(|_| Arc::new(store(&redis, "exact:"))).collect();
    let spec = BucketSpec::per_minute(1, 50);
    let takes = (0..300).map(|i| {
        let s = gateways[i % 3].clone();
        async move { s.take("rpm:key:x", spec, 1).await.unwrap().allowed }
    });
    let allowed = join_all(takes).await.into_iter().filter(|a| *a).count();
    assert_eq!(allowed, 50);

    let creates = (0..60).map(|i| {
        let s = gateways[i % 3].clone();
        async move {
            s.create_session(session(&format!("s{i}"), i as u8, 60_000, 60_000), 7)
                .await
                .unwrap()
        }
    });
    let created = join_all(creates)
        .await
        .into_iter()
        .filter(|c| *c == Created::Yes)
        .count();
    assert_eq!(created, 7);
    assert_eq!(gateways[1].count_sessions().await.unwrap(), 7);
}

#[tokio::test]
async fn ended_sessions_are_swept_once_and_expire_in_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let a = store(&redis, "sweep:");
    let b = store(&redis, "sweep:");
    let other = store(&redis, "elsewhere:");
    for i in 0..5 {
        a.create_session(session(&format!("short{i}"), i, 100, 60_000), 100)
            .await
            .unwrap();
    }
    a.create_session(session("long", 9, 60_000, 60_000), 100)
        .await
        .unwrap();
    other
        .create_session(session("short-other", 10, 100, 60_000), 100)
        .await
        .unwrap();
    // Redis itself expires a token at its session's end.
    let pttl: i64 = redis.query(&["PTTL", &format!("sweep:token:{}", hex(0))]);
    assert!((1..=100).contains(&pttl), "token expiry {pttl}");
    let pttl: i64 = redis.query(&["PTTL", &format!("sweep:token:{}", hex(9))]);
    assert!(pttl > 50_000, "long session's token {pttl}");
    // Past their end: Redis has dropped every short session's token (what the scripts judge by
    // is the same clock, Redis's).
    let short_tokens: Vec<String> = (0..5)
        .map(|i| format!("sweep:token:{}", hex(i)))
        .chain([format!("elsewhere:token:{}", hex(10))])
        .collect();
    wait_for(
        SOON,
        "Redis to expire the short sessions' tokens",
        || async {
            let left: i64 = short_tokens
                .iter()
                .map(|key| redis.query::<i64>(&["EXISTS", key]))
                .sum();
            (left == 0).then_some(())
        },
    )
    .await;
    assert!(a.use_session(&[0; 32]).await.unwrap().is_none());
    assert!(b.get_session("short1").await.unwrap().is_none());
    // Two gateways sweeping at once: each ended session comes back (to be audited) once.
    let (x, y) = tokio::join!(a.purge_expired(), b.purge_expired());
    let mut ids: Vec<String> = x
        .unwrap()
        .into_iter()
        .chain(y.unwrap())
        .map(|s| s.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["short0", "short1", "short2", "short3", "short4"]);
    // Another prefix is another installation: untouched.
    assert_eq!(other.purge_expired().await.unwrap().len(), 1);
    let live = a.list_sessions().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, "long");
    assert_eq!(live[0].token_digest, [9; 32]);
    let keys: Vec<String> = redis.query(&["KEYS", "*"]);
    assert!(
        keys.iter().all(|k| k.starts_with("sweep:")),
        "every key is namespaced: {keys:?}"
    );
}

#[tokio::test]
async fn use_moves_the_idle_end_and_its_redis_expiry() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = store(&redis, "idle:");
    s.create_session(session("i", 3, 60_000, 1_000), 10)
        .await
        .unwrap();
    let key = format!("idle:token:{}", hex(3));
    // Three times: once half of the idle second has run out (as Redis's expiry on the token
    // shows), a use gives it a whole second again. Together longer than the idle limit.
    for round in 0..3 {
        let what = format!("round {round}: half the idle time gone");
        wait_for(SOON, &what, || async {
            let pttl: i64 = redis.query(&["PTTL", &key]);
            assert!(
                pttl > 0,
                "round {round}: the token expired while in use ({pttl})"
            );
            (pttl < 500).then_some(())
        })
        .await;
        let used = s.use_session(&[3; 32]).await.unwrap().unwrap();
        assert_eq!(used.id, "i");
        let pttl: i64 = redis.query(&["PTTL", &key]);
        assert!(pttl > 750, "expiry refreshed on use: {pttl}");
    }
    // Left alone, Redis drops the token at the idle end, and the session is over.
    wait_for(SOON, "Redis to drop the idle session's token", || async {
        let exists: i64 = redis.query(&["EXISTS", &key]);
        (exists == 0).then_some(())
    })
    .await;
    assert!(s.use_session(&[3; 32]).await.unwrap().is_none(), "idle");
    // Buckets carry an expiry too: an idle client costs nothing for long.
    s.take("rpm:key:y", BucketSpec::per_minute(60, 10), 3)
        .await
        .unwrap();
    let pttl: i64 = redis.query(&["PTTL", "idle:bucket:rpm:key:y"]);
    assert!((3000..=4000).contains(&pttl), "refilled in 3 s: {pttl}");
}

fn hex(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}
