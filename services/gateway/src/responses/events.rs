//! The Responses API's typed stream: every event carries its `type` (also as the SSE `event:`
//! name) and a `sequence_number` counting from 0. Each part of the answer is one output item:
//! thinking a `reasoning` item (its text as a summary), text a `message` with one `output_text`
//! part, each tool call a `function_call`, or a `custom_tool_call` for a free-form tool (its
//! input as one text: `response.custom_tool_call_input.delta` and `.done` when the call is
//! whole, since the agent's arguments are JSON until then).
use bytes::Bytes;
use provider_shared::bridge::{Delta, Usage};
use serde::Serialize;
use serde_json::{json, Value};

use super::tools::{free_form_input, ToolNames};
use super::{status_of, Ending, Shell};
use crate::error::Error;
use crate::openai::frame;
use crate::parts::{Kind, Part, PartChange, Parts};
use crate::secrets::random_hex;

pub fn item_id(part: &Part, names: &ToolNames) -> String {
    let prefix = match part.kind {
        Kind::Thinking => "rs_",
        Kind::Text => "msg_",
        Kind::Call(_) if names.is_free_form(&part.name) => "ctc_",
        Kind::Call(_) => "fc_",
    };
    format!("{prefix}{}", random_hex(12))
}

/// An output item as it stands, with `status` (`in_progress` or `completed`). A call of a
/// namespaced tool carries the tool's own `name` and its `namespace`, as the client sent them.
pub fn item(part: &Part, id: &str, status: &str, names: &ToolNames) -> Value {
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
        Kind::Call(_) if names.is_free_form(&part.name) => {
            let input = if done {
                free_form_input(&part.text)
            } else {
                String::new()
            };
            let mut call = json!({
                "type": "custom_tool_call", "id": id, "call_id": part.call_id, "name": part.name,
                "input": input, "status": status,
            });
            if let Some((namespace, name)) = names.split(&part.name) {
                call["name"] = json!(name);
                call["namespace"] = json!(namespace);
            }
            call
        }
        Kind::Call(_) => {
            let mut call = json!({
                "type": "function_call", "id": id, "call_id": part.call_id, "name": part.name,
                "arguments": if done { part.text.as_str() } else { "" }, "status": status,
            });
            if let Some((namespace, name)) = names.split(&part.name) {
                call["name"] = json!(name);
                call["namespace"] = json!(namespace);
            }
            call
        }
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The event for each piece of text as it comes (the most frequent ones), borrowing the text.
#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    item_id: &'a str,
    output_index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<u32>,
    delta: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
    sequence_number: u64,
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

    /// An event built whole (items open and close, the response begins and ends): numbered and
    /// framed.
    fn event(&mut self, mut value: Value) -> Bytes {
        value["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let kind = value["type"].as_str().unwrap_or("message").to_owned();
        frame(Some(&kind), &value)
    }

    pub fn start(&mut self) -> Vec<Bytes> {
        let response = self
            .shell
            .object("in_progress", Vec::new(), Ending::Running);
        vec![
            self.event(json!({"type": "response.created", "response": response})),
            self.event(json!({"type": "response.in_progress", "response": response})),
        ]
    }

    pub fn delta(&mut self, delta: &Delta) -> Vec<Bytes> {
        let steps = self.parts.absorb(delta);
        self.render(steps)
    }

    pub fn done(&mut self, finish_reason: &str, usage: &Usage) -> Vec<Bytes> {
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

    pub fn failed(&mut self, err: &Error) -> Vec<Bytes> {
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
            .map(|(part, id)| item(part, id, "completed", &self.shell.tool_names))
            .collect()
    }

    fn render(&mut self, steps: Vec<PartChange>) -> Vec<Bytes> {
        let mut out = Vec::new();
        for step in steps {
            if let PartChange::Append(at, range) = &step {
                out.extend(self.append(*at, range));
                continue;
            }
            for value in self.step(step) {
                out.push(self.event(value));
            }
        }
        out
    }

    /// The event for appended text; none for a free-form call, whose input is whole only once
    /// its JSON arguments are.
    fn append(&mut self, at: usize, range: &std::ops::Range<usize>) -> Option<Bytes> {
        let part = &self.parts.list[at];
        if matches!(part.kind, Kind::Call(_)) && self.shell.tool_names.is_free_form(&part.name) {
            return None;
        }
        let (kind, summary_index, content_index, logprobs) = match part.kind {
            Kind::Thinking => ("response.reasoning_summary_text.delta", Some(0), None, None),
            Kind::Text => ("response.output_text.delta", None, Some(0), Some([])),
            Kind::Call(_) => ("response.function_call_arguments.delta", None, None, None),
        };
        let event = TextDelta {
            kind,
            item_id: &self.ids[at],
            output_index: at,
            summary_index,
            content_index,
            delta: self.parts.appended(at, range),
            logprobs,
            sequence_number: self.sequence,
        };
        self.sequence += 1;
        Some(frame(Some(kind), &event))
    }

    fn step(&mut self, step: PartChange) -> Vec<Value> {
        match step {
            PartChange::Open(at) => {
                let part = &self.parts.list[at];
                let id = item_id(part, &self.shell.tool_names);
                self.ids.push(id.clone());
                let added = json!({"type": "response.output_item.added", "output_index": at,
                                   "item": item(part, &id, "in_progress", &self.shell.tool_names)});
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
            // Rendered by `append`, borrowing the text.
            PartChange::Append(..) => Vec::new(),
            PartChange::Close(at) => {
                let part = &self.parts.list[at];
                let id = &self.ids[at];
                let done = json!({"type": "response.output_item.done", "output_index": at,
                                  "item": item(part, id, "completed", &self.shell.tool_names)});
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
                    Kind::Call(_) if self.shell.tool_names.is_free_form(&part.name) => {
                        let input = &done["item"]["input"];
                        vec![
                            json!({"type": "response.custom_tool_call_input.delta", "item_id": id,
                                   "output_index": at, "delta": input}),
                            json!({"type": "response.custom_tool_call_input.done", "item_id": id,
                                   "output_index": at, "input": input}),
                            done,
                        ]
                    }
                    Kind::Call(_) => vec![
                        json!({"type": "response.function_call_arguments.done", "item_id": id,
                               "output_index": at, "name": done["item"]["name"],
                               "arguments": part.text}),
                        done,
                    ],
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::responses::convert::Echo;

    use crate::openai::parse_frame as parse;

    #[test]
    fn text_deltas_are_numbered_and_shaped_like_the_other_events() {
        let mut r = Render::new(Shell {
            id: "resp_1".into(),
            created_at: 1,
            model: "m".into(),
            max_output_tokens: None,
            echo: Echo::default(),
            tool_names: Default::default(),
        });
        assert_eq!(r.start().len(), 2);
        let delta: Delta =
            serde_json::from_value(json!({"reasoning_content": "hm", "content": "Hi"})).unwrap();
        let events: Vec<(String, Value)> = r.delta(&delta).iter().map(parse).collect();
        for (n, (kind, value)) in events.iter().enumerate() {
            assert_eq!(value["type"], json!(kind));
            assert_eq!(value["sequence_number"], json!(n + 2));
        }
        let thinking = &events[2].1;
        assert_eq!(thinking["type"], "response.reasoning_summary_text.delta");
        assert_eq!(
            (
                &thinking["delta"],
                &thinking["summary_index"],
                thinking.get("logprobs")
            ),
            (&json!("hm"), &json!(0), None)
        );
        let text = events.last().unwrap();
        assert_eq!(text.0, "response.output_text.delta");
        assert_eq!(
            text.1,
            json!({"type": "response.output_text.delta", "item_id": r.ids[1], "output_index": 1,
                "content_index": 0, "delta": "Hi", "logprobs": [],
                "sequence_number": events.len() + 1})
        );
    }

    #[test]
    fn a_free_form_call_streams_as_a_custom_tool_call_with_its_input_whole() {
        let obj = json!({"tools": [{"type": "namespace", "name": "functions", "tools": [
            {"type": "custom", "name": "exec"}]}]});
        let names = crate::responses::tools::tools(obj.as_object().unwrap())
            .unwrap()
            .names;
        let mut r = Render::new(Shell {
            id: "resp_1".into(),
            created_at: 1,
            model: "m".into(),
            max_output_tokens: None,
            echo: Echo::default(),
            tool_names: names,
        });
        r.start();
        let mut events: Vec<(String, Value)> = Vec::new();
        for piece in [r#"{"inp"#, r#"ut": "text(1)"}"#] {
            let delta: Delta = serde_json::from_value(json!({"tool_calls": [{"index": 0,
                "id": "call_1", "type": "function",
                "function": {"name": "functions__exec", "arguments": piece}}]}))
            .unwrap();
            events.extend(r.delta(&delta).iter().map(parse));
        }
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 1,
            total_tokens: 2,
        };
        events.extend(r.done("tool_calls", &usage).iter().map(parse));
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.output_item.added",
                "response.custom_tool_call_input.delta",
                "response.custom_tool_call_input.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let added = &events[0].1["item"];
        assert_eq!(
            (
                &added["type"],
                &added["input"],
                &added["name"],
                &added["namespace"]
            ),
            (
                &json!("custom_tool_call"),
                &json!(""),
                &json!("exec"),
                &json!("functions")
            )
        );
        assert!(added["id"].as_str().unwrap().starts_with("ctc_"));
        assert_eq!(events[2].1["input"], "text(1)");
        let done = &events[3].1["item"];
        assert_eq!(
            (&done["input"], &done["call_id"], &done["status"]),
            (&json!("text(1)"), &json!("call_1"), &json!("completed"))
        );
        assert_eq!(events[4].1["response"]["output"][0], *done);
    }
}
