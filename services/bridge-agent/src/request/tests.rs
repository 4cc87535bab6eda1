#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::bridge::unknown_to_bridge;
use super::*;
use provider_shared::bridge::{codes, ModelMeta, Outcome, Payload};

fn invoke() -> ModelInvoke {
    ModelInvoke {
        id: "r1".into(),
        session_id: None,
        model_meta: ModelMeta {
            provider: "cursor".into(),
            label: "agent".into(),
            requested_scopes: vec![],
        },
        payload: Payload::Chat {
            messages: vec![],
            parameters: serde_json::Map::new(),
        },
    }
}

#[test]
fn a_resume_of_a_request_the_bridge_never_got_sends_it_afresh_once() {
    let refused = ModelResult::error("r1", codes::BRIDGE_DISCONNECTED, "holds no request r1");
    let mut fallback = Some(invoke());
    assert!(unknown_to_bridge(&refused, &mut fallback).is_some());
    assert!(unknown_to_bridge(&refused, &mut fallback).is_none());
}

#[test]
fn a_resume_the_bridge_withdrew_is_not_sent_afresh() {
    let mut refused = ModelResult::error("r1", codes::BRIDGE_DISCONNECTED, "no longer held");
    if let Outcome::Error { error } = &mut refused.outcome {
        error.details = Some(serde_json::json!({ "withdrawn": true }));
    }
    let mut fallback = Some(invoke());
    assert!(unknown_to_bridge(&refused, &mut fallback).is_none());
}
