//! The bookkeeping of one chat request, done exactly once however it ends (answered, failed, or
//! dropped by a client that went away): token reconciliation, the audit record, metrics.
//!
//! The agent's usage figures are advisory: it reads prompt text anyone can write, so what it
//! reports is shown to the client only within what is possible ([`clamp`]), and the budget is
//! charged what the gateway measured itself: the prompt it tokenized, and the answer it relayed,
//! tokenized when the agent reported no usage, else estimated from its length (four bytes a
//! token), so that an answer is not tokenized only to charge the budget while the client is shown
//! the agent's figure.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use provider_shared::bridge::{codes, Usage};
use tokio::sync::OwnedSemaphorePermit;

use super::overhead::Overhead;
use crate::state::Shared;

pub struct Accounting {
    pub state: Shared,
    pub request_id: String,
    /// The model name the client asked for.
    pub model: String,
    pub client: String,
    pub session_id: Option<String>,
    pub client_ip: IpAddr,
    pub stream: bool,
    pub prompt_tokens: u64,
    /// What the request took from the token bucket up front.
    pub reserved_tokens: u64,
    /// The most completion tokens the answer can have: the request's `max_tokens`, else what
    /// the context window leaves after the prompt.
    pub output_cap: u64,
    pub prompt_sha256: String,
    pub started: Instant,
    pub first_chunk: Option<Instant>,
    pub permit: Option<OwnedSemaphorePermit>,
    /// The bytes of answer relayed so far: what a request dropped before its end is charged
    /// for (about four a token).
    pub relayed_bytes: usize,
    pub done: bool,
    /// The gateway's own time for this request; recorded when its last holder lets go.
    pub overhead: Arc<Overhead>,
}

impl Accounting {
    pub fn begin(mut self) -> Self {
        metrics::gauge!("gateway_requests_in_flight").increment(1.0);
        self.done = false;
        self
    }

    pub fn mark_first_chunk(&mut self) {
        if self.first_chunk.is_none() {
            let now = Instant::now();
            let after = now.duration_since(self.started);
            metrics::histogram!("gateway_time_to_first_chunk_seconds").record(after.as_secs_f64());
            self.state.status.first_chunk(&self.request_id, after);
            self.first_chunk = Some(now);
        }
    }

    /// Closes the books of a request whose answer the gateway measured itself
    /// (`completion_tokens`: counted, or estimated for an answer that ended early), and returns
    /// the usage the client is shown. The budget is charged the same.
    pub fn finish(&mut self, outcome: &str, completion_tokens: u64) -> Usage {
        let counted = usage(self.prompt_tokens, completion_tokens);
        self.close(outcome, counted, counted)
    }

    /// Closes the books of an answer whose usage the agent `reported`: the client is shown it
    /// within what is possible; the budget is charged the prompt as counted and the answer's
    /// `estimated` tokens (from its length), never the agent's figures.
    pub fn finish_reported(&mut self, outcome: &str, reported: Usage, estimated: u64) -> Usage {
        let shown = clamp(reported, self.prompt_tokens, self.output_cap);
        let charged = usage(self.prompt_tokens, estimated);
        self.close(outcome, shown, charged)
    }

    /// Closes the books once: the client is shown `usage`, the budget is charged `charged`.
    fn close(&mut self, outcome: &str, usage: Usage, charged: Usage) -> Usage {
        if self.done {
            return usage;
        }
        self.done = true;
        self.permit = None;
        self.state.status.finished(&self.request_id, outcome);
        metrics::gauge!("gateway_requests_in_flight").decrement(1.0);
        let success = outcome == "ok";
        let elapsed = self.started.elapsed();
        metrics::histogram!("gateway_chat_duration_seconds").record(elapsed.as_secs_f64());
        metrics::counter!("gateway_chat_requests_total",
            "stream" => if self.stream { "true" } else { "false" },
            "outcome" => outcome_label(outcome))
        .increment(1);
        metrics::counter!("gateway_tokens_total", "kind" => "prompt")
            .increment(usage.prompt_tokens);
        metrics::counter!("gateway_tokens_total", "kind" => "completion")
            .increment(usage.completion_tokens);

        // Give back what was reserved but not used (or charge what was used beyond it).
        let delta = i128::from(self.reserved_tokens) - i128::from(charged.total_tokens);
        let delta = i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX });
        if delta != 0 {
            let store = self.state.store.clone();
            let spec = self.state.tpm_spec();
            let key = super::admission::token_bucket(&self.client);
            let span = tracing::info_span!("reconcile_tokens", request_id = %self.request_id);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    if let Err(err) = store.adjust(&key, spec, delta).await {
                        tracing::warn!(%err, "could not reconcile the token budget");
                    }
                },
                span,
            ));
        }
        self.state.audit.record(
            "model_request",
            ModelRequest {
                request_id: &self.request_id,
                client_ip: self.client_ip,
                session_id: self.session_id.as_deref(),
                model: &self.state.settings.model_name,
                requested_model: &self.model,
                stream: self.stream,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                tokens: usage.total_tokens,
                success,
                outcome,
                duration_ms: elapsed.as_millis() as u64,
                time_to_first_chunk_ms: self
                    .first_chunk
                    .map(|t| t.duration_since(self.started).as_millis() as u64),
                prompt_sha256: &self.prompt_sha256,
            },
        );
        tracing::info!(request_id = %self.request_id, outcome, tokens = usage.total_tokens,
            duration_ms = elapsed.as_millis() as u64, "chat request finished");
        usage
    }
}

/// The audit line of a chat request, serialized straight from the request's own fields: every
/// request writes one, so it builds no map on the way (docs/operations.md lists its fields).
#[derive(serde::Serialize)]
struct ModelRequest<'a> {
    request_id: &'a str,
    client_ip: IpAddr,
    session_id: Option<&'a str>,
    model: &'a str,
    requested_model: &'a str,
    stream: bool,
    prompt_tokens: u64,
    completion_tokens: u64,
    tokens: u64,
    success: bool,
    outcome: &'a str,
    duration_ms: u64,
    time_to_first_chunk_ms: Option<u64>,
    prompt_sha256: &'a str,
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
    }
}

/// The agent's `reported` usage within what is possible: no more prompt tokens than the gateway
/// counted in the prompt it sent, no more completion tokens than `output_cap`.
pub fn clamp(reported: Usage, prompt_tokens: u64, output_cap: u64) -> Usage {
    usage(
        reported.prompt_tokens.min(prompt_tokens),
        reported.completion_tokens.min(output_cap),
    )
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if !self.done {
            let estimated = (self.relayed_bytes as u64).div_ceil(4);
            self.finish("cancelled", estimated);
        }
    }
}

/// The `outcome` label of `gateway_chat_requests_total`: `ok`, and the codes the gateway, the
/// transport and mcp-bridge give, as they are; any other code (one the agent chose in
/// `fail_request`) is `other`, so that the agent cannot add series. The audit log and the status
/// page keep the code itself.
pub fn outcome_label(outcome: &str) -> &'static str {
    const OWN: &[&str] = &[
        "ok",
        "agent_error",
        "agent_timeout",
        "sampling_failed",
        "invalid_request",
        "bridge_agent_disconnected",
        "bridge_agent_unavailable",
        "internal_error",
    ];
    OWN.iter()
        .chain(codes::TRANSPORT)
        .find(|code| **code == outcome)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_figures_are_held_to_what_is_possible() {
        let claimed = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: 1_000_000_000_000_000_000,
            total_tokens: 7,
        };
        assert_eq!(clamp(claimed, 120, 64), usage(120, 64));
        let modest = usage(100, 30);
        assert_eq!(clamp(modest, 120, 64), modest);
        assert_eq!(usage(u64::MAX, 1).total_tokens, u64::MAX);
    }

    #[test]
    fn outcomes_the_agent_invents_are_one_label() {
        for known in [
            "ok",
            "cancelled",
            "slow_client",
            "agent_error",
            "response_timeout",
        ] {
            assert_eq!(outcome_label(known), known);
        }
        for invented in ["my_code_1", "my_code_2", "x"] {
            assert_eq!(outcome_label(invented), "other");
        }
    }
}
