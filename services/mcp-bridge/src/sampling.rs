//! Opt-in (`MCP_SAMPLING`): an MCP client that declares `sampling` (VS Code does, Cursor does
//! not) is asked for answers with `sampling/createMessage` instead of waiting for the tool loop.
//! It leases requests from the same queue, so a request is sampled or handed to
//! `wait_for_request`, never both. Only plain chats can be sampled: a request with `tools`
//! (sampling has no OpenAI tool calls), a fill-in-the-middle completion or non-text content is
//! left to the tool loop.
// rmcp marks sampling deprecated (SEP-2577) but it is what VS Code speaks today.
#![allow(deprecated)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use provider_shared::bridge::Payload;
use rmcp::model::{
    CreateMessageRequestParams, CreateMessageResult, Role, SamplingMessage,
    SamplingMessageContentBlock,
};
use rmcp::service::ServiceError;
use rmcp::{Peer, RoleServer};
use serde_json::Value;
use tracing::Instrument;

use crate::answer::{FinishReason, Part};
use crate::broker::Broker;
use crate::queue::Entry;

/// `maxTokens` when the request sets neither `max_completion_tokens` nor `max_tokens`
/// (sampling requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// How often a sampling client's connection is checked while it has nothing to do.
const GONE_CHECK: Duration = Duration::from_millis(500);

/// Starts serving through `peer` if sampling is on and the client declared it.
pub fn start(broker: &Arc<Broker>, peer: Peer<RoleServer>) {
    if !broker.config.sampling {
        return;
    }
    let declared = peer
        .peer_info()
        .is_some_and(|info| info.capabilities.sampling.is_some());
    if !declared {
        return;
    }
    let client = peer
        .peer_info()
        .map(|i| i.client_info.name.clone())
        .unwrap_or_default();
    let span = tracing::info_span!("sampling", %client);
    broker
        .samplers
        .spawn(sample_for(broker.clone(), peer).instrument(span));
}

/// What makes a client stop being used.
enum Stop {
    Gone,
    ShuttingDown,
}

async fn gone(broker: &Broker, peer: &Peer<RoleServer>) -> Stop {
    loop {
        if peer.is_transport_closed() {
            return Stop::Gone;
        }
        tokio::select! {
            _ = tokio::time::sleep(GONE_CHECK) => {}
            _ = broker.stopping.cancelled() => return Stop::ShuttingDown,
        }
    }
}

async fn sample_for(broker: Arc<Broker>, peer: Peer<RoleServer>) {
    let n = broker.sampling_clients.fetch_add(1, Ordering::SeqCst) + 1;
    tracing::info!(
        sampling_clients = n,
        "client declared sampling: editor requests go to it"
    );
    // The lease outlives the call's own time limit, so the sweeper never races it.
    let call_limit = broker.config.lease_timeout;
    let lease_for = call_limit + Duration::from_secs(5);
    // Whether the client is still there is checked by `gone` beside the wait.
    let caller = crate::caller::Caller::until(tokio_util::sync::CancellationToken::new());
    loop {
        let handout = tokio::select! {
            h = broker.next_matching(sampleable, lease_for, &caller) => h,
            _ = gone(&broker, &peer) => None,
        };
        let Some(h) = handout else { break };
        let Ok(params) = to_sampling(&h.payload) else {
            // Cannot happen (the same check chose it); give it to the tool loop all the same.
            broker.release(&h.id, &h.lease);
            continue;
        };
        tracing::info!(id = %h.id, "asking the client with sampling/createMessage");
        let outcome = tokio::select! {
            r = tokio::time::timeout(call_limit, peer.create_message(params)) => r,
            stop = gone(&broker, &peer) => {
                if matches!(stop, Stop::Gone) {
                    broker.release(&h.id, &h.lease);
                }
                break;
            }
        };
        match outcome {
            Ok(Ok(result)) => {
                let outcome = answer_of(result).and_then(|part| {
                    broker
                        .submit(&h.id, &h.lease, part)
                        .map(|_| ())
                        .map_err(|refusal| refusal.0)
                });
                if let Err(why) = outcome {
                    // Already ended (the editor went away) or an unusable answer.
                    tracing::warn!(id = %h.id, %why, "sampled answer not sent");
                    let _ = broker.fail(
                        &h.id,
                        &h.lease,
                        "sampling_failed",
                        &format!("the MCP client's sampled answer was unusable: {why}"),
                    );
                }
            }
            Ok(Err(ServiceError::McpError(err))) => {
                // The client refused or its model failed (in VS Code: the user declined).
                tracing::warn!(id = %h.id, error = %err.message, "sampling refused by the client");
                let _ = broker.fail(
                    &h.id,
                    &h.lease,
                    "sampling_failed",
                    &format!(
                        "the MCP client answered sampling/createMessage with an error: {}",
                        err.message
                    ),
                );
            }
            Ok(Err(err)) => {
                tracing::warn!(id = %h.id, %err, "sampling client lost; request back in the queue");
                broker.release(&h.id, &h.lease);
                break;
            }
            Err(_) => {
                tracing::warn!(id = %h.id, limit = ?call_limit,
                    "no sampling answer within LEASE_TIMEOUT; request back in the queue and this client no longer used");
                broker.release(&h.id, &h.lease);
                break;
            }
        }
    }
    let n = broker.sampling_clients.fetch_sub(1, Ordering::SeqCst) - 1;
    tracing::info!(sampling_clients = n, "sampling client no longer used");
}

/// Decided once per request: it decodes the messages, and the queue asks on every poll.
fn sampleable(entry: &Entry) -> bool {
    *entry
        .sampleable
        .get_or_init(|| to_sampling(&entry.invoke.payload).is_ok())
}

/// The sampling request for a chat payload, or why it cannot be sampled. Sampling is where
/// mcp-bridge decodes a chat's messages: the client is sent them as its own types.
pub fn to_sampling(payload: &Payload) -> Result<CreateMessageRequestParams, &'static str> {
    let Payload::Chat {
        messages,
        parameters,
    } = payload
    else {
        return Err("only chats are sampled");
    };
    let p: Value = parameters.parse().map_err(|_| "parameters are not JSON")?;
    if p["tools"].as_array().is_some_and(|t| !t.is_empty()) {
        return Err("requests with tools go to the tool loop");
    }
    if p["n"].as_u64().is_some_and(|n| n > 1) {
        return Err("sampling gives one answer");
    }
    let asked: Vec<Value> = messages.parse().map_err(|_| "no messages")?;
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for m in &asked {
        if m.get("tool_calls").is_some_and(|c| !c.is_null()) {
            return Err("tool calls cannot be sampled");
        }
        let text = text_of(&m["content"]).ok_or("non-text content")?;
        match m["role"].as_str() {
            Some("system" | "developer") => system.push(text),
            Some("user") => messages.push(SamplingMessage::user_text(text)),
            Some("assistant") => messages.push(SamplingMessage::assistant_text(text)),
            _ => return Err("only system, developer, user and assistant messages are sampled"),
        }
    }
    if messages.is_empty() {
        return Err("no user or assistant message");
    }
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| p[k].as_u64())
        .map_or(DEFAULT_MAX_TOKENS, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let mut params = CreateMessageRequestParams::new(messages, max_tokens);
    if !system.is_empty() {
        params = params.with_system_prompt(system.join("\n\n"));
    }
    if let Some(t) = p["temperature"].as_f64() {
        params = params.with_temperature(t as f32);
    }
    let stop: Vec<String> = match &p["stop"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    };
    if !stop.is_empty() {
        params = params.with_stop_sequences(stop);
    }
    Ok(params)
}

/// A message's text: a string, or an array of text parts joined; `None` for anything else.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(
                |part| match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => Some(t),
                    _ => None,
                },
            )
            .collect::<Option<Vec<&str>>>()
            .map(|t| t.concat()),
        _ => None,
    }
}

/// The client's answer as the whole answer to the request.
fn answer_of(result: CreateMessageResult) -> Result<Part, String> {
    if result.message.role != Role::Assistant {
        return Err("the sampled message's role is not assistant".into());
    }
    let mut text = String::new();
    for block in result.message.content.iter() {
        match block {
            SamplingMessageContentBlock::Text(t) => text.push_str(&t.text),
            _ => return Err("the sampled message holds non-text content".into()),
        }
    }
    let finish = match result.stop_reason.as_deref() {
        Some(CreateMessageResult::STOP_REASON_END_MAX_TOKEN) => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    Ok(Part {
        content: Some(text),
        reasoning: None,
        tool_calls: None,
        done: Some(true),
        finish_reason: Some(finish),
        usage: None,
        number: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(messages: Value, parameters: Value) -> Payload {
        serde_json::from_value(
            json!({"kind": "chat", "messages": messages, "parameters": parameters}),
        )
        .unwrap()
    }

    #[test]
    fn a_chat_becomes_a_sampling_request() {
        let p = to_sampling(&chat(
            json!([{"role": "system", "content": "Be brief."},
                   {"role": "developer", "content": "Use Rust."},
                   {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                   {"role": "assistant", "content": "Hello"},
                   {"role": "user", "content": "Sum 1+1"}]),
            json!({"max_tokens": 50, "temperature": 0.5, "stop": "END"}),
        ))
        .unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["systemPrompt"], "Be brief.\n\nUse Rust.");
        assert_eq!(v["messages"][0]["content"]["text"], "Hi there");
        assert_eq!(v["messages"][1]["role"], "assistant");
        assert_eq!(v["maxTokens"], 50);
        assert_eq!(v["temperature"], 0.5);
        assert_eq!(v["stopSequences"], json!(["END"]));
        let p = to_sampling(&chat(
            json!([{"role": "user", "content": "x"}]),
            json!({"max_completion_tokens": 7, "max_tokens": 9}),
        ))
        .unwrap();
        assert_eq!(p.max_tokens, 7);
        let p = to_sampling(&chat(json!([{"role": "user", "content": "x"}]), json!({}))).unwrap();
        assert_eq!(p.max_tokens, DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn what_sampling_cannot_carry_is_left_to_the_tool_loop() {
        let user = json!([{"role": "user", "content": "x"}]);
        let tools = json!({"tools": [{"type": "function", "function": {"name": "f"}}]});
        assert!(to_sampling(&chat(user.clone(), tools)).is_err());
        let completion =
            json!({"kind": "completion", "prompt": "a", "suffix": "b", "parameters": {}});
        assert!(to_sampling(&serde_json::from_value(completion).unwrap()).is_err());
        let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]);
        assert!(to_sampling(&chat(image, json!({}))).is_err());
        let tool = json!([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c", "content": "y"}]);
        assert!(to_sampling(&chat(tool, json!({}))).is_err());
        let only_system = json!([{"role": "system", "content": "x"}]);
        assert!(to_sampling(&chat(only_system, json!({}))).is_err());
    }

    #[test]
    fn the_sampled_text_is_the_whole_answer() {
        let result = CreateMessageResult::new(SamplingMessage::assistant_text("42"), "m".into())
            .with_stop_reason(CreateMessageResult::STOP_REASON_END_MAX_TOKEN);
        let part = answer_of(result).unwrap();
        assert_eq!(part.content.as_deref(), Some("42"));
        assert_eq!(part.finish_reason, Some(FinishReason::Length));
        let user = CreateMessageResult::new(SamplingMessage::user_text("no"), "m".into());
        assert!(answer_of(user).is_err());
    }
}
