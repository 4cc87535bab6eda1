//! What the listener's handlers share: the broker, the tokens, and the bridge-agent
//! connections' tasks. Its own module, so that `app.rs` (the router) and `ws.rs` (bridge-agent's
//! WebSocket) both use it without importing each other.
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Token;
use crate::broker::Broker;

pub struct App {
    pub broker: Arc<Broker>,
    pub bridge_token: Token,
    pub http_token: Token,
    pub bridge_id: String,
    /// bridge-agent connections, so shutdown can wait for their last frames.
    pub tasks: TaskTracker,
    /// Requests are done: close the bridge-agent connections.
    pub closing: CancellationToken,
}
