//! The MCP server the Cursor agent talks to (rmcp): the long-poll, reply, fail and status tools,
//! and the prompt that tells the agent how to serve.
use std::sync::Arc;
use std::time::Instant;

use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, PromptMessage, Role, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{
    prompt, prompt_handler, prompt_router, tool, tool_handler, tool_router, RoleServer,
    ServerHandler,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::answer::{FinishReason, Part, ToolCall, UsageArg};
use crate::broker::Broker;
use crate::caller::Caller;
use crate::conversation::{self, AgentSession};
use crate::described::{self, json_text, Json, Terms};
use crate::metrics;
use crate::queue::Handout;

/// How to serve, for the agent (also in `deploy/cursor/serve-editor-requests.mdc`).
pub const SERVE_PROMPT: &str = include_str!("serve_prompt.md");

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct WaitArgs {
    /// Seconds to wait for a request, clamped to 10–280 (default about 240).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// true on the first call of a new chat: forget what this MCP session was handed before,
    /// so every conversation comes whole again.
    #[serde(default)]
    pub fresh: Option<bool>,
    /// true to get this one request's conversation whole instead of only its new messages.
    #[serde(default)]
    pub full: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationArgs {
    /// A live request's `request_id` (queued or being answered).
    #[serde(default)]
    pub request_id: Option<String>,
    /// A `conversation_id` from wait_for_request: its latest live request.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Index of the first message of this page (default 0; `next.from` of the previous page).
    #[serde(default)]
    pub from: Option<usize>,
    /// `next.offset` of the previous page, when a message larger than a page comes in slices.
    #[serde(default)]
    pub offset: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitArgs {
    /// The `request_id` from wait_for_request.
    pub request_id: String,
    /// The `lease_id` from wait_for_request.
    pub lease_id: String,
    /// Answer text to append.
    #[serde(default)]
    pub content: Option<String>,
    /// Thinking to append, shown apart from the answer.
    #[serde(default)]
    pub reasoning: Option<String>,
    /// Native tool calls in OpenAI shape; only when the request's parameters carry `tools`.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// `false` when more parts follow; `true` (default) ends the answer.
    #[serde(default)]
    pub done: Option<bool>,
    /// With the last part: stop, length, tool_calls or content_filter (default: tool_calls when
    /// the answer has tool calls, else stop).
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// Token counts, when known.
    #[serde(default)]
    pub usage: Option<UsageArg>,
    /// This part's number: 1 for the first, then 2, 3, …. A part sent again with a number
    /// already taken (its reply was lost) is acknowledged and not applied twice.
    #[serde(default)]
    pub part: Option<u64>,
    /// After the last part, wait for the next request and return it in `next`.
    #[serde(default)]
    pub wait_for_next: Option<bool>,
    /// The wait for `wait_for_next`, clamped to 10–280 seconds.
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    /// The `request_id` from wait_for_request.
    pub request_id: String,
    /// The `lease_id` from wait_for_request.
    pub lease_id: String,
    /// Why the request cannot be answered; the editor shows it.
    pub reason: String,
    /// An error code for the editor (default `agent_error`): lower case letters, digits and
    /// underscores, up to 64.
    #[serde(default)]
    pub code: Option<String>,
}

/// `submit_response`'s result; `next`, the next hand-out, as `wait_for_request` wrote it.
#[derive(serde::Serialize)]
struct Submitted<'a> {
    status: &'static str,
    request_id: &'a str,
    chunks_sent: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<Json>,
}

#[derive(Clone)]
pub struct McpServer {
    broker: Arc<Broker>,
    /// This MCP session's delta bookkeeping; forgotten when the session's last clone goes.
    agent: Arc<AgentSession>,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

impl McpServer {
    pub fn new(broker: Arc<Broker>) -> Self {
        Self {
            agent: Arc::new(broker.conversations.session()),
            broker,
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    /// Waits for a request for `caller`. The hand-out is held until its answer has gone out on
    /// the caller's response stream: a poll dropped while it describes the request, or whose
    /// caller is gone by then, gives the request back to the front of the queue.
    async fn poll(&self, timeout: Option<f64>, full: bool, caller: &Caller) -> Json {
        let wait = self.broker.config.poll_wait(timeout);
        let started = Instant::now();
        match self.broker.next_request(wait, caller).await {
            Some(handout) => {
                let held = self.broker.hold(&handout);
                let described = self.describe(handout, full).await;
                if caller.is_gone() {
                    // `held` gives it back: nobody reads this answer.
                    return json_text(&json!({"status": "cancelled"}));
                }
                held.deliver(caller);
                described
            }
            None if caller.is_gone() => json_text(&json!({"status": "cancelled"})),
            None if self.broker.stopping.is_cancelled() => json_text(&json!({
                "status": "shutting_down",
                "hint": "mcp-bridge is stopping; call wait_for_request again in a minute",
            })),
            None => json_text(&json!({
                "status": "idle",
                "waited_seconds": started.elapsed().as_secs(),
                "queue_depth": self.broker.queue_depth(),
                "hint": "no request yet: call wait_for_request again",
            })),
        }
    }

    async fn describe(&self, h: Handout, full: bool) -> Json {
        let (conversation, handed) = self.delta(&h, full).await;
        let answer_with = if h.payload.kind() != "chat" {
            "only the text that belongs between prompt and suffix, in content; no tool_calls"
        } else if h.shape.tools.is_some() {
            "text in content; native tool_calls allowed (parameters.tools)"
        } else {
            "text in content only: no tool_calls (the request carries no tools)"
        };
        let terms = Terms {
            status: "request",
            request_id: &h.id,
            lease_id: &h.lease,
            lease_seconds: self.broker.config.lease_timeout.as_secs_f64(),
            attempt: h.attempt,
            session_id: h.session_id.as_deref(),
            stream: h.shape.stream,
            answer_with,
        };
        // The payload is the queue's, written as the text it came as; of its messages only
        // those handed out now, when that is not all of them.
        described::describe(terms, &h.payload, handed.as_deref(), conversation)
    }

    /// Plans which of a chat's messages this session has not been handed yet, and says so; the
    /// messages handed, when not all of them, come back as their JSON text. Completions
    /// (fill-in-the-middle) are always whole and carry no conversation.
    async fn delta(&self, h: &Handout, full: bool) -> (Map<String, Value>, Option<Json>) {
        let mut out = Map::new();
        let Some(messages) = h.payload.messages().cloned() else {
            return (out, None);
        };
        // Digesting megabytes of messages runs on the blocking pool, not a worker thread. The
        // messages are read as the JSON text of each, never decoded.
        let (store, agent) = (self.broker.conversations.clone(), self.agent.clone());
        let (id, session_id) = (h.id.clone(), h.session_id.clone());
        let planned = tokio::task::spawn_blocking(move || {
            let items = messages.items().unwrap_or_default();
            let plan = store.plan(&agent, &id, session_id.as_deref(), &items, full);
            let handed = (plan.from > 0).then(|| json_text(&items[plan.from.min(items.len())..]));
            (plan, handed)
        })
        .await;
        let (plan, handed) = match planned {
            Ok(planned) => planned,
            // Only a panic while digesting gets here: the messages go out whole.
            Err(err) => {
                tracing::error!(id = %h.id, %err, "could not plan the hand-out; handing it whole");
                return (out, None);
            }
        };
        if plan.from > 0 {
            out.insert(
                "earlier_messages".into(),
                json!(format!(
                    "messages 0 to {} of this conversation were handed to you before and are not repeated; \
                     if you no longer have them, call get_conversation with this request_id",
                    plan.from - 1
                )),
            );
        }
        metrics::chat_handed(plan.from > 0);
        out.insert("conversation_id".into(), json!(plan.conversation_id));
        out.insert("messages_from".into(), json!(plan.from));
        out.insert("messages_total".into(), json!(plan.total));
        (out, handed)
    }

    fn conversation(&self, args: ConversationArgs, caller: &Caller) -> Result<Value, String> {
        let request_id = match (args.request_id, args.conversation_id) {
            (Some(id), None) => id,
            (None, Some(conversation)) => self
                .broker
                .conversations
                .latest_request(&conversation)
                .ok_or_else(|| format!("unknown conversation_id {conversation:?}: no request of it was handed out recently; use a request_id"))?,
            _ => return Err("give exactly one of request_id or conversation_id".into()),
        };
        let (session_id, payload) = self.broker.live_payload(&request_id).ok_or_else(|| {
            format!("request {request_id} is not waiting or being answered any more (only live requests are kept); call wait_for_request with full: true to get the next one whole")
        })?;
        // An agent reading the conversation of the request it holds is at work on it.
        self.broker.touch(&request_id, caller.session.as_deref());
        let Some(messages) = payload.messages() else {
            return Err(format!("request {request_id} is a text completion: it has no conversation; its prompt and suffix came whole"));
        };
        let messages = messages
            .items()
            .map_err(|err| format!("request {request_id} has malformed messages: {err}"))?;
        let mut page =
            conversation::page(&messages, args.from.unwrap_or(0), args.offset.unwrap_or(0))?;
        page.insert("status".into(), json!("conversation"));
        page.insert("request_id".into(), json!(request_id));
        page.insert(
            "conversation_id".into(),
            json!(conversation::conversation_id(
                session_id.as_deref(),
                &messages
            )),
        );
        Ok(Value::Object(page))
    }
}

/// The agent names its own error codes, but not the transport's (`codes::TRANSPORT`): those
/// change how the gateway answers (a 503 with `retry-after` makes clients try again).
fn check_fail_code(code: &str) -> Result<(), String> {
    let well_formed = (1..=64).contains(&code.len())
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(format!(
            "code {code:?}: expected lower case letters, digits and underscores (up to 64), e.g. agent_error"
        ));
    }
    if provider_shared::bridge::codes::TRANSPORT.contains(&code) {
        return Err(format!(
            "code {code:?} is mcp-local-provider's own; give agent_error or a code of yours"
        ));
    }
    Ok(())
}

fn ok(tool: &'static str, value: Value) -> CallToolResult {
    metrics::tool_call(tool, true);
    CallToolResult::success(vec![ContentBlock::text(value.to_string())])
}

/// A result already written as JSON text (a hand-out, whose prompt is not encoded again).
fn ok_text(tool: &'static str, text: Json) -> CallToolResult {
    metrics::tool_call(tool, true);
    // The text moves into the result, not copied.
    let text: Box<str> = text.into();
    CallToolResult::success(vec![ContentBlock::text(String::from(text))])
}

fn refused(tool: &'static str, message: String) -> CallToolResult {
    metrics::tool_call(tool, false);
    tracing::info!(tool, %message, "tool call refused");
    CallToolResult::error(vec![ContentBlock::text(message)])
}

#[tool_router]
impl McpServer {
    /// Waits for the next editor request and hands it to you under a lease. Returns
    /// {"status":"request", request_id, lease_id, lease_seconds, session_id, kind, stream,
    /// messages, parameters, answer_with} or {"status":"idle"} (call again).
    /// In a conversation already handed to this session, `messages` holds only the new
    /// messages, `messages_from` the index of the first; pass fresh: true on the first call of
    /// a new chat, full: true to get one request whole.
    #[tool(annotations(read_only_hint = false, open_world_hint = false))]
    async fn wait_for_request(
        &self,
        Parameters(args): Parameters<WaitArgs>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        if args.fresh == Some(true) {
            self.broker.conversations.forget(&self.agent);
        }
        let full = args.full == Some(true);
        let caller = Caller::of(&context);
        ok_text(
            "wait_for_request",
            self.poll(args.timeout_seconds, full, &caller).await,
        )
    }

    /// The whole conversation of a live request (request_id) or of a conversation_id, paged:
    /// each result holds at most 64 KiB of messages; call again with next.from (and
    /// next.offset) until next is null. A message larger than a page comes in message_part
    /// slices of its JSON text, to be joined.
    #[tool(annotations(read_only_hint = true, open_world_hint = false))]
    async fn get_conversation(
        &self,
        Parameters(args): Parameters<ConversationArgs>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        match self.conversation(args, &Caller::of(&context)) {
            Ok(page) => ok("get_conversation", page),
            Err(why) => refused("get_conversation", why),
        }
    }

    /// Sends your answer to a request, whole or in parts (done: false for all but the last).
    /// Optionally waits for the next request in the same call (wait_for_next).
    #[tool(annotations(open_world_hint = false))]
    async fn submit_response(
        &self,
        Parameters(args): Parameters<SubmitArgs>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let part = Part {
            content: args.content,
            reasoning: args.reasoning,
            tool_calls: args.tool_calls,
            done: args.done,
            finish_reason: args.finish_reason,
            usage: args.usage,
            number: args.part,
        };
        let submitted = match self.broker.submit(&args.request_id, &args.lease_id, part) {
            Ok(s) => s,
            Err(refusal) => return refused("submit_response", refusal.0),
        };
        // A reply proves the agent read the request as it was handed.
        self.broker
            .conversations
            .acknowledge(&self.agent, &args.request_id);
        let next = if submitted.done && args.wait_for_next == Some(true) {
            Some(
                self.poll(args.timeout_seconds, false, &Caller::of(&context))
                    .await,
            )
        } else {
            None
        };
        let out = Submitted {
            status: if submitted.done {
                "answered"
            } else {
                "part_sent"
            },
            request_id: &args.request_id,
            chunks_sent: submitted.chunks_sent,
            next,
        };
        ok_text("submit_response", json_text(&out))
    }

    /// Ends a request with an error the editor shows, when you cannot answer it.
    #[tool(annotations(open_world_hint = false))]
    async fn fail_request(&self, Parameters(args): Parameters<FailArgs>) -> CallToolResult {
        let code = args.code.as_deref().unwrap_or("agent_error");
        if let Err(why) = check_fail_code(code) {
            return refused("fail_request", why);
        }
        match self
            .broker
            .fail(&args.request_id, &args.lease_id, code, &args.reason)
        {
            Ok(()) => {
                self.broker
                    .conversations
                    .acknowledge(&self.agent, &args.request_id);
                ok(
                    "fail_request",
                    json!({"status": "failed", "request_id": args.request_id}),
                )
            }
            Err(refusal) => refused("fail_request", refusal.0),
        }
    }

    /// The queue: waiting and leased requests, connected bridge-agents, and counts of
    /// answered, failed, cancelled and withdrawn requests and lapsed leases.
    #[tool(annotations(read_only_hint = true, open_world_hint = false))]
    async fn get_status(&self) -> CallToolResult {
        ok("get_status", self.broker.status())
    }
}

#[prompt_router]
impl McpServer {
    /// How to serve editor requests through this bridge: the wait_for_request / submit_response loop.
    #[prompt(name = "serve_editor_requests")]
    async fn serve_editor_requests(&self) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(Role::User, SERVE_PROMPT)]
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for McpServer {
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<rmcp::RoleServer>) {
        crate::sampling::start(&self.broker, context.peer);
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .build(),
        )
        .with_server_info(rmcp::model::Implementation::new(
            "mcp-local-provider",
            provider_shared::VERSION,
        ))
        .with_instructions(
            "Serves VoidEditor chat requests to you: loop on wait_for_request and answer each with \
             submit_response (see the serve_editor_requests prompt).",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_cannot_speak_for_the_transport() {
        assert!(check_fail_code("agent_error").is_ok());
        assert!(check_fail_code("cannot_edit_files").is_ok());
        for bad in [
            "shutting_down",
            "agent_unavailable",
            "slow_client",
            "",
            "Bad",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(check_fail_code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cursor_rule_says_what_the_prompt_says() {
        let rule = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/cursor/serve-editor-requests.mdc"
        ))
        .unwrap();
        let body = rule.splitn(3, "---\n").nth(2).unwrap();
        assert_eq!(body, SERVE_PROMPT);
    }
}
