//! The Redis store (docs/configuration.md, "Several gateways: the Redis store"), against a real `redis-server` each test starts on a free port:
//! the session and rate-limit suites of `access` again on Redis; two gateways on one Redis
//! admitting exactly what one would; Redis hung, killed and restarted under running gateways;
//! start-up with a bad or unreachable URL. Without redis-server these tests fail when `CI=true`
//! and are skipped (with a message) elsewhere.
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use integration_tests::harness::{free_port, get};
use integration_tests::redis::{Backend, RedisServer};
use integration_tests::stack::{chat_body, Gateway, GatewayProc, Stack, ADMIN, KEY};
use serde_json::{json, Value};

use crate::access;
use crate::SOON;

macro_rules! on_redis {
    ($($name:ident => $body:path),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(redis) = RedisServer::start().await else { return };
            $body(redis.backend()).await;
        }
    )*};
}

on_redis!(
    auth_failures_are_401_audited_and_throttled
        => access::auth_failures_are_401_audited_and_throttled_on,
    requests_per_minute_with_burst_give_429_with_openai_headers
        => access::requests_per_minute_with_burst_give_429_with_openai_headers_on,
    tokens_per_minute_reserve_max_tokens_until_the_answer
        => access::tokens_per_minute_reserve_max_tokens_until_the_answer_on,
    sessions_work_as_bearers_and_end_when_revoked
        => access::sessions_work_as_bearers_and_end_when_revoked_on,
    sessions_expire_by_ttl_and_by_idle_time_and_are_capped
        => access::sessions_expire_by_ttl_and_by_idle_time_and_are_capped_on,
    admin_lists_and_revokes_all_sessions => access::admin_lists_and_revokes_all_sessions_on,
);

/// Gateway A (in the stack) and gateway B, both on `store` with the same settings.
async fn two_gateways(
    store: &Backend,
    settings: impl Fn(GatewayProc) -> GatewayProc,
) -> (Stack, Gateway) {
    let stack = Stack::start_with(|a| a, |g| settings(store.apply(g))).await;
    let b = settings(store.apply(GatewayProc::new(&stack.agent.socket))).spawn();
    b.wait_health("healthy", Duration::from_secs(20)).await;
    (stack, b)
}

fn statuses(responses: &[reqwest::Response]) -> (usize, usize) {
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let limited = responses.iter().filter(|r| r.status() == 429).count();
    assert_eq!(
        ok + limited,
        responses.len(),
        "only 200 or 429: {:?}",
        responses.iter().map(|r| r.status()).collect::<Vec<_>>()
    );
    (ok, limited)
}

#[tokio::test]
async fn two_gateways_admit_exactly_the_request_burst() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // One request a minute refills nothing during the test: exactly the burst gets through.
    let (stack, b) = two_gateways(&redis.backend(), |g| {
        g.env("RATE_LIMIT_RPM", 1).env("RATE_LIMIT_BURST", 7)
    })
    .await;
    let a = &stack.gateway;
    // One request each first, so that neither gateway is still loading its tokenizer (which
    // holds up a debug build's runtime for seconds) during the burst. Five of seven remain.
    for gw in [a, &b] {
        let resp = gw.chat(chat_body("warm up", false)).await;
        assert_eq!(resp.status(), 200);
    }
    let burst = (0..24).map(|i| {
        let gw = if i % 2 == 0 { a } else { &b };
        gw.chat(chat_body(&format!("burst {i}"), false))
    });
    let responses = join_all(burst).await;
    assert_eq!(
        statuses(&responses),
        (5, 19),
        "one budget for both gateways"
    );
    let refused = responses.iter().find(|r| r.status() == 429).unwrap();
    assert_eq!(refused.headers()["x-ratelimit-remaining-requests"], "0");
}

#[tokio::test]
async fn two_gateways_admit_exactly_the_token_budget() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (stack, b) = two_gateways(&redis.backend(), |g| g.env("RATE_LIMIT_TPM", 1000)).await;
    let a = &stack.gateway;
    // Held answers keep their reservations, so nothing comes back during the burst; every
    // request has the same prompt length, so the same cost (prompt + max_tokens).
    let held = |i: usize| {
        let mut body = chat_body(&format!("[[hang]] request {i:02}"), true);
        body["max_tokens"] = json!(150);
        body
    };
    let remaining = |r: &reqwest::Response| -> u64 {
        r.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // The first request on the full bucket shows what one costs; one on each gateway also
    // warms their tokenizers before the burst.
    let first = a.chat(held(0)).await;
    assert_eq!(first.status(), 200);
    let cost = 1000 - remaining(&first);
    assert!(
        (150..200).contains(&cost),
        "a request costs its prompt plus max_tokens: {cost}"
    );
    let second = b.chat(held(1)).await;
    assert_eq!(second.status(), 200);
    let left = remaining(&second);
    // The refill (1000/min, about 17 a second) must not fit another request during the burst.
    assert!(
        left % cost + 34 < cost,
        "test design: cost {cost}, left {left}"
    );
    let burst = (0..16).map(|i| {
        let gw = if i % 2 == 0 { a } else { &b };
        gw.chat(held(i + 2))
    });
    let responses = join_all(burst).await;
    let expected = (left / cost) as usize;
    assert_eq!(
        statuses(&responses),
        (expected, 16 - expected),
        "one token budget for both gateways"
    );
    for r in responses.iter().filter(|r| r.status() == 429) {
        assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "1000");
    }
    drop((first, second));
}

#[tokio::test]
async fn two_gateways_share_the_session_cap_exactly() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (stack, b) = two_gateways(&redis.backend(), |g| g.env("MAX_SESSIONS", 3)).await;
    let a = &stack.gateway;
    let burst = (0..12).map(|i| {
        let gw = if i % 2 == 0 { a } else { &b };
        gw.post("/v1/sessions", Some(KEY)).send()
    });
    let responses: Vec<reqwest::Response> = join_all(burst)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(statuses(&responses), (3, 9), "one cap for both gateways");
    for r in responses.into_iter().filter(|r| r.status() == 429) {
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "session_limit_reached");
    }
    let health: Value = b
        .get("/health", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["active_sessions"], 3);
}

#[tokio::test]
async fn a_session_works_on_every_gateway_and_ends_everywhere_at_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (stack, b) = two_gateways(&redis.backend(), |g| g).await;
    let a = &stack.gateway;
    let made: Value = a.create_session().await;
    let (id, token) = (
        made["session_id"].as_str().unwrap(),
        made["token"].as_str().unwrap(),
    );
    let on = |gw: &Gateway, text: &str| {
        gw.post("/v1/chat/completions", Some(token))
            .json(&chat_body(text, false))
            .send()
    };
    assert_eq!(on(&b, "made on A, used on B").await.unwrap().status(), 200);
    assert_eq!(
        stack.peer.invokes().pop().unwrap().session_id.as_deref(),
        Some(id)
    );
    // Only digests reach Redis: neither the token nor the key is anywhere in it.
    let keys: Vec<String> = redis.query(&["KEYS", "*"]);
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(!key.contains(token) && !key.contains(KEY), "{key}");
        let dump: String = redis.query(&["TYPE", key]);
        let values: Vec<String> = match dump.as_str() {
            "hash" => redis.query(&["HVALS", key]),
            "string" => vec![redis.query(&["GET", key])],
            "zset" => redis.query(&["ZRANGE", key, "0", "-1"]),
            // Gone since KEYS (a bucket whose reservation was just given back): nothing to leak.
            "none" => Vec::new(),
            other => panic!("unexpected key type {other} for {key}"),
        };
        assert!(
            values
                .iter()
                .all(|v| !v.contains(token) && !v.contains(KEY)),
            "{key}: {values:?}"
        );
    }
    let listed: Value = b
        .get("/admin/sessions", Some(ADMIN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["session_id"], id);

    // Revoked on B: refused on A at once.
    let resp = b
        .delete(&format!("/v1/sessions/{id}"), Some(KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(on(a, "after revocation").await.unwrap().status(), 401);

    // Revoke-all on A ends B's sessions too.
    let mut tokens = vec![];
    for _ in 0..2 {
        let s: Value = b.create_session().await;
        tokens.push(s["token"].as_str().unwrap().to_owned());
    }
    let revoked: Value = a
        .post("/admin/revoke_all_sessions", Some(ADMIN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["revoked"], 2);
    for t in &tokens {
        assert_eq!(
            b.get("/v1/models", Some(t)).send().await.unwrap().status(),
            401
        );
    }
}

#[tokio::test]
async fn failed_authentications_are_throttled_across_gateways() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (stack, b) = two_gateways(&redis.backend(), |g| g.env("AUTH_FAILURE_LIMIT", 4)).await;
    let a = &stack.gateway;
    let wrong = "wrong-key-that-is-long-enough-0123456789";
    for i in 0..4 {
        let gw = if i % 2 == 0 { a } else { &b };
        let resp = gw.get("/v1/models", Some(wrong)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "failure {i}");
    }
    for gw in [a, &b] {
        let resp = gw.get("/v1/models", Some(KEY)).send().await.unwrap();
        assert_eq!(resp.status(), 429, "four failures in all use the budget");
        assert!(resp.headers().contains_key("retry-after"));
    }
}

async fn error_code(resp: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn metrics(gw: &Gateway) -> String {
    match get(&gw.url("/metrics")).await.unwrap() {
        (200, Value::String(text)) => text,
        other => panic!("/metrics: {other:?}"),
    }
}

/// The value of the first sample line starting with `name` (labels included).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn redis_hung_or_down_answers_503_within_the_timeout_and_recovers_by_itself() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let pool = 4;
    let (stack, b) = two_gateways(&redis.backend(), |g| {
        g.env("STORE_TIMEOUT", 0.25).env("REDIS_POOL_SIZE", pool)
    })
    .await;
    let a = &stack.gateway;
    assert_eq!(a.chat(chat_body("before", false)).await.status(), 200);
    let session: Value = a.create_session().await;
    let token = session["token"].as_str().unwrap().to_owned();

    // Hung (SIGSTOP): connections stay open, nothing answers. Every request gets its answer
    // within the timeout's order of magnitude; none waits on Redis.
    redis.pause();
    let started = Instant::now();
    let burst = (0..10).map(|i| {
        let gw = if i % 2 == 0 { a } else { &b };
        gw.chat(chat_body("while hung", false))
    });
    for resp in join_all(burst).await {
        let (status, retry_after, body) = error_code(resp).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "store_unavailable");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "answers must not wait on a hung Redis: {waited:?}"
    );
    let health = a.wait_health("degraded", SOON).await;
    assert_eq!(health["store"]["status"], "unavailable", "{health}");
    assert_eq!(health["store"]["kind"], "redis");
    redis.resume();
    a.wait_health("healthy", SOON).await;
    assert_eq!(a.chat(chat_body("resumed", false)).await.status(), 200);

    // Down (SIGKILL): refused connections, same answer.
    redis.kill().await;
    let (status, _, body) = error_code(b.chat(chat_body("while down", false)).await).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    let resp = a.get("/v1/models", Some(&token)).send().await.unwrap();
    assert_eq!(
        resp.status(),
        503,
        "a session cannot be checked without the store"
    );
    let health = b.wait_health("degraded", SOON).await;
    assert_eq!(health["store"]["status"], "unavailable");
    assert!(health["store"]["last_error"].as_str().is_some(), "{health}");
    let text = metrics(&b).await;
    assert!(
        text.contains("gateway_store_errors_total{"),
        "errors counted"
    );
    assert_eq!(sample(&text, "gateway_store_up"), Some(0.0));
    b.wait_audit("the outage audited", |v| {
        v["event_type"] == "store_unavailable" && v["policy"] == "closed"
    })
    .await;

    // Back on the same port (empty, as after a crash without persistence): both gateways
    // recover without a restart.
    redis.restart().await;
    for gw in [a, &b] {
        gw.wait_health("healthy", SOON).await;
        assert_eq!(gw.chat(chat_body("after", false)).await.status(), 200);
        gw.wait_audit("the recovery audited", |v| {
            v["event_type"] == "store_recovered"
        })
        .await;
    }
    // No leaked connections: each gateway holds at most its pool.
    let burst = (0..20).map(|i| {
        let gw = if i % 2 == 0 { a } else { &b };
        gw.chat(chat_body("load", false))
    });
    assert!(join_all(burst).await.iter().all(|r| r.status() == 200));
    for gw in [a, &b] {
        let text = metrics(gw).await;
        let open = sample(&text, "gateway_store_pool_connections").unwrap();
        assert!(open >= 1.0 && open <= pool as f64, "pool {open}");
        assert_eq!(sample(&text, "gateway_store_pool_max"), Some(pool as f64));
    }
    let clients = redis.connected_clients();
    assert!(
        clients <= 2 * pool as u64,
        "{clients} connections from two gateways with pools of {pool}"
    );
}

#[tokio::test]
async fn fail_open_lets_the_api_key_through_but_never_an_unchecked_session() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let stack = Stack::start_with(
        |a| a,
        |g| redis.backend().apply(g.env("STORE_FAILURE_POLICY", "open")),
    )
    .await;
    let gw = &stack.gateway;
    let session: Value = gw.create_session().await;
    redis.kill().await;
    let resp = gw.chat(chat_body("fail open", false)).await;
    assert_eq!(
        resp.status(),
        200,
        "rate limits pass while the store is down"
    );
    let resp = gw
        .get("/v1/models", Some(session["token"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_code(resp).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    let (status, _, _) = error_code(gw.post("/v1/sessions", Some(KEY)).send().await.unwrap()).await;
    assert_eq!(status, 503);
    let wrong = gw
        .get(
            "/v1/models",
            Some("wrong-key-that-is-long-enough-0123456789"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "bad keys are still refused");
    let unknown = gw
        .get(
            "/v1/models",
            Some("lps_not-a-session-token-but-shaped-like-one"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 503, "a session token cannot be checked");
    let health = gw.wait_health("degraded", SOON).await;
    assert_eq!(health["store"]["failure_policy"], "open");
    let text = metrics(gw).await;
    assert!(text.contains("gateway_store_fail_open_total{"), "counted");
    gw.wait_audit("the outage audited", |v| {
        v["event_type"] == "store_unavailable" && v["policy"] == "open"
    })
    .await;
    redis.restart().await;
    gw.wait_health("healthy", SOON).await;
}

#[tokio::test]
async fn a_gateway_started_before_redis_waits_for_it() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    redis.kill().await;
    let stack = Stack::start_with(|a| a, |g| g).await;
    let gw = redis
        .backend()
        .apply(GatewayProc::new(&stack.agent.socket))
        .env("CONNECTION_TIMEOUT", 30)
        .spawn();
    integration_tests::harness::wait_for(SOON, "the gateway waiting for Redis", || {
        let waiting = gw
            .service
            .logs()
            .contains("Redis does not answer yet; retrying");
        async move { waiting.then_some(()) }
    })
    .await;
    redis.restart().await;
    gw.wait_health("healthy", Duration::from_secs(20)).await;
    assert_eq!(gw.chat(chat_body("late redis", false)).await.status(), 200);
}

#[tokio::test]
async fn start_up_with_a_bad_or_unreachable_redis_is_one_line_and_non_zero() {
    // Needs no redis-server: nothing listens on the port.
    let socket = tempfile::tempdir().unwrap();
    let socket = socket.path().join("none.sock");
    let cases = [
        (
            format!("redis://127.0.0.1:{}/0", free_port()),
            1,
            "cannot use Redis at 127.0.0.1:",
        ),
        (
            "http://user:hunter2@127.0.0.1/".to_owned(),
            2,
            "expected a redis://",
        ),
    ];
    for (url, code, says) in cases {
        let mut gw = GatewayProc::new(&socket)
            .env("SESSION_STORE", "redis")
            .env("REDIS_URL", &url)
            .env("CONNECTION_TIMEOUT", 2)
            .spawn();
        let status = gw.service.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.code(), Some(code), "{url}: {}", gw.service.logs());
        let logs = gw.service.logs();
        assert!(!logs.contains("panicked"), "{logs}");
        assert!(
            !logs.contains("hunter2"),
            "no password in the output: {logs}"
        );
        let line = logs.lines().last().unwrap_or_default();
        assert!(
            line.starts_with("gateway: LOCAL_PROVIDER_REDIS_URL: ") && line.contains(says),
            "one clear last line for {url}: {logs}"
        );
    }
    // Without a URL at all.
    let mut gw = GatewayProc::new(&socket)
        .env("SESSION_STORE", "redis")
        .spawn();
    let status = gw.service.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(gw.service.logs().contains("LOCAL_PROVIDER_REDIS_URL"));
}
