//! Answers back to bridge-agent: one reader, on a connection of its own, follows the parts
//! streams of every request whose bridge-agent connection is here, from the last entry it read.
//! A request added while it waits in a blocking read wakes it (`CLIENT UNBLOCK`), so a new
//! request's first chunk is not held back by a read of the old set.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use provider_shared::bridge::{codes, BridgeFrame, ModelResult};
use provider_shared::ws_peer::{Outbound, Refused};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::intake::withdrawn;
use super::{backoff, lock, SharedQueue, BLOCK};
use crate::queue::Owner;

/// Entries read at most per stream and read.
const READ_COUNT: usize = 256;

#[derive(Default)]
pub(super) struct Follows {
    map: Mutex<HashMap<String, Follow>>,
    changed: Notify,
}

struct Follow {
    to: Outbound<BridgeFrame>,
    owner: Owner,
    /// The last parts-stream entry read.
    last: String,
    /// The chunk bridge-agent needs next: earlier ones (a resume's replay) are skipped.
    next_chunk: u64,
    /// The first chunk read was checked for a gap (trimmed from the stream).
    checked: bool,
    /// bridge-agent's queue was full for this request: it ends with `slow_client`.
    overflowed: bool,
}

/// What a read entry asks for once the lock is let go.
enum Then {
    Nothing,
    Gap(Outbound<BridgeFrame>, Owner),
    Overflow(Owner),
}

impl Follows {
    pub(super) fn add(
        &self,
        id: &str,
        to: Outbound<BridgeFrame>,
        owner: Owner,
        after: Option<u64>,
    ) {
        let follow = Follow {
            to,
            owner,
            last: "0-0".to_owned(),
            next_chunk: after.map_or(0, |a| a + 1),
            checked: false,
            overflowed: false,
        };
        lock(&self.map).insert(id.to_owned(), follow);
        self.changed.notify_one();
    }

    pub(super) fn remove_if_owner(&self, id: &str, owner: Owner) -> bool {
        let mut map = lock(&self.map);
        match map.get(id) {
            Some(f) if f.owner == owner => map.remove(id).is_some(),
            _ => false,
        }
    }

    pub(super) fn remove_owner(&self, owner: Owner) -> Vec<String> {
        let mut map = lock(&self.map);
        let ids: Vec<String> = map
            .iter()
            .filter(|(_, f)| f.owner == owner)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            map.remove(id);
        }
        ids
    }

    fn snapshot(&self) -> Vec<(String, String)> {
        lock(&self.map)
            .iter()
            .map(|(id, f)| (id.clone(), f.last.clone()))
            .collect()
    }
}

impl SharedQueue {
    /// Follows the parts streams until shutdown.
    pub(super) async fn follow_parts(self: Arc<Self>, stopping: CancellationToken) {
        let mut reader: Option<(MultiplexedConnection, i64)> = None;
        let mut failures = 0u32;
        loop {
            let wanted = self.follows.snapshot();
            if wanted.is_empty() {
                tokio::select! {
                    _ = self.follows.changed.notified() => continue,
                    _ = stopping.cancelled() => return,
                }
            }
            let read = self.read_parts(&mut reader, &wanted, &stopping).await;
            match read {
                Ok(Some(reply)) => {
                    failures = 0;
                    let prefix = self.keys.parts("");
                    for stream in reply.keys {
                        let Some(id) = stream.key.strip_prefix(&prefix) else {
                            continue;
                        };
                        for entry in stream.ids {
                            self.deliver(id, entry).await;
                        }
                    }
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    reader = None;
                    failures += 1;
                    tracing::warn!(error = %e, failures, "reading answers from Redis failed; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => {}
                        _ = stopping.cancelled() => return,
                    }
                }
            }
            if stopping.is_cancelled() {
                return;
            }
        }
    }

    /// One blocking read of `wanted` (id, last entry); cut short when a request is added.
    async fn read_parts(
        &self,
        reader: &mut Option<(MultiplexedConnection, i64)>,
        wanted: &[(String, String)],
        stopping: &CancellationToken,
    ) -> Result<Option<StreamReadReply>, redis::RedisError> {
        if reader.is_none() {
            let mut conn = self.connect(BLOCK + self.settings.timeout).await?;
            let client_id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut conn)
                .await?;
            *reader = Some((conn, client_id));
        }
        let Some((conn, client_id)) = reader.as_mut() else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (id, _) in wanted {
            cmd.arg(self.keys.parts(id));
        }
        for (_, last) in wanted {
            cmd.arg(last);
        }
        let client_id = *client_id;
        let read = cmd.query_async::<Option<StreamReadReply>>(conn);
        tokio::pin!(read);
        let first = tokio::select! {
            r = &mut read => Some(r),
            _ = self.follows.changed.notified() => None,
            _ = stopping.cancelled() => None,
        };
        match first {
            Some(r) => r,
            None => {
                // Ends the blocking read now; its reply (nil, or what came meanwhile) is kept.
                if let Ok(mut conn) = self.conn().await {
                    let _: Result<i64, _> = redis::cmd("CLIENT")
                        .arg("UNBLOCK")
                        .arg(client_id)
                        .query_async(&mut conn)
                        .await;
                }
                read.await
            }
        }
    }

    /// One frame of request `id`'s answer, to its connection.
    async fn deliver(&self, id: &str, entry: StreamId) {
        let Some(text) = entry.get::<String>("f") else {
            return;
        };
        let frame = match BridgeFrame::parse(&text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(%id, error = %e, "unreadable frame in a parts stream skipped");
                return;
            }
        };
        let then = {
            let mut map = lock(&self.follows.map);
            let Some(follow) = map.get_mut(id) else {
                return;
            };
            follow.last = entry.id;
            match frame {
                BridgeFrame::ModelStreamChunk(chunk) => {
                    let gap = !follow.checked && chunk.chunk_index > follow.next_chunk;
                    follow.checked = true;
                    if gap {
                        let follow = map.remove(id);
                        follow.map_or(Then::Nothing, |f| Then::Gap(f.to, f.owner))
                    } else if chunk.chunk_index < follow.next_chunk || follow.overflowed {
                        Then::Nothing
                    } else {
                        follow.next_chunk = chunk.chunk_index + 1;
                        match follow.to.try_push(BridgeFrame::ModelStreamChunk(chunk)) {
                            Ok(()) | Err(Refused::Closed(_)) => Then::Nothing,
                            Err(Refused::Full(_)) => {
                                follow.overflowed = true;
                                Then::Overflow(follow.owner)
                            }
                        }
                    }
                }
                result @ BridgeFrame::ModelResult(_) => {
                    if let Some(follow) = map.remove(id) {
                        follow.to.push_last(result);
                    }
                    Then::Nothing
                }
                _ => Then::Nothing,
            }
        };
        match then {
            Then::Nothing => {}
            Then::Gap(to, owner) => {
                let why = "the chunks after the one bridge-agent has are no longer held (the parts stream was trimmed)".to_owned();
                tracing::info!(%id, "model_resume refused: {why}");
                to.push_last(BridgeFrame::ModelResult(withdrawn(id, why)));
                let follower = self.follower(owner);
                let _ = self
                    .finish(id, "withdrawn", None, None, Some(&follower))
                    .await;
            }
            Then::Overflow(owner) => {
                tracing::warn!(%id, "outbound queue full; ending the request");
                let result =
                    ModelResult::error(id, codes::SLOW_CLIENT, crate::broker::overflow_reason());
                let follower = self.follower(owner);
                // Its result comes back through the stream, and is delivered as results are.
                if let Err(e) = self
                    .finish(id, "failed", Some(&result), None, Some(&follower))
                    .await
                {
                    tracing::warn!(%id, error = %e, "could not end the request in Redis");
                    if let Some(f) = lock(&self.follows.map).remove(id) {
                        f.to.push_last(BridgeFrame::ModelResult(result));
                    }
                }
            }
        }
    }
}
