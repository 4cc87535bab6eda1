//! One answer accumulated from its deltas: the text, the thinking and the tool calls by index,
//! and the assistant message they make. mcp-bridge builds it from the agent's parts (and sends
//! the message in `model_result`); the gateway from the chunks it relays (and counts its tokens,
//! or answers with it whole).
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::bridge::{Delta, FunctionDelta, ResultBody, ToolCallDelta};

/// One tool call so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallSoFar {
    pub id: String,
    pub name: String,
    /// The arguments' JSON text so far.
    pub arguments: String,
}

/// Everything an answer's deltas carried so far.
#[derive(Debug, Default)]
pub struct AnswerAccumulator {
    pub content: String,
    pub reasoning: String,
    /// Tool calls by the index the deltas gave them.
    pub tool_calls: BTreeMap<u64, ToolCallSoFar>,
    pub finish_reason: Option<String>,
}

impl AnswerAccumulator {
    /// True while no delta carried output.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.reasoning.is_empty() && self.tool_calls.is_empty()
    }

    /// Records `delta` and gives it back shaped for OpenAI clients, or `None` when it carried no
    /// output: empty texts and `role` dropped; each tool call has an `index` (its position when
    /// the agent gave none), `id` (made up when missing), `type` and `function.name` only in
    /// its first delta, and `function.arguments` always, as a string.
    pub fn absorb(&mut self, delta: Delta) -> Option<Delta> {
        let content = delta.content.filter(|t| !t.is_empty());
        if let Some(text) = &content {
            self.content.push_str(text);
        }
        let reasoning_content = delta.reasoning_content.filter(|t| !t.is_empty());
        if let Some(text) = &reasoning_content {
            self.reasoning.push_str(text);
        }
        let tool_calls: Vec<ToolCallDelta> = delta
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(pos, call)| self.absorb_call(pos as u64, call))
            .collect();
        let out = Delta {
            role: None,
            content,
            reasoning_content,
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        };
        (!out.is_empty()).then_some(out)
    }

    fn absorb_call(&mut self, pos: u64, call: ToolCallDelta) -> ToolCallDelta {
        let index = call.index.unwrap_or(pos);
        let (name, arguments) = match call.function {
            Some(f) => (f.name, f.arguments.unwrap_or_default()),
            None => (None, String::new()),
        };
        let first = !self.tool_calls.contains_key(&index);
        let entry = self.tool_calls.entry(index).or_default();
        entry.arguments.push_str(&arguments);
        if !first {
            return ToolCallDelta {
                index: Some(index),
                function: Some(FunctionDelta {
                    name: None,
                    arguments: Some(arguments),
                }),
                ..ToolCallDelta::default()
            };
        }
        entry.id = call
            .id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("call_{index}"));
        entry.name = name.unwrap_or_default();
        ToolCallDelta {
            index: Some(index),
            id: Some(entry.id.clone()),
            kind: Some("function".to_owned()),
            function: Some(FunctionDelta {
                name: Some(entry.name.clone()),
                arguments: Some(arguments),
            }),
        }
    }

    /// Takes the result's finish reason (unless a chunk gave one) and, when no delta carried
    /// output, its message as the answer: that answer as one delta, shaped as [`Self::absorb`]
    /// shapes it. A result after chunks that carried output is not read for text: it repeats
    /// them, or (`result_after_chunks`) leaves them out.
    pub fn absorb_result(&mut self, result: &ResultBody) -> Option<Delta> {
        let choice = result.choices.first()?;
        if self.finish_reason.is_none() {
            self.finish_reason = choice.finish_reason.clone();
        }
        if !self.is_empty() {
            return None;
        }
        // The message's fields are a delta's; one that is not (content given as a list of
        // parts, say) carries nothing a chat client can be given.
        let delta = Delta::deserialize(&choice.message).unwrap_or_default();
        self.absorb(delta)
    }

    /// The finish reason given when it is one OpenAI clients know, else the one the answer
    /// implies: the peer's string reaches every API's renderer, so it is held to that set.
    pub fn finish_reason(&self) -> String {
        const KNOWN: [&str; 5] = [
            "stop",
            "length",
            "tool_calls",
            "content_filter",
            "function_call",
        ];
        match self.finish_reason.as_deref() {
            Some(given) if KNOWN.contains(&given) => given.to_owned(),
            _ if self.tool_calls.is_empty() => "stop".to_owned(),
            _ => "tool_calls".to_owned(),
        }
    }

    /// The whole answer as one delta (a copy), for an API that renders a finished answer from
    /// its parts.
    pub fn as_single_delta(&self) -> Option<Delta> {
        let text = |s: &String| (!s.is_empty()).then(|| s.clone());
        let calls: Vec<ToolCallDelta> = self
            .tool_calls
            .iter()
            .map(|(index, call)| ToolCallDelta {
                index: Some(*index),
                id: Some(call.id.clone()),
                kind: Some("function".to_owned()),
                function: Some(FunctionDelta {
                    name: Some(call.name.clone()),
                    arguments: Some(call.arguments.clone()),
                }),
            })
            .collect();
        let delta = Delta {
            role: None,
            content: text(&self.content),
            reasoning_content: text(&self.reasoning),
            tool_calls: (!calls.is_empty()).then_some(calls),
        };
        (!delta.is_empty()).then_some(delta)
    }

    /// The OpenAI assistant message: `role`, `content` (null when there are only tool calls),
    /// `reasoning_content` when there was thinking, `tool_calls` when there were any.
    pub fn message(&self) -> Map<String, Value> {
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
        m
    }

    /// The text the agent produced (thinking, answer, tool names and arguments), for counting
    /// completion tokens.
    pub fn completion_text(&self) -> String {
        let mut text = String::with_capacity(self.text_bytes());
        text.push_str(&self.reasoning);
        text.push_str(&self.content);
        for call in self.tool_calls.values() {
            text.push_str(&call.name);
            text.push_str(&call.arguments);
        }
        text
    }

    /// The bytes of [`Self::completion_text`], without building it.
    pub fn text_bytes(&self) -> usize {
        self.content.len()
            + self.reasoning.len()
            + self
                .tool_calls
                .values()
                .map(|c| c.name.len() + c.arguments.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::bridge::{ResultChoice, StreamChunk};

    fn tool_delta(v: Value) -> Delta {
        Delta {
            tool_calls: Some(vec![serde_json::from_value(v).unwrap()]),
            ..Delta::default()
        }
    }

    fn json_of(delta: &Delta) -> Value {
        serde_json::to_value(delta).unwrap()
    }

    #[test]
    fn an_unknown_finish_reason_becomes_the_one_the_answer_implies() {
        let mut a = AnswerAccumulator {
            finish_reason: Some("length".into()),
            ..AnswerAccumulator::default()
        };
        assert_eq!(a.finish_reason(), "length");
        a.finish_reason = Some("stop\ndata: [DONE]".into());
        assert_eq!(a.finish_reason(), "stop");
        a.absorb(tool_delta(
            json!({"index": 0, "function": {"name": "f", "arguments": "{}"}}),
        ));
        assert_eq!(a.finish_reason(), "tool_calls");
    }

    #[test]
    fn tool_call_deltas_carry_id_and_name_only_first() {
        let mut a = AnswerAccumulator::default();
        let first = a
            .absorb(tool_delta(
                json!({"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}),
            ))
            .unwrap();
        assert_eq!(
            json_of(&first),
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})
        );
        // An agent that repeats id and name in later deltas is normalised.
        let second = a
            .absorb(tool_delta(json!({"index": 0, "id": "call_1",
                "function": {"name": "get_weather", "arguments": "{\"city\":"}})))
            .unwrap();
        assert_eq!(
            json_of(&second),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})
        );
        a.absorb(tool_delta(
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
        assert_eq!(a.completion_text(), "get_weather{\"city\":\"Paris\"}");
        assert_eq!(a.text_bytes(), a.completion_text().len());
    }

    #[test]
    fn object_arguments_decode_as_their_text_and_missing_index_is_the_position() {
        let chunk: StreamChunk = serde_json::from_value(json!({"id": "r", "chunk_index": 0,
            "delta": {"tool_calls": [
                {"id": "a", "function": {"name": "f", "arguments": {"x": 1}}},
                {"function": {"name": "g", "arguments": null}}]}}))
        .unwrap();
        let calls = chunk.delta.tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].arguments(), "{\"x\":1}");
        assert_eq!(calls[1].function.as_ref().unwrap().arguments, None);
        let mut a = AnswerAccumulator::default();
        let out = json_of(&a.absorb(chunk.delta).unwrap());
        assert_eq!(out["tool_calls"][0]["index"], 0);
        assert_eq!(out["tool_calls"][0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(
            (&out["tool_calls"][1]["index"], &out["tool_calls"][1]["id"]),
            (&json!(1), &json!("call_1")),
            "a missing id is made up from the index"
        );
        assert_eq!(out["tool_calls"][1]["function"]["arguments"], "");
        assert!(a.absorb(Delta::default()).is_none());
        assert!(a
            .absorb(Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Delta::default()
            })
            .is_none());
        // A malformed call is a malformed frame, not a guess.
        assert!(serde_json::from_value::<ToolCallDelta>(json!({"index": "first"})).is_err());
    }

    #[test]
    fn result_is_used_only_when_nothing_streamed() {
        let result = ResultBody {
            choices: vec![ResultChoice {
                index: 0,
                message: json!({"role": "assistant", "content": "full text",
                    "reasoning_content": "hm"}),
                finish_reason: Some("length".into()),
            }],
            ..ResultBody::default()
        };
        let mut streamed = AnswerAccumulator::default();
        for piece in ["full ", "text"] {
            streamed.absorb(Delta {
                content: Some(piece.into()),
                ..Delta::default()
            });
        }
        assert!(streamed.absorb_result(&result).is_none());
        assert_eq!(streamed.content, "full text", "not taken twice");
        assert_eq!(streamed.finish_reason(), "length");
        let mut silent = AnswerAccumulator::default();
        let single = silent.absorb_result(&result).unwrap();
        assert_eq!(single.content.as_deref(), Some("full text"));
        assert_eq!(single.reasoning_content.as_deref(), Some("hm"));
        assert_eq!(silent.as_single_delta().unwrap(), single);
        // A message this shape cannot read gives nothing rather than failing the answer.
        let odd = ResultBody {
            choices: vec![ResultChoice {
                index: 0,
                message: json!({"role": "assistant", "content": [{"type": "text"}]}),
                finish_reason: None,
            }],
            ..ResultBody::default()
        };
        let mut a = AnswerAccumulator::default();
        assert!(a.absorb_result(&odd).is_none());
        assert_eq!(a.finish_reason(), "stop");
        assert_eq!(a.message()["content"], "");
    }
}
