//! Refusals are visible, against the real gateway: every 4xx is logged at INFO with its route,
//! status, code and message (never prompt text), a flood of the same refusal is one line and
//! then one count per interval, and the status data counts them by code.
use integration_tests::harness::wait_for;
use integration_tests::stack::{Stack, KEY, MODEL};
use serde_json::{json, Value};

const SECRET: &str = "the secret plan nobody may read";

/// The gateway's JSON log lines with `message`.
fn lines(stack: &Stack, message: &str) -> Vec<Value> {
    stack
        .gateway
        .service
        .logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

#[tokio::test]
async fn every_refusal_is_logged_once_per_interval_and_counted() {
    let stack = Stack::start_with(
        |a| a,
        |g| g.env("LOG_FORMAT", "json").env("LOG_LEVEL", "info"),
    )
    .await;
    let gw = &stack.gateway;
    // A flood of wrong keys: 401 each.
    for _ in 0..30 {
        let resp = gw
            .post(
                "/v1/chat/completions",
                Some("not-the-key-0123456789abcdef0123456789"),
            )
            .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": SECRET}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // A validation refusal whose body carries prompt text where it does not belong.
    let resp = gw
        .post("/v1/chat/completions", Some(KEY))
        .json(&json!({"model": MODEL, "messages": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // An unknown route, and Anthropic's shape of a refusal.
    assert_eq!(
        gw.get("/v1/nothing", Some(KEY))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = gw
        .post("/v1/messages", Some(KEY))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": SECRET}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Log lines are written by a thread of their own: wait for the last refusal's.
    let refused = wait_for(crate::SOON, "the last refusal's log line", || {
        let refused = lines(&stack, "request refused");
        let last = refused
            .iter()
            .any(|l| l["route"] == "/v1/messages" && l["status"] == 400);
        async move { last.then_some(refused) }
    })
    .await;
    let of = |route: &str, status: u16| {
        refused
            .iter()
            .filter(|l| l["route"] == route && l["status"] == status)
            .cloned()
            .collect::<Vec<_>>()
    };
    let unauthorized = of("/v1/chat/completions", 401);
    assert_eq!(unauthorized.len(), 1, "one line for the flood: {refused:?}");
    assert_eq!(unauthorized[0]["code"], "invalid_api_key");
    assert_eq!(unauthorized[0]["level"], "INFO");
    let invalid = of("/v1/chat/completions", 400);
    assert_eq!(invalid.len(), 1);
    assert_eq!(
        invalid[0]["reason"],
        "messages: expected an array of messages, got a string"
    );
    assert_eq!(of("unmatched", 404).len(), 1);
    let messages = of("/v1/messages", 400);
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("max_tokens: required"),
        "{}",
        messages[0]
    );
    assert!(
        !gw.service.logs().contains("secret plan"),
        "prompt text reached the log"
    );

    // Once the interval is over, the held-back repeats are one count.
    let counted = wait_for(
        std::time::Duration::from_secs(30),
        "the repeats counted in one line",
        || async {
            lines(
                &stack,
                "the same refusal again, counted, not logged one by one",
            )
            .into_iter()
            .find(|l| l["status"] == 401)
        },
    )
    .await;
    assert_eq!(counted["repeated"], 29, "{counted}");
    assert_eq!(counted["route"], "/v1/chat/completions");

    // The status data counts every refusal by code.
    let status: Value = gw
        .get("/status.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["refusals"]["total"], 33, "{status}");
    assert_eq!(status["refusals"]["by_code"]["invalid_api_key"], 30);
    assert_eq!(status["refusals"]["by_code"]["unknown_url"], 1);
    assert_eq!(status["refusals"]["by_code"]["invalid_request"], 2);
}
