//! Token counts with the cl100k_base tokenizer (the `tiktoken` crate), for rate limits and for
//! `usage` when the agent reports none. Counts follow OpenAI's chat accounting: a few tokens of
//! framing per message, plus the text of every field. The agent's own tokenizer is unknown, so
//! any real tokenizer is an estimate. The tables load on first use (about 0.05 s) and keep about
//! 13 MB: every token's bytes once, in flat tables (BENCHMARKS.md, "Tokenizer and the audit
//! line"). Each thread that counts also keeps a cache of recent pieces of about 1.2 MB, freed
//! with the thread. Its counts are those of OpenAI's tiktoken: the tests compare them with
//! tiktoken-rs's, text by text.
use crate::generate::{on_pool_if_over, Prompt};
use serde_json::Value;
use tiktoken::CoreBpe;

/// Text up to this many bytes is counted where it is (microseconds); more goes to the blocking
/// pool, so that counting a prompt of up to `MAX_BODY_BYTES` (a tenth of a second or more) never
/// holds a worker thread and the other requests on it.
const INLINE_BYTES: usize = 16 * 1024;

/// The encoding every count uses.
const ENCODING: &str = "cl100k_base";

static BPE: std::sync::OnceLock<Option<&'static CoreBpe>> = std::sync::OnceLock::new();

fn bpe() -> Option<&'static CoreBpe> {
    *BPE.get_or_init(|| {
        let bpe = tiktoken::get_encoding(ENCODING);
        if bpe.is_none() {
            // Cannot happen with the crate's compiled-in tables; said once, then estimated.
            tracing::error!(
                encoding = ENCODING,
                "the tokenizer has no such encoding: token counts are estimated at four bytes a token"
            );
        }
        bpe
    })
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
    #[cfg(test)]
    counted_on::note();
    match bpe() {
        Some(bpe) => bpe.count(text) as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Which threads tokenized text, by name: lets unit tests see where counting ran.
#[cfg(test)]
pub(crate) mod counted_on {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, PoisonError};

    static BY_THREAD: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

    pub(super) fn note() {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        *BY_THREAD
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
    }

    /// How many texts threads named `name` have tokenized so far.
    pub(crate) fn texts(name: &str) -> u64 {
        BY_THREAD
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// Bytes of text inside `value`: what decides where it is counted.
pub(crate) fn text_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + text_bytes(v)).sum(),
        Value::Number(_) => 8,
        Value::Bool(_) | Value::Null => 0,
    }
}

/// Prompt tokens of a request for the agent: a chat's messages and tools, or a completion's
/// prompt, suffix and system text, whose size in bytes is `text_bytes` (`Prompt::text_bytes`).
/// Large prompts are counted on the blocking pool; the payload is handed back unchanged. Each
/// count is timed in `gateway_prompt_count_seconds`.
pub async fn count_payload(
    payload: Prompt,
    text_bytes: usize,
) -> Result<(Prompt, u64), crate::error::Error> {
    ready().await;
    let started = std::time::Instant::now();
    let counted = on_pool_if_over(
        text_bytes,
        INLINE_BYTES,
        "counting prompt tokens",
        move || {
            let n = payload_tokens(&payload);
            Ok((payload, n))
        },
    )
    .await;
    metrics::histogram!("gateway_prompt_count_seconds").record(started.elapsed().as_secs_f64());
    counted
}

fn payload_tokens(payload: &Prompt) -> u64 {
    match payload {
        Prompt::Chat {
            messages,
            parameters,
        } => count_prompt(messages, parameters.get("tools")),
        Prompt::Completion {
            prompt,
            suffix,
            system,
            ..
        } => [Some(prompt), suffix.as_ref(), system.as_ref()]
            .into_iter()
            .flatten()
            .map(|t| count_text(t))
            .sum(),
    }
}

/// Tokens of an answer's text, on the blocking pool when it is large.
pub async fn count_answer(text: String) -> u64 {
    if text.len() <= INLINE_BYTES {
        return count_text(&text);
    }
    ready().await;
    let counted = on_pool_if_over(
        text.len(),
        INLINE_BYTES,
        "counting answer tokens",
        move || Ok::<_, crate::error::Error>(count_text(&text)),
    );
    // A failure (a panic in the tokenizer) counts nothing rather than failing a finished answer.
    counted.await.unwrap_or(0)
}

/// What an image counts, whatever its bytes: about what Anthropic's models charge for the
/// largest image they take whole (1568 pixels on the long side), more than OpenAI's charge for a
/// high-detail 1024-pixel one. Counted as the text of its base64 data, one screenshot would look
/// like hundreds of thousands of tokens and no window would hold it.
pub const IMAGE_TOKENS: u64 = 1_600;

/// A file's data (a PDF, say) counts one token per this many bytes of its base64 text: about a
/// token per three bytes of the file, what its extracted text and pages cost a model.
const FILE_BASE64_BYTES_PER_TOKEN: u64 = 4;

/// Every string inside `value` (keys of tool schemas included), counted as text; image and file
/// content parts (chat's shape, which every API's messages are converted to) by what they cost
/// a model rather than by their base64 text.
fn count_value(value: &Value) -> u64 {
    match value {
        Value::String(s) => count_text(s),
        Value::Array(items) => items.iter().map(count_value).sum(),
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some("image_url") => IMAGE_TOKENS,
            Some("file") => map.get("file").map_or(0, count_file),
            _ => map
                .iter()
                .map(|(k, v)| count_text(k) + count_value(v))
                .sum(),
        },
        Value::Number(n) => count_text(&n.to_string()),
        Value::Bool(_) | Value::Null => 0,
    }
}

/// A chat `file` part's `{filename?, file_data}`: its name as text, its data by size.
fn count_file(file: &Value) -> u64 {
    let name = file.get("filename").map_or(0, count_value);
    let data = file
        .get("file_data")
        .and_then(Value::as_str)
        .map_or(0, |d| d.len() as u64 / FILE_BASE64_BYTES_PER_TOKEN);
    name + data
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

    #[test]
    fn images_and_files_count_what_they_cost_not_their_base64() {
        let screenshot = format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(100_000));
        let with_image = count_prompt(
            &[json!({"role": "user", "content": [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": {"url": screenshot}}]})],
            None,
        );
        let text_only = count_prompt(
            &[json!({"role": "user", "content": [{"type": "text", "text": "hello world"}]})],
            None,
        );
        assert_eq!(with_image, text_only + IMAGE_TOKENS);
        let pdf =
            json!({"type": "file", "file": {"filename": "a.pdf", "file_data": "A".repeat(40_000)}});
        let counted = count_value(&pdf);
        assert!((10_000..10_010).contains(&counted), "{counted}");
    }

    /// Text made of what trips a tokenizer's pre-split: runs of every kind of whitespace,
    /// apostrophe contractions, digits of several scripts, punctuation, letters with and
    /// without case, combining marks, emoji sequences, CJK and control characters.
    fn mixed_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        const POOL: &[char] = &[
            ' ', ' ', ' ', '\n', '\r', '\t', '\u{a0}', '\u{3000}', '\u{2028}', '\u{b}', 'a', 'b',
            'Z', 'é', 'ß', 'İ', 'ı', 'ǅ', '\'', '’', 's', 't', 'L', 'l', 'v', 'e', 'r', 'd', 'm',
            '0', '1', '9', '٣', '½', '²', 'Ⅷ', '𝟘', '!', '?', '.', '-', '_', '(', '{', '"', '#',
            '/', '\\', '<', '|', '`', '中', '文', '日', '語', '한', 'ก', 'ห', 'ि', '\u{301}',
            '\u{200d}', '😀', '👍', '🏽', '🇮', '🇩', '\u{fe0f}', '\u{0}', '\u{7f}', '\u{ad}',
        ];
        proptest::collection::vec(proptest::sample::select(POOL), 1..80)
            .prop_map(|chars| chars.into_iter().collect())
    }

    #[test]
    fn counts_match_tiktoken_on_mixed_text() {
        let reference = tiktoken_rs::cl100k_base_singleton();
        provider_shared::property::check("counts match tiktoken", mixed_text(), |text| {
            proptest::prop_assert_eq!(
                count_text(&text),
                reference.encode_ordinary(&text).len() as u64,
                "{:?}",
                text
            );
            Ok(())
        });
    }

    /// The repository's own documents and sources, whole and line by line: prose, tables, code
    /// and JSON, as prompts carry them.
    #[test]
    fn counts_match_tiktoken_on_the_repositorys_documents() {
        let reference = tiktoken_rs::cl100k_base_singleton();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = vec![root.join("README.md"), root.join("BENCHMARKS.md")];
        for dir in ["docs", "services/gateway/src"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    files.push(path);
                }
            }
        }
        let mut texts = 0;
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in std::iter::once(text.as_str()).chain(text.split_inclusive('\n')) {
                let expected = reference.encode_ordinary(piece).len() as u64;
                assert_eq!(count_text(piece), expected, "{}: {piece:?}", path.display());
                texts += 1;
            }
        }
        assert!(texts > 1_000, "only {texts} texts compared");
    }
}
