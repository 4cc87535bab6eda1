//! Anthropic's stream: `message_start`, then per part of the answer `content_block_start`,
//! `content_block_delta` (`thinking_delta`, `text_delta`, `input_json_delta`) and
//! `content_block_stop`, then `message_delta` with `stop_reason` and usage, and `message_stop`.
//! A failure is one `error` event, which Anthropic's clients raise.
use bytes::Bytes;
use provider_shared::bridge::{Delta, Usage};
use serde::Serialize;
use serde_json::{json, Value};

use super::convert::input_of;
use super::Shell;
use crate::error::Error;
use crate::openai::frame;
use crate::parts::{Kind, Part, PartChange, Parts};

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

/// One event of the stream, serialised once into its SSE frame.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart {
        message: Value,
    },
    ContentBlockStart {
        index: usize,
        content_block: Opening<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: StopDelta<'a>,
        usage: OutputUsage,
    },
    MessageStop,
}

impl StreamEvent<'_> {
    fn kind(&self) -> &'static str {
        match self {
            StreamEvent::MessageStart { .. } => "message_start",
            StreamEvent::ContentBlockStart { .. } => "content_block_start",
            StreamEvent::ContentBlockDelta { .. } => "content_block_delta",
            StreamEvent::ContentBlockStop { .. } => "content_block_stop",
            StreamEvent::MessageDelta { .. } => "message_delta",
            StreamEvent::MessageStop => "message_stop",
        }
    }

    fn frame(&self) -> Bytes {
        frame(Some(self.kind()), self)
    }
}

/// A block as `content_block_start` opens it: empty.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Opening<'a> {
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    Text {
        text: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Empty,
    },
}

/// `{}`.
#[derive(Serialize)]
struct Empty {}

fn opening(part: &Part) -> Opening<'_> {
    match part.kind {
        Kind::Thinking => Opening::Thinking {
            thinking: "",
            signature: "",
        },
        Kind::Text => Opening::Text { text: "" },
        Kind::Call(_) => Opening::ToolUse {
            id: &part.call_id,
            name: &part.name,
            input: Empty {},
        },
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopDelta<'a> {
    stop_reason: &'a str,
    stop_sequence: (),
}

#[derive(Serialize)]
struct OutputUsage {
    input_tokens: u64,
    output_tokens: u64,
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

    pub fn start(&self) -> Bytes {
        StreamEvent::MessageStart {
            message: self.shell.message(Vec::new(), None),
        }
        .frame()
    }

    pub fn delta(&mut self, delta: &Delta) -> Vec<Bytes> {
        let steps = self.parts.absorb(delta);
        self.render(steps)
    }

    pub fn done(&mut self, stop_reason: &str, usage: &Usage) -> Vec<Bytes> {
        let steps = self.parts.close();
        let mut out = self.render(steps);
        out.push(
            StreamEvent::MessageDelta {
                delta: StopDelta {
                    stop_reason,
                    stop_sequence: (),
                },
                usage: OutputUsage {
                    input_tokens: usage.prompt_tokens,
                    output_tokens: usage.completion_tokens,
                },
            }
            .frame(),
        );
        out.push(StreamEvent::MessageStop.frame());
        out
    }

    pub fn failed(&mut self, err: &Error) -> Vec<Bytes> {
        let (_, body) = err.anthropic();
        vec![frame(Some("error"), &body)]
    }

    fn render(&self, steps: Vec<PartChange>) -> Vec<Bytes> {
        steps
            .into_iter()
            .map(|step| match step {
                PartChange::Open(at) => StreamEvent::ContentBlockStart {
                    index: at,
                    content_block: opening(&self.parts.list[at]),
                }
                .frame(),
                PartChange::Append(at, range) => {
                    let text = self.parts.appended(at, &range);
                    let delta = match self.parts.list[at].kind {
                        Kind::Thinking => BlockDelta::Thinking { thinking: text },
                        Kind::Text => BlockDelta::Text { text },
                        Kind::Call(_) => BlockDelta::InputJson { partial_json: text },
                    };
                    StreamEvent::ContentBlockDelta { index: at, delta }.frame()
                }
                PartChange::Close(at) => StreamEvent::ContentBlockStop { index: at }.frame(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    use crate::openai::parse_frame as parse;

    #[test]
    fn events_name_their_type_and_have_anthropic_shapes() {
        let mut r = Render::new(Shell {
            id: "msg_1".into(),
            model: "m".into(),
            prompt_tokens: 3,
        });
        let (kind, start) = parse(&r.start());
        assert_eq!(
            (kind.as_str(), &start["message"]["id"]),
            ("message_start", &json!("msg_1"))
        );
        let delta: Delta = serde_json::from_value(json!({"content": "Hi", "tool_calls": [
            {"index": 0, "id": "toolu_1", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}))
        .unwrap();
        let events: Vec<(String, Value)> = r.delta(&delta).iter().map(parse).collect();
        for (kind, value) in &events {
            assert_eq!(value["type"], json!(kind));
        }
        let values: Vec<&Value> = events.iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            vec![
                &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "Hi"}}),
                &json!({"type": "content_block_stop", "index": 0}),
                &json!({"type": "content_block_start", "index": 1, "content_block":
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
                &json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"a\":1}"}}),
            ]
        );
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 5,
            total_tokens: 8,
        };
        let end: Vec<(String, Value)> = r.done("tool_use", &usage).iter().map(parse).collect();
        assert_eq!(end[0].1, json!({"type": "content_block_stop", "index": 1}));
        assert_eq!(
            end[1].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                "stop_sequence": null}, "usage": {"input_tokens": 3, "output_tokens": 5}})
        );
        assert_eq!(
            end[2],
            ("message_stop".to_owned(), json!({"type": "message_stop"}))
        );
    }
}
