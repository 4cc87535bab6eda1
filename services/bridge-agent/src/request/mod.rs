//! The requests in flight, routed without a task of their own (docs/ARCHITECTURE.md, "Every hop
//! of a chat"): the IPC reader starts a request and queues its `model_invoke` (or `model_resume`)
//! straight on the WebSocket writer's queue; the WebSocket reader hands each chunk and result
//! straight to the queue of the gateway connection that holds the request; one timer task owns
//! every request's deadlines. What a request's task used to keep (which gateway connection holds
//! it, the WebSocket it went out on, its `Resync` after a resume, the last chunk relayed) lives in
//! one table, [`Requests`], which both readers and the timer change under its lock.
//!
//! Whatever happens, the gateway gets exactly one `result` per request: a request leaves the
//! table in one place ([`table`]'s `finish`), which queues it.
use std::time::Duration;

use provider_shared::bridge::{ModelInvoke, ModelResult};

use crate::metrics::OutcomeLabel;

mod bridge;
mod gateway;
mod state;
mod table;
mod timers;
mod upstream;

pub use bridge::Link;
pub use gateway::{GatewayOut, GatewayQueue, Outgoing};
pub use table::{Requests, Started};
pub use timers::run_timers;

/// How a request ended: what to tell the gateway (if it is still there) and the metric label.
struct Ending {
    result: Option<ModelResult>,
    outcome: OutcomeLabel,
}

impl Ending {
    fn error(id: &str, outcome: OutcomeLabel, code: &str, message: impl Into<String>) -> Self {
        Ending {
            result: Some(ModelResult::error(id, code, message)),
            outcome,
        }
    }

    fn silent(outcome: OutcomeLabel) -> Self {
        Ending {
            result: None,
            outcome,
        }
    }
}

/// How the request begins on the bridge.
#[derive(Debug)]
pub enum Start {
    /// A new request.
    Invoke(ModelInvoke),
    /// A request a gateway re-attaches after the bridge-agent it was sent to went away.
    Resume {
        after_chunk_index: Option<u64>,
        /// How long it has been running, so its deadlines stay where they were.
        elapsed: Duration,
        /// The request, while no chunk has come (a bridge that answers the resume with "no such
        /// request" never got it, so it is sent afresh).
        invoke: Option<ModelInvoke>,
    },
}

#[cfg(test)]
mod tests;
