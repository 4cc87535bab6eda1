//! A chat's message list and its `tools`, in every chat-shaped API.
use serde_json::{Map, Value};

use crate::error::Error;

use super::{describe, invalid, kind_of, Dialect};

/// Checks each message of a chat: an object with a known role, content of the accepted shape,
/// a tool result naming its call where the API asks for it, and tool calls as an array of named
/// functions. The messages are not changed, and their size is the context window's question.
pub fn messages(dialect: &Dialect, messages: &[Value]) -> Result<(), Error> {
    for (i, message) in messages.iter().enumerate() {
        check_message(dialect, i, message)?;
    }
    Ok(())
}

fn check_message(dialect: &Dialect, i: usize, message: &Value) -> Result<(), Error> {
    let at = format!("messages[{i}]");
    let Value::Object(m) = message else {
        return Err(invalid(
            &at,
            format!("expected an object, got {}", kind_of(message)),
        ));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) if dialect.roles.contains(&r.as_str()) => r.as_str(),
        Some(v) => {
            return Err(invalid(
                &format!("{at}.role"),
                format!(
                    "expected one of {}, got {}",
                    dialect.roles.join(", "),
                    describe(v)
                ),
            ))
        }
        None => return Err(invalid(&format!("{at}.role"), "required".into())),
    };
    let content_at = format!("{at}.content");
    match m.get("content") {
        Some(Value::String(_)) => {}
        Some(Value::Array(parts)) if dialect.content_parts => {
            for (j, part) in parts.iter().enumerate() {
                if part.get("type").and_then(Value::as_str).is_none() {
                    return Err(invalid(
                        &format!("{content_at}[{j}]"),
                        "expected a content part with a \"type\"".into(),
                    ));
                }
            }
        }
        None | Some(Value::Null) if dialect.content_optional || role == "assistant" => {}
        None | Some(Value::Null) => {
            return Err(invalid(&content_at, "required for this role".into()))
        }
        Some(v) => {
            let shapes = if dialect.content_parts {
                "a string or an array of content parts"
            } else {
                "a string"
            };
            return Err(invalid(
                &content_at,
                format!("expected {shapes}, got {}", describe(v)),
            ));
        }
    };
    if dialect.images {
        match m.get("images") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (j, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        return Err(invalid(
                            &format!("{at}.images[{j}]"),
                            format!("expected a base64 string, got {}", describe(item)),
                        ));
                    }
                }
            }
            Some(v) => {
                return Err(invalid(
                    &format!("{at}.images"),
                    format!("expected an array of base64 strings, got {}", describe(v)),
                ))
            }
        }
    }
    if dialect.tool_call_id
        && role == "tool"
        && !m.get("tool_call_id").is_some_and(Value::is_string)
    {
        return Err(invalid(
            &format!("{at}.tool_call_id"),
            "required (a string) for tool messages".into(),
        ));
    }
    if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
        let Value::Array(calls) = calls else {
            return Err(invalid(
                &format!("{at}.tool_calls"),
                "expected an array".into(),
            ));
        };
        for (j, call) in calls.iter().enumerate() {
            if !call.pointer("/function/name").is_some_and(Value::is_string) {
                return Err(invalid(
                    &format!("{at}.tool_calls[{j}].function.name"),
                    "required (a string)".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Checks `tools`: an array of `{"type": "function", "function": {"name": …}}`, the shape both
/// OpenAI's and Ollama's chats use; true when given (false when absent or null). The tools stay
/// where they are: nothing is copied to check them.
pub fn tools(obj: &Map<String, Value>) -> Result<bool, Error> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                let name = tool.pointer("/function/name").and_then(Value::as_str);
                if tool.get("type").and_then(Value::as_str) != Some("function") || name.is_none() {
                    return Err(invalid(
                        &format!("tools[{i}]"),
                        "expected {\"type\": \"function\", \"function\": {\"name\": …}}".into(),
                    ));
                }
            }
            Ok(true)
        }
        Some(v) => Err(invalid(
            "tools",
            format!("expected an array, got {}", describe(v)),
        )),
    }
}

/// `tools` of another API in chat's shape, each converted by `chat_tool` (given its index; `None`
/// leaves it out of the chat tools): `None` when absent, null or nothing is left; a 400 naming
/// `tools` when it is not an array.
pub fn tools_as_chat(
    obj: &Map<String, Value>,
    mut chat_tool: impl FnMut(usize, &Value) -> Result<Option<Value>, Error>,
) -> Result<Option<Value>, Error> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            let mut chat = Vec::with_capacity(items.len());
            for (i, tool) in items.iter().enumerate() {
                chat.extend(chat_tool(i, tool)?);
            }
            Ok((!chat.is_empty()).then_some(Value::Array(chat)))
        }
        Some(v) => Err(invalid(
            "tools",
            format!("expected an array, got {}", describe(v)),
        )),
    }
}
