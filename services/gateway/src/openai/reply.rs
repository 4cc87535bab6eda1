//! The answer of both OpenAI generating routes, streamed or whole: `chat.completion(.chunk)`
//! objects for chat, `text_completion` objects for completions. Each streamed chunk is a
//! struct borrowing the piece's delta, serialised once into its SSE frame.
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use provider_shared::bridge::{Delta, Usage};
use serde::Serialize;
use serde_json::Value;

use super::{done_frame, error_frame, frame, sse_response, Headers};
use crate::error::Error;
use crate::generate::{drive, Piece, Running};
use crate::state::Shared;

/// Which of the two APIs answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completion,
}

pub struct Reply {
    pub api: Api,
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// The fields every object of an answer carries, around its `choices`.
#[derive(Serialize)]
struct Envelope<'a, C: Serialize> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: (),
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Usage>,
}

#[derive(Serialize)]
struct DeltaChoice<'a> {
    index: u32,
    delta: &'a Delta,
    logprobs: (),
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: (),
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageChoice {
    index: u32,
    message: Value,
    logprobs: (),
    finish_reason: String,
}

impl Reply {
    fn envelope<'a, C: Serialize>(
        &'a self,
        object: &'static str,
        choices: C,
        usage: Option<&'a Usage>,
    ) -> Envelope<'a, C> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            system_fingerprint: (),
            choices,
            usage,
        }
    }

    /// The SSE frame carrying `delta` (chat) or its text (completions); none when a completion
    /// delta has no text.
    fn chunk(&self, delta: &Delta, finish_reason: Option<&str>) -> Option<bytes::Bytes> {
        match self.api {
            Api::Chat => Some(frame(
                None,
                &self.envelope(
                    "chat.completion.chunk",
                    [DeltaChoice {
                        index: 0,
                        delta,
                        logprobs: (),
                        finish_reason,
                    }],
                    None,
                ),
            )),
            Api::Completion => {
                let text = delta.content.as_deref()?;
                Some(self.text_chunk(text, finish_reason))
            }
        }
    }

    fn text_chunk(&self, text: &str, finish_reason: Option<&str>) -> bytes::Bytes {
        frame(
            None,
            &self.envelope(
                "text_completion",
                [TextChoice {
                    text,
                    index: 0,
                    logprobs: (),
                    finish_reason,
                }],
                None,
            ),
        )
    }

    fn chunk_object(&self) -> &'static str {
        match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completion => "text_completion",
        }
    }

    /// The closing chunk with `finish_reason`.
    fn finish(&self, finish_reason: &str) -> bytes::Bytes {
        match self.api {
            Api::Chat => self
                .chunk(&Delta::default(), Some(finish_reason))
                .unwrap_or_default(),
            Api::Completion => self.text_chunk("", Some(finish_reason)),
        }
    }

    fn usage_chunk(&self, usage: &Usage) -> bytes::Bytes {
        let none: [(); 0] = [];
        frame(None, &self.envelope(self.chunk_object(), none, Some(usage)))
    }
}

/// Headers at once (and, for chat, the role chunk), keep-alive comments while the agent thinks,
/// `choices` in every chunk, one chunk with `finish_reason`, the usage chunk when asked, errors
/// as `data: {"error": …}`, then `[DONE]`.
pub fn stream(state: &Shared, running: Running, reply: Reply, include_usage: bool) -> Response {
    let headers = Headers::of(state, &running);
    let mut pieces = running.pieces;
    let frames = async_stream::stream! {
        if reply.api == Api::Chat {
            let role = Delta {
                role: Some("assistant".to_owned()),
                content: Some(String::new()),
                ..Delta::default()
            };
            if let Some(first) = reply.chunk(&role, None) {
                yield first;
            }
        }
        while let Some(piece) = pieces.next().await {
            match piece {
                Piece::Delta(delta) => {
                    if let Some(chunk) = reply.chunk(&delta, None) {
                        yield chunk;
                    }
                }
                Piece::Done { finish_reason, usage, .. } => {
                    yield reply.finish(&finish_reason);
                    if include_usage {
                        yield reply.usage_chunk(&usage);
                    }
                }
                Piece::Failed(err) => yield error_frame(&err),
            }
        }
        yield done_frame();
    };
    sse_response(frames, state.settings.keepalive_interval, &headers)
}

/// One `chat.completion` or `text_completion` object with `usage`.
pub async fn whole(state: &Shared, running: Running, reply: Reply) -> Result<Response, Error> {
    let headers = Headers::of(state, &running);
    let (answer, finish_reason, usage, overhead) = drive::finish(running.pieces).await?;
    let headers = headers.with_overhead(overhead);
    let mut response = match reply.api {
        Api::Chat => {
            let mut message = answer.message();
            message.insert("refusal".into(), Value::Null);
            Json(reply.envelope(
                "chat.completion",
                [MessageChoice {
                    index: 0,
                    message: Value::Object(message),
                    logprobs: (),
                    finish_reason,
                }],
                Some(&usage),
            ))
            .into_response()
        }
        Api::Completion => Json(reply.envelope(
            "text_completion",
            [TextChoice {
                text: &answer.content,
                index: 0,
                logprobs: (),
                finish_reason: Some(finish_reason.as_str()),
            }],
            Some(&usage),
        ))
        .into_response(),
    };
    headers.apply(response.headers_mut());
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use provider_shared::bridge::{FunctionDelta, ToolCallDelta};
    use serde_json::json;

    fn reply(api: Api) -> Reply {
        Reply {
            api,
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
        }
    }

    fn data(bytes: &[u8]) -> Value {
        let text = std::str::from_utf8(bytes).unwrap();
        let body = text.strip_prefix("data: ").unwrap();
        assert!(body.ends_with("\n\n"));
        serde_json::from_str(body.trim_end()).unwrap()
    }

    #[test]
    fn chat_chunks_have_the_documented_shape() {
        let r = reply(Api::Chat);
        let delta = Delta {
            content: Some("Hi".into()),
            tool_calls: Some(vec![ToolCallDelta {
                index: Some(0),
                function: Some(FunctionDelta {
                    name: None,
                    arguments: Some("{}".into()),
                }),
                ..ToolCallDelta::default()
            }]),
            ..Delta::default()
        };
        assert_eq!(
            data(&r.chunk(&delta, None).unwrap()),
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
                "model": "m", "system_fingerprint": null, "choices": [{"index": 0,
                "delta": {"content": "Hi", "tool_calls": [{"index": 0,
                "function": {"arguments": "{}"}}]}, "logprobs": null, "finish_reason": null}]})
        );
        let end = data(&r.finish("stop"));
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert_eq!(end["choices"][0]["finish_reason"], "stop");
        let usage = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        };
        let u = data(&r.usage_chunk(&usage));
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 3);
        assert_eq!(u["object"], "chat.completion.chunk");
    }

    #[test]
    fn completion_chunks_carry_text_only() {
        let r = reply(Api::Completion);
        let text = Delta {
            content: Some("fn".into()),
            ..Delta::default()
        };
        let v = data(&r.chunk(&text, None).unwrap());
        assert_eq!(
            v["choices"],
            json!([{"text": "fn", "index": 0, "logprobs": null, "finish_reason": null}])
        );
        assert_eq!(v["object"], "text_completion");
        let thinking = Delta {
            reasoning_content: Some("hm".into()),
            ..Delta::default()
        };
        assert!(r.chunk(&thinking, None).is_none());
        assert_eq!(data(&r.finish("length"))["choices"][0]["text"], "");
    }
}
