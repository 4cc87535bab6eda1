//! Anthropic's stream: `message_start`, then per part of the answer `content_block_start`,
//! `content_block_delta` (`thinking_delta`, `text_delta`, `input_json_delta`) and
//! `content_block_stop`, then `message_delta` with `stop_reason` and usage, and `message_stop`.
//! A failure is one `error` event, which Anthropic's clients raise.
use axum::response::sse::Event as SseEvent;
use provider_shared::bridge::Usage;
use serde_json::{json, Value};

use super::convert::input_of;
use super::Shell;
use crate::error::Error;
use crate::parts::{Kind, Part, Parts, Step};

/// A whole content block.
pub fn block(part: &Part) -> Value {
    match part.kind {
        // The agent's thinking carries no signature; an empty one says so.
        Kind::Thinking => json!({"type": "thinking", "thinking": part.text, "signature": ""}),
        Kind::Text => json!({"type": "text", "text": part.text}),
        Kind::Call(_) => json!({"type": "tool_use", "id": part.call_id, "name": part.name,
                                "input": input_of(&part.text)}),
    }
}

/// A block as `content_block_start` opens it: empty.
fn opening(part: &Part) -> Value {
    match part.kind {
        Kind::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
        Kind::Text => json!({"type": "text", "text": ""}),
        Kind::Call(_) => json!({"type": "tool_use", "id": part.call_id, "name": part.name,
                                "input": {}}),
    }
}

fn event(value: Value) -> SseEvent {
    let kind = value["type"].as_str().unwrap_or("message").to_owned();
    SseEvent::default().event(kind).data(value.to_string())
}

pub struct Render {
    shell: Shell,
    parts: Parts,
}

impl Render {
    pub fn new(shell: Shell) -> Self {
        Self {
            shell,
            parts: Parts::default(),
        }
    }

    pub fn start(&self) -> SseEvent {
        event(json!({"type": "message_start", "message": self.shell.message(Vec::new(), None)}))
    }

    pub fn delta(&mut self, delta: &Value) -> Vec<SseEvent> {
        let steps = self.parts.absorb(delta);
        self.render(steps)
    }

    pub fn done(&mut self, stop_reason: &str, usage: &Usage) -> Vec<SseEvent> {
        let steps = self.parts.close();
        let mut out = self.render(steps);
        out.push(event(json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
        })));
        out.push(event(json!({"type": "message_stop"})));
        out
    }

    pub fn failed(&mut self, err: &Error) -> Vec<SseEvent> {
        let (_, body) = err.anthropic();
        vec![event(body)]
    }

    fn render(&self, steps: Vec<Step>) -> Vec<SseEvent> {
        steps
            .into_iter()
            .map(|step| match step {
                Step::Open(at) => event(json!({"type": "content_block_start", "index": at,
                                               "content_block": opening(&self.parts.list[at])})),
                Step::Append(at, text) => {
                    let delta = match self.parts.list[at].kind {
                        Kind::Thinking => json!({"type": "thinking_delta", "thinking": text}),
                        Kind::Text => json!({"type": "text_delta", "text": text}),
                        Kind::Call(_) => json!({"type": "input_json_delta", "partial_json": text}),
                    };
                    event(json!({"type": "content_block_delta", "index": at, "delta": delta}))
                }
                Step::Close(at) => event(json!({"type": "content_block_stop", "index": at})),
            })
            .collect()
    }
}
