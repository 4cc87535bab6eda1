//! The agent side's answers: the chunks and results of requests held here go to their parts
//! streams in Redis, in order, one at a time. While Redis is down a frame is tried again (with a
//! back-off) rather than lost; the frames behind it wait in the sink's bounded queue.
use std::sync::Arc;

use provider_shared::bridge::{BridgeFrame, Outcome};
use redis::RedisError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{backoff, SharedQueue, GROUP, LIVE_TTL, PARTS_BOUND};
use crate::broker::Broker;

impl SharedQueue {
    /// Writes frames until `done` (after shutdown ended every local request) and the queue is
    /// empty.
    pub(super) async fn write_parts(
        self: Arc<Self>,
        broker: Arc<Broker>,
        mut rx: mpsc::Receiver<BridgeFrame>,
        done: CancellationToken,
    ) {
        loop {
            let frame = tokio::select! {
                biased;
                frame = rx.recv() => frame,
                _ = done.cancelled() => match rx.try_recv() {
                    Ok(frame) => Some(frame),
                    Err(_) => return,
                },
            };
            let Some(frame) = frame else { return };
            self.write(&broker, frame, &done).await;
        }
    }

    async fn write(&self, broker: &Broker, frame: BridgeFrame, done: &CancellationToken) {
        let mut failures = 0u32;
        loop {
            let written = match &frame {
                BridgeFrame::ModelStreamChunk(chunk) => self.append(&chunk.id, &frame).await,
                BridgeFrame::ModelResult(result) => {
                    let why = match result.outcome {
                        Outcome::Ok { .. } => "answered",
                        Outcome::Error { .. } => "failed",
                    };
                    let ended = self
                        .finish(&result.id, why, Some(result), Some(&self.instance), None)
                        .await;
                    if ended.is_ok() {
                        self.held().remove(&result.id);
                    }
                    ended
                }
                _ => return,
            };
            let id = match &frame {
                BridgeFrame::ModelStreamChunk(c) => c.id.as_str(),
                BridgeFrame::ModelResult(r) => r.id.as_str(),
                _ => "",
            };
            match written {
                Ok(true) => return,
                Ok(false) => {
                    // Ended elsewhere (cancelled, withdrawn) or handed to another mcp-bridge
                    // after its lease lapsed here: the agent's further parts are refused.
                    tracing::info!(%id, "the request is no longer held here; its part is dropped");
                    broker.drop_shared(id);
                    self.held().remove(id);
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if done.is_cancelled() && failures > 3 {
                        tracing::error!(%id, error = %e, "shutting down with Redis unreachable; a part of the answer is lost");
                        return;
                    }
                    tracing::warn!(%id, error = %e, failures, "could not write a part to Redis; trying again");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// A chunk of request `id`, if it is still held here.
    async fn append(&self, id: &str, frame: &BridgeFrame) -> Result<bool, RedisError> {
        let text = frame.to_text();
        let bound = PARTS_BOUND.to_string();
        let ttl = LIVE_TTL.as_millis().to_string();
        let appended: i64 = self
            .eval(
                &self.scripts.append,
                &[
                    self.keys.request(id),
                    self.keys.parts(id),
                    self.keys.requests(),
                ],
                &[&text, &self.instance, GROUP, &bound, &ttl],
            )
            .await?;
        Ok(appended == 1)
    }
}
