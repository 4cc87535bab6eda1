//! Metric names and their descriptions, in one place.
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const QUEUE_DEPTH: &str = "mcp_bridge_queue_depth";
pub const LEASED: &str = "mcp_bridge_leased_requests";
pub const POLLERS: &str = "mcp_bridge_waiting_polls";
pub const AGENTS: &str = "mcp_bridge_bridge_agents_connected";
pub const REQUESTS: &str = "mcp_bridge_requests_total";
pub const LEASE_EXPIRIES: &str = "mcp_bridge_lease_expiries_total";
pub const AGENT_WAIT: &str = "mcp_bridge_agent_wait_seconds";
pub const ANSWER_TIME: &str = "mcp_bridge_answer_seconds";
pub const AUTH_FAILURES: &str = "mcp_bridge_auth_failures_total";
pub const TOOL_CALLS: &str = "mcp_bridge_tool_calls_total";
pub const CHAT_HANDOUTS: &str = "mcp_bridge_chat_handouts_total";
pub const HANDOUTS_RETURNED: &str = "mcp_bridge_handouts_returned_total";

/// Every `reason` label of [`HANDOUTS_RETURNED`].
pub const RETURN_REASONS: &[&str] = &["not_delivered", "poll_ended", "agent_left"];
pub const REFUSED: &str = "mcp_bridge_requests_refused_total";

/// Every `outcome` label of [`REQUESTS`].
const OUTCOMES: &[&str] = &[
    "answered",
    "failed",
    "cancelled",
    "withdrawn",
    "abandoned",
    "shutting_down",
];

/// Registers help text and zero values, so the series show from the start.
pub fn describe() {
    describe_gauge!(QUEUE_DEPTH, "Requests waiting for an agent to take them");
    describe_gauge!(LEASED, "Requests handed to an agent and not yet answered");
    describe_gauge!(POLLERS, "wait_for_request calls waiting right now");
    describe_gauge!(AGENTS, "Connected bridge-agent WebSockets");
    describe_counter!(REQUESTS, "Requests ended, by outcome");
    describe_counter!(
        LEASE_EXPIRIES,
        "Leases that lapsed before the agent finished its answer"
    );
    describe_histogram!(
        AGENT_WAIT,
        Unit::Seconds,
        "From model_invoke to the first hand-out: time waiting for the agent"
    );
    describe_histogram!(
        ANSWER_TIME,
        Unit::Seconds,
        "From the first hand-out to the end of the request"
    );
    describe_counter!(
        AUTH_FAILURES,
        "Refused bearer tokens, by endpoint (ws or mcp)"
    );
    describe_counter!(TOOL_CALLS, "MCP tool calls, by tool and result");
    describe_counter!(
        REFUSED,
        "Requests refused before routing, by reason: host_not_allowed, origin_not_allowed, unsupported_media_type"
    );
    describe_counter!(
        CHAT_HANDOUTS,
        "Chats handed to an agent, by what was handed (delta: only new messages; whole)"
    );
    describe_counter!(
        HANDOUTS_RETURNED,
        "Hand-outs given back to the front of the queue because their agent was gone, by reason"
    );
    for reason in RETURN_REASONS {
        metrics::counter!(HANDOUTS_RETURNED, "reason" => *reason).absolute(0);
    }
    for handed in ["delta", "whole"] {
        metrics::counter!(CHAT_HANDOUTS, "handed" => handed).absolute(0);
    }
    queue(0, 0);
    pollers(0);
    agents(0);
    metrics::counter!(LEASE_EXPIRIES).absolute(0);
    for outcome in OUTCOMES {
        metrics::counter!(REQUESTS, "outcome" => *outcome).absolute(0);
    }
    for endpoint in ["ws", "mcp"] {
        metrics::counter!(AUTH_FAILURES, "endpoint" => endpoint).absolute(0);
    }
}

/// A hand-out went back to the queue: its answer never went out (`not_delivered`), its poll
/// ended as it came (`poll_ended`), or its agent's MCP session left (`agent_left`).
pub fn handout_returned(reason: &'static str) {
    metrics::counter!(HANDOUTS_RETURNED, "reason" => reason).increment(1);
}

pub fn queue(queued: usize, leased: usize) {
    metrics::gauge!(QUEUE_DEPTH).set(queued as f64);
    metrics::gauge!(LEASED).set(leased as f64);
}

pub fn pollers(n: usize) {
    metrics::gauge!(POLLERS).set(n as f64);
}

pub fn agents(n: usize) {
    metrics::gauge!(AGENTS).set(n as f64);
}

pub fn request_ended(outcome: &'static str) {
    metrics::counter!(REQUESTS, "outcome" => outcome).increment(1);
}

pub fn lease_expired() {
    metrics::counter!(LEASE_EXPIRIES).increment(1);
}

pub fn agent_wait(d: Duration) {
    metrics::histogram!(AGENT_WAIT).record(d.as_secs_f64());
}

pub fn answer_time(d: Duration) {
    metrics::histogram!(ANSWER_TIME).record(d.as_secs_f64());
}

pub fn auth_failed(endpoint: &'static str) {
    metrics::counter!(AUTH_FAILURES, "endpoint" => endpoint).increment(1);
}

pub fn tool_call(tool: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(TOOL_CALLS, "tool" => tool, "result" => result).increment(1);
}

/// One chat handed out, with only its new messages (`delta`) or whole.
pub fn chat_handed(delta: bool) {
    let handed = if delta { "delta" } else { "whole" };
    metrics::counter!(CHAT_HANDOUTS, "handed" => handed).increment(1);
}
