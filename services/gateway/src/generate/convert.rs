//! From bridge frames to OpenAI shapes: delta normalisation for strict clients, and assembly of
//! the whole answer from its pieces.
use std::collections::BTreeMap;

use provider_shared::bridge::{Delta, ResultBody};
use serde_json::{json, Map, Value};

/// Everything streamed so far, so the whole answer and its token count are known at the end.
#[derive(Debug, Default)]
pub struct Answer {
    pub content: String,
    pub reasoning: String,
    /// Tool calls by index: id, name, arguments so far.
    pub tool_calls: BTreeMap<u64, ToolCall>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl Answer {
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.reasoning.is_empty() && self.tool_calls.is_empty()
    }

    /// Records `delta` and returns it shaped for OpenAI clients (None when nothing is left):
    /// each tool call has an `index`; `id`, `type` and `function.name` only in its first delta.
    pub fn absorb(&mut self, delta: &Delta) -> Option<Value> {
        let mut out = Map::new();
        if let Some(text) = delta.content.as_deref().filter(|t| !t.is_empty()) {
            self.content.push_str(text);
            out.insert("content".into(), json!(text));
        }
        if let Some(text) = delta.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
            self.reasoning.push_str(text);
            out.insert("reasoning_content".into(), json!(text));
        }
        if let Some(calls) = delta.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            let shaped: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(pos, call)| self.absorb_call(pos as u64, call))
                .collect();
            out.insert("tool_calls".into(), Value::Array(shaped));
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }

    fn absorb_call(&mut self, pos: u64, call: &Value) -> Value {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(pos);
        let first = !self.tool_calls.contains_key(&index);
        let entry = self.tool_calls.entry(index).or_default();
        let arguments = match call.pointer("/function/arguments") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            // Some agents send the arguments as an object; OpenAI clients expect a string.
            Some(other) => other.to_string(),
        };
        entry.arguments.push_str(&arguments);
        let mut function = Map::new();
        if first {
            entry.id = call
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("call_{index}"));
            entry.name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            function.insert("name".into(), json!(entry.name));
        }
        function.insert("arguments".into(), json!(arguments));
        let mut shaped = Map::new();
        shaped.insert("index".into(), json!(index));
        if first {
            shaped.insert("id".into(), json!(entry.id));
            shaped.insert("type".into(), json!("function"));
        }
        shaped.insert("function".into(), Value::Object(function));
        Value::Object(shaped)
    }

    /// Takes the result's message as the answer when nothing was streamed.
    pub fn absorb_result(&mut self, result: &ResultBody) {
        let Some(choice) = result.choices.first() else {
            return;
        };
        if self.finish_reason.is_none() {
            self.finish_reason = choice.finish_reason.clone();
        }
        if !self.is_empty() {
            return;
        }
        let m = &choice.message;
        let delta = Delta {
            role: None,
            content: m.get("content").and_then(Value::as_str).map(str::to_owned),
            reasoning_content: m
                .get("reasoning_content")
                .and_then(Value::as_str)
                .map(str::to_owned),
            tool_calls: m.get("tool_calls").and_then(Value::as_array).cloned(),
        };
        self.absorb(&delta);
    }

    pub fn finish_reason(&self) -> String {
        self.finish_reason.clone().unwrap_or_else(|| {
            if self.tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            }
            .to_owned()
        })
    }

    /// The delta that carries the whole answer at once, for a stream whose agent sent no chunks.
    pub fn as_single_delta(&self) -> Option<Value> {
        let mut out = Map::new();
        if !self.reasoning.is_empty() {
            out.insert("reasoning_content".into(), json!(self.reasoning));
        }
        if !self.content.is_empty() {
            out.insert("content".into(), json!(self.content));
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|(i, c)| {
                    json!({"index": i, "id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            out.insert("tool_calls".into(), Value::Array(calls));
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }

    /// The assistant message of a non-streamed response.
    pub fn message(&self) -> Value {
        let mut m = Map::new();
        m.insert("role".into(), json!("assistant"));
        let content = if self.content.is_empty() && !self.tool_calls.is_empty() {
            Value::Null
        } else {
            json!(self.content)
        };
        m.insert("content".into(), content);
        if !self.reasoning.is_empty() {
            m.insert("reasoning_content".into(), json!(self.reasoning));
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .values()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        m.insert("refusal".into(), Value::Null);
        Value::Object(m)
    }

    /// The text the agent produced, for counting completion tokens.
    pub fn completion_text(&self) -> String {
        let mut text = String::with_capacity(self.content.len() + self.reasoning.len());
        text.push_str(&self.reasoning);
        text.push_str(&self.content);
        for call in self.tool_calls.values() {
            text.push_str(&call.name);
            text.push_str(&call.arguments);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use provider_shared::bridge::ResultChoice;

    fn tool_delta(v: Value) -> Delta {
        Delta {
            tool_calls: Some(vec![v]),
            ..Delta::default()
        }
    }

    #[test]
    fn tool_call_deltas_carry_id_and_name_only_first() {
        let mut a = Answer::default();
        let first = a
            .absorb(&tool_delta(
                json!({"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}),
            ))
            .unwrap();
        assert_eq!(first["tool_calls"][0]["id"], "call_1");
        assert_eq!(first["tool_calls"][0]["function"]["name"], "get_weather");
        // An agent that repeats id and name in later deltas is normalised.
        let second = a
            .absorb(&tool_delta(json!({"index": 0, "id": "call_1",
                "function": {"name": "get_weather", "arguments": "{\"city\":"}})))
            .unwrap();
        assert!(second["tool_calls"][0].get("id").is_none());
        assert!(second["tool_calls"][0]["function"].get("name").is_none());
        a.absorb(&tool_delta(
            json!({"index": 0, "function": {"arguments": "\"Paris\"}"}}),
        ));
        assert_eq!(a.tool_calls[&0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(a.finish_reason(), "tool_calls");
        let m = a.message();
        assert_eq!(m["content"], Value::Null);
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
    }

    #[test]
    fn result_is_used_only_when_nothing_streamed() {
        let result = ResultBody {
            choices: vec![ResultChoice {
                index: 0,
                message: json!({"role": "assistant", "content": "full text"}),
                finish_reason: Some("stop".into()),
            }],
            ..ResultBody::default()
        };
        let mut streamed = Answer::default();
        streamed.absorb(&Delta {
            content: Some("full ".into()),
            ..Delta::default()
        });
        streamed.absorb(&Delta {
            content: Some("text".into()),
            ..Delta::default()
        });
        streamed.absorb_result(&result);
        assert_eq!(streamed.content, "full text", "not sent twice");
        let mut silent = Answer::default();
        silent.absorb_result(&result);
        assert_eq!(silent.content, "full text");
        assert_eq!(silent.as_single_delta().unwrap()["content"], "full text");
    }

    #[test]
    fn object_arguments_become_strings_and_empty_deltas_vanish() {
        let mut a = Answer::default();
        let d = a
            .absorb(&tool_delta(
                json!({"id": "c", "function": {"name": "f", "arguments": {"x": 1}}}),
            ))
            .unwrap();
        assert_eq!(d["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(d["tool_calls"][0]["index"], 0);
        assert!(a.absorb(&Delta::default()).is_none());
    }
}
