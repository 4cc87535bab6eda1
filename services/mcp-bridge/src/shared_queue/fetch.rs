//! The agent side: while polls wait here, read as many requests as they want, first those whose
//! lease lapsed on a vanished mcp-bridge (`XAUTOCLAIM`), then new ones (`XREADGROUP`, a blocking
//! read on a connection of its own), and hand them to the local queue. What this mcp-bridge
//! holds is renewed in Redis while it lives; what no local poll took is given back.
use std::sync::Arc;
use std::time::Duration;

use provider_shared::bridge::{ModelInvoke, ModelResult};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use super::{backoff, Held, SharedQueue, BLOCK, ENDED_TTL, GROUP, HANDOUT_BOUND};
use crate::broker::Broker;

/// The code of a request handed out `HANDOUT_BOUND` times without an answer.
const TOO_MANY_HANDOUTS: &str = "too_many_handouts";
/// Lapsed leases looked at per renewal.
const SWEEP_COUNT: usize = 100;

#[derive(Clone, Copy)]
enum Admit {
    Take,
    Sweep,
}

impl Admit {
    fn as_str(self) -> &'static str {
        match self {
            Admit::Take => "take",
            Admit::Sweep => "sweep",
        }
    }
}

impl SharedQueue {
    /// Reads requests for waiting polls until shutdown.
    pub(super) async fn fetch(self: Arc<Self>, broker: Arc<Broker>, stopping: CancellationToken) {
        let mut reader: Option<MultiplexedConnection> = None;
        let mut cursor = "0-0".to_owned();
        let mut group_ready = false;
        let mut failures = 0u32;
        loop {
            let demand = broker.demand();
            if demand == 0 {
                tokio::select! {
                    _ = self.demand.notified() => continue,
                    _ = stopping.cancelled() => return,
                }
            }
            let read = self
                .read_requests(&mut reader, &mut cursor, demand, &mut group_ready)
                .await;
            match read {
                Ok(entries) if stopping.is_cancelled() => {
                    let ids: Vec<String> = entries.into_iter().map(|e| e.id).collect();
                    self.give_back_entries(&ids).await;
                    return;
                }
                Ok(entries) => {
                    failures = 0;
                    for entry in entries {
                        self.admit(&broker, entry, Admit::Take).await;
                    }
                }
                Err(e) => {
                    reader = None;
                    if e.code() == Some("NOGROUP") {
                        group_ready = false;
                    }
                    failures += 1;
                    tracing::warn!(error = %e, failures, "reading the request queue failed; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => {}
                        _ = stopping.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn read_requests(
        &self,
        reader: &mut Option<MultiplexedConnection>,
        cursor: &mut String,
        demand: usize,
        group_ready: &mut bool,
    ) -> Result<Vec<StreamId>, RedisError> {
        if !*group_ready {
            self.ensure_group().await?;
            *group_ready = true;
        }
        if reader.is_none() {
            *reader = Some(self.connect(BLOCK + self.settings.timeout).await?);
        }
        let Some(conn) = reader.as_mut() else {
            return Ok(Vec::new());
        };
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.requests())
            .arg(GROUP)
            .arg(&self.instance)
            .arg(self.lease_timeout.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(demand)
            .query_async(conn)
            .await?;
        *cursor = claimed.next_stream_id;
        if !claimed.claimed.is_empty() {
            for entry in &claimed.claimed {
                tracing::warn!(entry = %entry.id, "a lease lapsed (its mcp-bridge or agent went quiet); the request is taken again");
            }
            return Ok(claimed.claimed);
        }
        let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.instance)
            .arg("COUNT")
            .arg(demand)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.requests())
            .arg(">")
            .query_async(conn)
            .await?;
        Ok(read
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Asks Redis whether `entry` may be handed out here, and hands it to the local queue
    /// (`Take`); or only ends it if its answer had begun (`Sweep`), giving it back otherwise.
    async fn admit(&self, broker: &Broker, entry: StreamId, how: Admit) {
        let (Some(id), Some(text)) = (entry.get::<String>("id"), entry.get::<String>("invoke"))
        else {
            tracing::warn!(entry = %entry.id, "unreadable queue entry dropped");
            let _ = self.ack(&entry.id).await;
            return;
        };
        let result_after_chunks = entry.get::<String>("rac").as_deref() == Some("1");
        // How long it waited, from the moment it reached the mcp-bridge that queued it (clocks
        // of different machines may disagree: a time from the future counts as none).
        let arrived = entry.get::<u64>("at").unwrap_or_else(super::unix_ms);
        let waited = Duration::from_millis(super::unix_ms().saturating_sub(arrived));
        let abandoned = ModelResult::error(
            &id,
            crate::broker::AGENT_TIMEOUT,
            "the agent answering this request stopped (its lease lapsed or its mcp-bridge went) after part of the answer was sent",
        );
        let too_often = ModelResult::error(
            &id,
            TOO_MANY_HANDOUTS,
            format!("the request was handed to agents {HANDOUT_BOUND} times and none answered it"),
        );
        let frame = |r: ModelResult| provider_shared::bridge::BridgeFrame::ModelResult(r).to_text();
        let bound = HANDOUT_BOUND.to_string();
        let keep = ENDED_TTL.as_millis().to_string();
        let admitted: Result<Vec<String>, _> = self
            .eval(
                &self.scripts.admit,
                &[
                    self.keys.request(&id),
                    self.keys.requests(),
                    self.keys.parts(&id),
                ],
                &[
                    &entry.id,
                    GROUP,
                    &self.instance,
                    &bound,
                    &keep,
                    &self.keys.ended(),
                    &id,
                    &frame(abandoned),
                    &frame(too_often),
                    how.as_str(),
                ],
            )
            .await;
        match admitted.as_ref().map(|r| r.first().map(String::as_str)) {
            Ok(Some("ok")) => {}
            Ok(Some("unstarted")) => {
                self.give_back_entries(&[entry.id]).await;
                return;
            }
            Ok(Some("abandoned")) => {
                tracing::warn!(%id, "lease lapsed mid-answer; ending the request");
                return;
            }
            Ok(Some("too_often")) => {
                tracing::warn!(%id, bound = HANDOUT_BOUND, "handed out too often; ending the request");
                return;
            }
            Ok(_) => {
                tracing::debug!(%id, "stale queue entry (ended or expired) dropped");
                return;
            }
            Err(e) => {
                // It stays pending here and is taken again once its lease lapses.
                tracing::warn!(%id, error = %e, "could not admit the request; it is retried after LEASE_TIMEOUT");
                return;
            }
        }
        let invoke: ModelInvoke = match serde_json::from_str(&text) {
            Ok(invoke) => invoke,
            Err(e) => {
                let result = ModelResult::error(
                    &id,
                    "invalid_request",
                    format!("mcp-bridge cannot read this request: {e}"),
                );
                let _ = self
                    .finish(&id, "failed", Some(&result), Some(&self.instance), None)
                    .await;
                return;
            }
        };
        self.held().insert(
            id.clone(),
            Held {
                entry: entry.id.clone(),
                idle_since_last: false,
            },
        );
        if !broker.take_in(invoke, self.sink(), result_after_chunks, waited) {
            self.held().remove(&id);
            self.give_back_entries(&[entry.id]).await;
        }
    }

    async fn ack(&self, entry: &str) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .cmd("XACK")
            .arg(self.keys.requests())
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(self.keys.requests())
            .arg(entry)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Renews the leases of what this mcp-bridge holds, until shutdown; a request that waited
    /// here unleased for a whole period is given back, for any mcp-bridge's agents.
    pub(super) async fn renew(self: Arc<Self>, broker: Arc<Broker>, stopping: CancellationToken) {
        let every = (self.lease_timeout / 4).max(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopping.cancelled() => return,
            }
            let ids: Vec<String> = self.held().keys().cloned().collect();
            let mut keep = Vec::new();
            let mut give = Vec::new();
            for id in ids {
                let leased = broker.held_leased(&id);
                let mut held = self.held();
                let Some(h) = held.get_mut(&id) else { continue };
                match leased {
                    None => {
                        held.remove(&id);
                    }
                    Some(true) => {
                        h.idle_since_last = false;
                        keep.push(h.entry.clone());
                    }
                    Some(false) if h.idle_since_last => give.push(id),
                    Some(false) => {
                        h.idle_since_last = true;
                        keep.push(h.entry.clone());
                    }
                }
            }
            if !keep.is_empty() {
                if let Err(e) = self.set_idle(&keep, 0).await {
                    tracing::warn!(error = %e, "could not renew the leases in Redis");
                }
            }
            if !give.is_empty() {
                self.give_back(&broker, give).await;
            }
            if let Err(e) = self.sweep(&broker).await {
                tracing::warn!(error = %e, "could not look for lapsed leases");
            }
        }
    }

    /// A lease that lapsed on a vanished mcp-bridge while no poll waits anywhere: an answer it
    /// had begun ends now (the client is not left waiting for its timeout); an unbegun request
    /// is left for the next poll.
    async fn sweep(&self, broker: &Broker) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.requests())
            .arg(GROUP)
            .arg(&self.instance)
            .arg(self.lease_timeout.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(SWEEP_COUNT)
            .query_async(&mut conn)
            .await
            .inspect_err(|e| self.failed(e))?;
        for entry in claimed.claimed {
            self.admit(broker, entry, Admit::Sweep).await;
        }
        Ok(())
    }

    /// Takes requests `ids` out of the local queue (unanswered) and gives them back to Redis.
    pub(super) async fn give_back(&self, broker: &Broker, ids: Vec<String>) {
        let mut entries = Vec::new();
        for id in ids {
            broker.drop_shared(&id);
            if let Some(h) = self.held().remove(&id) {
                tracing::info!(%id, "request given back to the shared queue");
                entries.push(h.entry);
            }
        }
        self.give_back_entries(&entries).await;
    }

    /// Makes `entries` (pending here) claimable by any mcp-bridge at once.
    async fn give_back_entries(&self, entries: &[String]) {
        if entries.is_empty() {
            return;
        }
        let idle = self.lease_timeout.as_millis() as u64;
        if let Err(e) = self.set_idle(entries, idle).await {
            tracing::warn!(error = %e, "could not give requests back; they are taken again after LEASE_TIMEOUT");
        }
    }

    /// Sets the idle time of the pending `entries` still held here (0: renews them).
    async fn set_idle(&self, entries: &[String], idle_ms: u64) -> Result<u64, RedisError> {
        let idle = idle_ms.to_string();
        let mut args: Vec<&str> = vec![GROUP, &self.instance, &idle];
        args.extend(entries.iter().map(String::as_str));
        self.eval(&self.scripts.renew, &[self.keys.requests()], &args)
            .await
    }
}
