//! Ollama chat messages to the OpenAI shape the agent receives: images become content parts,
//! tool calls get ids and string arguments, tool results get the id of the call they answer.
use serde_json::{json, Map, Value};

/// The media type of a base64 image, from its first bytes.
fn media_type(b64: &str) -> &'static str {
    if b64.starts_with("/9j/") {
        "image/jpeg"
    } else if b64.starts_with("R0lGOD") {
        "image/gif"
    } else if b64.starts_with("UklGR") {
        "image/webp"
    } else {
        "image/png"
    }
}

/// Converts `messages` that passed `validate.rs` `messages` with the Ollama dialect. What that
/// refuses cannot occur here; anything else of a message is left out.
pub fn messages(messages: &[Value]) -> Vec<Value> {
    let mut out = Vec::with_capacity(messages.len());
    // Ids of the last assistant turn's calls not yet answered, with their names.
    let mut open_calls: Vec<(String, String)> = Vec::new();
    let mut next_id = 0usize;
    for m in messages.iter().filter_map(Value::as_object) {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
        let mut msg = Map::new();
        msg.insert("role".into(), json!(role));
        let images: Vec<&str> = m
            .get("images")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if images.is_empty() {
            msg.insert("content".into(), json!(content));
        } else {
            let mut parts = vec![json!({"type": "text", "text": content})];
            for b64 in images {
                parts.push(json!({"type": "image_url",
                    "image_url": {"url": format!("data:{};base64,{b64}", media_type(b64))}}));
            }
            msg.insert("content".into(), Value::Array(parts));
        }
        if let Some(thinking) = m
            .get("thinking")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            msg.insert("reasoning_content".into(), json!(thinking));
        }
        match role {
            "assistant" => {
                open_calls.clear();
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    let mut shaped = Vec::with_capacity(calls.len());
                    for call in calls {
                        let name = call
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        let arguments = match call.pointer("/function/arguments") {
                            None | Some(Value::Null) => "{}".to_owned(),
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                        };
                        let id = call
                            .get("id")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| {
                                next_id += 1;
                                format!("call_{next_id}")
                            });
                        open_calls.push((id.clone(), name.to_owned()));
                        shaped.push(json!({"id": id, "type": "function",
                            "function": {"name": name, "arguments": arguments}}));
                    }
                    if content.is_empty() {
                        msg.insert("content".into(), Value::Null);
                    }
                    msg.insert("tool_calls".into(), Value::Array(shaped));
                }
            }
            "tool" => {
                let name = m.get("tool_name").and_then(Value::as_str);
                let pos = name
                    .and_then(|n| open_calls.iter().position(|(_, c)| c == n))
                    .or(if open_calls.is_empty() { None } else { Some(0) });
                let id = match pos {
                    Some(p) => open_calls.remove(p).0,
                    None => {
                        next_id += 1;
                        format!("call_{next_id}")
                    }
                };
                msg.insert("tool_call_id".into(), json!(id));
                if let Some(name) = name {
                    msg.insert("name".into(), json!(name));
                }
            }
            _ => {}
        }
        out.push(Value::Object(msg));
    }
    out
}

/// An OpenAI tool call (string arguments) in Ollama's shape (arguments as a JSON object).
pub fn tool_call_out(name: &str, arguments: &str) -> Value {
    let arguments = match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        // Not an object: give it to the client as the one field it has.
        Ok(other) => json!({"value": other}),
        Err(_) if arguments.trim().is_empty() => json!({}),
        Err(_) => json!({"arguments": arguments}),
    };
    json!({"function": {"name": name, "arguments": arguments}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_round_trip_gets_ids_and_string_arguments() {
        let out = messages(&[
            json!({"role": "user", "content": "weather?", "images": ["iVBORw0KGgo="]}),
            json!({"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}),
            json!({"role": "tool", "content": "21C", "tool_name": "get_weather"}),
        ]);
        assert_eq!(
            out[0]["content"][1]["image_url"]["url"],
            "data:image/png;base64,iVBORw0KGgo="
        );
        let call = &out[1]["tool_calls"][0];
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(out[1]["content"], Value::Null);
        assert_eq!(out[2]["tool_call_id"], call["id"]);
    }

    #[test]
    fn arguments_back_to_objects() {
        assert_eq!(
            tool_call_out("f", "{\"a\":1}")["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(tool_call_out("f", "")["function"]["arguments"], json!({}));
    }
}
