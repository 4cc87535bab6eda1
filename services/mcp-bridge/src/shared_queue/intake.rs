//! The bridge-agent side: frames from bridge-agent connections become writes to Redis, one at a
//! time in the order they came (a cancel never overtakes its request), and the requests of a
//! connection follow their answers back to it (`follow.rs`).
use std::sync::Arc;

use provider_shared::bridge::{codes, BridgeFrame, ModelInvoke, ModelResult, Outcome};
use provider_shared::ws_peer::Outbound;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{SharedQueue, LIVE_TTL, QUEUE_BOUND};
use crate::broker::Broker;
use crate::queue::Owner;

/// What a bridge-agent connection asks of the queue.
pub enum Command {
    Invoke {
        owner: Owner,
        agent_id: String,
        invoke: ModelInvoke,
        to: Outbound<BridgeFrame>,
        result_after_chunks: bool,
    },
    Resume {
        owner: Owner,
        agent_id: String,
        id: String,
        after_chunk_index: Option<u64>,
        to: Outbound<BridgeFrame>,
    },
    Cancel {
        owner: Owner,
        id: String,
    },
    /// The connection ended; `resumable`: its requests wait `RESUME_GRACE` for a resume
    /// (on any mcp-bridge), else they are withdrawn now.
    Left {
        owner: Owner,
        resumable: bool,
    },
}

impl Command {
    /// The queue cannot take it now: a request or resume gets its one result.
    pub(super) fn refuse(self, why: &str) {
        match self {
            Command::Invoke { invoke, to, .. } => {
                to.push_last(BridgeFrame::ModelResult(ModelResult::error(
                    &invoke.id,
                    codes::AGENT_UNAVAILABLE,
                    why,
                )));
            }
            Command::Resume { id, to, .. } => {
                to.push_last(BridgeFrame::ModelResult(ModelResult::error(
                    &id,
                    codes::BRIDGE_DISCONNECTED,
                    why,
                )));
            }
            Command::Cancel { id, .. } => tracing::warn!(%id, %why, "cancel not passed on"),
            Command::Left { owner, .. } => {
                tracing::warn!(owner, %why, "a closed connection's requests stay until they expire")
            }
        }
    }
}

impl SharedQueue {
    /// Handles the connections' commands until shutdown.
    pub(super) async fn intake(
        self: Arc<Self>,
        broker: Arc<Broker>,
        mut rx: mpsc::Receiver<Command>,
        stopping: CancellationToken,
    ) {
        loop {
            let command = tokio::select! {
                c = rx.recv() => c,
                _ = stopping.cancelled() => None,
            };
            let Some(command) = command else { return };
            self.handle(command, &broker).await;
        }
    }

    pub(super) fn follower(&self, owner: Owner) -> String {
        format!("{}/{owner}", self.instance)
    }

    async fn handle(self: &Arc<Self>, command: Command, broker: &Arc<Broker>) {
        match command {
            Command::Invoke {
                owner,
                agent_id,
                invoke,
                to,
                result_after_chunks,
            } => {
                self.enqueue(owner, &agent_id, invoke, to, result_after_chunks)
                    .await
            }
            Command::Resume {
                owner,
                agent_id,
                id,
                after_chunk_index,
                to,
            } => {
                self.resume(owner, &agent_id, id, after_chunk_index, to)
                    .await
            }
            Command::Cancel { owner, id } => {
                if !self.follows.remove_if_owner(&id, owner) {
                    tracing::debug!(%id, "model_cancel for an unknown or ended request");
                    return;
                }
                self.end_here(broker, &id, "cancelled", owner).await;
            }
            Command::Left { owner, resumable } => {
                let ids = self.follows.remove_owner(owner);
                if ids.is_empty() {
                    return;
                }
                if !resumable {
                    for id in ids {
                        self.end_here(broker, &id, "withdrawn", owner).await;
                    }
                    return;
                }
                tracing::info!(held = ids.len(), grace = ?self.resume_grace, "holding the requests of a vanished bridge-agent connection for a resume");
                let queue = self.clone();
                let broker_ = broker.clone();
                let span = tracing::info_span!("resume_grace", owner);
                broker.samplers.spawn(
                    async move {
                        tokio::select! {
                            _ = tokio::time::sleep(queue.resume_grace) => {}
                            _ = broker_.stopping.cancelled() => return,
                        }
                        // Ends only those no connection resumed meanwhile (their follower changed).
                        for id in ids {
                            queue.end_here(&broker_, &id, "withdrawn", owner).await;
                        }
                    }
                    .instrument(span),
                );
            }
        }
    }

    async fn enqueue(
        &self,
        owner: Owner,
        agent_id: &str,
        invoke: ModelInvoke,
        to: Outbound<BridgeFrame>,
        result_after_chunks: bool,
    ) {
        let id = invoke.id.clone();
        let refuse = |code: &str, why: String| {
            to.push_last(BridgeFrame::ModelResult(ModelResult::error(&id, code, why)));
        };
        let text = match serde_json::to_string(&invoke) {
            Ok(text) => text,
            Err(e) => return refuse("invalid_request", format!("cannot encode the request: {e}")),
        };
        drop(invoke);
        let follower = self.follower(owner);
        let bound = QUEUE_BOUND.to_string();
        let ttl = LIVE_TTL.as_millis().to_string();
        let rac = if result_after_chunks { "1" } else { "0" };
        let at = super::unix_ms().to_string();
        let queued: Result<Vec<String>, _> = self
            .eval(
                &self.scripts.enqueue,
                &[
                    self.keys.request(&id),
                    self.keys.requests(),
                    self.keys.parts(&id),
                ],
                &[&id, &text, agent_id, &follower, rac, &bound, &ttl, &at],
            )
            .await;
        match queued.as_ref().map(|r| r.first().map(String::as_str)) {
            Ok(Some("ok")) => {
                tracing::info!(%id, "request queued in Redis");
                self.follows.add(&id, to, owner, None);
            }
            Ok(Some("duplicate")) => {
                tracing::warn!(%id, "model_invoke with a live id refused");
                refuse(
                    codes::DUPLICATE_ID,
                    "a request with this id is already waiting for the agent".into(),
                );
            }
            Ok(Some("full")) => {
                tracing::warn!(%id, "the request queue is full; request refused");
                refuse(
                    codes::AGENT_UNAVAILABLE,
                    format!("the request queue holds its bound of {QUEUE_BOUND} requests; try again shortly"),
                );
            }
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(reply) => format!("unexpected reply {reply:?}"),
                };
                tracing::warn!(%id, %why, "the request queue (Redis) did not take the request");
                refuse(
                    codes::AGENT_UNAVAILABLE,
                    format!(
                        "the request queue (Redis at {}) is unavailable: {why}",
                        self.address()
                    ),
                );
            }
        }
    }

    async fn resume(
        &self,
        owner: Owner,
        agent_id: &str,
        id: String,
        after: Option<u64>,
        to: Outbound<BridgeFrame>,
    ) {
        let follower = self.follower(owner);
        let resumed: Result<String, _> = self
            .eval(
                &self.scripts.resume,
                &[self.keys.request(&id)],
                &[agent_id, &follower],
            )
            .await;
        let why = match resumed.as_deref() {
            Ok("ok") => {
                tracing::info!(%id, ?after, "request resumed from the Redis queue");
                self.follows.add(&id, to, owner, after);
                return;
            }
            Ok("other_agent") => "it was sent by another bridge-agent (agent_id)".to_owned(),
            Ok(_) => "the request queue does not hold it (it never arrived, or ended long ago)"
                .to_owned(),
            Err(e) => format!("the request queue (Redis) is unavailable: {e}"),
        };
        tracing::info!(%id, reason = %why, "model_resume refused");
        to.push_last(BridgeFrame::ModelResult(ModelResult::error(
            &id,
            codes::BRIDGE_DISCONNECTED,
            why,
        )));
    }

    /// Ends request `id` from this side (cancel, withdrawal), if connection `owner` of this
    /// mcp-bridge is still the one its answer goes to.
    async fn end_here(&self, broker: &Broker, id: &str, why: &str, owner: Owner) {
        let follower = self.follower(owner);
        match self.finish(id, why, None, None, Some(&follower)).await {
            Ok(true) => {
                tracing::info!(%id, outcome = why, "request ended");
                broker.audit.record(
                    "model_request",
                    json!({"request_id": id, "outcome": why, "success": false}),
                );
            }
            Ok(false) => tracing::debug!(%id, "already ended or resumed elsewhere"),
            Err(e) => {
                tracing::warn!(%id, error = %e, "could not end the request in Redis; it expires on its own")
            }
        }
    }
}

/// A failed result that tells bridge-agent the bridge held the request (docs/PROTOCOL.md,
/// resume), so it must not send it afresh.
pub(super) fn withdrawn(id: &str, why: String) -> ModelResult {
    let mut result = ModelResult::error(id, codes::BRIDGE_DISCONNECTED, why);
    if let Outcome::Error { error } = &mut result.outcome {
        error.details = Some(json!({ "withdrawn": true }));
    }
    result
}
