//! The compatibility corpus (`tests/corpus/<client>/NNN-<method>-<path>.json`): real clients'
//! requests as `tests/clients/record.py` recorded them, and what each should become for the agent,
//! worked out here from the request alone (by each API's own rules, not the gateway's code).
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub file: PathBuf,
    pub client: String,
    pub method: String,
    /// With its query, as sent.
    pub path: String,
    /// Lower-case names; credentials' values are `<redacted>`.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// Headers not replayed: the connection's own, and what the replaying client sets itself.
const NOT_REPLAYED: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "accept-encoding",
    "keep-alive",
];

/// The directory of the corpus.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every recorded request, by client then file name.
pub fn load() -> Vec<Recorded> {
    let mut out = Vec::new();
    let mut clients: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap_or_else(|e| panic!("{}: {e}", dir().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    clients.sort();
    for client in clients {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&client)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let headers = v["headers"]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no headers", file.display()))
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_owned()))
                .collect();
            out.push(Recorded {
                client: v["client"].as_str().unwrap().to_owned(),
                method: v["method"].as_str().unwrap().to_owned(),
                path: v["path"].as_str().unwrap().to_owned(),
                headers,
                body: v["body"].clone(),
                file,
            });
        }
    }
    out
}

impl Recorded {
    /// The path without its query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The headers to send again, with `key` in place of each redacted credential (as the client
    /// sent it: `Bearer` for `authorization`).
    pub fn replay_headers(&self, key: &str) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(name, _)| !NOT_REPLAYED.contains(&name.as_str()))
            .map(|(name, value)| {
                let value = match (name.as_str(), value.as_str()) {
                    ("authorization", "<redacted>") => format!("Bearer {key}"),
                    (_, "<redacted>") => key.to_owned(),
                    _ => value.clone(),
                };
                (name.clone(), value)
            })
            .collect()
    }

    /// What the agent should be handed, when the request generates an answer.
    pub fn expected(&self) -> Option<Expected> {
        let b = &self.body;
        let (api, roles, tools) = match self.route() {
            r if r.ends_with("/chat/completions") => {
                (Api::Chat, roles_of(&b["messages"]), chat_tools(&b["tools"]))
            }
            r if r.ends_with("/completions") => (Api::Completion, Vec::new(), Vec::new()),
            r if r.ends_with("/responses") => {
                (Api::Responses, responses_roles(b), responses_tools(b))
            }
            "/v1/messages" => (
                Api::Messages,
                messages_roles(b),
                messages_tools(&b["tools"]),
            ),
            "/api/chat" => (Api::Chat, roles_of(&b["messages"]), chat_tools(&b["tools"])),
            "/api/generate" => (Api::Completion, Vec::new(), Vec::new()),
            _ => return None,
        };
        Some(Expected {
            api,
            model: b["model"].as_str().unwrap_or_default().to_owned(),
            roles,
            tools,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completion,
    Responses,
    Messages,
}

impl Api {
    /// `parameters.api` as the agent sees it.
    pub fn marker(self) -> Option<&'static str> {
        match self {
            Api::Responses => Some("responses"),
            Api::Messages => Some("messages"),
            Api::Chat | Api::Completion => None,
        }
    }
}

/// What the agent should see of a generating request.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub api: Api,
    pub model: String,
    /// The roles of the chat messages, in order (empty for a completion).
    pub roles: Vec<String>,
    /// The names of the chat tools, in order.
    pub tools: Vec<String>,
}

fn roles_of(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["role"].as_str().map(str::to_owned))
        .collect()
}

fn chat_tools(tools: &Value) -> Vec<String> {
    tools
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// Responses: `instructions` a system message; message items keep their role; a turn's calls
/// (function or custom) are one assistant message (joining a preceding assistant message);
/// each output is a tool message; reasoning and `additional_tools` items are no messages.
fn responses_roles(b: &Value) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    if b["instructions"].is_string() {
        roles.push("system".into());
    }
    match &b["input"] {
        Value::String(_) => roles.push("user".into()),
        Value::Array(items) => {
            for item in items {
                let kind = item["type"]
                    .as_str()
                    .unwrap_or(if item.get("role").is_some() {
                        "message"
                    } else {
                        ""
                    });
                match kind {
                    "message" => roles.push(item["role"].as_str().unwrap_or("").to_owned()),
                    "function_call" | "custom_tool_call"
                        if roles.last().map(String::as_str) != Some("assistant") =>
                    {
                        roles.push("assistant".into());
                    }
                    "function_call_output" | "custom_tool_call_output" => roles.push("tool".into()),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    roles
}

/// The name the agent knows a namespace's tool by (docs/PROTOCOL.md).
fn flat(namespace: &str, name: &str) -> String {
    if namespace.ends_with("__") {
        format!("{namespace}{name}")
    } else {
        format!("{namespace}__{name}")
    }
}

/// Responses: function and custom tools by name, a namespace's tools as `<namespace>__<name>`,
/// from `tools` and then from `additional_tools` items; hosted tools are no chat tools.
fn responses_tools(b: &Value) -> Vec<String> {
    let mut listed: Vec<&Value> = b["tools"].as_array().into_iter().flatten().collect();
    for item in b["input"].as_array().into_iter().flatten() {
        if item["type"] == "additional_tools" {
            listed.extend(item["tools"].as_array().into_iter().flatten());
        }
    }
    let mut out = Vec::new();
    for tool in listed {
        match tool["type"].as_str() {
            Some("function" | "custom") => out.push(tool["name"].as_str().unwrap().to_owned()),
            Some("namespace") => {
                let ns = tool["name"].as_str().unwrap();
                for member in tool["tools"].as_array().into_iter().flatten() {
                    out.push(flat(ns, member["name"].as_str().unwrap()));
                }
            }
            _ => {}
        }
    }
    out
}

/// Messages: the `system` field a system message; a user turn's `tool_result` blocks each a tool
/// message, then the rest of the turn (if any) a user message; other turns keep their role.
fn messages_roles(b: &Value) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    if !b["system"].is_null() {
        roles.push("system".into());
    }
    for m in b["messages"].as_array().into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or("");
        match (&m["content"], role) {
            (Value::Array(blocks), "user") => {
                let results = blocks.iter().filter(|x| x["type"] == "tool_result").count();
                roles.extend(std::iter::repeat_n("tool".to_owned(), results));
                if results < blocks.len() {
                    roles.push("user".into());
                }
            }
            _ => roles.push(role.to_owned()),
        }
    }
    roles
}

fn messages_tools(tools: &Value) -> Vec<String> {
    tools
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}
