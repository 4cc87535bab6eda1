//! A Responses API request as the `chat` payload the agent knows: `instructions` and `input`
//! items become OpenAI chat messages, function tools and `text.format` become chat `tools` and
//! `response_format`. What the gateway cannot honour is refused here, naming the field.
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::validate::{self, describe, invalid, Limits};

/// A Responses request that passed validation, converted.
#[derive(Debug)]
pub struct Request {
    /// The model name as sent (resolved by the preamble).
    pub model: String,
    pub messages: Vec<Value>,
    /// The chat parameters for the agent, with `"api": "responses"`.
    pub parameters: Map<String, Value>,
    /// The names the agent knows namespaced tools by (`tools.rs`), to name its calls back.
    pub tool_names: super::tools::ToolNames,
    pub max_output_tokens: Option<u64>,
    pub stream: bool,
    /// The fields echoed in the response object, as sent.
    pub echo: Echo,
}

#[derive(Debug, Default)]
pub struct Echo {
    pub instructions: Value,
    pub tools: Value,
    pub tool_choice: Value,
    pub text: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub parallel_tool_calls: Value,
    pub metadata: Value,
    pub reasoning: Value,
}

/// Fields the gateway converts or answers itself; every other field passes to the agent as sent.
const CONSUMED: &[&str] = &[
    "model",
    "input",
    "instructions",
    "stream",
    "stream_options",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "store",
    "include",
    "truncation",
    "metadata",
];

pub fn request(body: &[u8], limits: &Limits) -> Result<Request, Error> {
    let mut obj = validate::object_of(body)?;
    let model = validate::model_of(&obj)?;
    refuse_unsupported(&obj)?;
    let stream = validate::bool_field(&obj, "stream")?;
    let max_output_tokens = validate::token_cap(&obj, "max_output_tokens", limits)?;
    validate::number_in(&obj, "temperature", 0.0, 2.0)?;
    validate::number_in(&obj, "top_p", 0.0, 1.0)?;
    let instructions = match obj.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(invalid(
                "instructions",
                format!("expected a string, got {}", describe(v)),
            ))
        }
    };
    let input = obj
        .get("input")
        .ok_or_else(|| invalid("input", "required: a string or an array of items".into()))?;
    let mut messages = Vec::new();
    if let Some(text) = &instructions {
        messages.push(json!({"role": "system", "content": text}));
    }
    messages.extend(input_messages(input)?);

    let mut parameters = Map::new();
    parameters.insert("api".into(), json!("responses"));
    for (key, value) in &obj {
        if !CONSUMED.contains(&key.as_str()) {
            parameters.insert(key.clone(), value.clone());
        }
    }
    parameters.insert("stream".into(), json!(stream));
    if let Some(n) = max_output_tokens {
        parameters.insert("max_tokens".into(), json!(n));
    }
    let tools = super::tools::tools(&obj)?;
    if !tools.chat.is_empty() {
        parameters.insert("tools".into(), Value::Array(tools.chat));
    }
    if !tools.hosted.is_empty() {
        // Tools the agent runs on its own side (docs/PROTOCOL.md): never its tool calls.
        parameters.insert("hosted_tools".into(), Value::Array(tools.hosted));
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        parameters.insert("tool_choice".into(), super::tools::tool_choice(choice)?);
    }
    if let Some(format) = response_format(obj.get("text"))? {
        parameters.insert("response_format".into(), format);
    }
    if let Some(effort) = obj
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|v| !v.is_null())
    {
        parameters.insert("reasoning_effort".into(), effort.clone());
    }
    // Converted above: what the response object echoes is moved out, not copied.
    let echo = Echo {
        instructions: instructions.map_or(Value::Null, Value::String),
        tools: obj.remove("tools").unwrap_or_else(|| json!([])),
        tool_choice: obj.remove("tool_choice").unwrap_or_else(|| json!("auto")),
        text: obj
            .remove("text")
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        temperature: obj.get("temperature").cloned().unwrap_or(Value::Null),
        top_p: obj.get("top_p").cloned().unwrap_or(Value::Null),
        parallel_tool_calls: obj
            .get("parallel_tool_calls")
            .cloned()
            .unwrap_or(Value::Bool(true)),
        metadata: obj.remove("metadata").unwrap_or_else(|| json!({})),
        reasoning: obj
            .remove("reasoning")
            .unwrap_or_else(|| json!({"effort": null, "summary": null})),
    };
    Ok(Request {
        model,
        messages,
        parameters,
        tool_names: tools.names,
        max_output_tokens,
        stream,
        echo,
    })
}

/// What needs OpenAI's servers (stored responses, conversations, prompt templates, background
/// runs) or token probabilities, which the agent does not have.
fn refuse_unsupported(obj: &Map<String, Value>) -> Result<(), Error> {
    let stateless = "this gateway keeps no responses or conversations: send the whole conversation in `input` (with store: false, as for any stateless server)";
    for key in ["previous_response_id", "conversation"] {
        if obj.get(key).is_some_and(|v| !v.is_null()) {
            return Err(invalid(key, stateless.into()));
        }
    }
    if obj.get("prompt").is_some_and(|v| !v.is_null()) {
        return Err(invalid(
            "prompt",
            "prompt templates live on OpenAI's servers; send `instructions` and `input` instead"
                .into(),
        ));
    }
    if validate::bool_field(obj, "background")? {
        return Err(invalid(
            "background",
            "background responses are not supported; use stream: true for long answers".into(),
        ));
    }
    validate::check_no_logprobs(obj)?;
    if let Some(include) = obj.get("include").filter(|v| !v.is_null()) {
        let Value::Array(items) = include else {
            return Err(invalid(
                "include",
                format!("expected an array of strings, got {}", describe(include)),
            ));
        };
        if items
            .iter()
            .any(|i| i.as_str() == Some("message.output_text.logprobs"))
        {
            return Err(invalid(
                "include",
                "message.output_text.logprobs: log probabilities are not available from this model"
                    .into(),
            ));
        }
    }
    match obj.get("truncation") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "auto" || t == "disabled" => {}
        Some(v) => {
            return Err(invalid(
                "truncation",
                format!("expected \"auto\" or \"disabled\", got {}", describe(v)),
            ))
        }
    }
    Ok(())
}

/// `text.format` as the chat `response_format` (None for plain text).
fn response_format(text: Option<&Value>) -> Result<Option<Value>, Error> {
    let Some(format) = text.and_then(|t| t.get("format")).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let (Some(name), Some(schema)) = (
                format.get("name").and_then(Value::as_str),
                format.get("schema").filter(|s| s.is_object()),
            ) else {
                return Err(invalid(
                    "text.format",
                    "a json_schema format needs `name` (a string) and `schema` (an object)".into(),
                ));
            };
            let mut spec = Map::new();
            spec.insert("name".into(), json!(name));
            spec.insert("schema".into(), schema.clone());
            for key in ["strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    spec.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": spec})))
        }
        _ => Err(invalid(
            "text.format.type",
            format!(
                "expected \"text\", \"json_schema\" or \"json_object\", got {}",
                describe(format)
            ),
        )),
    }
}

/// `input` (a string or items) as chat messages.
fn input_messages(input: &Value) -> Result<Vec<Value>, Error> {
    let items = match input {
        Value::String(text) => return Ok(vec![json!({"role": "user", "content": text})]),
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(invalid("input", "must hold at least one item".into())),
        other => {
            return Err(invalid(
                "input",
                format!(
                    "expected a string or an array of items, got {}",
                    describe(other)
                ),
            ))
        }
    };
    let mut out: Vec<Value> = Vec::new();
    // Reasoning items precede the assistant turn they belong to.
    let mut reasoning = String::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let Value::Object(item) = item else {
            return Err(invalid(
                &at,
                format!("expected an item object, got {}", validate::kind_of(item)),
            ));
        };
        let kind = match item.get("type").and_then(Value::as_str) {
            Some(t) => t,
            None if item.contains_key("role") => "message",
            None => return Err(invalid(&format!("{at}.type"), "required".into())),
        };
        match kind {
            "message" => {
                let mut message = message_item(&at, item)?;
                if message["role"] == "assistant" && !reasoning.is_empty() {
                    message["reasoning_content"] = json!(std::mem::take(&mut reasoning));
                }
                out.push(message);
            }
            "function_call" | "custom_tool_call" => {
                let call_id = string_field(&at, item, "call_id")?;
                let name = string_field(&at, item, "name")?;
                // A namespaced tool's call (Codex sends `namespace` beside `name`), under the
                // name the agent knows the tool by.
                let name = match item.get("namespace").and_then(Value::as_str) {
                    Some(ns) => super::tools::ToolNames::flat(ns, &name),
                    None => name,
                };
                let arguments = if kind == "custom_tool_call" {
                    // A free-form tool's input, as the agent was offered the tool: one string.
                    json!({"input": string_field(&at, item, "input")?}).to_string()
                } else {
                    match item.get("arguments") {
                        Some(Value::String(s)) => s.clone(),
                        None | Some(Value::Null) => "{}".to_owned(),
                        Some(other) => other.to_string(),
                    }
                };
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": arguments}});
                // Calls of one turn join the assistant message before them, as chat has it.
                match out.last_mut().filter(|m| m["role"] == "assistant") {
                    Some(Value::Object(last)) => match last.get_mut("tool_calls") {
                        Some(Value::Array(calls)) => calls.push(call),
                        _ => {
                            last.insert("tool_calls".into(), json!([call]));
                        }
                    },
                    _ => {
                        let mut message =
                            json!({"role": "assistant", "content": null, "tool_calls": [call]});
                        if !reasoning.is_empty() {
                            message["reasoning_content"] = json!(std::mem::take(&mut reasoning));
                        }
                        out.push(message);
                    }
                }
            }
            "function_call_output" | "custom_tool_call_output" => {
                let call_id = string_field(&at, item, "call_id")?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts_text(parts),
                    Some(other) => {
                        return Err(invalid(
                            &format!("{at}.output"),
                            format!(
                                "expected a string or an array of parts, got {}",
                                describe(other)
                            ),
                        ))
                    }
                    None => return Err(invalid(&format!("{at}.output"), "required".into())),
                };
                out.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // Its tools are read with `tools` (tools.rs).
            "additional_tools" => {}
            "reasoning" => {
                for key in ["summary", "content"] {
                    if let Some(Value::Array(parts)) = item.get(key) {
                        reasoning.push_str(&parts_text(parts));
                    }
                }
            }
            "item_reference" => {
                return Err(invalid(
                    &at,
                    "item references need stored responses, which this gateway does not keep; send the item itself".into(),
                ))
            }
            other => {
                return Err(invalid(
                    &format!("{at}.type"),
                    format!("expected message, function_call, function_call_output, custom_tool_call, custom_tool_call_output, additional_tools or reasoning, got {}", validate::quoted(other)),
                ))
            }
        }
    }
    Ok(out)
}

fn string_field(at: &str, item: &Map<String, Value>, key: &str) -> Result<String, Error> {
    match item.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(invalid(
            &format!("{at}.{key}"),
            "required (a string)".into(),
        )),
    }
}

/// The text of output or reasoning parts, joined.
fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .map(|p| match p.get("text") {
            Some(Value::String(t)) => t.clone(),
            _ => p.to_string(),
        })
        .collect()
}

/// A `message` item as a chat message: text parts as `text`, images as `image_url`.
fn message_item(at: &str, item: &Map<String, Value>) -> Result<Value, Error> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "system" | "developer" | "assistant")) => r,
        Some(other) => {
            return Err(invalid(
                &format!("{at}.role"),
                format!(
                    "expected user, system, developer or assistant, got {}",
                    validate::quoted(other)
                ),
            ))
        }
        None => return Err(invalid(&format!("{at}.role"), "required".into())),
    };
    let content_at = format!("{at}.content");
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let mut shaped = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                shaped.push(content_part(&format!("{content_at}[{j}]"), part)?);
            }
            if role == "assistant" {
                // Assistant history is text in chat.
                Value::String(parts_text(&shaped))
            } else {
                Value::Array(shaped)
            }
        }
        Some(other) => {
            return Err(invalid(
                &content_at,
                format!(
                    "expected a string or an array of content parts, got {}",
                    describe(other)
                ),
            ))
        }
        None => return Err(invalid(&content_at, "required".into())),
    };
    Ok(json!({"role": role, "content": content}))
}

fn content_part(at: &str, part: &Value) -> Result<Value, Error> {
    let text = |key: &str| match part.get(key) {
        Some(Value::String(t)) => Ok(json!({"type": "text", "text": t})),
        _ => Err(invalid(
            &format!("{at}.{key}"),
            "required (a string)".into(),
        )),
    };
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => text("text"),
        Some("refusal") => text("refusal"),
        Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
            Some(url) => {
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|v| !v.is_null()) {
                    image["detail"] = detail.clone();
                }
                Ok(json!({"type": "image_url", "image_url": image}))
            }
            None => Err(invalid(
                &format!("{at}.image_url"),
                "required: a URL or a data URL (file ids need OpenAI's file store)".into(),
            )),
        },
        Some("input_file") => match part.get("file_data").and_then(Value::as_str) {
            Some(data) => Ok(json!({"type": "file", "file": {
                "filename": part.get("filename").cloned().unwrap_or(Value::Null),
                "file_data": data}})),
            None => Err(invalid(
                &format!("{at}.file_data"),
                "required: the file's contents (file ids and URLs need OpenAI's file store)".into(),
            )),
        },
        other => Err(invalid(
            &format!("{at}.type"),
            format!(
                "expected input_text, output_text, input_image or input_file, got {}",
                other.map_or("none".to_owned(), validate::quoted)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIMITS: Limits = Limits {
        max_tokens: Some(100),
    };

    fn parse(body: Value) -> Result<Request, Error> {
        request(body.to_string().as_bytes(), &LIMITS)
    }

    fn param_of(body: Value) -> String {
        match parse(body).unwrap_err() {
            Error::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_function_round_trip_becomes_chat_messages() {
        let r = parse(json!({"model": "m", "instructions": "be brief", "stream": true,
            "max_output_tokens": 50,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "use the tool"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}
            ]}))
        .unwrap();
        assert_eq!(
            r.messages[0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(r.messages[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(r.messages[2]["reasoning_content"], "use the tool");
        assert_eq!(r.messages[3]["tool_call_id"], "call_1");
        assert_eq!(r.messages[4]["content"][1]["type"], "image_url");
        assert_eq!(r.parameters["api"], "responses");
        assert_eq!(r.parameters["max_tokens"], 50);
        assert_eq!(r.parameters["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(
            r.parameters["tool_choice"]["function"]["name"],
            "get_weather"
        );
        assert!(r.stream && r.max_output_tokens == Some(50));
    }

    #[test]
    fn codex_namespaces_and_web_search_reach_the_agent_and_its_history_keeps_their_names() {
        let r = parse(json!({"model": "m", "stream": true, "store": false,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
            "tools": [
                {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
                {"type": "namespace", "name": "multi_agent_v1", "description": "d",
                 "tools": [{"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}}]},
                {"type": "web_search", "external_web_access": true}],
            "input": [
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
                {"type": "function_call", "call_id": "c1", "name": "spawn_agent",
                 "namespace": "multi_agent_v1", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "started"}]}))
        .unwrap();
        let tools = r.parameters["tools"].as_array().unwrap();
        assert_eq!(tools.len(), 2);
        assert_eq!(tools[1]["function"]["name"], "multi_agent_v1__spawn_agent");
        assert_eq!(
            r.parameters["hosted_tools"],
            json!([{"type": "web_search", "external_web_access": true}])
        );
        assert_eq!(
            r.messages[1]["tool_calls"][0]["function"]["name"],
            "multi_agent_v1__spawn_agent"
        );
        assert_eq!(
            r.tool_names.split("multi_agent_v1__spawn_agent"),
            Some(("multi_agent_v1", "spawn_agent"))
        );
    }

    #[test]
    fn codex_free_form_calls_and_their_outputs_are_a_tool_round_trip_for_the_agent() {
        let r = parse(json!({"model": "m", "stream": true,
            "input": [
                {"type": "additional_tools", "id": "at_1", "role": "developer", "tools": [
                    {"type": "namespace", "name": "functions", "description": "", "tools": [
                        {"type": "custom", "name": "exec", "description": "Runs JavaScript.",
                         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}]}]},
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "write it"}]},
                {"type": "custom_tool_call", "id": "ctc_1", "status": "completed", "call_id": "c1",
                 "name": "exec", "namespace": "functions", "input": "await tools.apply_patch(\"…\")"},
                {"type": "custom_tool_call_output", "id": "ctco_1", "call_id": "c1",
                 "output": [{"type": "input_text", "text": "Script completed"}, {"type": "input_text", "text": "{}"}]}]}))
        .unwrap();
        let roles: Vec<&str> = r
            .messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["developer", "user", "assistant", "tool"]);
        let call = &r.messages[2]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "functions__exec");
        assert_eq!(
            call["function"]["arguments"],
            json!({"input": "await tools.apply_patch(\"…\")"}).to_string()
        );
        assert_eq!(r.messages[3]["tool_call_id"], "c1");
        assert_eq!(r.messages[3]["content"], "Script completed{}");
        assert_eq!(
            r.parameters["tools"][0]["function"]["name"],
            "functions__exec"
        );
        assert!(r.tool_names.is_free_form("functions__exec"));
        assert_eq!(
            param_of(json!({"model": "m", "input": [
                {"type": "custom_tool_call", "call_id": "c", "name": "exec"}]})),
            "input[0].input"
        );
    }

    #[test]
    fn text_format_becomes_response_format() {
        let r = parse(json!({"model": "m", "input": "hi", "text": {"format": {
            "type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": true}}}))
        .unwrap();
        assert_eq!(r.parameters["response_format"]["type"], "json_schema");
        assert_eq!(
            r.parameters["response_format"]["json_schema"]["name"],
            "city"
        );
        assert_eq!(r.messages, vec![json!({"role": "user", "content": "hi"})]);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let base = |k: &str, v: Value| {
            let mut b = json!({"model": "m", "input": "hi"});
            b[k] = v;
            b
        };
        assert_eq!(
            param_of(base("previous_response_id", json!("resp_1"))),
            "previous_response_id"
        );
        assert_eq!(param_of(base("top_logprobs", json!(2))), "top_logprobs");
        assert_eq!(
            param_of(base("tools", json!([{"type": "file_search"}]))),
            "tools[0].type"
        );
        assert_eq!(param_of(base("background", json!(true))), "background");
        assert_eq!(
            param_of(base("include", json!(["message.output_text.logprobs"]))),
            "include"
        );
        assert_eq!(
            param_of(base(
                "input",
                json!([{"type": "item_reference", "id": "x"}])
            )),
            "input[0]"
        );
        assert_eq!(
            param_of(base("max_output_tokens", json!(101))),
            "max_output_tokens"
        );
        assert_eq!(param_of(json!({"model": "m"})), "input");
        assert!(parse(base("store", json!(true))).is_ok());
    }
}
