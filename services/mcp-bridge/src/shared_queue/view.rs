//! What every mcp-bridge on the queue sees alike: the queue's depth and leases, the polls and
//! bridge-agents of all of them (each one writes its own figures every second), and the news
//! that a request ended elsewhere (pub/sub), so a request held here stops taking parts at once.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};
use redis::RedisError;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{backoff, lock, unix_ms, SharedQueue, GROUP};
use crate::broker::Broker;

const EVERY: Duration = Duration::from_secs(1);
/// An mcp-bridge not heard from for this long is left out of the figures.
const FRESH_MS: u64 = 10_000;
/// ... and after this long its line is removed.
const STALE_MS: u64 = 60_000;
/// A consumer (a stopped mcp-bridge) with nothing pending, idle this long, is removed from the
/// group, so names do not pile up across restarts.
const CONSUMER_IDLE: Duration = Duration::from_secs(600);

/// The queue as all mcp-bridges on it see it.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Redis answered the last refresh.
    pub available: bool,
    pub error: Option<String>,
    /// Requests no mcp-bridge has read yet, or given back.
    pub queued: u64,
    /// Requests read by an mcp-bridge for its agents (pending entries).
    pub leased: u64,
    pub waiting_polls: u64,
    pub bridge_agents: u64,
    pub bridges: u64,
}

impl View {
    pub fn to_json(&self, address: &str) -> Value {
        json!({"kind": "redis", "address": address, "available": self.available,
               "error": self.error, "mcp_bridges": self.bridges})
    }
}

impl SharedQueue {
    /// Refreshes [`View`] every second until shutdown.
    pub(super) async fn watch(self: Arc<Self>, broker: Arc<Broker>, stopping: CancellationToken) {
        let mut tick = 0u64;
        loop {
            if !lock(&self.view).available {
                // The stream and its group, made here too: XINFO needs them, and an mcp-bridge
                // whose agents never poll would not make them otherwise.
                let _ = self.ensure_group().await;
            }
            let refreshed = self.refresh(&broker, tick.is_multiple_of(60)).await;
            {
                let mut view = lock(&self.view);
                match refreshed {
                    Ok(fresh) => *view = fresh,
                    Err(e) => {
                        view.available = false;
                        view.error = Some(e.to_string());
                    }
                }
            }
            tick += 1;
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stopping.cancelled() => return,
            }
        }
    }

    async fn refresh(&self, broker: &Broker, tidy: bool) -> Result<View, RedisError> {
        let mut conn = self.conn().await?;
        let now = unix_ms();
        let mine = json!({"waiting_polls": broker.waiting_polls(),
                          "bridge_agents": broker.agent_count(), "seen_ms": now})
        .to_string();
        let (len, groups, bridges): (u64, StreamInfoGroupsReply, HashMap<String, String>) =
            redis::pipe()
                .cmd("HSET")
                .arg(self.keys.bridges())
                .arg(&self.instance)
                .arg(mine)
                .ignore()
                .cmd("XLEN")
                .arg(self.keys.requests())
                .cmd("XINFO")
                .arg("GROUPS")
                .arg(self.keys.requests())
                .cmd("HGETALL")
                .arg(self.keys.bridges())
                .query_async(&mut conn)
                .await
                .inspect_err(|e| self.failed(e))?;
        let leased = groups
            .groups
            .iter()
            .find(|g| g.name == GROUP)
            .map_or(0, |g| g.pending as u64);
        let mut view = View {
            available: true,
            error: None,
            queued: len.saturating_sub(leased),
            leased,
            ..View::default()
        };
        let mut stale = Vec::new();
        for (name, line) in bridges {
            let line: Value = serde_json::from_str(&line).unwrap_or_default();
            let age = now.saturating_sub(line["seen_ms"].as_u64().unwrap_or(0));
            if age <= FRESH_MS {
                view.bridges += 1;
                view.waiting_polls += line["waiting_polls"].as_u64().unwrap_or(0);
                view.bridge_agents += line["bridge_agents"].as_u64().unwrap_or(0);
            } else if age > STALE_MS {
                stale.push(name);
            }
        }
        if !stale.is_empty() {
            let _: Result<(), _> = redis::cmd("HDEL")
                .arg(self.keys.bridges())
                .arg(&stale)
                .query_async(&mut conn)
                .await;
        }
        if tidy {
            self.remove_idle_consumers(&mut conn).await;
        }
        Ok(view)
    }

    async fn remove_idle_consumers(&self, conn: &mut redis::aio::MultiplexedConnection) {
        let consumers: Result<StreamInfoConsumersReply, _> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(self.keys.requests())
            .arg(GROUP)
            .query_async(conn)
            .await;
        let Ok(consumers) = consumers else { return };
        for c in consumers.consumers {
            if c.name != self.instance
                && c.pending == 0
                && c.idle as u128 > CONSUMER_IDLE.as_millis()
            {
                let _: Result<i64, _> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(self.keys.requests())
                    .arg(GROUP)
                    .arg(&c.name)
                    .query_async(conn)
                    .await;
                tracing::info!(consumer = %c.name, "idle consumer removed from the queue's group");
            }
        }
    }

    /// Drops a request held here as soon as it ends elsewhere, until shutdown.
    pub(super) async fn listen(self: Arc<Self>, broker: Arc<Broker>, stopping: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(self.keys.ended()).await?;
                Ok::<_, RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                p = subscribed => p,
                _ = stopping.cancelled() => return,
            };
            match pubsub {
                Ok(pubsub) => {
                    failures = 0;
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            m = messages.next() => m,
                            _ = stopping.cancelled() => return,
                        };
                        let Some(message) = message else { break };
                        let Ok(id) = message.get_payload::<String>() else {
                            continue;
                        };
                        if self.held().remove(&id).is_some() {
                            broker.drop_shared(&id);
                        }
                    }
                    tracing::warn!("the queue's pub/sub connection closed; subscribing again");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "cannot subscribe to the queue's news; trying again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures.max(1))) => {}
                _ = stopping.cancelled() => return,
            }
        }
    }
}
