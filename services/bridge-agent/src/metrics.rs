//! Metric names and their descriptions, in one place.
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const WS_CONNECTED: &str = "bridge_agent_ws_connected";
pub const WS_RECONNECTS: &str = "bridge_agent_ws_reconnects_total";
pub const WS_CONNECT_FAILURES: &str = "bridge_agent_ws_connect_failures_total";
pub const REQUESTS_IN_FLIGHT: &str = "bridge_agent_requests_in_flight";
pub const REQUESTS: &str = "bridge_agent_requests_total";
pub const TIME_TO_FIRST_CHUNK: &str = "bridge_agent_time_to_first_chunk_seconds";
pub const REQUEST_DURATION: &str = "bridge_agent_request_duration_seconds";
pub const GATEWAY_CONNECTIONS: &str = "bridge_agent_gateway_connections";
pub const FRAMES_DROPPED: &str = "bridge_agent_frames_dropped_total";
pub const RESUMED: &str = "bridge_agent_requests_resumed_total";
pub const REATTACHED: &str = "bridge_agent_requests_reattached_total";
pub const REFUSED: &str = "bridge_agent_requests_refused_total";

/// Registers help text and units; the names then show on /metrics even before first use.
pub fn describe() {
    describe_gauge!(
        WS_CONNECTED,
        "1 while the MCP bridge WebSocket is connected, else 0"
    );
    describe_counter!(
        WS_RECONNECTS,
        "Successful WebSocket connects after the first"
    );
    describe_counter!(WS_CONNECT_FAILURES, "Failed WebSocket connection attempts");
    describe_gauge!(
        REQUESTS_IN_FLIGHT,
        "Requests accepted from gateways and not yet answered"
    );
    describe_counter!(REQUESTS, "Requests answered, by outcome");
    describe_histogram!(
        TIME_TO_FIRST_CHUNK,
        Unit::Seconds,
        "From sending model_invoke to the first chunk or result"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "From receiving an invoke to sending its result"
    );
    describe_gauge!(
        GATEWAY_CONNECTIONS,
        "Open gateway connections on the Unix socket"
    );
    describe_counter!(
        FRAMES_DROPPED,
        "Bridge frames logged and dropped, by reason"
    );
    describe_counter!(
        RESUMED,
        "Requests carried over to a new WebSocket with model_resume after the old one dropped"
    );
    describe_counter!(
        REATTACHED,
        "Requests whose gateway connection dropped, taken up again by the gateway's resume on a new one"
    );
    describe_counter!(
        REFUSED,
        "HTTP requests refused before routing, by reason: host_not_allowed, origin_not_allowed, unsupported_media_type"
    );
    // Zero values, so dashboards and alerts see the series from the start.
    metrics::gauge!(WS_CONNECTED).set(0.0);
    metrics::gauge!(REQUESTS_IN_FLIGHT).set(0.0);
    metrics::gauge!(GATEWAY_CONNECTIONS).set(0.0);
    metrics::counter!(WS_RECONNECTS).absolute(0);
    metrics::counter!(WS_CONNECT_FAILURES).absolute(0);
    metrics::counter!(RESUMED).absolute(0);
    metrics::counter!(REATTACHED).absolute(0);
    for outcome in OutcomeLabel::ALL {
        metrics::counter!(REQUESTS, "outcome" => outcome.as_str()).absolute(0);
    }
    for reason in DROP_REASONS {
        metrics::counter!(FRAMES_DROPPED, "reason" => *reason).absolute(0);
    }
}

/// Every `reason` label of [`FRAMES_DROPPED`].
pub const DROP_REASONS: &[&str] = &[
    "unknown_id",
    // No longer counted: a request leaves the table as its result is handled, so a later frame
    // finds its id gone (`unknown_id`). Kept so the series dashboards read stays.
    "after_result",
    "not_sent",
    "unknown_type",
    "malformed",
    "unexpected",
    "replayed",
];

/// How a request ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeLabel {
    Ok,
    Error,
    Cancelled,
    Timeout,
    Unavailable,
    Disconnected,
    /// Left in flight for the next bridge-agent to resume (an orderly stop).
    HandedOver,
}

impl OutcomeLabel {
    pub const ALL: [OutcomeLabel; 7] = [
        OutcomeLabel::Ok,
        OutcomeLabel::Error,
        OutcomeLabel::Cancelled,
        OutcomeLabel::Timeout,
        OutcomeLabel::Unavailable,
        OutcomeLabel::Disconnected,
        OutcomeLabel::HandedOver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeLabel::Ok => "ok",
            OutcomeLabel::Error => "error",
            OutcomeLabel::Cancelled => "cancelled",
            OutcomeLabel::Timeout => "timeout",
            OutcomeLabel::Unavailable => "unavailable",
            OutcomeLabel::Disconnected => "disconnected",
            OutcomeLabel::HandedOver => "handed_over",
        }
    }
}

pub fn count_request(outcome: OutcomeLabel) {
    metrics::counter!(REQUESTS, "outcome" => outcome.as_str()).increment(1);
}

pub fn frame_dropped(reason: &'static str) {
    metrics::counter!(FRAMES_DROPPED, "reason" => reason).increment(1);
}

pub fn gauge_in_flight(n: usize) {
    metrics::gauge!(REQUESTS_IN_FLIGHT).set(n as f64);
}

pub fn ws_connected(up: bool) {
    metrics::gauge!(WS_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

pub fn gateway_connections(n: usize) {
    metrics::gauge!(GATEWAY_CONNECTIONS).set(n as f64);
}
