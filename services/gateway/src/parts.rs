//! An answer as an ordered list of parts (thinking, text, tool calls), for the APIs whose streams
//! open and close one block at a time (the Responses API's output items, Anthropic's content
//! blocks). Fed the OpenAI-shaped deltas of [`crate::generate::Piece::Delta`], it says when a
//! part opens, grows and closes; a part of another kind closes the one before it.
use std::ops::Range;

use provider_shared::bridge::Delta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Thinking,
    Text,
    /// A tool call, by the index the agent gave it.
    Call(u64),
}

#[derive(Debug, Clone)]
pub struct Part {
    pub kind: Kind,
    /// The thinking, the text, or the call's arguments (a JSON text), so far.
    pub text: String,
    /// For a call: its id and the tool's name.
    pub call_id: String,
    pub name: String,
}

/// What changed, by position in [`Parts::list`]. An append names the bytes of the part's text
/// it added, so the text is not copied again to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartChange {
    Open(usize),
    Append(usize, Range<usize>),
    Close(usize),
}

#[derive(Debug, Default)]
pub struct Parts {
    pub list: Vec<Part>,
    open: Option<usize>,
}

impl Parts {
    /// Records one delta (`reasoning_content`, `content`, `tool_calls`, in that order).
    pub fn absorb(&mut self, delta: &Delta) -> Vec<PartChange> {
        let mut steps = Vec::new();
        if let Some(text) = &delta.reasoning_content {
            self.grow(Kind::Thinking, text, &mut steps);
        }
        if let Some(text) = &delta.content {
            self.grow(Kind::Text, text, &mut steps);
        }
        for (pos, call) in delta.tool_calls.iter().flatten().enumerate() {
            let index = call.index.unwrap_or(pos as u64);
            let arguments = call.arguments();
            let known = self.list.iter().position(|p| p.kind == Kind::Call(index));
            match known {
                Some(at) if self.open == Some(at) => self.append(at, arguments, &mut steps),
                // A late fragment of a call already closed: kept for the whole answer, but its
                // block cannot be reopened in the stream.
                Some(at) => self.list[at].text.push_str(arguments),
                None => {
                    let at = self.open_part(Kind::Call(index), &mut steps);
                    let part = &mut self.list[at];
                    part.call_id = call.id.clone().unwrap_or_else(|| format!("call_{index}"));
                    part.name = call.name().unwrap_or_default().to_owned();
                    self.append(at, arguments, &mut steps);
                }
            }
        }
        steps
    }

    /// The text an [`PartChange::Append`] added.
    pub fn appended(&self, at: usize, range: &Range<usize>) -> &str {
        self.list
            .get(at)
            .and_then(|p| p.text.get(range.clone()))
            .unwrap_or_default()
    }

    fn append(&mut self, at: usize, text: &str, steps: &mut Vec<PartChange>) {
        if text.is_empty() {
            return;
        }
        let part = &mut self.list[at];
        let start = part.text.len();
        part.text.push_str(text);
        steps.push(PartChange::Append(at, start..part.text.len()));
    }

    /// Closes the open part, if any: the answer is complete.
    pub fn close(&mut self) -> Vec<PartChange> {
        self.open
            .take()
            .map(PartChange::Close)
            .into_iter()
            .collect()
    }

    fn grow(&mut self, kind: Kind, text: &str, steps: &mut Vec<PartChange>) {
        if text.is_empty() {
            return;
        }
        let at = match self.open {
            Some(at) if self.list[at].kind == kind => at,
            _ => self.open_part(kind, steps),
        };
        self.append(at, text, steps);
    }

    fn open_part(&mut self, kind: Kind, steps: &mut Vec<PartChange>) -> usize {
        steps.extend(self.close());
        self.list.push(Part {
            kind,
            text: String::new(),
            call_id: String::new(),
            name: String::new(),
        });
        let at = self.list.len() - 1;
        self.open = Some(at);
        steps.push(PartChange::Open(at));
        at
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::{json, Value};

    fn delta(v: Value) -> Delta {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn parts_open_and_close_in_order() {
        let mut p = Parts::default();
        let steps = p.absorb(&delta(json!({"reasoning_content": "hm", "content": "Hi"})));
        assert_eq!(
            steps,
            vec![
                PartChange::Open(0),
                PartChange::Append(0, 0..2),
                PartChange::Close(0),
                PartChange::Open(1),
                PartChange::Append(1, 0..2),
            ]
        );
        let steps = p.absorb(&delta(json!({"content": " there"})));
        assert_eq!(steps, vec![PartChange::Append(1, 2..8)]);
        assert_eq!(p.appended(1, &(2..8)), " there");
        let steps = p.absorb(&delta(json!({"tool_calls": [{"index": 0, "id": "c1",
            "function": {"name": "f", "arguments": "{\"a\""}}]})));
        assert_eq!(
            steps,
            vec![
                PartChange::Close(1),
                PartChange::Open(2),
                PartChange::Append(2, 0..4)
            ]
        );
        p.absorb(&delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        ));
        assert_eq!(p.close(), vec![PartChange::Close(2)]);
        assert!(p.close().is_empty());
        assert_eq!(p.list[1].text, "Hi there");
        assert_eq!(
            (
                p.list[2].call_id.as_str(),
                p.list[2].name.as_str(),
                p.list[2].text.as_str()
            ),
            ("c1", "f", "{\"a\":1}")
        );
    }

    #[test]
    fn a_second_call_is_a_new_part_and_empty_text_opens_nothing() {
        let mut p = Parts::default();
        assert!(p.absorb(&delta(json!({"content": ""}))).is_empty());
        p.absorb(&delta(json!({"tool_calls": [
            {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}},
            {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]})));
        assert_eq!(p.list.len(), 2);
        assert_eq!(p.list[1].kind, Kind::Call(1));
    }
}
