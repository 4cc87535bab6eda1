//! A Messages API request as the `chat` payload the agent knows: `system` and the content blocks
//! (`text`, `image`, `document`, `tool_use`, `tool_result`, `thinking`) become OpenAI chat
//! messages, tools and `tool_choice` their chat forms, `stop_sequences` becomes `stop`. What the
//! gateway cannot honour is refused here, naming the field.
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::validate::{self, describe, invalid, Limits};

#[derive(Debug)]
pub struct Request {
    /// The model name as sent (resolved by the preamble).
    pub model: String,
    pub messages: Vec<Value>,
    /// The chat parameters for the agent, with `"api": "messages"` (and the tools in chat's
    /// shape, which count_tokens counts from here).
    pub parameters: Map<String, Value>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
}

/// Which endpoint the body is for: `count_tokens` takes no `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Generate,
    CountTokens,
}

/// Fields the gateway converts; every other field passes to the agent as sent.
const CONSUMED: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "service_tier",
];

/// Parses and converts a body.
pub fn request(
    obj: &Map<String, Value>,
    limits: &Limits,
    purpose: Purpose,
) -> Result<Request, Error> {
    let model = validate::model_of(obj)?;
    for key in ["container", "mcp_servers"] {
        if obj.get(key).is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                key,
                "not available here: the agent has no hosted containers or MCP connectors".into(),
            ));
        }
    }
    let max_tokens = validate::token_cap(obj, "max_tokens", limits)?;
    if purpose == Purpose::Generate && max_tokens.is_none() {
        return Err(invalid(
            "max_tokens",
            "required: the most tokens the answer may take, a whole number".into(),
        ));
    }
    let stream = validate::bool_field(obj, "stream")?;
    validate::number_in(obj, "temperature", 0.0, 1.0)?;
    validate::number_in(obj, "top_p", 0.0, 1.0)?;
    validate::int_in(obj, "top_k", 0, u64::MAX)?;

    let mut messages = Vec::new();
    if let Some(system) = obj.get("system").filter(|v| !v.is_null()) {
        messages.push(json!({"role": "system", "content": system_text("system", system)?}));
    }
    let given = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "messages",
                "must contain at least one message".into(),
            ))
        }
        Some(v) => {
            return Err(invalid(
                "messages",
                format!(
                    "expected an array of messages, got {}",
                    validate::kind_of(v)
                ),
            ))
        }
        None => return Err(invalid("messages", "required".into())),
    };
    for (i, message) in given.iter().enumerate() {
        messages.extend(chat_messages(i, message)?);
    }

    let mut parameters = Map::new();
    parameters.insert("api".into(), json!("messages"));
    for (key, value) in obj {
        if !CONSUMED.contains(&key.as_str()) {
            parameters.insert(key.clone(), value.clone());
        }
    }
    parameters.insert("stream".into(), json!(stream));
    if let Some(n) = max_tokens {
        parameters.insert("max_tokens".into(), json!(n));
    }
    match obj.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            parameters.insert("stop".into(), Value::Array(items.clone()));
        }
        Some(v) => {
            return Err(invalid(
                "stop_sequences",
                format!("expected an array of strings, got {}", describe(v)),
            ))
        }
    }
    let (tools, hosted) = tools_of(obj)?;
    if let Some(tools) = tools {
        parameters.insert("tools".into(), tools);
    }
    if !hosted.is_empty() {
        // Tools the agent runs on its own side (docs/PROTOCOL.md): never its tool calls.
        parameters.insert("hosted_tools".into(), Value::Array(hosted));
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let (choice, parallel) = chat_tool_choice(choice)?;
        parameters.insert("tool_choice".into(), choice);
        if let Some(parallel) = parallel {
            parameters.insert("parallel_tool_calls".into(), json!(parallel));
        }
    }
    Ok(Request {
        model,
        messages,
        parameters,
        max_tokens,
        stream,
    })
}

/// `tools`: custom tools as chat function tools, and the server tools the agent can run on its
/// own side (web search: Claude Code's WebSearch asks for it) as sent.
fn tools_of(obj: &Map<String, Value>) -> Result<(Option<Value>, Vec<Value>), Error> {
    let mut hosted = Vec::new();
    let chat = validate::tools_as_chat(obj, |i, tool| {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("custom");
        if kind.starts_with("web_search_") {
            hosted.push(tool.clone());
            return Ok(None);
        }
        chat_tool(i, tool).map(Some)
    })?;
    Ok((chat, hosted))
}

/// A custom tool (`name`, `description`, `input_schema`) as a chat function tool.
fn chat_tool(i: usize, tool: &Value) -> Result<Value, Error> {
    let at = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        None | Some("custom") => {}
        Some(other) => {
            return Err(invalid(
                &format!("{at}.type"),
                format!("only custom tools (name, description, input_schema) and web search are supported here, got {}: the agent cannot run it, and nothing here runs it for the agent", validate::quoted(other)),
            ))
        }
    }
    let Some(name) = tool.get("name").and_then(Value::as_str) else {
        return Err(invalid(&format!("{at}.name"), "required (a string)".into()));
    };
    let Some(schema) = tool.get("input_schema").filter(|s| s.is_object()) else {
        return Err(invalid(
            &format!("{at}.input_schema"),
            "required (a JSON schema object)".into(),
        ));
    };
    let mut function = Map::new();
    function.insert("name".into(), json!(name));
    if let Some(d) = tool.get("description").filter(|v| !v.is_null()) {
        function.insert("description".into(), d.clone());
    }
    function.insert("parameters".into(), schema.clone());
    Ok(json!({"type": "function", "function": function}))
}

/// `tool_choice` as chat's, and `parallel_tool_calls` when parallel use is switched off.
fn chat_tool_choice(choice: &Value) -> Result<(Value, Option<bool>), Error> {
    let parallel = match choice.get("disable_parallel_tool_use") {
        Some(Value::Bool(true)) => Some(false),
        _ => None,
    };
    let chat = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => return Err(invalid("tool_choice.name", "required (a string)".into())),
        },
        _ => {
            return Err(invalid(
                "tool_choice",
                format!(
                    "expected {{\"type\": \"auto\" | \"any\" | \"tool\" | \"none\"}}, got {}",
                    describe(choice)
                ),
            ))
        }
    };
    Ok((chat, parallel))
}

/// A system prompt's text: a string, or text blocks joined (their `cache_control` and other
/// hints mean nothing here: every request is sent whole).
fn system_text(at: &str, system: &Value) -> Result<String, Error> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                match (block.get("type").and_then(Value::as_str), block.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(invalid(
                            &format!("{at}[{i}]"),
                            "expected a text block {\"type\": \"text\", \"text\": …}".into(),
                        ))
                    }
                }
            }
            Ok(text)
        }
        v => Err(invalid(
            at,
            format!("expected a string or text blocks, got {}", describe(v)),
        )),
    }
}

/// One Anthropic message as chat messages: a user turn's `tool_result` blocks become `tool`
/// messages (before the rest of the turn, as chat orders them); an assistant turn's `tool_use`
/// blocks become its `tool_calls` and its `thinking` its `reasoning_content`. A `system`
/// message (Claude Code sends its environment so for a model it does not know) stays a system
/// message, in place.
fn chat_messages(i: usize, message: &Value) -> Result<Vec<Value>, Error> {
    let at = format!("messages[{i}]");
    let content_at = format!("{at}.content");
    let role = match message.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        Some("system") => {
            let Some(content) = message.get("content") else {
                return Err(invalid(&content_at, "required".into()));
            };
            let text = system_text(&content_at, content)?;
            return Ok(vec![json!({"role": "system", "content": text})]);
        }
        Some(other) => {
            return Err(invalid(
                &format!("{at}.role"),
                format!(
                    "expected user, assistant or system, got {}",
                    validate::quoted(other)
                ),
            ))
        }
        None => return Err(invalid(&format!("{at}.role"), "required".into())),
    };
    let blocks = match message.get("content") {
        Some(Value::String(s)) => return Ok(vec![json!({"role": role, "content": s})]),
        Some(Value::Array(blocks)) => blocks,
        Some(v) => {
            return Err(invalid(
                &content_at,
                format!(
                    "expected a string or an array of content blocks, got {}",
                    describe(v)
                ),
            ))
        }
        None => return Err(invalid(&content_at, "required".into())),
    };
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut thinking = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let block_at = format!("{content_at}[{j}]");
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match (role, kind) {
            (_, "text") => {
                let t = string_of(&block_at, block, "text")?;
                text.push_str(t);
                parts.push(json!({"type": "text", "text": t}));
            }
            ("user", "image" | "document") => {
                let part = media_part(&block_at, block)?;
                parts.push(part);
            }
            ("user", "tool_result") => {
                let id = string_of(&block_at, block, "tool_use_id")?;
                let content = tool_result_content(&block_at, block)?;
                let mut tool = json!({"role": "tool", "tool_call_id": id, "content": content});
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    tool["is_error"] = json!(true);
                }
                out.push(tool);
            }
            ("assistant", "tool_use") => {
                let id = string_of(&block_at, block, "id")?;
                let name = string_of(&block_at, block, "name")?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                                  "function": {"name": name, "arguments": input.to_string()}}));
            }
            ("assistant", "thinking") => {
                thinking.push_str(string_of(&block_at, block, "thinking")?);
            }
            // Encrypted thinking means nothing to the agent.
            ("assistant", "redacted_thinking") => {}
            _ => {
                let accepts = if role == "user" {
                    "text, image, document or tool_result"
                } else {
                    "text, tool_use, thinking or redacted_thinking"
                };
                return Err(invalid(
                    &format!("{block_at}.type"),
                    format!(
                        "a {role} message takes {accepts} blocks, got {}",
                        validate::quoted(kind)
                    ),
                ));
            }
        }
    }
    if role == "user" {
        if !parts.is_empty() {
            out.push(json!({"role": "user", "content": parts}));
        }
    } else {
        let mut m = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            if text.is_empty() {
                m["content"] = Value::Null;
            }
            m["tool_calls"] = Value::Array(calls);
        }
        if !thinking.is_empty() {
            m["reasoning_content"] = json!(thinking);
        }
        out.push(m);
    }
    Ok(out)
}

fn string_of<'a>(at: &str, block: &'a Value, key: &str) -> Result<&'a str, Error> {
    block
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{at}.{key}"), "required (a string)".into()))
}

/// An `image` or `document` block as a chat content part.
fn media_part(at: &str, block: &Value) -> Result<Value, Error> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let image = block.get("type").and_then(Value::as_str) == Some("image");
    match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = string_of(&format!("{at}.source"), source, "media_type")?;
            let data = string_of(&format!("{at}.source"), source, "data")?;
            let url = format!("data:{media};base64,{data}");
            Ok(if image {
                json!({"type": "image_url", "image_url": {"url": url}})
            } else {
                json!({"type": "file", "file": {"file_data": url}})
            })
        }
        Some("url") if image => {
            let url = string_of(&format!("{at}.source"), source, "url")?;
            Ok(json!({"type": "image_url", "image_url": {"url": url}}))
        }
        Some("text") if !image => {
            let text = string_of(&format!("{at}.source"), source, "data")?;
            Ok(json!({"type": "text", "text": text}))
        }
        _ => Err(invalid(
            &format!("{at}.source.type"),
            if image {
                "expected base64 or url (file ids need Anthropic's file store)".into()
            } else {
                "expected base64 or text (file ids and URLs need Anthropic's servers)".into()
            },
        )),
    }
}

/// A `tool_result`'s content: a string, or blocks (text joined; images kept as parts).
fn tool_result_content(at: &str, block: &Value) -> Result<Value, Error> {
    match block.get("content") {
        None | Some(Value::Null) => Ok(json!("")),
        Some(Value::String(s)) => Ok(json!(s)),
        Some(Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                let item_at = format!("{at}.content[{k}]");
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = string_of(&item_at, item, "text")?;
                        parts.push(json!({"type": "text", "text": t}));
                    }
                    Some("image" | "document") => parts.push(media_part(&item_at, item)?),
                    other => {
                        return Err(invalid(
                            &format!("{item_at}.type"),
                            format!(
                                "expected text, image or document, got {}",
                                other.map_or("none".to_owned(), validate::quoted)
                            ),
                        ))
                    }
                }
            }
            if parts.iter().all(|p| p["type"] == "text") {
                let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
                Ok(json!(text))
            } else {
                Ok(Value::Array(parts))
            }
        }
        Some(v) => Err(invalid(
            &format!("{at}.content"),
            format!("expected a string or blocks, got {}", describe(v)),
        )),
    }
}

/// A tool call's arguments (a JSON text) as Anthropic's `input` object.
pub fn input_of(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        Ok(other) => json!({"value": other}),
        Err(_) if arguments.trim().is_empty() => json!({}),
        Err(_) => json!({"arguments": arguments}),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIMITS: Limits = Limits {
        max_tokens: Some(100),
    };

    fn parse(body: Value, purpose: Purpose) -> Result<Request, Error> {
        request(body.as_object().unwrap(), &LIMITS, purpose)
    }

    fn param_of(body: Value) -> String {
        match parse(body, Purpose::Generate).unwrap_err() {
            Error::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_tool_use_round_trip_becomes_chat_messages() {
        let r = parse(
            json!({"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "be brief"}],
            "stop_sequences": ["END"],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "use the tool", "signature": "x"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "and tomorrow?"}]}
            ]}),
            Purpose::Generate,
        )
        .unwrap();
        assert_eq!(
            r.messages[0],
            json!({"role": "system", "content": "be brief"})
        );
        let assistant = &r.messages[2];
        assert_eq!(assistant["content"], "Checking.");
        assert_eq!(assistant["reasoning_content"], "use the tool");
        assert_eq!(
            assistant["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(
            r.messages[3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "21C"})
        );
        assert_eq!(r.messages[4]["content"][0]["text"], "and tomorrow?");
        assert_eq!(r.parameters["api"], "messages");
        assert_eq!(r.parameters["stop"], json!(["END"]));
        assert_eq!(r.parameters["tool_choice"], "required");
        assert_eq!(r.parameters["parallel_tool_calls"], false);
        assert_eq!(
            r.parameters["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let base = |k: &str, v: Value| {
            let mut b = json!({"model": "m", "max_tokens": 5,
                               "messages": [{"role": "user", "content": "hi"}]});
            b[k] = v;
            b
        };
        assert_eq!(
            param_of(base(
                "tools",
                json!([{"type": "code_execution_20250522", "name": "code_execution"}])
            )),
            "tools[0].type"
        );
        // Web search the agent runs itself: passed on as sent, not as a tool it calls back.
        let searching = parse(
            base(
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]),
            ),
            Purpose::Generate,
        )
        .unwrap();
        assert_eq!(searching.parameters["hosted_tools"][0]["max_uses"], 5);
        assert!(searching.parameters.get("tools").is_none());
        assert_eq!(param_of(base("max_tokens", Value::Null)), "max_tokens");
        assert_eq!(param_of(base("temperature", json!(1.5))), "temperature");
        assert_eq!(param_of(base("mcp_servers", json!([{}]))), "mcp_servers");
        assert_eq!(
            param_of(base(
                "messages",
                json!([{"role": "user", "content": [{"type": "tool_use"}]}])
            )),
            "messages[0].content[0].type"
        );
        let count = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            Purpose::CountTokens,
        );
        assert!(count.is_ok(), "count_tokens takes no max_tokens");
    }

    #[test]
    fn system_messages_anywhere_stay_in_place_and_hints_are_accepted() {
        // Claude Code 2.1 for a model it does not know: its environment as a system message.
        let r = parse(
            json!({"model": "m", "max_tokens": 32, "system": [
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "adaptive"}, "context_management": {"edits": []},
            "output_config": {"effort": "high"}, "metadata": {"user_id": "u"},
            "tools": [{"name": "Bash", "input_schema": {"type": "object"},
                       "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
                {"role": "system", "content": "<env>Working directory: /w</env>"},
                {"role": "assistant", "content": "ok"},
                {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "user", "content": "go"}
            ]}),
            Purpose::Generate,
        )
        .unwrap();
        let roles: Vec<&str> = r
            .messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles,
            ["system", "user", "system", "assistant", "system", "user"]
        );
        assert_eq!(r.messages[2]["content"], "<env>Working directory: /w</env>");
        assert_eq!(r.messages[4]["content"], "ab");
        assert_eq!(
            r.messages[1]["content"],
            json!([{"type": "text", "text": "hi"}])
        );
        assert_eq!(r.parameters["thinking"], json!({"type": "adaptive"}));
        assert!(r.parameters["tools"][0]["function"]
            .get("cache_control")
            .is_none());
        assert_eq!(
            param_of(json!({"model": "m", "max_tokens": 5, "messages": [
                {"role": "system", "content": [{"type": "image"}]}]})),
            "messages[0].content[0]"
        );
    }

    #[test]
    fn arguments_back_to_input_objects() {
        assert_eq!(input_of("{\"a\":1}"), json!({"a": 1}));
        assert_eq!(input_of(""), json!({}));
        assert_eq!(input_of("[1]"), json!({"value": [1]}));
    }
}
