//! A Responses request's `tools` and `tool_choice` for the agent:
//!
//! - `function` tools become chat function tools;
//! - `custom` tools (free-form: their input is one text, often in a grammar they give, as
//!   Codex CLI's `apply_patch` and `exec`) become chat function tools taking one string
//!   parameter, `input`, whose description carries the tool's format; the agent's call of one
//!   goes back to the client as a `custom_tool_call` item with that string as its `input`
//!   ([`ToolNames::is_free_form`], [`free_form_input`]);
//! - `namespace` tools (Codex CLI groups its own and its MCP servers' tools so:
//!   `{"type": "namespace", "name", "description", "tools": [function or custom tools]}`) are
//!   unpacked into their tools, each named `<namespace>__<name>` for the agent
//!   (`<namespace><name>` when the namespace already ends in `__`, as Codex's `mcp__<server>__`
//!   do); the agent's call of such a name goes back to the client with the tool's own `name` and
//!   its `namespace`, which is how Codex routes it ([`ToolNames`]);
//! - the tools of `additional_tools` input items (Codex CLI sends its tools so with its default
//!   model, instead of `tools`) are read like `tools`;
//! - hosted tools the agent can run on its own side (`web_search`: the Cursor agent searches the
//!   web itself) go to the agent as they were sent, in `parameters.hosted_tools`;
//! - any other tool (`file_search`, `code_interpreter`, `computer_use_preview`, …) is refused by
//!   name: nothing here can run it.
use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::validate::{describe, invalid, quoted};

/// The Responses API's web search tools, under each of their names.
pub const WEB_SEARCH: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_2025_08_26",
    "web_search_preview_2025_03_11",
];

/// The names the agent knows namespaced tools by, and the `(namespace, name)` each stands for.
#[derive(Debug, Default, Clone)]
pub struct ToolNames {
    namespaced: HashMap<String, (String, String)>,
    /// The names (as the agent knows them) of the free-form (`custom`) tools.
    free_form: HashSet<String>,
}

impl ToolNames {
    /// The name the agent knows `name` of `namespace` by.
    pub fn flat(namespace: &str, name: &str) -> String {
        if namespace.ends_with("__") {
            format!("{namespace}{name}")
        } else {
            format!("{namespace}__{name}")
        }
    }

    /// `(namespace, name)` when `flat` is the agent's name of a namespaced tool of this request.
    pub fn split(&self, flat: &str) -> Option<(&str, &str)> {
        self.namespaced
            .get(flat)
            .map(|(ns, name)| (ns.as_str(), name.as_str()))
    }

    /// Whether `flat` is a free-form (`custom`) tool of this request: its calls go back as
    /// `custom_tool_call` items.
    pub fn is_free_form(&self, flat: &str) -> bool {
        self.free_form.contains(flat)
    }
}

/// The input of a free-form tool's call from the agent's arguments: `{"input": "…"}` as the
/// tool was offered; an object with one string member, or a JSON string, is taken too (the
/// agent meant that text); anything else is passed as the text the agent sent.
pub fn free_form_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(o)) => match o.get("input") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                let mut strings = o.values().filter_map(Value::as_str);
                match (strings.next(), strings.next(), o.len()) {
                    (Some(only), None, 1) => only.to_owned(),
                    _ => arguments.to_owned(),
                }
            }
        },
        Ok(Value::String(s)) => s,
        _ => arguments.to_owned(),
    }
}

/// The request's tools, as the agent gets them.
#[derive(Debug, Default)]
pub struct Tools {
    /// Chat function tools: the function tools and every namespace's functions.
    pub chat: Vec<Value>,
    /// Hosted tools the agent runs itself, as sent.
    pub hosted: Vec<Value>,
    pub names: ToolNames,
}

/// Reads `tools` (absent, null or an array) and the tools of `additional_tools` input items.
pub fn tools(obj: &Map<String, Value>) -> Result<Tools, Error> {
    let mut listed: Vec<(String, &Value)> = Vec::new();
    match obj.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            listed.extend(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("tools[{i}]"), t)),
            );
        }
        Some(v) => {
            return Err(invalid(
                "tools",
                format!("expected an array, got {}", describe(v)),
            ))
        }
    }
    if let Some(Value::Array(items)) = obj.get("input") {
        for (i, item) in items.iter().enumerate() {
            if item.get("type").and_then(Value::as_str) != Some("additional_tools") {
                continue;
            }
            match item.get("tools") {
                None | Some(Value::Null) => {}
                Some(Value::Array(more)) => listed.extend(
                    more.iter()
                        .enumerate()
                        .map(|(j, t)| (format!("input[{i}].tools[{j}]"), t)),
                ),
                Some(v) => {
                    return Err(invalid(
                        &format!("input[{i}].tools"),
                        format!("expected an array of tools, got {}", describe(v)),
                    ))
                }
            }
        }
    }
    let mut out = Tools::default();
    // Every name the agent will see, and where it came from, so that no two tools share one.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut claim = |flat: &str, at: &str| -> Result<(), Error> {
        match seen.insert(flat.to_owned(), at.to_owned()) {
            None => Ok(()),
            Some(first) => Err(invalid(
                &format!("{at}.name"),
                format!("the agent would know this tool as `{flat}`, as it knows {first}; give one of them another name"),
            )),
        }
    };
    for (at, tool) in listed {
        match tool.get("type").and_then(Value::as_str) {
            Some(kind @ ("function" | "custom")) => {
                let (name, chat) = callable(&at, kind, tool, None)?;
                claim(&name, &at)?;
                if kind == "custom" {
                    out.names.free_form.insert(name);
                }
                out.chat.push(chat);
            }
            Some("namespace") => {
                let Some(namespace) = tool.get("name").and_then(Value::as_str) else {
                    return Err(invalid(&format!("{at}.name"), "required (a string)".into()));
                };
                let Some(Value::Array(members)) = tool.get("tools") else {
                    return Err(invalid(
                        &format!("{at}.tools"),
                        "required: the namespace's function or custom tools, an array".into(),
                    ));
                };
                for (j, member) in members.iter().enumerate() {
                    let member_at = format!("{at}.tools[{j}]");
                    let kind = match member.get("type").and_then(Value::as_str) {
                        Some(kind @ ("function" | "custom")) => kind,
                        other => {
                            return Err(invalid(
                                &format!("{member_at}.type"),
                                format!("a namespace's tools must be function or custom tools here, got {}", other.map_or("none".to_owned(), quoted)),
                            ))
                        }
                    };
                    let (flat, chat) = callable(&member_at, kind, member, Some(namespace))?;
                    claim(&flat, &member_at)?;
                    let name = member["name"].as_str().unwrap_or_default().to_owned();
                    if kind == "custom" {
                        out.names.free_form.insert(flat.clone());
                    }
                    out.names
                        .namespaced
                        .insert(flat, (namespace.to_owned(), name));
                    out.chat.push(chat);
                }
            }
            Some(kind) if WEB_SEARCH.contains(&kind) => out.hosted.push(tool.clone()),
            Some(other) => {
                return Err(invalid(
                    &format!("{at}.type"),
                    format!("expected a function, custom, namespace or web_search tool, got {}: the agent cannot run it, and nothing here runs it for the agent", quoted(other)),
                ))
            }
            None => {
                return Err(invalid(
                    &format!("{at}.type"),
                    "required: \"function\", \"custom\", \"namespace\" or \"web_search\"".into(),
                ))
            }
        }
    }
    Ok(out)
}

/// A `function` or `custom` tool (of `namespace`, if given) as a chat tool, and the name the
/// agent knows it by.
fn callable(
    at: &str,
    kind: &str,
    tool: &Value,
    namespace: Option<&str>,
) -> Result<(String, Value), Error> {
    if kind == "custom" {
        free_form(at, tool, namespace)
    } else {
        function(at, tool, namespace)
    }
}

/// A free-form tool `{"type": "custom", "name", "description", "format"}` as a chat function
/// taking one string, `input`, whose description says what the text must be.
fn free_form(at: &str, tool: &Value, namespace: Option<&str>) -> Result<(String, Value), Error> {
    let Some(name) = tool.get("name").and_then(Value::as_str) else {
        return Err(invalid(&format!("{at}.name"), "required (a string)".into()));
    };
    let flat = match namespace {
        Some(ns) => ToolNames::flat(ns, name),
        None => name.to_owned(),
    };
    let mut about = String::from(
        "The tool's whole input as one text, passed to it as it is (free-form: not JSON).",
    );
    match tool.get("format").filter(|f| !f.is_null()) {
        None => {}
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("grammar") => {
                let syntax = format.get("syntax").and_then(Value::as_str).unwrap_or("a");
                let definition = format
                    .get("definition")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                about.push_str(&format!(
                    " It must match this {syntax} grammar:\n{definition}"
                ));
            }
            _ => about.push_str(&format!(" Its format: {format}")),
        },
    }
    let mut function = Map::new();
    function.insert("name".into(), json!(flat));
    if let Some(d) = tool.get("description").filter(|v| !v.is_null()) {
        function.insert("description".into(), d.clone());
    }
    function.insert(
        "parameters".into(),
        json!({"type": "object", "properties": {"input": {"type": "string", "description": about}},
               "required": ["input"], "additionalProperties": false}),
    );
    Ok((flat, json!({"type": "function", "function": function})))
}

/// A function tool `{"type": "function", "name", "description", "parameters", "strict"}` (of
/// `namespace`, if given) as a chat tool, and the name the agent knows it by.
fn function(at: &str, tool: &Value, namespace: Option<&str>) -> Result<(String, Value), Error> {
    let Some(name) = tool.get("name").and_then(Value::as_str) else {
        return Err(invalid(&format!("{at}.name"), "required (a string)".into()));
    };
    let flat = match namespace {
        Some(ns) => ToolNames::flat(ns, name),
        None => name.to_owned(),
    };
    let mut function = Map::new();
    function.insert("name".into(), json!(flat));
    for key in ["description", "parameters", "strict"] {
        if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
            function.insert(key.into(), v.clone());
        }
    }
    Ok((flat, json!({"type": "function", "function": function})))
}

/// `tool_choice` as chat's: a mode, or one function (of a namespace, given as `namespace`).
pub fn tool_choice(choice: &Value) -> Result<Value, Error> {
    match choice {
        Value::String(s) if ["none", "auto", "required"].contains(&s.as_str()) => {
            Ok(choice.clone())
        }
        Value::Object(o)
            if matches!(
                o.get("type").and_then(Value::as_str),
                Some("function" | "custom")
            ) =>
        {
            let Some(name) = o.get("name").and_then(Value::as_str) else {
                return Err(invalid("tool_choice.name", "required (a string)".into()));
            };
            let name = match o.get("namespace").and_then(Value::as_str) {
                Some(ns) => ToolNames::flat(ns, name),
                None => name.to_owned(),
            };
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        other => Err(invalid(
            "tool_choice",
            format!(
                "expected \"none\", \"auto\", \"required\" or {{\"type\": \"function\", \"name\": …}}, got {}",
                describe(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(tools_json: Value) -> Result<Tools, Error> {
        let obj = json!({ "tools": tools_json });
        tools(obj.as_object().unwrap())
    }

    fn param_of(tools_json: Value) -> String {
        match read(tools_json).unwrap_err() {
            Error::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn namespaces_unpack_into_function_tools_the_agent_knows_by_one_name() {
        let t = read(json!([
            {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
            {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
                {"type": "function", "name": "spawn_agent", "description": "Starts one.",
                 "strict": false, "parameters": {"type": "object"}},
                {"type": "function", "name": "wait_agent", "parameters": {"type": "object"},
                 "defer_loading": true}]},
            {"type": "namespace", "name": "mcp__fs__", "tools": [
                {"type": "function", "name": "write_file", "parameters": {"type": "object"}}]},
            {"type": "web_search", "external_web_access": true}
        ]))
        .unwrap();
        let names: Vec<&str> = t
            .chat
            .iter()
            .map(|c| c["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "exec_command",
                "multi_agent_v1__spawn_agent",
                "multi_agent_v1__wait_agent",
                "mcp__fs__write_file"
            ]
        );
        assert_eq!(t.chat[1]["function"]["description"], "Starts one.");
        assert_eq!(
            t.names.split("multi_agent_v1__spawn_agent"),
            Some(("multi_agent_v1", "spawn_agent"))
        );
        assert_eq!(
            t.names.split("mcp__fs__write_file"),
            Some(("mcp__fs__", "write_file"))
        );
        assert_eq!(t.names.split("exec_command"), None);
        assert_eq!(
            t.hosted,
            vec![json!({"type": "web_search", "external_web_access": true})]
        );
    }

    #[test]
    fn what_nothing_here_can_run_is_refused_by_name() {
        for kind in [
            "file_search",
            "code_interpreter",
            "computer_use_preview",
            "image_generation",
        ] {
            assert_eq!(param_of(json!([{"type": kind}])), "tools[0].type", "{kind}");
        }
        assert_eq!(
            param_of(
                json!([{"type": "namespace", "name": "n", "tools": [{"type": "mcp", "name": "x"}]}])
            ),
            "tools[0].tools[0].type"
        );
        assert_eq!(
            param_of(json!([{"type": "namespace", "tools": []}])),
            "tools[0].name"
        );
        // Two tools the agent would know by one name.
        assert_eq!(
            param_of(json!([
                {"type": "function", "name": "ns__f"},
                {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "f"}]}])),
            "tools[1].tools[0].name"
        );
    }

    #[test]
    fn free_form_tools_reach_the_agent_as_functions_of_one_string() {
        let grammar = "start: begin_patch hunk+ end_patch";
        let obj = json!({"tools": [
                {"type": "custom", "name": "apply_patch", "description": "Edits files.",
                 "format": {"type": "grammar", "syntax": "lark", "definition": grammar}}],
            "input": [
                {"type": "additional_tools", "role": "developer", "tools": [
                    {"type": "namespace", "name": "functions", "description": "", "tools": [
                        {"type": "custom", "name": "exec", "description": "Runs JavaScript."},
                        {"type": "function", "name": "wait", "parameters": {"type": "object"}}]}]},
                {"type": "message", "role": "user", "content": "go"}]});
        let t = tools(obj.as_object().unwrap()).unwrap();
        let names: Vec<&str> = t
            .chat
            .iter()
            .map(|c| c["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["apply_patch", "functions__exec", "functions__wait"]);
        let patch = &t.chat[0]["function"];
        assert_eq!(patch["description"], "Edits files.");
        assert_eq!(patch["parameters"]["required"], json!(["input"]));
        let about = patch["parameters"]["properties"]["input"]["description"]
            .as_str()
            .unwrap();
        assert!(
            about.contains("lark grammar") && about.contains(grammar),
            "{about}"
        );
        assert!(t.names.is_free_form("apply_patch"));
        assert!(t.names.is_free_form("functions__exec"));
        assert!(!t.names.is_free_form("functions__wait"));
        assert_eq!(
            t.names.split("functions__exec"),
            Some(("functions", "exec"))
        );
        assert_eq!(
            param_of_obj(
                json!({"input": [{"type": "additional_tools", "tools": [{"type": "file_search"}]}]})
            ),
            "input[0].tools[0].type"
        );
        assert_eq!(
            tool_choice(&json!({"type": "custom", "name": "apply_patch"})).unwrap(),
            json!({"type": "function", "function": {"name": "apply_patch"}})
        );
    }

    fn param_of_obj(obj: Value) -> String {
        match tools(obj.as_object().unwrap()).unwrap_err() {
            Error::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_free_form_call_gives_back_the_text_the_agent_meant() {
        assert_eq!(
            free_form_input(r#"{"input": "*** Begin Patch"}"#),
            "*** Begin Patch"
        );
        assert_eq!(free_form_input(r#"{"patch": "x"}"#), "x");
        assert_eq!(free_form_input(r#""just text""#), "just text");
        assert_eq!(free_form_input("not json"), "not json");
        assert_eq!(
            free_form_input(r#"{"a": "x", "b": "y"}"#),
            r#"{"a": "x", "b": "y"}"#
        );
    }

    #[test]
    fn a_namespaced_tool_choice_names_the_tool_as_the_agent_knows_it() {
        let choice = tool_choice(
            &json!({"type": "function", "namespace": "multi_agent_v1", "name": "spawn_agent"}),
        )
        .unwrap();
        assert_eq!(choice["function"]["name"], "multi_agent_v1__spawn_agent");
        assert_eq!(tool_choice(&json!("auto")).unwrap(), "auto");
        assert!(tool_choice(&json!({"type": "web_search"})).is_err());
    }
}
