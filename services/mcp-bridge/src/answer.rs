//! One request's answer as the agent builds it through `submit_response`: each part becomes a
//! `model_stream_chunk` (streamed requests) and the last one also the single `model_result`.
use provider_shared::answer::AnswerAccumulator;
use provider_shared::bridge::{
    BridgeFrame, Delta, FunctionDelta, ModelResult, Outcome, ResultBody, ResultChoice, StreamChunk,
    ToolCallDelta, Usage,
};
use rand::Rng;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// One part of an answer, as the agent gives it.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Answer text to append (what the editor shows).
    #[serde(default)]
    pub content: Option<String>,
    /// Thinking to append; editors show it apart from the answer.
    #[serde(default)]
    pub reasoning: Option<String>,
    /// Native tool calls, OpenAI shape. Only when the request carries `tools`.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// `false` when more parts follow; `true` (the default) ends the answer.
    #[serde(default)]
    pub done: Option<bool>,
    /// Why the answer ended (with `done`): `stop`, `length`, `tool_calls` or `content_filter`.
    /// Default: `tool_calls` if the answer has tool calls, else `stop`.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// Token counts, when known; otherwise the gateway counts them.
    #[serde(default)]
    pub usage: Option<UsageArg>,
    /// The part's number (1, 2, …), when the agent numbers its parts: a repeat is not applied.
    #[serde(default)]
    pub number: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// `{"id"?, "type": "function", "function": {"name", "arguments"}}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The call's id; one is made up when omitted.
    #[serde(default)]
    pub id: Option<String>,
    /// Always `function`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    /// One of the request's `tools`.
    pub name: String,
    /// The arguments: a JSON object, or a string holding one.
    pub arguments: Value,
}

/// The agent's token counts: advisory, as everything it reports (the gateway holds them to
/// what the request allows).
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageArg {
    #[serde(deserialize_with = "saturating_tokens")]
    pub prompt_tokens: u64,
    #[serde(deserialize_with = "saturating_tokens")]
    pub completion_tokens: u64,
}

/// A whole number of tokens; one beyond 2^64 − 1 (which JSON readers hold as a float) stands at
/// 2^64 − 1 rather than failing the agent's answer.
fn saturating_tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(whole) = n.as_u64() {
        return Ok(whole);
    }
    match n.as_f64() {
        // `as` saturates: 1e20 becomes u64::MAX.
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number of tokens, 0 or more, got {n}"
        ))),
    }
}

/// What the request allows, read once from its parameters.
#[derive(Debug, Clone)]
pub struct Shape {
    pub stream: bool,
    /// The bridge-agent that sent the request listed `result_after_chunks`: once chunks carried
    /// the answer, its `model_result` leaves the text out.
    pub result_after_chunks: bool,
    /// The function names of `tools`; `None` when the request carries no tools (or
    /// `tool_choice` is `none`), so native tool calls are refused.
    pub tools: Option<Vec<String>>,
}

impl Shape {
    pub fn of(parameters: &Map<String, Value>) -> Self {
        let stream = parameters.get("stream").and_then(Value::as_bool) == Some(true);
        let names: Vec<String> = parameters
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let none = parameters.get("tool_choice").and_then(Value::as_str) == Some("none");
        Shape {
            stream,
            result_after_chunks: false,
            tools: (!names.is_empty() && !none).then_some(names),
        }
    }
}

/// The agent's answer to one request so far, part by part.
#[derive(Debug, Default)]
pub struct Submission {
    chunk_index: u64,
    answer: AnswerAccumulator,
    /// The highest part number taken.
    parts_taken: u64,
}

/// What one part produced: frames for bridge-agent, and whether the answer is complete.
#[derive(Debug)]
pub struct PartOutput {
    pub frames: Vec<BridgeFrame>,
    pub done: bool,
}

impl Submission {
    /// True once a chunk went out: the client has seen part of this answer, so it cannot be
    /// handed to another agent any more.
    pub fn started(&self) -> bool {
        self.chunk_index > 0
    }

    /// Checks `part` against the request's shape and turns it into frames. On error nothing
    /// changed, so the agent can correct the part and send it again.
    pub fn apply(&mut self, id: &str, shape: &Shape, part: Part) -> Result<PartOutput, String> {
        match part.number {
            // Taken already: its reply was lost on the way to the agent.
            Some(n) if n >= 1 && n <= self.parts_taken => {
                return Ok(PartOutput {
                    frames: Vec::new(),
                    done: false,
                })
            }
            Some(n) if n != self.parts_taken + 1 => {
                return Err(format!(
                    "part {n} is out of order: the next part of this answer is {}",
                    self.parts_taken + 1
                ))
            }
            _ => {}
        }
        let number = part.number;
        let calls = self.check_calls(shape, part.tool_calls.unwrap_or_default())?;
        let done = part.done.unwrap_or(true);
        let content = part.content.filter(|c| !c.is_empty());
        let reasoning = part.reasoning.filter(|r| !r.is_empty());
        let has_output = content.is_some() || reasoning.is_some() || !calls.is_empty();
        if !done && !has_output {
            return Err("nothing to send: give content, reasoning or tool_calls (or done: true to end the answer)".into());
        }
        let any_calls = !self.answer.tool_calls.is_empty() || !calls.is_empty();
        let finish = match part.finish_reason {
            Some(_) if !done => {
                return Err("finish_reason goes with the last part (done: true)".into())
            }
            Some(FinishReason::ToolCalls) if !any_calls => {
                return Err("finish_reason tool_calls needs at least one tool call".into())
            }
            Some(reason) => reason,
            None if any_calls => FinishReason::ToolCalls,
            None => FinishReason::Stop,
        };
        if done
            && !any_calls
            && content.is_none()
            && self.answer.content.is_empty()
            && finish != FinishReason::Length
        {
            return Err("the answer is empty: give content or tool_calls (or fail_request to refuse the request)".into());
        }

        // Each call is new: its index follows the calls before it.
        let first_index = self.answer.tool_calls.len() as u64;
        let calls: Vec<ToolCallDelta> = calls
            .into_iter()
            .enumerate()
            .map(|(i, call)| ToolCallDelta {
                index: Some(first_index + i as u64),
                ..call
            })
            .collect();
        let delta = self.answer.absorb(Delta {
            role: None,
            content,
            reasoning_content: reasoning,
            tool_calls: (!calls.is_empty()).then_some(calls),
        });
        let mut frames = Vec::new();
        let finish_text = done.then(|| finish.as_str().to_owned());
        match delta {
            Some(delta) if shape.stream => frames.push(self.chunk(id, delta, finish_text)),
            None if shape.stream && done => {
                frames.push(self.chunk(id, Delta::default(), finish_text))
            }
            _ => {}
        }
        if let Some(n) = number {
            self.parts_taken = n;
        }
        if done {
            // Chunks carried the answer already, and the receiver asked not to get it twice.
            let lean = shape.stream && shape.result_after_chunks && !self.answer.is_empty();
            frames.push(BridgeFrame::ModelResult(
                self.result(id, finish, part.usage, lean),
            ));
        }
        Ok(PartOutput { frames, done })
    }

    fn chunk(&mut self, id: &str, delta: Delta, finish: Option<String>) -> BridgeFrame {
        let chunk = StreamChunk {
            id: id.to_owned(),
            chunk_index: self.chunk_index,
            delta,
            finish_reason: finish,
        };
        self.chunk_index += 1;
        BridgeFrame::ModelStreamChunk(chunk)
    }

    fn result(
        &self,
        id: &str,
        finish: FinishReason,
        usage: Option<UsageArg>,
        lean: bool,
    ) -> ModelResult {
        let message = if lean {
            json!({"role": "assistant"})
        } else {
            Value::Object(self.answer.message())
        };
        ModelResult {
            id: id.to_owned(),
            outcome: Outcome::Ok {
                result: ResultBody {
                    choices: vec![ResultChoice {
                        index: 0,
                        message,
                        finish_reason: Some(finish.as_str().to_owned()),
                    }],
                    usage: usage.map(|u| Usage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                        // The agent's figures: the gateway holds them to what is possible.
                        total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
                    }),
                    model: None,
                    created: None,
                },
            },
        }
    }

    /// Tool calls in the full OpenAI shape (their index still to be given), or why they cannot
    /// be sent.
    fn check_calls(
        &self,
        shape: &Shape,
        calls: Vec<ToolCall>,
    ) -> Result<Vec<ToolCallDelta>, String> {
        if calls.is_empty() {
            return Ok(vec![]);
        }
        let Some(tools) = &shape.tools else {
            return Err("this request carries no tools (or tool_choice is \"none\"): answer in text only; if the conversation describes tools in its text, write the call in the text the way it asks".into());
        };
        let mut out = Vec::with_capacity(calls.len());
        for (i, call) in calls.into_iter().enumerate() {
            if call.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(format!("tool_calls[{i}].type must be \"function\""));
            }
            let name = call.function.name;
            if !tools.contains(&name) {
                return Err(format!(
                    "tool_calls[{i}].function.name {name:?} is not one of the request's tools: {}",
                    tools.join(", ")
                ));
            }
            let arguments = match call.function.arguments {
                Value::String(text) => match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(_)) => text,
                    _ => {
                        return Err(format!(
                        "tool_calls[{i}].function.arguments must be a JSON object or a string holding one"
                    ))
                    }
                },
                obj @ Value::Object(_) => obj.to_string(),
                _ => {
                    return Err(format!(
                    "tool_calls[{i}].function.arguments must be a JSON object or a string holding one"
                ))
                }
            };
            let id = call
                .id
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(new_call_id);
            out.push(ToolCallDelta {
                index: None,
                id: Some(id),
                kind: Some("function".to_owned()),
                function: Some(FunctionDelta {
                    name: Some(name),
                    arguments: Some(arguments),
                }),
            });
        }
        Ok(out)
    }
}

fn new_call_id() -> String {
    let n: u64 = rand::rng().random();
    format!("call_{n:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(stream: bool, tools: bool) -> Shape {
        let mut p = Map::new();
        p.insert("stream".into(), json!(stream));
        if tools {
            p.insert(
                "tools".into(),
                json!([{"type": "function", "function": {"name": "get_weather"}}]),
            );
        }
        Shape::of(&p)
    }

    fn part(v: Value) -> Part {
        serde_json::from_value(v).unwrap()
    }

    fn to_json(frames: &[BridgeFrame]) -> Vec<Value> {
        frames
            .iter()
            .map(|f| serde_json::from_str(&f.to_text()).unwrap())
            .collect()
    }

    #[test]
    fn a_numbered_part_sent_again_is_not_applied_twice() {
        let mut a = Submission::default();
        let s = shape(true, false);
        let first = json!({"content": "Hel", "done": false, "number": 1});
        assert_eq!(
            a.apply("r1", &s, part(first.clone())).unwrap().frames.len(),
            1
        );
        // Its reply was lost; the agent sends it again.
        let again = a.apply("r1", &s, part(first)).unwrap();
        assert!(again.frames.is_empty() && !again.done);
        let err = a
            .apply(
                "r1",
                &s,
                part(json!({"content": "x", "done": false, "number": 3})),
            )
            .unwrap_err();
        assert!(err.contains("next part of this answer is 2"), "{err}");
        let last = a
            .apply("r1", &s, part(json!({"content": "lo", "number": 2})))
            .unwrap();
        assert!(last.done);
        let texts: Vec<Value> = to_json(&last.frames);
        assert_eq!(texts[0]["delta"]["content"], "lo");
        assert_eq!(
            texts[1]["result"]["choices"][0]["message"]["content"],
            "Hello"
        );
    }

    #[test]
    fn streamed_parts_become_chunks_then_one_result() {
        let mut a = Submission::default();
        let s = shape(true, true);
        let step = a
            .apply("r1", &s, part(json!({"reasoning": "hm", "done": false})))
            .unwrap();
        assert!(!step.done && a.started());
        let step = a
            .apply("r1", &s, part(json!({"content": "Hel", "done": false})))
            .unwrap();
        assert_eq!(to_json(&step.frames)[0]["chunk_index"], 1);
        let step = a.apply("r1", &s, part(json!({"content": "lo", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]})))
            .unwrap();
        let v = to_json(&step.frames);
        assert!(step.done);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["finish_reason"], "tool_calls");
        assert_eq!(v[0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(
            v[0]["delta"]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(v[1]["type"], "model_result");
        let msg = &v[1]["result"]["choices"][0]["message"];
        assert_eq!(msg["content"], "Hello");
        assert_eq!(msg["reasoning_content"], "hm");
        assert_eq!(msg["tool_calls"][0]["id"], "call_1");
    }

    #[test]
    fn not_streamed_gets_only_the_result() {
        let mut a = Submission::default();
        let s = shape(false, false);
        let step = a
            .apply("r", &s, part(json!({"content": "a", "done": false})))
            .unwrap();
        assert!(step.frames.is_empty() && !a.started());
        let step = a
            .apply(
                "r",
                &s,
                part(
                    json!({"content": "b", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
                ),
            )
            .unwrap();
        let v = to_json(&step.frames);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["result"]["choices"][0]["message"]["content"], "ab");
        assert_eq!(v[0]["result"]["choices"][0]["finish_reason"], "stop");
        assert_eq!(v[0]["result"]["usage"]["total_tokens"], 5);
    }

    #[test]
    fn refusals_are_clear_and_change_nothing() {
        let mut a = Submission::default();
        let call = json!([{"function": {"name": "get_weather", "arguments": "{}"}}]);
        let err = a
            .apply("r", &shape(true, false), part(json!({"tool_calls": call})))
            .unwrap_err();
        assert!(err.contains("no tools"), "{err}");
        let bad = json!([{"function": {"name": "rm_rf", "arguments": "{}"}}]);
        let err = a
            .apply("r", &shape(true, true), part(json!({"tool_calls": bad})))
            .unwrap_err();
        assert!(err.contains("get_weather"), "{err}");
        let bad = json!([{"function": {"name": "get_weather", "arguments": "not json"}}]);
        assert!(a
            .apply("r", &shape(true, true), part(json!({"tool_calls": bad})))
            .is_err());
        assert!(a
            .apply("r", &shape(true, true), part(json!({"done": false})))
            .is_err());
        assert!(a
            .apply("r", &shape(true, true), part(json!({})))
            .unwrap_err()
            .contains("empty"));
        assert!(!a.started());
        assert!(serde_json::from_value::<Part>(json!({"text": "x"})).is_err());
        let ok = a
            .apply("r", &shape(true, true), part(json!({"tool_calls": call})))
            .unwrap();
        let v = to_json(&ok.frames);
        assert!(v[0]["delta"]["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_"));
        assert_eq!(
            v[1]["result"]["choices"][0]["message"]["content"],
            Value::Null
        );
    }

    #[test]
    fn a_streamed_result_leaves_the_text_out_only_when_asked() {
        let mut lean = shape(true, true);
        lean.result_after_chunks = true;
        let mut a = Submission::default();
        a.apply("r", &lean, part(json!({"reasoning": "hm", "done": false})))
            .unwrap();
        let step = a
            .apply(
                "r",
                &lean,
                part(
                    json!({"content": "Hi", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
                ),
            )
            .unwrap();
        let v = to_json(&step.frames);
        assert_eq!(v[0]["delta"]["content"], "Hi");
        let result = &v[1]["result"];
        assert_eq!(
            result["choices"][0]["message"],
            json!({"role": "assistant"})
        );
        assert_eq!(result["choices"][0]["finish_reason"], "stop");
        assert_eq!(result["usage"]["total_tokens"], 5);
        // A peer that did not ask gets the whole text again.
        let mut a = Submission::default();
        let step = a
            .apply("r", &shape(true, true), part(json!({"content": "Hi"})))
            .unwrap();
        assert_eq!(
            to_json(&step.frames)[1]["result"]["choices"][0]["message"]["content"],
            "Hi"
        );
        // Not streamed: the result is the only carrier of the text, asked or not.
        let mut whole = shape(false, false);
        whole.result_after_chunks = true;
        let mut a = Submission::default();
        let step = a
            .apply("r", &whole, part(json!({"content": "Hi"})))
            .unwrap();
        assert_eq!(
            to_json(&step.frames)[0]["result"]["choices"][0]["message"]["content"],
            "Hi"
        );
    }

    #[test]
    fn token_counts_beyond_u64_saturate_and_others_are_refused() {
        let usage = |v: Value| serde_json::from_value::<UsageArg>(v);
        let u = usage(json!({"prompt_tokens": 1e20, "completion_tokens": u64::MAX})).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (u64::MAX, u64::MAX));
        for bad in [json!(-1), json!(1.5), json!("3")] {
            let err = usage(json!({"prompt_tokens": bad, "completion_tokens": 1})).unwrap_err();
            assert!(
                err.to_string().contains("tokens") || err.to_string().contains("number"),
                "{err}"
            );
        }
        let mut a = Submission::default();
        let step = a
            .apply(
                "r",
                &shape(false, false),
                part(json!({"content": "x",
                "usage": {"prompt_tokens": u64::MAX, "completion_tokens": u64::MAX}})),
            )
            .unwrap();
        assert_eq!(
            to_json(&step.frames)[0]["result"]["usage"]["total_tokens"],
            u64::MAX
        );
    }

    #[test]
    fn tool_choice_none_forbids_calls() {
        let mut p = Map::new();
        p.insert(
            "tools".into(),
            json!([{"type": "function", "function": {"name": "f"}}]),
        );
        p.insert("tool_choice".into(), json!("none"));
        assert!(Shape::of(&p).tools.is_none());
    }
}
