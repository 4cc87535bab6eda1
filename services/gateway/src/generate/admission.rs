//! Admission's two takes from the client's rate-limit buckets (docs/ARCHITECTURE.md, "Admission:
//! two store calls"): one request before the prompt is counted, then its tokens once it is; and
//! the 429 each refusal answers, with OpenAI's rate headers.
use std::net::SocketAddr;

use serde_json::json;

use crate::error::Error;
use crate::ratelimit::{RateHeaders, Take};
use crate::state::AppState;
use crate::store::BucketKey;

/// The rate-limit bucket a request takes one from at admission.
#[derive(Debug, Clone, Copy)]
pub enum Bucket {
    /// Generating requests (`RATE_LIMIT_RPM`).
    Requests,
    /// `count_tokens`, with the same rate in a bucket of its own.
    Counts,
}

impl Bucket {
    pub(super) fn name(self) -> &'static str {
        match self {
            Bucket::Requests => "requests",
            Bucket::Counts => "counts",
        }
    }

    pub(super) fn key(self, client: &str) -> String {
        match self {
            Bucket::Requests => format!("rpm:{client}"),
            Bucket::Counts => format!("count:{client}"),
        }
    }
}

/// What a request reserves from its client's token bucket: its prompt and the output it may
/// use (its cap, at most `output_reservation`, `RATE_LIMIT_OUTPUT_RESERVATION`: coding clients ask for
/// 32,000 to 128,000 output tokens on every request and use a few hundred), at most the whole
/// bucket. A request larger than the bucket (a long conversation, or a `RATE_LIMIT_TPM` below the
/// context window) waits for a full bucket rather than being refused: only the context window
/// refuses a request for its size. What it uses beyond the reservation is charged when it ends
/// (`account.rs`), so the client's next requests wait that much longer.
pub fn reservation(prompt_tokens: u64, output: u64, output_reservation: u64, tpm: u64) -> u64 {
    prompt_tokens
        .saturating_add(output.min(output_reservation))
        .min(tpm)
}

/// The client's token bucket (`RATE_LIMIT_TPM`).
pub(super) fn token_bucket(client: &str) -> String {
    format!("tpm:{client}")
}

/// Takes one request from the client's `bucket` (at `RATE_LIMIT_RPM`), or explains the 429. One
/// store call: the token bucket's level, which a refusal's headers report, comes with it.
pub(super) async fn take_request(
    state: &AppState,
    client: &str,
    peer: SocketAddr,
    bucket: Bucket,
) -> Result<Take, Error> {
    let (request_key, token_key) = (bucket.key(client), token_bucket(client));
    let (requests, tokens) = state
        .store
        .take_request(
            BucketKey {
                key: &request_key,
                spec: state.rpm_spec(),
            },
            BucketKey {
                key: &token_key,
                spec: state.tpm_spec(),
            },
        )
        .await?;
    if requests.allowed {
        return Ok(requests);
    }
    metrics::counter!("gateway_rate_limited_total", "kind" => bucket.name()).increment(1);
    audit_limit(
        state,
        peer,
        bucket.name(),
        state.settings.rpm,
        state.settings.rpm,
    );
    Err(Error::RateLimited {
        kind: "requests",
        message: format!(
            "rate limit reached: {} requests per minute (bursts of {}); try again in {}s",
            state.settings.rpm,
            state.settings.burst,
            crate::error::retry_after_secs(requests.retry_after)
        ),
        retry_after: requests.retry_after,
        headers: Some(headers_of(state, &requests, &tokens)),
    })
}

/// Reserves `reserved` tokens from the client's token bucket, or explains the 429. A request
/// refused here does not count against the request budget: the same store call gives its
/// request back.
pub(super) async fn reserve_tokens(
    state: &AppState,
    client: &str,
    peer: SocketAddr,
    reserved: u64,
    requests: &Take,
) -> Result<Take, Error> {
    let (request_key, token_key) = (Bucket::Requests.key(client), token_bucket(client));
    let tokens = state
        .store
        .reserve_tokens(
            BucketKey {
                key: &token_key,
                spec: state.tpm_spec(),
            },
            reserved,
            BucketKey {
                key: &request_key,
                spec: state.rpm_spec(),
            },
        )
        .await?;
    if tokens.allowed {
        return Ok(tokens);
    }
    metrics::counter!("gateway_rate_limited_total", "kind" => "tokens").increment(1);
    let used = state.settings.tpm.saturating_sub(tokens.remaining);
    audit_limit(state, peer, "tokens", used, state.settings.tpm);
    Err(Error::RateLimited {
        kind: "tokens",
        message: format!(
            "rate limit reached: {} tokens per minute; this request reserves {reserved}; try again in {}s",
            state.settings.tpm,
            crate::error::retry_after_secs(tokens.retry_after)
        ),
        retry_after: tokens.retry_after,
        headers: Some(headers_of(state, requests, &tokens)),
    })
}

pub(super) fn headers_of(state: &AppState, requests: &Take, tokens: &Take) -> RateHeaders {
    RateHeaders {
        limit_requests: state.settings.rpm,
        remaining_requests: requests.remaining,
        reset_requests: requests.reset_after,
        limit_tokens: state.settings.tpm,
        remaining_tokens: tokens.remaining,
        reset_tokens: tokens.reset_after,
    }
}

fn audit_limit(state: &AppState, peer: SocketAddr, kind: &str, current: u64, limit: u64) {
    state.audit.record_repeated(
        "rate_limit_exceeded",
        json!({"client_ip": peer.ip().to_string(), "limit_type": kind, "current": current, "limit": limit}),
        &["current", "limit"],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_at_most_the_whole_bucket() {
        // Claude Code: an 11k prompt asking 128000 out of the default 100000 a minute holds the
        // prompt and the default 8192 of output; without the output bound, prompt and cap.
        assert_eq!(reservation(11_000, 128_000, 8192, 100_000), 19_192);
        assert_eq!(reservation(11_000, 32_000, u64::MAX, 100_000), 43_000);
        // A small cap is reserved whole.
        assert_eq!(reservation(11_000, 500, 8192, 100_000), 11_500);
        // A conversation near the window is never refused for the budget: it takes it all.
        assert_eq!(reservation(150_000, 32_000, 8192, 100_000), 100_000);
        assert_eq!(reservation(u64::MAX, 1, 8192, 100_000), 100_000);
    }
}
