//! The path every generating route shares (OpenAI chat and completions, the Responses and
//! Messages APIs, Ollama chat and generate): each route parses its own body into a [`Job`];
//! [`preamble`] authenticates, reads, admits and dispatches it in one order for all of them; the
//! agent's frames come back as [`drive::Piece`]s that each API renders in its own format.
//!
//! - `job.rs`: the [`Job`] a route builds, and the [`Ask`] every API makes.
//! - `preamble.rs`: authentication, the body, admission, the prompt's count, dispatch.
//! - `body.rs`: reading a body within its cap and the budget for bodies in flight.
//! - `admission.rs`: the takes from the client's request and token buckets, and their 429s.
//! - `drive.rs`: the request's own task, frames in, pieces out; `outbox.rs` holds the pieces.
//! - `account.rs`: the books, closed once; `overhead.rs`: the gateway's own time.
//! - `pool.rs`: large work on the blocking pool, small work where it is.
use std::time::Duration;

use crate::ratelimit::RateHeaders;

mod account;
mod admission;
pub mod body;
pub mod drive;
mod job;
mod outbox;
pub mod overhead;
mod pool;
mod preamble;

pub use body::{read_body, SMALL_BODY_BYTES};
pub use drive::{Piece, Pieces};
pub use job::{Ask, Encoded, Job, Prompt};
pub use pool::{off_thread_if_large, on_pool_if_over};
pub use preamble::{arrive, arrive_as, check_context, Arrival};

/// A job the agent is working on.
pub struct Running {
    pub id: String,
    pub created: u64,
    pub rate: RateHeaders,
    /// Gateway time before the request reached bridge-agent.
    pub pre_dispatch: Duration,
    /// The gateway's own time for the whole request, added to as the answer is rendered.
    pub overhead: std::sync::Arc<overhead::Overhead>,
    /// The prompt's token count, as admitted.
    pub prompt_tokens: u64,
    pub pieces: Pieces,
}

pub fn unix_seconds() -> u64 {
    crate::store::now_ms() / 1000
}
