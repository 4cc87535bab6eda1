//! Property tests of request validation (`validate/`, through OpenAI's chat and completions and
//! Ollama's chat): any body, bytes or request-like JSON, passes unchanged or gets a clean 400
//! naming what is wrong, never a panic. `PROPTEST_CASES` sets
//! the number of cases (256 by default, as in CI); `scripts/proptest-long.sh` runs them longer.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use provider_shared::property::check;
use serde_json::{json, Map, Value};

use crate::config::Settings;
use crate::error::Error;
use crate::validate::{self, Limits};

const MODEL: &str = "cursor-agent-local";
const MAX_TOKENS: u64 = 8192;

fn settings() -> Settings {
    let vars = [
        ("API_KEY", "k3y-0123456789abcdef0123456789abcdef"),
        ("MAX_TOKENS_LIMIT", "8192"),
    ];
    Settings::resolve(
        provider_shared::config::from_vars(
            vars.iter()
                .map(|(k, v)| (format!("LOCAL_PROVIDER_{k}"), (*v).to_owned())),
        )
        .unwrap(),
    )
    .unwrap()
}

/// The request fields validation looks at, so that generated bodies often reach every rule.
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "stop",
    "tools",
    "tool_choice",
    "prompt",
    "suffix",
    "best_of",
    "echo",
    "logprobs",
    "include_usage",
    "user",
    "options",
    "num_predict",
    "images",
];
const WORDS: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
    "text",
    "image_url",
    "cursor-agent-local",
    "cursor-agent-local:latest",
    "auto",
    "none",
    "required",
    "f",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (-3.0f64..3.0).prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
        ".{0,300}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        2 => prop::sample::select(vec!["role", "content", "type", "text", "tool_call_id",
            "tool_calls", "function", "name", "include_usage"]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// A message: a known role (mostly) and string or part-array content (mostly).
fn message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        8 => prop::sample::select(vec!["system", "developer", "user", "assistant"]),
        1 => prop::sample::select(WORDS),
    ];
    let content = prop_oneof![
        6 => ".{0,250}".prop_map(Value::from),
        2 => prop::collection::vec(
            ".{0,120}".prop_map(|t| json!({"type": "text", "text": t})),
            0..3
        )
        .prop_map(Value::Array),
        1 => json_value(),
    ];
    let extra = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec((key(), json_value()), 1..3),
    ];
    (role, content, extra).prop_map(|(role, content, extra)| {
        let mut m: Map<String, Value> = extra.into_iter().collect();
        m.insert("role".into(), json!(role));
        m.insert("content".into(), content);
        Value::Object(m)
    })
}

/// A generation parameter with a value near its allowed range, or any field with any value.
fn parameter() -> impl Strategy<Value = (String, Value)> {
    prop_oneof![
        (0u64..10_000).prop_map(|n| ("max_tokens".to_owned(), json!(n))),
        (0u64..10_000).prop_map(|n| ("max_completion_tokens".to_owned(), json!(n))),
        (-1.0f64..3.0).prop_map(|t| ("temperature".to_owned(), json!(t))),
        (-0.5f64..1.5).prop_map(|t| ("top_p".to_owned(), json!(t))),
        (-3.0f64..3.0).prop_map(|t| ("presence_penalty".to_owned(), json!(t))),
        (0u64..3).prop_map(|n| ("n".to_owned(), json!(n))),
        any::<bool>().prop_map(|b| ("stream".to_owned(), json!(b))),
        prop::collection::vec(".{0,5}", 0..6).prop_map(|s| ("stop".to_owned(), json!(s))),
        Just((
            "tools".to_owned(),
            json!([{"type": "function", "function": {"name": "f"}}])
        )),
        Just(("tool_choice".to_owned(), json!("auto"))),
        (prop::sample::select(FIELDS), json_value()).prop_map(|(k, v)| (k.to_owned(), v)),
    ]
}

/// A body close to a real chat or completion request.
fn request_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            6 => Just(MODEL),
            1 => prop::sample::select(vec!["cursor-agent-local:latest", "gpt-4", ""]),
        ],
        prop::collection::vec(message(), 0..4),
        ".{0,250}",
        prop::collection::vec(parameter(), 0..4),
    )
        .prop_map(|(model, messages, prompt, fields)| {
            let mut body: Map<String, Value> = fields.into_iter().collect();
            body.entry("model").or_insert(json!(model));
            body.entry("messages").or_insert(json!(messages));
            body.entry("prompt").or_insert(json!(prompt));
            Value::Object(body)
        })
}

/// A refusal must be a 400 that says what is wrong.
fn clean_refusal(err: &Error) -> Result<(), TestCaseError> {
    match err {
        Error::InvalidRequest { message, .. } => {
            prop_assert!(!message.is_empty());
        }
        other => {
            let text = other.to_string();
            prop_assert!(!text.is_empty(), "{:?}", other);
        }
    }
    Ok(())
}

/// Bodies that passed chat validation, so a run can show it reached the pass-through check.
static PASSED: AtomicU64 = AtomicU64::new(0);

fn check_body(body: &[u8], original: Option<&Value>) -> Result<(), TestCaseError> {
    let settings = settings();
    let limits = Limits::of(&settings);
    match validate::chat(body, &limits) {
        Ok(request) => {
            PASSED.fetch_add(1, Ordering::Relaxed);
            prop_assert!(!request.messages.is_empty());
            prop_assert!(request
                .max_tokens
                .is_none_or(|t| (1..=MAX_TOKENS).contains(&t)));
            // What passes goes on exactly as sent.
            if let Some(original) = original {
                prop_assert_eq!(&json!(request.messages), &original["messages"]);
                for (name, value) in &request.parameters {
                    prop_assert_eq!(Some(value), original.get(name));
                }
            }
        }
        Err(err) => clean_refusal(&err)?,
    }
    match validate::completion(body, &limits) {
        Ok(request) => {
            if let Some(original) = original {
                // A list of one prompt is taken as that prompt, as OpenAI does.
                let sent = match &original["prompt"] {
                    Value::Array(one) if one.len() == 1 => &one[0],
                    other => other,
                };
                prop_assert_eq!(&json!(request.prompt), sent);
            }
            prop_assert!(request
                .max_tokens
                .is_none_or(|t| (1..=MAX_TOKENS).contains(&t)));
        }
        Err(err) => clean_refusal(&err)?,
    }
    // Ollama's chat goes through the same rules in its own dialect.
    if let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) {
        match crate::ollama::chat::job(MODEL, &mut obj, &limits) {
            Ok(job) => prop_assert!(job.is_none_or(|job| job
                .ask
                .max_tokens
                .is_none_or(|t| (1..=MAX_TOKENS).contains(&t)))),
            Err(err) => clean_refusal(&err)?,
        }
    }
    Ok(())
}

#[test]
fn validation_takes_any_bytes() {
    check(
        "validate_any_bytes",
        prop::collection::vec(any::<u8>(), 0..1024),
        |bytes| check_body(&bytes, None),
    );
}

#[test]
fn validation_of_request_like_json_passes_unchanged_or_refuses_cleanly() {
    check("validate_request_like_json", request_like(), |body| {
        check_body(body.to_string().as_bytes(), Some(&body))
    });
    println!(
        "validate_request_like_json: {} bodies passed",
        PASSED.load(Ordering::Relaxed)
    );
}
