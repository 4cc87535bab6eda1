//! Request validation of every generating API the gateway serves, and the Responses and
//! Messages converters. Whatever a body is, validation answers with an error that says what is
//! wrong, or with a job for the agent that reaches it intact on both links.
use gateway::anthropic::convert::Purpose;
use gateway::error::Error;
use gateway::generate::{Ask, Job};
use gateway::validate::{self, Limits};
use provider_shared::bridge::{BridgeFrame, ModelInvoke, ModelMeta};
use serde_json::{Map, Value};

const MODEL: &str = "cursor-agent-local";

/// With `MAX_TOKENS_LIMIT` unset (the default) for inputs of even length, set for the others.
fn limits(data: &[u8]) -> Limits {
    Limits {
        max_tokens: (data.len() % 2 == 1).then_some(8192),
    }
}

/// A refusal must say what is wrong.
fn check_refusal(err: &Error) {
    assert!(
        !err.to_string().trim().is_empty(),
        "an empty error: {err:?}"
    );
    if let Error::InvalidRequest {
        param: Some(param), ..
    } = err
    {
        assert!(!param.is_empty(), "an empty param: {err:?}");
    }
}

/// The job as the agent gets it: a `model_invoke` on the WebSocket and an `invoke` on the Unix
/// socket, each read back to the same request.
fn check_job(job: Job) {
    let invoke = ModelInvoke {
        id: "chatcmpl-fuzz".into(),
        session_id: None,
        model_meta: ModelMeta {
            provider: "cursor".into(),
            label: job.ask.model,
            requested_scopes: job.scopes,
        },
        payload: match job.prompt.encode() {
            Ok(encoded) => encoded.payload,
            Err(err) => panic!("an accepted request does not encode: {err}"),
        },
    };
    let frame = BridgeFrame::ModelInvoke(invoke.clone());
    let text = frame.to_text();
    assert_eq!(BridgeFrame::parse(&text), Ok(frame), "{text}");
    crate::wire::ipc_codec(&ipc_bytes(invoke));
}

/// One length-delimited `invoke` frame, behind a piece length of 1 byte.
fn ipc_bytes(invoke: ModelInvoke) -> Vec<u8> {
    use tokio_util::codec::Encoder;
    let mut buf = bytes::BytesMut::new();
    let frame = provider_shared::ipc::IpcFrame::Invoke(invoke);
    if let Err(err) = provider_shared::ipc::IpcCodec::default().encode(frame, &mut buf) {
        panic!("an accepted request does not encode for the Unix socket: {err}");
    }
    [&[0u8][..], &buf].concat()
}

fn check(result: Result<Option<Job>, Error>) {
    match result {
        Ok(Some(job)) => check_job(job),
        Ok(None) => {}
        Err(err) => check_refusal(&err),
    }
}

/// `/v1/chat/completions`: besides the above, a request that passes passes again as it would be
/// sent on (its model, messages and parameters), unchanged.
pub fn chat(data: &[u8]) {
    let limits = limits(data);
    let request = match validate::chat(data, &limits) {
        Ok(request) => request,
        Err(err) => return check_refusal(&err),
    };
    let mut again = request.parameters.clone();
    again.insert("model".into(), Value::String(request.model.clone()));
    again.insert("messages".into(), Value::Array(request.messages.clone()));
    let body = Value::Object(again).to_string();
    match validate::chat(body.as_bytes(), &limits) {
        Ok(second) => {
            assert_eq!(second.model, request.model, "{body}");
            assert_eq!(second.messages, request.messages, "{body}");
            assert_eq!(second.parameters, request.parameters, "{body}");
        }
        Err(err) => panic!("accepted once, refused as passed on: {err}: {body}"),
    }
    let ask = Ask {
        model: request.model,
        max_tokens: request.max_tokens,
        stream: request.stream,
    };
    check(Ok(Some(Job::chat(
        ask,
        request.messages,
        request.parameters,
        "chatcmpl-",
    ))));
}

/// `/v1/completions`.
pub fn completions(data: &[u8]) {
    check(validate::completion(data, &limits(data)).map(|request| {
        let ask = Ask {
            model: request.model,
            max_tokens: request.max_tokens,
            stream: request.stream,
        };
        Some(Job::completion(
            ask,
            request.prompt,
            request.suffix,
            None,
            request.parameters,
            "cmpl-",
        ))
    }));
}

/// `/v1/responses`: validation and conversion to a chat are one step.
pub fn responses(data: &[u8]) {
    check(
        gateway::responses::convert::request(data, &limits(data)).map(|request| {
            let ask = Ask {
                model: request.model,
                max_tokens: request.max_output_tokens,
                stream: request.stream,
            };
            Some(Job::chat(
                ask,
                request.messages,
                request.parameters,
                "resp_",
            ))
        }),
    );
}

/// `/v1/messages`, and `/v1/messages/count_tokens` (which takes no `max_tokens`).
pub fn messages(data: &[u8]) {
    let obj = match validate::object_of(data) {
        Ok(obj) => obj,
        Err(err) => return check_refusal(&err),
    };
    for purpose in [Purpose::Generate, Purpose::CountTokens] {
        check(
            gateway::anthropic::convert::request(&obj, &limits(data), purpose).map(|request| {
                let ask = Ask {
                    model: request.model,
                    max_tokens: request.max_tokens,
                    stream: request.stream,
                };
                Some(Job::chat(ask, request.messages, request.parameters, "msg_"))
            }),
        );
    }
}

/// The body as Ollama's handlers take it: a JSON object (anything else is refused before).
fn ollama_object(data: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(data) {
        Ok(Value::Object(obj)) => Some(obj),
        _ => None,
    }
}

/// `/api/chat`.
pub fn ollama_chat(data: &[u8]) {
    if let Some(mut obj) = ollama_object(data) {
        check(gateway::ollama::chat::job(MODEL, &mut obj, &limits(data)));
    }
}

/// `/api/generate`.
pub fn ollama_generate(data: &[u8]) {
    if let Some(obj) = ollama_object(data) {
        check(gateway::ollama::generate::job(MODEL, &obj, &limits(data)).map_err(|e| *e.0));
    }
}
