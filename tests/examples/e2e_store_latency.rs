//! Benchmark (not a test): end-to-end chat latency through the real binaries with the memory
//! store and with the Redis store, so the difference is what the Redis path adds per request.
//! Run by `bench/store-latency.sh` (which builds the release binaries first).
//!
//! Each store gets a fresh stack (scripted peer, bridge-agent, gateway; a `redis-server` on a
//! free port for Redis) and the same load: non-streamed chats, first with the API key, then with
//! a session token (which adds the session lookup), one at a time and then `CONCURRENCY` at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use integration_tests::redis::{Backend, RedisServer};
use integration_tests::stack::{chat_body, Stack, KEY};
use serde_json::Value;

const CONCURRENCY: usize = 8;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn timed(stack: &Stack, token: &str, n: usize) -> Vec<Duration> {
    let gw = &stack.gateway;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let resp = gw
            .post("/v1/chat/completions", Some(token))
            .json(&chat_body(&format!("bench {i}"), false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        out.push(started.elapsed());
    }
    out
}

async fn measure(store: &Backend, label: &str, n: usize) {
    let stack = Stack::start_with(
        |a| a.env("LOG_LEVEL", "WARNING"),
        |g| {
            store
                .apply(g)
                .env("LOG_LEVEL", "WARNING")
                .env("RATE_LIMIT_TPM", 1_000_000_000_000u64)
                .env("MAX_SESSIONS", 1000)
                .env("STORE_TIMEOUT", 0.25)
        },
    )
    .await;
    let session: Value = stack
        .gateway
        .post("/v1/sessions", Some(KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    timed(&stack, KEY, 200).await; // warm-up: tokenizer, pools, connections
    for (credential, bearer) in [("api key", KEY), ("session", token.as_str())] {
        let mut serial = timed(&stack, bearer, n).await;
        serial.sort();
        let started = Instant::now();
        let mut parallel: Vec<Duration> =
            join_all((0..CONCURRENCY).map(|_| timed(&stack, bearer, n / CONCURRENCY)))
                .await
                .into_iter()
                .flatten()
                .collect();
        let rate = parallel.len() as f64 / started.elapsed().as_secs_f64();
        parallel.sort();
        println!(
            "{label:>6} {credential:<8}  1 at a time: p50 {:>8.1?} p99 {:>8.1?}   {CONCURRENCY} at a time: p50 {:>8.1?} p99 {:>8.1?} ({rate:.0} req/s)",
            pct(&serial, 0.5),
            pct(&serial, 0.99),
            pct(&parallel, 0.5),
            pct(&parallel, 0.99),
        );
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|v| v.parse().expect("N: a number of requests"))
        .unwrap_or(2000);
    measure(&Backend::Memory, "memory", n).await;
    let redis = RedisServer::start()
        .await
        .expect("redis-server is needed (scripts/setup-test-deps.sh installs it)");
    measure(&redis.backend(), "redis", n).await;
}
