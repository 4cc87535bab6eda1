//! Streaming measurements for `bench/run.sh`:
//! `stream-probe ttfc URL KEY N`: N streamed chats one after another; time to the first content
//!   chunk and to the end, p50/p99 in microseconds, and the content chunks each carried.
//! `stream-probe hold URL KEY STREAMS PIDS`: opens STREAMS concurrent streamed chats against a
//!   slow agent, waits until every one has its first event, then reports the RSS and open file
//!   descriptors of each PID (comma-separated) and lets them all go.
//! `stream-probe handoff URL KEY N C`: N chats, C at a time, each prompt stamped with the time it
//!   is sent (`bench::SENT_AT`, read back by `mcp-agent`); the whole answer's p50/p99 in
//!   microseconds, and how many came back as other than a 200 with `ok`.
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{Barrier, Semaphore};

/// A streamed chat; `x_bench_*` fields tell the zero-delay peer how to answer.
fn body(chunks: u64, delay_ms: u64) -> serde_json::Value {
    json!({"model": "cursor-agent-local", "stream": true,
           "messages": [{"role": "user", "content": "benchmark"}],
           "x_bench_chunks": chunks, "x_bench_delay_ms": delay_ms})
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn ttfc(url: &str, key: &str, n: usize) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let (mut first, mut total, mut chunks) = (Vec::new(), Vec::new(), 0usize);
    for _ in 0..n {
        let started = Instant::now();
        let resp = client
            .post(url)
            .bearer_auth(key)
            .json(&body(100, 0))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = resp.bytes_stream();
        let mut seen_content = false;
        let mut text = String::new();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(|e| e.to_string())?;
            text.push_str(&String::from_utf8_lossy(&bytes));
            if !seen_content && text.contains("\"content\":\"x") {
                first.push(started.elapsed().as_micros());
                seen_content = true;
            }
        }
        total.push(started.elapsed().as_micros());
        chunks = text.matches("\"content\":\"x\"").count();
    }
    first.sort_unstable();
    total.sort_unstable();
    println!(
        "{}",
        json!({"requests": n, "content_chunks": chunks,
               "ttfc_us": {"p50": percentile(&first, 50.0), "p99": percentile(&first, 99.0)},
               "total_us": {"p50": percentile(&total, 50.0), "p99": percentile(&total, 99.0)}})
    );
    Ok(())
}

async fn handoff(url: &str, key: &str, n: usize, concurrency: usize) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut editors = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, key, next) =
            (client.clone(), url.to_owned(), key.to_owned(), next.clone());
        editors.spawn(async move {
            let (mut total, mut failed) = (Vec::new(), 0usize);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                // Stamped just before the body is built and sent: those few µs count as hand-off.
                let prompt = format!("benchmark {}{}", bench::SENT_AT, bench::unix_ns());
                let body = json!({"model": "cursor-agent-local",
                                  "messages": [{"role": "user", "content": prompt}]});
                let started = Instant::now();
                let answer = async {
                    let resp = client
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await
                        .ok()?;
                    let ok = resp.status().is_success();
                    let answer: serde_json::Value = resp.json().await.ok()?;
                    (ok && answer["choices"][0]["message"]["content"] == "ok").then_some(())
                }
                .await;
                total.push(started.elapsed().as_micros());
                failed += usize::from(answer.is_none());
            }
            (total, failed)
        });
    }
    let (mut total, mut failed) = (Vec::with_capacity(n), 0);
    while let Some(done) = editors.join_next().await {
        let (t, f) = done.map_err(|e| e.to_string())?;
        total.extend(t);
        failed += f;
    }
    total.sort_unstable();
    println!(
        "{}",
        json!({"requests": n, "concurrency": concurrency, "failed": failed,
               "total_us": {"p50": percentile(&total, 50.0), "p99": percentile(&total, 99.0)}})
    );
    Ok(())
}

async fn hold(url: &str, key: &str, streams: usize, pids: &[u32]) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    // Connect a few hundred at a time so the listen backlog never overflows.
    let connecting = Arc::new(Semaphore::new(256));
    let all_open = Arc::new(Barrier::new(streams + 1));
    let release = Arc::new(tokio::sync::Notify::new());
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    for _ in 0..streams {
        let (client, url, key) = (client.clone(), url.to_owned(), key.to_owned());
        let (connecting, all_open, release, failures) = (
            connecting.clone(),
            all_open.clone(),
            release.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await;
            let opened = async {
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body(1, 600_000))
                    .send()
                    .await
                    .ok()?;
                let mut stream = resp.bytes_stream();
                stream.next().await?.ok()?;
                Some(stream)
            }
            .await;
            drop(permit);
            if opened.is_none() {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            all_open.wait().await;
            release.notified().await;
            drop(opened);
        });
    }
    all_open.wait().await;
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss: Vec<serde_json::Value> = pids
        .iter()
        .map(|pid| json!({"pid": pid, "rss_bytes": bench::rss_bytes(*pid), "fds": bench::open_fds(*pid)}))
        .collect();
    println!(
        "{}",
        json!({"streams": streams, "failed": failures.load(std::sync::atomic::Ordering::Relaxed),
               "opened_in_ms": opened_in.as_millis(), "rss": rss})
    );
    release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ttfc", url, key, n] => match n.parse() {
            Ok(n) => ttfc(url, key, n).await,
            Err(_) => Err(format!("N must be a whole number, got {n:?}")),
        },
        ["handoff", url, key, n, c] => match (n.parse(), c.parse()) {
            (Ok(n), Ok(c)) => handoff(url, key, n, c).await,
            _ => Err("N and C must be whole numbers".into()),
        },
        ["hold", url, key, streams, pids] => {
            let pids: Result<Vec<u32>, _> = pids.split(',').map(str::parse).collect();
            match (streams.parse(), pids) {
                (Ok(s), Ok(p)) => hold(url, key, s, &p).await,
                _ => Err("STREAMS must be a number and PIDS comma-separated numbers".into()),
            }
        }
        _ => Err(
            "usage: stream-probe ttfc URL KEY N | stream-probe hold URL KEY STREAMS PIDS | stream-probe handoff URL KEY N C".into(),
        ),
    };
    if let Err(err) = result {
        eprintln!("stream-probe: {err}");
        std::process::exit(1);
    }
}
