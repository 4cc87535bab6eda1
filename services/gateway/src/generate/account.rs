//! The bookkeeping of one chat request, done exactly once however it ends (answered, failed, or
//! dropped by a client that went away): token reconciliation, the audit record, metrics.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use provider_shared::bridge::Usage;
use serde_json::json;
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
    pub prompt_sha256: String,
    pub started: Instant,
    pub first_chunk: Option<Instant>,
    pub permit: Option<OwnedSemaphorePermit>,
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

    /// Closes the books: `usage` as the agent reported it, else our own count.
    pub fn finish(
        &mut self,
        outcome: &str,
        agent_usage: Option<Usage>,
        completion_tokens: u64,
    ) -> Usage {
        let usage = match agent_usage {
            Some(u) if u.prompt_tokens + u.completion_tokens > 0 => Usage {
                total_tokens: u.prompt_tokens + u.completion_tokens,
                ..u
            },
            _ => Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens,
                total_tokens: self.prompt_tokens + completion_tokens,
            },
        };
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
            "outcome" => outcome.to_owned())
        .increment(1);
        metrics::counter!("gateway_tokens_total", "kind" => "prompt")
            .increment(usage.prompt_tokens);
        metrics::counter!("gateway_tokens_total", "kind" => "completion")
            .increment(usage.completion_tokens);

        // Give back what was reserved but not used (or charge what was used beyond it).
        let delta = self.reserved_tokens as i64 - usage.total_tokens as i64;
        if delta != 0 {
            let store = self.state.store.clone();
            let spec = self.state.tpm_spec();
            let key = format!("tpm:{}", self.client);
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
            json!({
                "request_id": self.request_id,
                "client_ip": self.client_ip.to_string(),
                "session_id": self.session_id,
                "model": self.state.settings.model_name,
                "requested_model": self.model,
                "stream": self.stream,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "tokens": usage.total_tokens,
                "success": success,
                "outcome": outcome,
                "duration_ms": elapsed.as_millis() as u64,
                "time_to_first_chunk_ms": self.first_chunk.map(|t| t.duration_since(self.started).as_millis() as u64),
                "prompt_sha256": self.prompt_sha256,
            }),
        );
        tracing::info!(request_id = %self.request_id, outcome, tokens = usage.total_tokens,
            duration_ms = elapsed.as_millis() as u64, "chat request finished");
        usage
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if !self.done {
            self.finish("cancelled", None, 0);
        }
    }
}
