//! The rules, each through OpenAI's and Ollama's dialects.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::error::Error;
use serde_json::json;
use serde_json::Value;

/// With `MAX_TOKENS_LIMIT=8192` set.
const LIMITS: Limits = Limits {
    max_tokens: Some(8192),
};

fn check(body: Value) -> Result<ChatRequest, Error> {
    chat(body.to_string().as_bytes(), &LIMITS)
}

fn param_of(body: Value) -> String {
    match check(body).unwrap_err() {
        Error::InvalidRequest { param, .. } => param.unwrap_or_default(),
        other => panic!("unexpected {other:?}"),
    }
}

fn base() -> Value {
    json!({"model": "cursor-agent-local", "messages": [{"role": "user", "content": "hi"}]})
}

fn with(key: &str, value: Value) -> Value {
    let mut b = base();
    b[key] = value;
    b
}

#[test]
fn void_minimal_body_passes_and_unknown_fields_pass_through() {
    let req = check(with("stream", json!(true))).unwrap();
    assert!(req.stream && !req.include_usage && req.max_tokens.is_none());
    let req = check(with("x_vendor", json!({"a": 1}))).unwrap();
    assert_eq!(req.parameters["x_vendor"], json!({"a": 1}));
    assert!(!req.parameters.contains_key("model"));
}

#[test]
fn each_rule_names_its_field() {
    assert_eq!(param_of(with("model", json!(4))), "model");
    assert_eq!(check(with("model", json!("gpt-4"))).unwrap().model, "gpt-4");
    assert_eq!(param_of(with("messages", json!([]))), "messages");
    assert_eq!(param_of(with("max_tokens", json!(0))), "max_tokens");
    assert_eq!(param_of(with("max_tokens", json!(8193))), "max_tokens");
    assert_eq!(
        param_of(with("max_completion_tokens", json!(9000))),
        "max_completion_tokens"
    );
    assert_eq!(param_of(with("temperature", json!(2.5))), "temperature");
    assert_eq!(param_of(with("top_p", json!(-0.1))), "top_p");
    assert_eq!(
        param_of(with("presence_penalty", json!(3))),
        "presence_penalty"
    );
    assert_eq!(
        param_of(with("frequency_penalty", json!(-2.1))),
        "frequency_penalty"
    );
    assert_eq!(param_of(with("n", json!(2))), "n");
    assert_eq!(
        param_of(with("stream_options", json!({"include_usage": true}))),
        "stream_options"
    );
    assert_eq!(
        param_of(with("messages", json!([{"role": "robot", "content": "x"}]))),
        "messages[0].role"
    );
    assert_eq!(
        param_of(with("messages", json!([{"role": "tool", "content": "x"}]))),
        "messages[0].tool_call_id"
    );
    assert_eq!(
        param_of(with("tools", json!([{"type": "function"}]))),
        "tools[0]"
    );
}

#[test]
fn tool_history_and_content_parts_are_accepted() {
    let req = check(with(
        "messages",
        json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
        ]),
    ))
    .unwrap();
    assert_eq!(req.messages.len(), 4);
    assert_eq!(req.messages[2]["tool_calls"][0]["id"], "c1");
}

#[test]
fn a_message_of_any_size_passes_unaltered() {
    // aider puts whole files in one message; the context window decides, in tokens.
    let text = "é".repeat(200_000);
    let req = check(with("messages", json!([{"role": "user", "content": text}]))).unwrap();
    assert_eq!(req.messages[0]["content"], json!(text));
}

#[test]
fn without_max_tokens_limit_any_token_cap_passes_to_the_context_check() {
    let open = Limits { max_tokens: None };
    for n in [1, 32_000, 300_000] {
        let body = with("max_tokens", json!(n)).to_string();
        assert_eq!(chat(body.as_bytes(), &open).unwrap().max_tokens, Some(n));
    }
    let err = chat(with("max_tokens", json!(0)).to_string().as_bytes(), &open).unwrap_err();
    assert_eq!(
        err.to_string(),
        "max_tokens: expected a whole number of at least 1, got 0"
    );
    let err = check(with("max_tokens", json!(32_000))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "max_tokens: expected a whole number from 1 to 8192 (LOCAL_PROVIDER_MAX_TOKENS_LIMIT), got 32000"
    );
}

#[test]
fn not_json_and_not_object() {
    assert!(chat(b"{", &LIMITS)
        .unwrap_err()
        .to_string()
        .contains("not valid JSON"));
    assert!(chat(b"[]", &LIMITS)
        .unwrap_err()
        .to_string()
        .contains("JSON object"));
}

/// The same rule through both front ends: OpenAI's chat (`body` merged into a valid request)
/// and Ollama's (`ollama` merged into a valid `/api/chat` body). Each returns the field the
/// error names, or "" when the body passed.
fn both(openai: Value, ollama: Value) -> (String, String) {
    fn merge(mut base: Value, extra: Value) -> Value {
        if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
            b.extend(e);
        }
        base
    }
    let param = |r: Result<(), Error>| match r {
        Ok(()) => String::new(),
        Err(Error::InvalidRequest { param, message, .. }) => {
            let param = param.unwrap_or_default();
            // Both APIs' messages start with the field, which is all Ollama's shape shows.
            assert!(message.starts_with(&format!("{param}: ")), "{message}");
            param
        }
        Err(other) => panic!("unexpected {other:?}"),
    };
    let open = check(merge(base(), openai)).map(drop);
    let mut body = merge(
        json!({"model": "cursor-agent-local", "messages": [{"role": "user", "content": "hi"}]}),
        ollama,
    );
    let olla =
        crate::ollama::chat::job("cursor-agent-local", body.as_object_mut().unwrap(), &LIMITS)
            .map(drop);
    (param(open), param(olla))
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}

fn msgs(m: Value) -> Value {
    json!({"messages": [m]})
}

#[test]
fn rule_messages_are_objects() {
    assert_eq!(
        both(msgs(json!("hi")), msgs(json!("hi"))),
        pair("messages[0]", "messages[0]")
    );
}

#[test]
fn rule_role_is_one_the_api_knows() {
    let robot = msgs(json!({"role": "robot", "content": "x"}));
    assert_eq!(
        both(robot.clone(), robot),
        pair("messages[0].role", "messages[0].role")
    );
    let none = msgs(json!({"content": "x"}));
    assert_eq!(
        both(none.clone(), none),
        pair("messages[0].role", "messages[0].role")
    );
    // `developer` is OpenAI's alone.
    let dev = msgs(json!({"role": "developer", "content": "x"}));
    assert_eq!(both(dev.clone(), dev), pair("", "messages[0].role"));
}

#[test]
fn rule_content_has_the_apis_shape() {
    let number = msgs(json!({"role": "user", "content": 5}));
    assert_eq!(
        both(number.clone(), number),
        pair("messages[0].content", "messages[0].content")
    );
    // Typed parts are OpenAI's; Ollama sends text and `images`.
    let parts = msgs(json!({"role": "user", "content": [{"type": "text", "text": "x"}]}));
    assert_eq!(both(parts.clone(), parts), pair("", "messages[0].content"));
    let untyped = msgs(json!({"role": "user", "content": [{"text": "x"}]}));
    assert_eq!(both(untyped, json!({})).0, "messages[0].content[0]");
    // A user message without content: OpenAI requires it, Ollama takes it as empty.
    let empty = msgs(json!({"role": "user"}));
    assert_eq!(both(empty.clone(), empty), pair("messages[0].content", ""));
}

#[test]
fn rule_images_are_base64_strings() {
    let image = msgs(json!({"role": "user", "content": "x", "images": ["A".repeat(400_000)]}));
    assert_eq!(both(json!({}), image).1, "");
    let bad = msgs(json!({"role": "user", "content": "x", "images": [5]}));
    assert_eq!(both(json!({}), bad).1, "messages[0].images[0]");
}

#[test]
fn rule_tool_results_name_their_call_where_the_api_asks() {
    let tool = msgs(json!({"role": "tool", "content": "sunny"}));
    assert_eq!(
        both(tool.clone(), tool),
        pair("messages[0].tool_call_id", "")
    );
}

#[test]
fn rule_tool_calls_are_named_functions() {
    let not_array = msgs(json!({"role": "assistant", "content": "", "tool_calls": {}}));
    assert_eq!(
        both(not_array.clone(), not_array),
        pair("messages[0].tool_calls", "messages[0].tool_calls")
    );
    let nameless =
        msgs(json!({"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}));
    let at = "messages[0].tool_calls[0].function.name";
    assert_eq!(both(nameless.clone(), nameless), pair(at, at));
}

#[test]
fn rule_tools_are_functions() {
    let bad = json!({"tools": [{"type": "function"}]});
    assert_eq!(both(bad.clone(), bad), pair("tools[0]", "tools[0]"));
    let not_array = json!({"tools": "f"});
    assert_eq!(both(not_array.clone(), not_array), pair("tools", "tools"));
    let good = json!({"tools": [{"type": "function", "function": {"name": "f"}}]});
    assert_eq!(both(good.clone(), good), pair("", ""));
}

#[test]
fn rule_sampling_ranges() {
    for (key, bad, good) in [
        ("temperature", 2.5, 2.0),
        ("top_p", -0.1, 1.0),
        ("presence_penalty", 3.0, -2.0),
        ("frequency_penalty", -2.1, 2.0),
    ] {
        assert_eq!(
            both(json!({key: bad}), json!({"options": {key: bad}})),
            pair(key, &format!("options.{key}"))
        );
        assert_eq!(
            both(json!({key: good}), json!({"options": {key: good}})),
            pair("", "")
        );
    }
}

#[test]
fn rule_token_cap_within_the_limit() {
    for n in [json!(0), json!(8193), json!("8")] {
        assert_eq!(
            both(
                json!({"max_tokens": n}),
                json!({"options": {"num_predict": n}})
            ),
            pair("max_tokens", "options.num_predict")
        );
    }
    assert_eq!(
        both(
            json!({"max_tokens": 8192}),
            json!({"options": {"num_predict": 8192}})
        ),
        pair("", "")
    );
    // Ollama's "no cap" values are Ollama's alone.
    assert_eq!(
        both(
            json!({"max_tokens": -1}),
            json!({"options": {"num_predict": -1}})
        ),
        pair("max_tokens", "")
    );
}

#[test]
fn rule_stop_is_strings() {
    assert_eq!(
        both(json!({"stop": [1]}), json!({"options": {"stop": [1]}})),
        pair("stop", "options.stop")
    );
    let five = json!(["a", "b", "c", "d", "e"]);
    // OpenAI takes up to 4.
    assert_eq!(
        both(json!({"stop": five}), json!({"options": {"stop": five}})),
        pair("stop", "")
    );
    assert_eq!(
        both(json!({"stop": "x"}), json!({"options": {"stop": "x"}})),
        pair("", "")
    );
}

#[test]
fn rule_stream_is_true_or_false() {
    assert_eq!(
        both(json!({"stream": "yes"}), json!({"stream": "yes"})),
        pair("stream", "stream")
    );
}

#[test]
fn rule_no_log_probabilities() {
    for key in ["logprobs", "top_logprobs"] {
        let v = if key == "logprobs" {
            json!(true)
        } else {
            json!(2)
        };
        assert_eq!(both(json!({key: v}), json!({key: v})), pair(key, key));
    }
}

#[test]
fn ollama_parameters_reach_the_agent_by_openai_names() {
    let mut body = json!({"model": "cursor-agent-local", "stream": false,
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 1, "num_predict": 64, "stop": "\n", "seed": 7},
        "tools": [{"type": "function", "function": {"name": "f"}}]});
    let job =
        crate::ollama::chat::job("cursor-agent-local", body.as_object_mut().unwrap(), &LIMITS)
            .unwrap()
            .unwrap();
    assert!(!job.ask.stream);
    assert_eq!(job.ask.max_tokens, Some(64));
    assert_eq!(job.scopes, vec!["chat", "tools"]);
    let crate::generate::Prompt::Chat { parameters, .. } = job.prompt else {
        panic!("not a chat")
    };
    assert_eq!(parameters["temperature"], json!(1.0));
    assert_eq!(parameters["max_tokens"], 64);
    assert_eq!(parameters["stop"], json!(["\n"]));
    assert_eq!(parameters["seed"], 7);
    assert_eq!(parameters["tools"][0]["function"]["name"], "f");
    let mut empty = json!({"model": "cursor-agent-local", "messages": []});
    assert!(
        crate::ollama::chat::job("m", empty.as_object_mut().unwrap(), &LIMITS)
            .unwrap()
            .is_none()
    );
}

#[test]
fn refusal_messages_never_quote_prompt_text() {
    // Refusals are logged; whatever a client puts where it does not belong stays out.
    let secret = "the secret plan for tomorrow";
    let user = json!([{"role": "user", "content": "hi"}]);
    let chats = [
        json!({"model": "m", "messages": secret}),
        json!({"model": "m", "messages": [secret]}),
        json!({"model": "m", "messages": ["word"]}),
        json!({"model": "m", "messages": [{"role": secret, "content": "x"}]}),
        json!({"model": "m", "messages": [{"role": "user", "content": {"text": secret}}]}),
        json!({"model": "m", "messages": user, "temperature": secret}),
        json!({"model": "m", "messages": user, "tool_choice": [secret]}),
        json!({"model": "m", "messages": user, "stop": [secret, 1]}),
        json!({"model": {"name": secret}, "messages": user}),
    ];
    for body in chats {
        let err = check(body.clone()).unwrap_err().to_string();
        assert!(
            !err.contains("secret") && !err.contains("word"),
            "{body} → {err}"
        );
    }
    let limits = Limits { max_tokens: None };
    for body in [
        json!({"model": "m", "input": [secret]}),
        json!({"model": "m", "input": [{"type": secret}]}),
        json!({"model": "m", "input": [{"role": secret, "content": "x"}]}),
        json!({"model": "m", "input": "x", "instructions": {"a": secret}}),
        json!({"model": "m", "input": "x", "tools": [{"type": secret}]}),
    ] {
        let err = crate::responses::convert::request(body.to_string().as_bytes(), &limits)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{body} → {err}");
    }
    for body in [
        json!({"model": "m", "max_tokens": 5, "messages": secret}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": secret, "content": "x"}]}),
        json!({"model": "m", "max_tokens": 5, "system": {"a": secret}, "messages": user}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": secret}]}]}),
    ] {
        let err = crate::anthropic::convert::request(
            body.as_object().unwrap(),
            &limits,
            crate::anthropic::convert::Purpose::Generate,
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("secret"), "{body} → {err}");
    }
    // One word that names a value is quoted, so the message stays useful.
    assert_eq!(describe(&json!("robot")), "\"robot\"");
    assert_eq!(describe(&json!("two words")), "a string of 9 bytes");
    assert_eq!(describe(&json!({"a": 1})), "an object");
    assert_eq!(describe(&json!([1, 2])), "an array of 2 items");
    assert_eq!(describe(&json!(7)), "7");
}

#[test]
fn logprobs_are_refused_by_name() {
    assert_eq!(param_of(with("logprobs", json!(true))), "logprobs");
    assert_eq!(param_of(with("top_logprobs", json!(3))), "top_logprobs");
    assert!(check(with("logprobs", json!(false))).is_ok());
    assert_eq!(param_of(with("n", json!(2))), "n");
}
