//! Who may call, how much, and what is refused: auth, throttling, rate limits, the concurrency
//! cap, validation, sessions and the admin routes.
use std::time::{Duration, Instant};

use integration_tests::harness::{free_port, wait_for};
use integration_tests::observe::{metrics, value};
use integration_tests::redis::Backend;
use integration_tests::stack::{chat_body, GatewayProc, Stack, ADMIN, KEY, MODEL};
use serde_json::{json, Value};

use crate::SOON;

async fn error_of(resp: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    for field in ["message", "type", "param", "code"] {
        assert!(
            body["error"].get(field).is_some(),
            "error.{field} in {body}"
        );
    }
    (status, body, headers)
}

#[tokio::test]
async fn auth_failures_are_401_audited_and_throttled() {
    auth_failures_are_401_audited_and_throttled_on(Backend::Memory).await;
}

/// Run against each store (`redis_store` runs it on Redis).
pub async fn auth_failures_are_401_audited_and_throttled_on(store: Backend) {
    let stack = Stack::start_with(|a| a, |g| store.apply(g.env("AUTH_FAILURE_LIMIT", 3))).await;
    let gw = &stack.gateway;
    let (status, body, headers) = error_of(
        gw.post("/v1/chat/completions", None)
            .json(&chat_body("x", false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(headers["x-should-retry"], "false");
    let wrong = "wrong-key-that-is-long-enough-0123456789";
    for _ in 0..2 {
        let resp = gw
            .post("/v1/chat/completions", Some(wrong))
            .json(&chat_body("x", false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // Three failures used the budget: now even the right key waits.
    let (status, body, headers) = error_of(
        gw.post("/v1/chat/completions", Some(KEY))
            .json(&chat_body("x", false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "auth");
    assert!(headers.contains_key("retry-after"));

    gw.wait_audit("the throttling audited", |v| {
        v["event_type"] == "security_violation" && v["violation_type"] == "auth_throttled"
    })
    .await;
    let audit = gw.audit();
    let failures: Vec<&Value> = audit
        .iter()
        .filter(|v| v["event_type"] == "authentication" && v["success"] == false)
        .collect();
    // One line per client and reason: the missing key, then the first wrong one (the second
    // wrong key is counted, and written with the count once the minute is over).
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0]["client_ip"], "127.0.0.1");
    assert_eq!(failures[0]["reason"], "missing");
    assert_eq!(failures[1]["reason"], "wrong");
    assert_eq!(
        failures[1]["key_fingerprint"].as_str().map(str::len),
        Some(12)
    );
    assert!(audit.iter().any(
        |v| v["event_type"] == "security_violation" && v["violation_type"] == "auth_throttled"
    ));
    let text = gw.audit_text();
    assert!(
        !text.contains(KEY) && !text.contains(wrong),
        "no key in the audit log"
    );
}

#[tokio::test]
async fn requests_per_minute_with_burst_give_429_with_openai_headers() {
    requests_per_minute_with_burst_give_429_with_openai_headers_on(Backend::Memory).await;
}

/// Run against each store (`redis_store` runs it on Redis).
pub async fn requests_per_minute_with_burst_give_429_with_openai_headers_on(store: Backend) {
    let stack = Stack::start_with(
        |a| a,
        |g| store.apply(g.env("RATE_LIMIT_RPM", 60).env("RATE_LIMIT_BURST", 2)),
    )
    .await;
    let gw = &stack.gateway;
    // The tokenizer loads on first use (about a second in a debug build): load it through
    // count_tokens, whose bucket is its own, so the burst below is not spread over it.
    let counted = gw
        .post("/v1/messages/count_tokens", Some(KEY))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "warm"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(counted.status(), 200);
    let burst_at = Instant::now();
    let first = gw.chat(chat_body("a", false)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "60");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(gw.chat(chat_body("b", false)).await.status(), 200);
    let (status, body, headers) = error_of(gw.chat(chat_body("c", false)).await).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    for name in [
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(headers.contains_key(name), "{name}");
    }
    let record = gw
        .wait_audit("rate_limit_exceeded", |v| {
            v["event_type"] == "rate_limit_exceeded"
        })
        .await;
    assert_eq!(record["limit_type"], "requests");
    // One token a second refills the bucket: a request is accepted again within a few seconds
    // (refusals take nothing from the bucket), not before about a second after the burst began.
    wait_for(
        SOON,
        "a request accepted once the bucket refilled",
        || async {
            let status = gw.chat(chat_body("d", false)).await.status();
            assert!(status == 200 || status == 429, "{status}");
            (status == 200).then_some(())
        },
    )
    .await;
    assert!(
        burst_at.elapsed() >= Duration::from_millis(800),
        "accepted again {:?} after the burst, before the bucket refilled",
        burst_at.elapsed()
    );
}

/// The preamble admits before it counts: a client past its request rate is refused before its
/// prompt is counted (`gateway_prompt_count_seconds` counts every prompt tokenized), so a flood
/// of huge prompts costs no tokenizer time; an admitted request
/// that cannot fit is refused by the context window and counts against the request rate.
#[tokio::test]
async fn admission_comes_before_the_prompt_is_counted() {
    let stack = Stack::start_with(
        |a| a,
        |g| {
            g.env("RATE_LIMIT_RPM", 1)
                .env("RATE_LIMIT_BURST", 2)
                .env("CONTEXT_WINDOW", 2000)
                .env("DEFAULT_MAX_TOKENS", 100)
                .env("MAX_TOKENS_LIMIT", 1000)
        },
    )
    .await;
    let gw = &stack.gateway;
    let huge = chat_body(&"word ".repeat(5000), false);
    let (status, body, _) = error_of(gw.chat(huge.clone()).await).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    // Refused by the window after it was admitted, it took its request from the rate.
    let fits = gw.chat(chat_body("fits", false)).await;
    assert_eq!(fits.status(), 200);
    assert_eq!(fits.headers()["x-ratelimit-remaining-requests"], "0");
    // Prompts counted so far, and the refusals by the window.
    let counts = || async {
        let text = metrics(&gw.url("/metrics")).await;
        (
            value(&text, "gateway_prompt_count_seconds_count"),
            value(&text, "gateway_context_length_exceeded_total"),
        )
    };
    let before = counts().await;
    assert_eq!(before, (2.0, 1.0));
    // The burst is spent: huge prompts (a megabyte each, any number of them) are now refused by
    // the request rate before anything of them is counted.
    let megabyte = chat_body(&"word ".repeat(200_000), false);
    for _ in 0..20 {
        let (status, body, _) = error_of(gw.chat(megabyte.clone()).await).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["type"], "requests");
    }
    assert_eq!(
        before,
        counts().await,
        "the refused prompts were not counted"
    );
    assert!(stack.peer.invokes().len() == 1);
}

#[tokio::test]
async fn tokens_per_minute_reserve_max_tokens_until_the_answer() {
    tokens_per_minute_reserve_max_tokens_until_the_answer_on(Backend::Memory).await;
}

/// Run against each store (`redis_store` runs it on Redis).
pub async fn tokens_per_minute_reserve_max_tokens_until_the_answer_on(store: Backend) {
    let stack = Stack::start_with(|a| a, |g| store.apply(g.env("RATE_LIMIT_TPM", 1000))).await;
    let gw = &stack.gateway;
    // Larger than the whole budget: not refused (only the context window refuses a request for
    // its size), it takes the whole budget, and the next request waits until it gives back
    // what it did not use.
    let mut big = chat_body("[[hang]] big", true);
    big["max_tokens"] = json!(2000);
    let held = gw.chat(big).await;
    assert_eq!(held.status(), 200);
    assert_eq!(held.headers()["x-ratelimit-remaining-tokens"], "0");
    let (status, err, headers) = error_of(gw.chat(chat_body("small", false)).await).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["type"], "tokens");
    assert_eq!(headers["x-should-retry"], "true");
    drop(held);
    wait_for(SOON, "the whole budget given back", || async {
        (gw.chat(chat_body("small", false)).await.status() == 200).then_some(())
    })
    .await;

    // A pending answer holds its reservation; the next one does not fit.
    let mut hold = chat_body("[[hang]] hold", true);
    hold["max_tokens"] = json!(600);
    let held = gw.chat(hold).await;
    assert_eq!(held.status(), 200);
    let mut next = chat_body("next", false);
    next["max_tokens"] = json!(600);
    let (status, err, headers) = error_of(gw.chat(next.clone()).await).await;
    assert_eq!(status, 429, "{err}");
    assert_eq!(err["error"]["type"], "tokens");
    assert!(
        headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            < 600
    );
    // Once the held request ends, what it did not use comes back (a refused try reserves
    // nothing, so trying again until it fits waits on exactly that).
    drop(held);
    wait_for(SOON, "the held reservation given back", || async {
        (gw.chat(next.clone()).await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_large_output_cap_reserves_only_the_output_reservation() {
    let stack = Stack::start_with(|a| a, |g| g.env("RATE_LIMIT_TPM", 20_000)).await;
    let gw = &stack.gateway;
    let remaining = |r: &reqwest::Response| -> u64 {
        r.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Claude Code's cap: held while the answer runs, it takes the prompt and 8192 (the
    // default RATE_LIMIT_OUTPUT_RESERVATION), not the whole budget.
    let mut claude = chat_body("[[hang]] one turn", true);
    claude["max_tokens"] = json!(128_000);
    let held = gw.chat(claude.clone()).await;
    assert_eq!(held.status(), 200);
    let cost = 20_000 - remaining(&held);
    assert!((8192..8300).contains(&cost), "{cost}");
    // So a second turn fits beside it.
    let second = gw.chat(claude).await;
    assert_eq!(second.status(), 200);
    assert!(
        remaining(&second) < 20_000 - 2 * 8192,
        "{}",
        remaining(&second)
    );
}

#[tokio::test]
async fn past_the_concurrency_cap_a_503_with_retry_after() {
    let stack = Stack::start_with(|a| a, |g| g.env("MAX_CONCURRENT_REQUESTS", 1)).await;
    let held = stack.gateway.chat(chat_body("[[hang]] busy", true)).await;
    assert_eq!(held.status(), 200);
    let (status, body, headers) =
        error_of(stack.gateway.chat(chat_body("second", false)).await).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "server_overloaded");
    assert!(headers.contains_key("retry-after"));
    // The slot frees when the held stream ends; a refused try takes none.
    drop(held);
    wait_for(SOON, "the held slot freed", || async {
        (stack.gateway.chat(chat_body("third", false)).await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_validation_rule_is_an_openai_400() {
    let stack = Stack::start_with(
        |a| a,
        // An operator's own output cap (unset by default: see limits.rs).
        |g| g.env("MAX_TOKENS_LIMIT", 8192).env("MAX_BODY_BYTES", 4096),
    )
    .await;
    let base = || chat_body("hi", false);
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("model", json!(4)), "model"),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (with("messages", json!([])), "messages"),
        (json!({"model": MODEL}), "messages"),
        (with("max_tokens", json!(0)), "max_tokens"),
        (with("max_tokens", json!(8193)), "max_tokens"),
        (
            with("max_completion_tokens", json!(10_000)),
            "max_completion_tokens",
        ),
        (with("temperature", json!(2.1)), "temperature"),
        (with("temperature", json!("hot")), "temperature"),
        (with("top_p", json!(1.5)), "top_p"),
        (with("presence_penalty", json!(-3)), "presence_penalty"),
        (with("frequency_penalty", json!(2.5)), "frequency_penalty"),
        (
            with("messages", json!([{"role": "wizard", "content": "x"}])),
            "messages[0].role",
        ),
        (
            with("messages", json!([{"role": "user"}])),
            "messages[0].content",
        ),
        (
            with("messages", json!([{"role": "tool", "content": "r"}])),
            "messages[0].tool_call_id",
        ),
        (
            with("stream_options", json!({"include_usage": true})),
            "stream_options",
        ),
        (with("n", json!(3)), "n"),
    ];
    for (body, param) in cases {
        let (status, err, headers) = error_of(stack.gateway.chat(body.clone()).await).await;
        assert_eq!(status, 400, "{body} → {err}");
        assert_eq!(err["error"]["param"], param, "{body} → {err}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert_eq!(headers["x-should-retry"], "false");
        assert!(err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(param.split('[').next().unwrap()));
    }
    // Unknown fields are accepted and ignored.
    assert_eq!(
        stack
            .gateway
            .chat(with("logit_bias", json!({"50256": -100})))
            .await
            .status(),
        200
    );
    // Not JSON, and a body over the cap.
    let resp = stack
        .gateway
        .post("/v1/chat/completions", Some(KEY))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 400);
    let huge = with("padding", json!("x".repeat(8000)));
    let (status, body, headers) = error_of(stack.gateway.chat(huge).await).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(headers["x-should-retry"], "false");
    assert!(
        stack.peer.invokes().len() == 1,
        "no refused request reached the agent"
    );
}

#[tokio::test]
async fn sessions_work_as_bearers_and_end_when_revoked() {
    sessions_work_as_bearers_and_end_when_revoked_on(Backend::Memory).await;
}

/// Run against each store (`redis_store` runs it on Redis).
pub async fn sessions_work_as_bearers_and_end_when_revoked_on(store: Backend) {
    let stack = Stack::start_with(|a| a, |g| store.apply(g)).await;
    let gw = &stack.gateway;
    let made: Value = gw.create_session().await;
    let (id, token) = (
        made["session_id"].as_str().unwrap(),
        made["token"].as_str().unwrap(),
    );
    assert!(id.starts_with("sess-"));
    assert!(made["expires_at"].as_u64().unwrap() > 0);
    let resp = gw
        .post("/v1/chat/completions", Some(token))
        .json(&chat_body("as a session", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        stack.peer.invokes().pop().unwrap().session_id.as_deref(),
        Some(id),
        "the agent can tell conversations apart"
    );
    // A session cannot make sessions, nor end another's.
    assert_eq!(
        gw.post("/v1/sessions", Some(token))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let other: Value = gw.create_session().await;
    let resp = gw
        .delete(
            &format!("/v1/sessions/{}", other["session_id"].as_str().unwrap()),
            Some(token),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // It can end itself; then it is refused.
    let resp = gw
        .delete(&format!("/v1/sessions/{id}"), Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post("/v1/chat/completions", Some(token))
        .json(&chat_body("again", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = gw
        .delete(&format!("/v1/sessions/{id}"), Some(KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 404);
    gw.wait_audit("the revocation audited", |v| {
        v["event_type"] == "session_revoked" && v["session_id"] == id
    })
    .await;
    let audit = gw.audit();
    assert!(audit
        .iter()
        .any(|v| v["event_type"] == "session_created" && v["session_id"] == id));
    assert!(audit
        .iter()
        .any(|v| v["event_type"] == "session_revoked" && v["session_id"] == id));
    assert!(
        !gw.audit_text().contains(token),
        "tokens never reach the audit log"
    );
}

#[tokio::test]
async fn sessions_expire_by_ttl_and_by_idle_time_and_are_capped() {
    sessions_expire_by_ttl_and_by_idle_time_and_are_capped_on(Backend::Memory).await;
}

/// Run against each store (`redis_store` runs it on Redis).
pub async fn sessions_expire_by_ttl_and_by_idle_time_and_are_capped_on(store: Backend) {
    let stack = Stack::start_with(
        |a| a,
        |g| {
            store.apply(
                g.env("SESSION_TTL", 1)
                    .env("SESSION_IDLE", 60)
                    .env("MAX_SESSIONS", 2),
            )
        },
    )
    .await;
    let gw = &stack.gateway;
    let a: Value = gw.create_session().await;
    let _b: Value = gw.create_session().await;
    let (status, body, headers) =
        error_of(gw.post("/v1/sessions", Some(KEY)).send().await.unwrap()).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "session_limit_reached");
    assert!(headers.contains_key("retry-after"));
    let health: Value = gw
        .get("/health", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["active_sessions"], 2);
    // The sweeper ends it past its TTL and audits that.
    gw.wait_audit("session_expired", |v| {
        v["event_type"] == "session_expired" && v["session_id"] == a["session_id"]
    })
    .await;
    let resp = gw
        .get("/v1/models", Some(a["token"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "past its TTL");
    assert_eq!(
        gw.post("/v1/sessions", Some(KEY))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "expired ones free the cap"
    );

    // Its own prefix on a shared Redis: the first gateway's sweeper must not take its sessions.
    let idle = Stack::start_with(
        |a| a,
        |g| {
            store
                .isolated()
                .apply(g.env("SESSION_TTL", 60).env("SESSION_IDLE", 1))
        },
    )
    .await;
    let s: Value = idle.gateway.create_session().await;
    let token = s["token"].as_str().unwrap();
    // Used every 100 ms, well within its 1 s idle limit, for twice that limit: still alive. The
    // pause between uses is the behaviour under test (use within the limit), so a sleep.
    let created = Instant::now();
    while created.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            idle.gateway
                .get("/v1/models", Some(token))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "use keeps it alive ({:?} after it was created)",
            created.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Left alone, the sweeper ends it and audits that.
    let expired = idle
        .gateway
        .wait_audit("idle expiry", |v| v["event_type"] == "session_expired")
        .await;
    assert_eq!(expired["reason"], "idle");
    assert_eq!(
        idle.gateway
            .get("/v1/models", Some(token))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "idle too long"
    );
}

#[tokio::test]
async fn admin_lists_and_revokes_all_sessions() {
    admin_lists_and_revokes_all_sessions_on(Backend::Memory).await;
}

/// Run against each store (`redis_store` runs it on Redis).
pub async fn admin_lists_and_revokes_all_sessions_on(store: Backend) {
    let stack = Stack::start_with(|a| a, |g| store.apply(g)).await;
    let gw = &stack.gateway;
    let mut tokens = vec![];
    for _ in 0..3 {
        let s: Value = gw.create_session().await;
        tokens.push(s["token"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        gw.get("/admin/sessions", Some(KEY))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "the API key is not the admin token"
    );
    let listed = gw.get("/admin/sessions", Some(ADMIN)).send().await.unwrap();
    let text = listed.text().await.unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    assert!(
        tokens.iter().all(|t| !text.contains(t.as_str())),
        "no tokens listed"
    );
    let revoked: Value = gw
        .post("/admin/revoke_all_sessions", Some(ADMIN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(revoked["revoked"], 3);
    for t in &tokens {
        assert_eq!(
            gw.get("/v1/models", Some(t)).send().await.unwrap().status(),
            401
        );
    }

    let no_admin = store
        .apply(GatewayProc::new(&stack.agent.socket))
        .without("ADMIN_TOKEN")
        .spawn();
    no_admin.wait_live().await;
    let (status, body, _) = error_of(
        no_admin
            .post("/admin/revoke_all_sessions", Some(ADMIN))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("LOCAL_PROVIDER_ADMIN_TOKEN"));
}

#[tokio::test]
async fn models_routes_and_unknown_routes() {
    // Narrowed to its own name, so that other names are a 404 (model_names.rs has the default).
    let stack = Stack::start_with(|a| a, |g| g.env("MODEL_ALIASES", MODEL)).await;
    let gw = &stack.gateway;
    let list: Value = gw
        .get("/v1/models", Some(KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    let one: Value = gw
        .get(&format!("/v1/models/{MODEL}"), Some(KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], MODEL);
    assert_eq!(
        gw.get(&format!("/v1/models/{MODEL}:latest"), Some(KEY))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, body, _) =
        error_of(gw.get("/v1/models/gpt-4o", Some(KEY)).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert_eq!(
        gw.get("/v1/models", None).send().await.unwrap().status(),
        401
    );
    let (status, _, _) = error_of(gw.get("/v1/nothing", Some(KEY)).send().await.unwrap()).await;
    assert_eq!(status, 404);
    let (status, _, _) = error_of(
        gw.get("/v1/chat/completions", Some(KEY))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let stack = Stack::start().await;
    let client = integration_tests::stack::http();
    let preflight = |origin: &str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                stack.gateway.url("/v1/chat/completions"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight(&format!("http://127.0.0.1:{}", free_port()))
        .await
        .unwrap();
    assert!(ok.headers().contains_key("access-control-allow-origin"));
    let evil = preflight("http://evil.example").await.unwrap();
    assert!(!evil.headers().contains_key("access-control-allow-origin"));
}
