//! What every handler shares.
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::agent_client::AgentClient;
use crate::config::Settings;
use crate::ratelimit::BucketSpec;
use crate::store::Guarded;
use provider_shared::audit::Audit;

pub struct AppState {
    pub settings: Settings,
    /// Sessions and rate-limit buckets, behind the timeout and failure policy.
    pub store: Arc<Guarded>,
    pub agent: AgentClient,
    pub audit: Audit,
    pub concurrency: Arc<Semaphore>,
    /// Bytes of request bodies in flight (`MAX_BODY_BYTES_IN_FLIGHT`, `generate/body.rs`).
    pub bodies: crate::generate::body::Budget,
    pub started: Instant,
    /// Fires when shutdown begins: stop taking new work.
    pub shutdown: CancellationToken,
    /// Fires when the grace period after shutdown ends: cut what is still running.
    pub grace_over: CancellationToken,
    /// The rate-limit client behind the API key (sessions count against it too).
    pub key_client: String,
    /// The `created` time reported for the model: when this gateway started.
    pub models_created: u64,
    /// Which model names are answered (`MODEL_NAME`, `MODEL_ALIASES`).
    pub models: crate::models::Models,
    /// Requests in flight, recent errors and history for the status page.
    pub status: crate::status::board::Board,
    /// Every refusal (4xx) logged, repeats coalesced.
    pub refusals: crate::refusals::RefusalLog,
    /// Each generating request's own task (see `generate::drive`), so shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn rpm_spec(&self) -> BucketSpec {
        BucketSpec::per_minute(self.settings.rpm, self.settings.burst)
    }

    pub fn tpm_spec(&self) -> BucketSpec {
        BucketSpec::per_minute(self.settings.tpm, self.settings.tpm)
    }

    pub fn auth_failure_spec(&self) -> BucketSpec {
        BucketSpec::per_minute(
            self.settings.auth_failure_limit,
            self.settings.auth_failure_limit,
        )
    }
}
