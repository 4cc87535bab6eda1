//! Telemetry an outsider cannot grow or flush: invented methods and paths add no `/metrics`
//! series to any of the three services, and a flood of refused requests (bad keys, web-guard
//! refusals, rate limits) cannot rotate an earlier audit line away, because refusals are
//! coalesced per client and reason into one line and a count.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use integration_tests::mcp_stack::{McpBridgeProc, MCP_TOKEN};
use integration_tests::observe::{metrics, series};
use integration_tests::stack::{chat_body, http, Stack, KEY};
use reqwest::Method;
use serde_json::{json, Value};

use crate::SOON;

/// Sends `n` requests with invented methods (`<tag>0` …) and `n` to invented paths, with
/// `token` as bearer; what they answer does not matter.
async fn invent(base: &str, paths: &[&str], tag: &str, n: usize, token: Option<&str>) {
    let client = http();
    let requests = (0..n).flat_map(|i| {
        let method = Method::from_bytes(format!("{tag}{i}").as_bytes()).unwrap();
        let path = paths[i % paths.len()];
        [
            (method, format!("{base}{path}")),
            (Method::GET, format!("{base}/invented/{tag}/{i}")),
        ]
    });
    futures_util::stream::iter(requests)
        .for_each_concurrent(16, |(method, url)| {
            let mut req = client.request(method, url);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            async move {
                req.send().await.unwrap();
            }
        })
        .await;
}

async fn series_of(url: &str) -> BTreeSet<String> {
    series(&metrics(url).await)
        .into_iter()
        // Process figures and latency buckets come and go with the process, not with labels.
        .filter(|s| !s.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// 100 invented methods (and paths), then 100 others: the second hundred adds no series.
async fn invented_methods_add_no_series(base: &str, paths: &[&str], token: Option<&str>) {
    let scrape = format!("{base}/metrics");
    series_of(&scrape).await;
    let before = series_of(&scrape).await;
    invent(base, paths, "INVENTED", 100, token).await;
    let after_first = series_of(&scrape).await;
    invent(base, paths, "MADEUP", 100, token).await;
    let after_second = series_of(&scrape).await;
    let added: Vec<&String> = after_second.difference(&after_first).collect();
    assert!(added.is_empty(), "{base}: new series {added:?}");
    let first: Vec<&String> = after_first.difference(&before).collect();
    assert!(
        first.iter().all(|s| !s.contains("INVENTED")),
        "{base}: {first:?}"
    );
}

#[tokio::test]
async fn invented_methods_and_paths_add_no_series_to_any_service() {
    let stack = Stack::start().await;
    let gateway = stack.gateway.url("");
    invented_methods_add_no_series(&gateway, &["/v1/models", "/v1/chat/completions"], Some(KEY))
        .await;
    let text = metrics(&stack.gateway.url("/metrics")).await;
    assert!(
        text.contains(r#"method="other""#),
        "invented methods are counted as other:\n{text}"
    );
    assert!(text.contains(r#"route="unmatched""#), "{text}");

    let bridge = McpBridgeProc::new().spawn();
    let bridge_url = bridge.url("");
    integration_tests::harness::wait_healthy(&bridge.url("/health/live"), SOON).await;
    invented_methods_add_no_series(&bridge_url, &["/mcp", "/health"], Some(MCP_TOKEN)).await;
    // JSON-RPC methods of its own invention, with the token.
    let scrape = bridge.url("/metrics");
    let before = series_of(&scrape).await;
    for i in 0..50 {
        http()
            .post(bridge.url("/mcp"))
            .bearer_auth(MCP_TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": i, "method": format!("invented/{i}")}))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(before, series_of(&scrape).await, "mcp-bridge");

    let agent = stack.agent.url("");
    invented_methods_add_no_series(&agent, &["/health", "/metrics"], None).await;
}

fn backup(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.1", path.display()))
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// How many events of a kind the lines stand for: each line written whole is one, each count
/// line its `repeated`.
fn events(lines: &[Value], kind: impl Fn(&Value) -> bool) -> u64 {
    lines
        .iter()
        .filter(|l| kind(l))
        .map(|l| l["repeated"].as_u64().unwrap_or(1))
        .sum()
}

#[tokio::test]
async fn five_thousand_refusals_leave_an_earlier_audit_line_in_place() {
    let mut stack = Stack::start_with(
        |a| a,
        |g| {
            g.env("AUDIT_LOG_MAX_BYTES", 4000)
                .env("AUDIT_LOG_BACKUPS", 1)
                .env("RATE_LIMIT_RPM", 1)
                .env("RATE_LIMIT_BURST", 1)
                .env("AUTH_FAILURE_LIMIT", 100_000)
        },
    )
    .await;
    let gw = &stack.gateway;
    let path = gw.audit_path().unwrap().to_owned();
    // The line to keep: a chat served before the flood.
    let served = gw.chat(chat_body("before the flood", false)).await;
    assert_eq!(served.status(), 200);
    let id = served.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.wait_audit("the chat's model_request", |v| {
        v["event_type"] == "model_request" && v["request_id"] == id.as_str()
    })
    .await;

    let (limited, foreign, wrong) = (1700u64, 1700u64, 1600u64);
    let client = http();
    let chat = chat_body("over the rate", false);
    let sends = (0..limited)
        .map(|_| {
            (
                429,
                client
                    .post(gw.url("/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .json(&chat),
            )
        })
        .chain((0..foreign).map(|_| {
            let req = client
                .get(gw.url("/v1/models"))
                .header("host", format!("rebind.evil.example:{}", gw.port));
            (403, req)
        }))
        .chain((0..wrong).map(|i| {
            let req = client
                .get(gw.url("/v1/models"))
                .bearer_auth(format!("wrong-key-{i:0>40}"));
            (401, req)
        }));
    let answered: Vec<u16> = futures_util::stream::iter(sends)
        .map(|(expected, req)| async move {
            let status = req.send().await.unwrap().status().as_u16();
            // A minute's refill may let one chat through on a slow machine.
            assert!(
                status == expected || status == 200,
                "{status}, not {expected}"
            );
            status
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let got = |status: u16| answered.iter().filter(|s| **s == status).count() as u64;
    assert_eq!(got(403), foreign);
    assert_eq!(got(401), wrong);

    // Nothing of the flood is dropped unwritten: every refusal is a line or counted.
    let (_, health) = integration_tests::harness::get(&gw.url("/health"))
        .await
        .unwrap();
    assert_eq!(health["audit"]["dropped"], 0, "{health}");
    let kept = |lines: &[Value]| {
        lines
            .iter()
            .any(|v| v["event_type"] == "model_request" && v["request_id"] == id.as_str())
    };
    let mut lines = records(&backup(&path));
    lines.extend(records(&path));
    assert!(kept(&lines), "the chat's line was rotated away: {lines:?}");
    assert!(lines.len() < 40, "{} lines for 5,000 refusals", lines.len());

    // Stopping writes the counts still held; they add up to what was refused.
    stack.gateway.service.terminate().unwrap();
    stack
        .gateway
        .service
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap();
    let mut lines = records(&backup(&path));
    lines.extend(records(&path));
    assert!(kept(&lines), "{lines:?}");
    let host = |v: &Value| v["violation_type"] == "host_not_allowed";
    assert_eq!(events(&lines, host), foreign);
    let throttled = |v: &Value| v["event_type"] == "rate_limit_exceeded";
    assert_eq!(events(&lines, throttled), got(429));
    let bad_key = |v: &Value| {
        v["event_type"] == "authentication" && v["success"] == false && v["reason"] == "wrong"
    };
    assert_eq!(events(&lines, bad_key), wrong);
    let good_key = |v: &Value| v["event_type"] == "authentication" && v["success"] == true;
    assert_eq!(events(&lines, good_key), limited + 1);
    // What a count line looks like: the kind's naming fields and the count, no details.
    let count = lines
        .iter()
        .find(|v| bad_key(v) && v.get("repeated").is_some())
        .unwrap_or_else(|| panic!("no count line: {lines:?}"));
    assert_eq!(count["client_ip"], "127.0.0.1", "{count}");
    assert_eq!(count["within_seconds"], 60, "{count}");
    assert!(count.get("key_fingerprint").is_none(), "{count}");
    let whole = lines
        .iter()
        .find(|v| bad_key(v) && v.get("repeated").is_none())
        .unwrap();
    assert_eq!(whole["key_fingerprint"].as_str().map(str::len), Some(12));
}

#[tokio::test]
async fn refused_mcp_tokens_are_one_line_and_a_count() {
    let mut bridge = McpBridgeProc::new().spawn();
    integration_tests::harness::wait_healthy(&bridge.url("/health/live"), SOON).await;
    let client = http();
    futures_util::stream::iter(0..300)
        .for_each_concurrent(16, |i| {
            let req = client
                .post(bridge.url("/mcp"))
                .bearer_auth(format!("wrong-mcp-token-{i}"))
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
            async move {
                assert_eq!(req.send().await.unwrap().status(), 401);
            }
        })
        .await;
    bridge.service.terminate().unwrap();
    bridge
        .service
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap();
    let refused: Vec<Value> = bridge
        .audit()
        .into_iter()
        .filter(|v| v["event_type"] == "authentication" && v["endpoint"] == "mcp")
        .collect();
    assert_eq!(refused.len(), 2, "one line and its count: {refused:?}");
    assert_eq!(events(&refused, |_| true), 300);
}
