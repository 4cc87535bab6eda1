//! Token counts with the cl100k_base tokenizer (tiktoken-rs), for rate limits and for `usage`
//! when the agent reports none. Counts follow OpenAI's chat accounting: a few tokens of framing
//! per message, plus the text of every field. The agent's own tokenizer is unknown, so any real
//! tokenizer is an estimate; cl100k's tables take half the memory of o200k's (about 24 MB against
//! 46 MB) and load on first use (about 0.1 s), so an idle gateway stays small.
use serde_json::Value;
use tiktoken_rs::CoreBPE;

static BPE: std::sync::OnceLock<&'static CoreBPE> = std::sync::OnceLock::new();

fn bpe() -> &'static CoreBPE {
    BPE.get_or_init(tiktoken_rs::cl100k_base_singleton)
}

/// Loads the tokenizer on a blocking thread the first time, so no request stalls a worker thread
/// (and with it every other request on that thread) while the tables are built.
pub async fn ready() {
    if BPE.get().is_none() {
        let _ = tokio::task::spawn_blocking(bpe).await;
    }
}

pub fn count_text(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe().encode_ordinary(text).len() as u64
}

/// Every string inside `value` (keys of tool schemas included), counted as text.
fn count_value(value: &Value) -> u64 {
    match value {
        Value::String(s) => count_text(s),
        Value::Array(items) => items.iter().map(count_value).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| count_text(k) + count_value(v))
            .sum(),
        Value::Number(n) => count_text(&n.to_string()),
        Value::Bool(_) | Value::Null => 0,
    }
}

/// Prompt tokens of `messages` and `tools`.
pub fn count_prompt(messages: &[Value], tools: Option<&Value>) -> u64 {
    const PER_MESSAGE: u64 = 3;
    const REPLY_PRIMING: u64 = 3;
    let messages: u64 = messages
        .iter()
        .map(|m| {
            PER_MESSAGE
                + match m {
                    Value::Object(fields) => fields
                        .iter()
                        .filter(|(k, _)| k.as_str() != "role")
                        .map(|(_, v)| count_value(v))
                        .sum::<u64>(),
                    other => count_value(other),
                }
        })
        .sum();
    messages + REPLY_PRIMING + tools.map(count_value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_are_real_tokens() {
        assert_eq!(count_text("hello world"), 2);
        assert_eq!(count_text(""), 0);
        let one = count_prompt(&[json!({"role": "user", "content": "hello world"})], None);
        assert_eq!(one, 3 + 2 + 3);
        let parts = count_prompt(
            &[json!({"role": "user", "content": [{"type": "text", "text": "hello world"}]})],
            None,
        );
        assert!(parts > one, "content parts are counted too");
        let with_tools = count_prompt(
            &[json!({"role": "user", "content": "hello world"})],
            Some(&json!([{"type": "function", "function": {"name": "get_weather"}}])),
        );
        assert!(with_tools > one);
    }
}
