//! The Responses API's typed stream: every event carries its `type` (also as the SSE `event:`
//! name) and a `sequence_number` counting from 0. Each part of the answer is one output item:
//! thinking a `reasoning` item (its text as a summary), text a `message` with one `output_text`
//! part, each tool call a `function_call`.
use axum::response::sse::Event as SseEvent;
use provider_shared::bridge::Usage;
use serde_json::{json, Value};

use super::{status_of, Ending, Shell};
use crate::error::Error;
use crate::parts::{Kind, Part, Parts, Step};
use crate::secrets::random_hex;

pub fn item_id(part: &Part) -> String {
    let prefix = match part.kind {
        Kind::Thinking => "rs_",
        Kind::Text => "msg_",
        Kind::Call(_) => "fc_",
    };
    format!("{prefix}{}", random_hex(12))
}

/// An output item as it stands, with `status` (`in_progress` or `completed`).
pub fn item(part: &Part, id: &str, status: &str) -> Value {
    let done = status == "completed";
    match part.kind {
        Kind::Thinking => {
            let summary = if done {
                json!([{"type": "summary_text", "text": part.text}])
            } else {
                json!([])
            };
            json!({"type": "reasoning", "id": id, "summary": summary, "status": status})
        }
        Kind::Text => {
            let content = if done {
                json!([output_text(&part.text)])
            } else {
                json!([])
            };
            json!({"type": "message", "id": id, "status": status, "role": "assistant",
                   "content": content})
        }
        Kind::Call(_) => json!({
            "type": "function_call", "id": id, "call_id": part.call_id, "name": part.name,
            "arguments": if done { part.text.as_str() } else { "" }, "status": status,
        }),
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub struct Render {
    shell: Shell,
    parts: Parts,
    ids: Vec<String>,
    sequence: u64,
}

impl Render {
    pub fn new(shell: Shell) -> Self {
        Self {
            shell,
            parts: Parts::default(),
            ids: Vec::new(),
            sequence: 0,
        }
    }

    fn event(&mut self, mut value: Value) -> SseEvent {
        value["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let kind = value["type"].as_str().unwrap_or("message").to_owned();
        SseEvent::default().event(kind).data(value.to_string())
    }

    pub fn start(&mut self) -> Vec<SseEvent> {
        let response = self
            .shell
            .object("in_progress", Vec::new(), Ending::Running);
        vec![
            self.event(json!({"type": "response.created", "response": response})),
            self.event(json!({"type": "response.in_progress", "response": response})),
        ]
    }

    pub fn delta(&mut self, delta: &Value) -> Vec<SseEvent> {
        let steps = self.parts.absorb(delta);
        self.render(steps)
    }

    pub fn done(&mut self, finish_reason: &str, usage: &Usage) -> Vec<SseEvent> {
        let steps = self.parts.close();
        let mut out = self.render(steps);
        let (status, incomplete) = status_of(finish_reason);
        let response = self.shell.object(
            status,
            self.output(),
            Ending::Finished { usage, incomplete },
        );
        let kind = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(json!({"type": kind, "response": response})));
        out
    }

    pub fn failed(&mut self, err: &Error) -> Vec<SseEvent> {
        let steps = self.parts.close();
        let mut out = self.render(steps);
        out.push(self.event(json!({"type": "error", "code": err.code(),
            "message": err.to_string(), "param": null})));
        let response = self
            .shell
            .object("failed", self.output(), Ending::Failed(err));
        out.push(self.event(json!({"type": "response.failed", "response": response})));
        out
    }

    fn output(&self) -> Vec<Value> {
        self.parts
            .list
            .iter()
            .zip(&self.ids)
            .map(|(part, id)| item(part, id, "completed"))
            .collect()
    }

    fn render(&mut self, steps: Vec<Step>) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for step in steps {
            for value in self.step(step) {
                out.push(self.event(value));
            }
        }
        out
    }

    fn step(&mut self, step: Step) -> Vec<Value> {
        match step {
            Step::Open(at) => {
                let part = &self.parts.list[at];
                let id = item_id(part);
                self.ids.push(id.clone());
                let added = json!({"type": "response.output_item.added", "output_index": at,
                                   "item": item(part, &id, "in_progress")});
                match part.kind {
                    Kind::Thinking => vec![
                        added,
                        json!({"type": "response.reasoning_summary_part.added", "item_id": id,
                               "output_index": at, "summary_index": 0,
                               "part": {"type": "summary_text", "text": ""}}),
                    ],
                    Kind::Text => vec![
                        added,
                        json!({"type": "response.content_part.added", "item_id": id,
                               "output_index": at, "content_index": 0, "part": output_text("")}),
                    ],
                    Kind::Call(_) => vec![added],
                }
            }
            Step::Append(at, delta) => {
                let id = &self.ids[at];
                vec![match self.parts.list[at].kind {
                    Kind::Thinking => {
                        json!({"type": "response.reasoning_summary_text.delta", "item_id": id,
                               "output_index": at, "summary_index": 0, "delta": delta})
                    }
                    Kind::Text => json!({"type": "response.output_text.delta", "item_id": id,
                                         "output_index": at, "content_index": 0, "delta": delta,
                                         "logprobs": []}),
                    Kind::Call(_) => {
                        json!({"type": "response.function_call_arguments.delta", "item_id": id,
                               "output_index": at, "delta": delta})
                    }
                }]
            }
            Step::Close(at) => {
                let part = &self.parts.list[at];
                let id = &self.ids[at];
                let done = json!({"type": "response.output_item.done", "output_index": at,
                                  "item": item(part, id, "completed")});
                match part.kind {
                    Kind::Thinking => vec![
                        json!({"type": "response.reasoning_summary_text.done", "item_id": id,
                               "output_index": at, "summary_index": 0, "text": part.text}),
                        json!({"type": "response.reasoning_summary_part.done", "item_id": id,
                               "output_index": at, "summary_index": 0,
                               "part": {"type": "summary_text", "text": part.text}}),
                        done,
                    ],
                    Kind::Text => vec![
                        json!({"type": "response.output_text.done", "item_id": id,
                               "output_index": at, "content_index": 0, "text": part.text,
                               "logprobs": []}),
                        json!({"type": "response.content_part.done", "item_id": id,
                               "output_index": at, "content_index": 0,
                               "part": output_text(&part.text)}),
                        done,
                    ],
                    Kind::Call(_) => vec![
                        json!({"type": "response.function_call_arguments.done", "item_id": id,
                               "output_index": at, "name": part.name,
                               "arguments": part.text}),
                        done,
                    ],
                }
            }
        }
    }
}
