//! Benchmark (not a test): the latency the store adds, memory against Redis, through the `Store`
//! trait. Run by `bench/store-latency.sh`, or:
//!
//! `cargo run --release -p gateway --example store_latency -- redis://127.0.0.1:6379/0 [N] [CONCURRENCY]`
//!
//! Times `N` rounds of the store calls one authenticated session request makes: the failed-auth
//! `peek`, `use_session`, and the `take`s of the request and token buckets, each timed on its
//! own, and prints p50/p99 per call and per round for each store.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::config::RedisSettings;
use gateway::ratelimit::BucketSpec;
use gateway::store::{now_ms, MemoryStore, RedisStore, Session, Store};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

type Timings = ([Vec<Duration>; 4], Vec<Duration>);

async fn rounds(store: Arc<dyn Store>, digest: [u8; 32], n: usize) -> Timings {
    let big = BucketSpec::per_minute(1_000_000_000, 1_000_000_000);
    let mut ops: [Vec<Duration>; 4] = Default::default();
    let mut requests = vec![];
    for _ in 0..n {
        let r = Instant::now();
        let t = Instant::now();
        store.peek("authfail:127.0.0.1", big).await.unwrap();
        ops[0].push(t.elapsed());
        let t = Instant::now();
        assert!(store.use_session(&digest).await.unwrap().is_some());
        ops[1].push(t.elapsed());
        let t = Instant::now();
        store.take("rpm:key:bench", big, 1).await.unwrap();
        ops[2].push(t.elapsed());
        let t = Instant::now();
        store.take("tpm:key:bench", big, 1000).await.unwrap();
        ops[3].push(t.elapsed());
        requests.push(r.elapsed());
    }
    (ops, requests)
}

async fn run(store: Arc<dyn Store>, label: &str, n: usize, concurrency: usize) {
    let digest = [7u8; 32];
    let now = now_ms();
    let session = Session {
        id: format!("sess-bench-{label}"),
        token_digest: digest,
        owner: "key:bench".into(),
        created_ms: now,
        expires_ms: now + 3_600_000,
        idle_ms: 3_600_000,
        last_used_ms: now,
    };
    store.remove_session(&session.id).await.unwrap();
    store.create_session(session, 1_000_000).await.unwrap();
    rounds(store.clone(), digest, 500).await; // warm-up: connections, scripts
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(rounds(store.clone(), digest, n / concurrency)))
        .collect();
    let mut ops: [Vec<Duration>; 4] = Default::default();
    let mut requests = vec![];
    for task in tasks {
        let (o, r) = task.await.unwrap();
        for (all, mine) in ops.iter_mut().zip(o) {
            all.extend(mine);
        }
        requests.extend(r);
    }
    println!(
        "{label:>6}: {} rounds ({} store calls), {concurrency} at a time, in {:.2}s",
        requests.len(),
        requests.len() * 4,
        started.elapsed().as_secs_f64()
    );
    for (name, mut v) in ["peek", "use_session", "take rpm", "take tpm"]
        .into_iter()
        .zip(ops)
        .chain([("per round (4 calls)", requests)])
    {
        v.sort();
        println!(
            "        {name:<20} p50 {:>9.1?}  p99 {:>9.1?}",
            pct(&v, 0.5),
            pct(&v, 0.99)
        );
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .expect("usage: store_latency REDIS_URL [N] [CONCURRENCY]");
    let n: usize = args.get(1).map(|v| v.parse().unwrap()).unwrap_or(20_000);
    let concurrency: usize = args.get(2).map(|v| v.parse().unwrap()).unwrap_or(1);
    run(Arc::new(MemoryStore::new()), "memory", n, concurrency).await;
    let settings = RedisSettings {
        url: url.clone(),
        address: url,
        prefix: "mcp-local-provider-bench:".into(),
        pool_size: 16,
    };
    let redis = RedisStore::new(&settings, Duration::from_secs(5)).unwrap();
    redis.ping().await.unwrap();
    run(Arc::new(redis), "redis", n, concurrency).await;
}
