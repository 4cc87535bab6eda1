//! Conversation deltas (`MCP_DELTAS`): an editor re-sends the whole conversation every turn, and
//! the agent keeps every tool result in its context, so each MCP client session is handed only
//! the messages it has not been given yet in that conversation.
//!
//! What is remembered, per MCP session and conversation: how many messages were handed and a
//! digest of them, never the messages themselves (the queue holds the only copy while a request
//! lives). A request whose messages start with exactly that prefix is handed from where the
//! prefix ends; anything else (edited history, another session, a restart, an unknown
//! conversation) is handed whole. A hand-out counts only once the agent shows it received it (a
//! reply or a failure for that request from the same session): a long-poll result lost in
//! transit must not make the next request a delta over messages the agent never read.
//!
//! Messages are read as the JSON text each has in the request (`RawValue`s borrowed from the
//! payload, never decoded): a digest is of that text. The gateway writes it in serde_json's
//! compact encoding of decoded values, which decoding and encoding again gives back byte for
//! byte, so the digests are those of the messages' decoded values, as they always were; a peer
//! that writes the same messages differently (spacing, key order, escapes) starts a conversation
//! afresh, which is always correct (docs/ARCHITECTURE.md, "Fixed costs per chat").
//!
//! Bounds: state ends with its MCP session, after [`IDLE_TTL`] without use, and at
//! [`MAX_MCP_SESSIONS`] sessions / [`MAX_CONVERSATIONS`] conversations per session the least recently
//! used is forgotten (its next request is then handed whole, which is always correct).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Sessions remembered at once; past it the least recently used is forgotten.
pub const MAX_MCP_SESSIONS: usize = 128;
/// Conversations remembered per session; past it the least recently used is forgotten.
pub const MAX_CONVERSATIONS: usize = 256;
/// Unused this long, a session's or conversation's state is forgotten (as long as an MCP
/// session may idle, see `app.rs`).
pub const IDLE_TTL: Duration = Duration::from_secs(3600);

type Digest32 = [u8; 32];

/// What one session was handed in one conversation.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// What the agent is known to have received: message count and digest.
    received: Option<(usize, Digest32)>,
    /// The last hand-out, not yet acknowledged: request id, message count, digest.
    pending: Option<(String, usize, Digest32)>,
    /// The last request handed in this conversation, for `get_conversation`.
    request_id: String,
    used: Option<Instant>,
}

#[derive(Debug, Default)]
struct Session {
    conversations: HashMap<String, Seen>,
    used: Option<Instant>,
}

/// The delta bookkeeping of every MCP session.
#[derive(Debug)]
pub struct Conversations {
    enabled: bool,
    sessions: Mutex<HashMap<u64, Session>>,
    next_session: AtomicU64,
}

/// One MCP client session; its state is forgotten when the last clone of it is dropped (rmcp
/// drops the server handler when the session ends).
#[derive(Debug)]
pub struct AgentSession {
    id: u64,
    store: Arc<Conversations>,
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        self.store.sessions().remove(&self.id);
    }
}

/// How a chat's messages are handed out.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub conversation_id: String,
    /// Index of the first message handed.
    pub from: usize,
    pub total: usize,
}

impl Conversations {
    pub fn new(enabled: bool) -> Arc<Self> {
        Arc::new(Self {
            enabled,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, Session>> {
        // The map holds digests only; a panic elsewhere cannot leave it unusable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle for a new MCP session.
    pub fn session(self: &Arc<Self>) -> AgentSession {
        AgentSession {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            store: self.clone(),
        }
    }

    /// How many sessions have state.
    #[cfg(test)]
    pub fn remembered_sessions(&self) -> usize {
        self.sessions().len()
    }

    /// Forgets what `session` was handed (`wait_for_request` with `fresh: true`).
    pub fn forget(&self, session: &AgentSession) {
        self.sessions().remove(&session.id);
    }

    /// Decides what of `messages` to hand to `session` for request `request_id`, and records
    /// that the session now holds all of them. `whole` forces everything (`full: true`).
    pub fn plan(
        &self,
        session: &AgentSession,
        request_id: &str,
        session_id: Option<&str>,
        messages: &[&RawValue],
        whole: bool,
    ) -> Plan {
        let conversation_id = conversation_id(session_id, messages);
        let total = messages.len();
        let now = Instant::now();
        let known = self
            .sessions()
            .get(&session.id)
            .and_then(|s| s.conversations.get(&conversation_id))
            .and_then(|seen| seen.received);
        // Digests are computed outside the lock: messages may be megabytes.
        let (prefix, all) = digests(messages, known.map(|(count, _)| count));
        let from = match known {
            // At least one new message, and exactly the prefix this session was given.
            Some((count, digest))
                if self.enabled && !whole && count < total && prefix == Some(digest) =>
            {
                count
            }
            _ => 0,
        };
        let mut sessions = self.sessions();
        expire(&mut sessions, now);
        if !sessions.contains_key(&session.id) && sessions.len() >= MAX_MCP_SESSIONS {
            evict_oldest(&mut sessions, |s| s.used);
        }
        let state = sessions.entry(session.id).or_default();
        state.used = Some(now);
        if !state.conversations.contains_key(&conversation_id)
            && state.conversations.len() >= MAX_CONVERSATIONS
        {
            evict_oldest(&mut state.conversations, |c| c.used);
        }
        let seen = state
            .conversations
            .entry(conversation_id.clone())
            .or_default();
        seen.pending = Some((request_id.to_owned(), total, all));
        seen.request_id = request_id.to_owned();
        seen.used = Some(now);
        Plan {
            conversation_id,
            from,
            total,
        }
    }

    /// The agent of `session` replied to (or failed) `request_id`, so it received that hand-out.
    pub fn acknowledge(&self, session: &AgentSession, request_id: &str) {
        let mut sessions = self.sessions();
        let Some(state) = sessions.get_mut(&session.id) else {
            return;
        };
        for seen in state.conversations.values_mut() {
            if seen
                .pending
                .as_ref()
                .is_some_and(|(id, _, _)| id == request_id)
            {
                if let Some((_, count, digest)) = seen.pending.take() {
                    seen.received = Some((count, digest));
                }
                return;
            }
        }
    }

    /// The last request handed in `conversation_id` to any session, most recent first.
    pub fn latest_request(&self, conversation_id: &str) -> Option<String> {
        self.sessions()
            .values()
            .filter_map(|s| s.conversations.get(conversation_id))
            .max_by_key(|seen| seen.used)
            .map(|seen| seen.request_id.clone())
    }
}

fn expire(sessions: &mut HashMap<u64, Session>, now: Instant) {
    sessions.retain(|_, s| {
        s.conversations
            .retain(|_, c| c.used.is_some_and(|u| now.duration_since(u) < IDLE_TTL));
        s.used.is_some_and(|u| now.duration_since(u) < IDLE_TTL)
    });
}

fn evict_oldest<K: Clone + std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    used: impl Fn(&V) -> Option<Instant>,
) {
    if let Some(key) = map
        .iter()
        .min_by_key(|(_, v)| used(v))
        .map(|(k, _)| k.clone())
    {
        map.remove(&key);
    }
}

/// The conversation of a request: its gateway session when it has one, else a digest of its
/// stable prefix (system and developer messages before the first user message, and that one).
pub fn conversation_id(session_id: Option<&str>, messages: &[&RawValue]) -> String {
    let mut hasher = Sha256::new();
    match session_id {
        Some(id) => {
            hasher.update(b"session\0");
            hasher.update(id.as_bytes());
        }
        None => {
            hasher.update(b"prefix\0");
            for m in messages {
                let role = role_of(m);
                let role = role.as_deref().unwrap_or_default();
                if matches!(role, "system" | "developer" | "user") {
                    feed(&mut hasher, m);
                }
                if role == "user" {
                    break;
                }
            }
        }
    }
    let digest: Digest32 = hasher.finalize().into();
    format!("conv-{}", &hex(&digest)[..24])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A message's `role`, read without decoding the rest of it.
fn role_of(message: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Role<'a> {
        #[serde(borrow)]
        role: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Role>(message.get()).ok()?.role
}

/// One message's JSON text into a running digest, length-prefixed so that message boundaries
/// count.
fn feed(hasher: &mut Sha256, message: &RawValue) {
    let text = message.get().as_bytes();
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text);
}

/// The digest of the first `at` messages (when `at` is within them) and of all of them, in one
/// pass.
fn digests(messages: &[&RawValue], at: Option<usize>) -> (Option<Digest32>, Digest32) {
    let mut hasher = Sha256::new();
    let mut prefix = None;
    for (i, m) in messages.iter().enumerate() {
        if Some(i) == at {
            prefix = Some(hasher.clone().finalize().into());
        }
        feed(&mut hasher, m);
    }
    if at == Some(messages.len()) {
        prefix = Some(hasher.clone().finalize().into());
    }
    (prefix, hasher.finalize().into())
}

/// A result of `get_conversation` stays under this many bytes of messages; a larger single
/// message comes as slices of its JSON text.
pub const PAGE_BYTES: usize = 64 * 1024;

/// One page of `messages` starting at message `from` (and, for a message larger than a page,
/// at character `offset` of its JSON text).
pub fn page(
    messages: &[&RawValue],
    from: usize,
    offset: usize,
) -> Result<Map<String, Value>, String> {
    let total = messages.len();
    if from > total || (from == total && total > 0) {
        return Err(format!(
            "from: the conversation has {total} messages (0 to {}), got {from}",
            total.saturating_sub(1)
        ));
    }
    let mut out = Map::new();
    out.insert("messages_total".into(), json!(total));
    out.insert("from".into(), json!(from));
    let mut page = Vec::new();
    let mut used = 0;
    let mut next = None;
    for (i, m) in messages.iter().enumerate().skip(from) {
        let text = m.get();
        if offset > 0 || (page.is_empty() && text.len() > PAGE_BYTES) {
            // A message that does not fit a page alone: slices of its JSON text, on char
            // boundaries, to be joined by the reader.
            let chars: Vec<char> = text.chars().collect();
            if offset >= chars.len() {
                return Err(format!(
                    "offset: message {i} has {} characters of JSON text, got {offset}",
                    chars.len()
                ));
            }
            let mut end = offset;
            let mut bytes = 0;
            while end < chars.len() && bytes + chars[end].len_utf8() <= PAGE_BYTES {
                bytes += chars[end].len_utf8();
                end += 1;
            }
            out.insert(
                "message_part".into(),
                json!({"index": i, "offset": offset, "total_chars": chars.len(),
                       "json_text": chars[offset..end].iter().collect::<String>()}),
            );
            next = if end < chars.len() {
                Some(json!({"from": i, "offset": end}))
            } else if i + 1 < total {
                Some(json!({"from": i + 1}))
            } else {
                None
            };
            break;
        }
        if used + text.len() > PAGE_BYTES {
            next = Some(json!({"from": i}));
            break;
        }
        used += text.len();
        // Only the page's messages are decoded, to be written into it.
        page.push(serde_json::from_str::<Value>(text).map_err(|err| err.to_string())?);
    }
    out.insert("messages".into(), Value::Array(page));
    out.insert("next".into(), next.unwrap_or(Value::Null));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The messages as the gateway encodes them: each one's JSON text in the payload's array.
    fn encoded(messages: &[Value]) -> provider_shared::bridge::RawJson {
        provider_shared::bridge::RawJson::encode(messages).unwrap()
    }

    fn plan_of(
        store: &Conversations,
        agent: &AgentSession,
        id: &str,
        session: Option<&str>,
        messages: &[Value],
        whole: bool,
    ) -> Plan {
        let raw = encoded(messages);
        store.plan(agent, id, session, &raw.items().unwrap(), whole)
    }

    fn id_of(session: Option<&str>, messages: &[Value]) -> String {
        conversation_id(session, &encoded(messages).items().unwrap())
    }

    fn msgs(n: usize) -> Vec<Value> {
        let mut out = vec![json!({"role": "system", "content": "be brief"})];
        for i in 1..n {
            let role = if i % 2 == 1 { "user" } else { "assistant" };
            out.push(json!({"role": role, "content": format!("turn {i}")}));
        }
        out
    }

    /// Hands `messages` to `agent` and acknowledges it, as an agent that answers does.
    fn answered(
        store: &Conversations,
        agent: &AgentSession,
        id: &str,
        session: Option<&str>,
        messages: &[Value],
        whole: bool,
    ) -> Plan {
        let plan = plan_of(store, agent, id, session, messages, whole);
        store.acknowledge(agent, id);
        plan
    }

    #[test]
    fn a_hand_out_the_agent_never_acknowledged_is_not_built_on() {
        let store = Conversations::new(true);
        let agent = store.session();
        answered(&store, &agent, "r1", None, &msgs(2), false);
        // Handed, but the result never reached the agent (no reply, no failure).
        assert_eq!(plan_of(&store, &agent, "r2", None, &msgs(4), false).from, 2);
        // The retry builds on what the agent is known to have: the first two messages.
        assert_eq!(
            answered(&store, &agent, "r2", None, &msgs(4), false).from,
            2
        );
        assert_eq!(
            answered(&store, &agent, "r3", None, &msgs(6), false).from,
            4
        );
        plan_of(&store, &agent, "r4", None, &msgs(8), false);
        store.acknowledge(&agent, "some-other-request");
        assert_eq!(
            plan_of(&store, &agent, "r5", None, &msgs(10), false).from,
            6
        );
    }

    #[test]
    fn a_growing_conversation_is_handed_from_where_the_session_left_off() {
        let store = Conversations::new(true);
        let agent = store.session();
        let first = answered(&store, &agent, "r1", None, &msgs(2), false);
        assert_eq!((first.from, first.total), (0, 2));
        let second = answered(&store, &agent, "r2", None, &msgs(4), false);
        assert_eq!((second.from, second.total), (2, 4));
        assert_eq!(first.conversation_id, second.conversation_id);
        assert_eq!(
            store.latest_request(&first.conversation_id).as_deref(),
            Some("r2")
        );
        // The same messages again (a retry, a regenerate): nothing new, so all of them.
        assert_eq!(
            answered(&store, &agent, "r3", None, &msgs(4), false).from,
            0
        );
        // `full` hands everything, and the next turn is a delta again.
        assert_eq!(answered(&store, &agent, "r4", None, &msgs(6), true).from, 0);
        assert_eq!(
            answered(&store, &agent, "r5", None, &msgs(8), false).from,
            6
        );
    }

    #[test]
    fn edited_history_another_session_fresh_and_off_get_everything() {
        let store = Conversations::new(true);
        let agent = store.session();
        answered(&store, &agent, "r1", None, &msgs(4), false);
        let mut edited = msgs(6);
        edited[2]["content"] = json!("changed my mind");
        assert_eq!(answered(&store, &agent, "r2", None, &edited, false).from, 0);
        assert_eq!(
            answered(&store, &agent, "r3", None, &msgs(8), false).from,
            0
        );
        let other = store.session();
        assert_eq!(
            answered(&store, &other, "r4", None, &msgs(10), false).from,
            0
        );
        store.forget(&agent);
        assert_eq!(
            answered(&store, &agent, "r5", None, &msgs(10), false).from,
            0
        );
        let off = Conversations::new(false);
        let agent = off.session();
        answered(&off, &agent, "r1", None, &msgs(2), false);
        assert_eq!(answered(&off, &agent, "r2", None, &msgs(4), false).from, 0);
    }

    #[test]
    fn conversations_are_told_apart_by_prefix_or_session() {
        let store = Conversations::new(true);
        let agent = store.session();
        let mut other = msgs(2);
        other[1]["content"] = json!("another question");
        let a = answered(&store, &agent, "a1", None, &msgs(2), false);
        let b = answered(&store, &agent, "b1", None, &other, false);
        assert_ne!(a.conversation_id, b.conversation_id);
        assert_eq!(
            answered(&store, &agent, "a2", None, &msgs(4), false).from,
            2
        );
        let session = id_of(Some("sess-1"), &msgs(2));
        assert_eq!(session, id_of(Some("sess-1"), &other));
        assert_ne!(session, a.conversation_id);
        // A later system message or assistant turn does not change the id.
        assert_eq!(id_of(None, &msgs(2)), id_of(None, &msgs(9)));
    }

    #[test]
    fn state_is_bounded_and_ends_with_the_session() {
        let store = Conversations::new(true);
        let agents: Vec<AgentSession> =
            (0..MAX_MCP_SESSIONS + 3).map(|_| store.session()).collect();
        for a in &agents {
            plan_of(&store, a, "r", None, &msgs(2), false);
        }
        assert_eq!(store.remembered_sessions(), MAX_MCP_SESSIONS);
        drop(agents);
        assert_eq!(store.remembered_sessions(), 0);
        let agent = store.session();
        for i in 0..MAX_CONVERSATIONS + 5 {
            let m = vec![json!({"role": "user", "content": format!("q{i}")})];
            answered(&store, &agent, "r", None, &m, false);
        }
        let kept = store.sessions()[&agent.id].conversations.len();
        assert_eq!(kept, MAX_CONVERSATIONS);
    }

    #[test]
    fn pages_stay_under_the_bound_and_join_back() {
        let big = "x".repeat(PAGE_BYTES * 2 + 10);
        let mut messages = msgs(5);
        messages.insert(3, json!({"role": "user", "content": big}));
        let mut from = 0;
        let mut offset = 0;
        let raw = encoded(&messages);
        let items = raw.items().unwrap();
        let mut whole: Vec<Value> = Vec::new();
        let mut part = String::new();
        for _ in 0..20 {
            let p = page(&items, from, offset).unwrap();
            assert!(Value::Object(p.clone()).to_string().len() < PAGE_BYTES + 1024);
            whole.extend(p["messages"].as_array().unwrap().iter().cloned());
            if let Some(mp) = p.get("message_part") {
                part.push_str(mp["json_text"].as_str().unwrap());
                if mp["offset"].as_u64().unwrap() as usize + mp["json_text"].as_str().unwrap().len()
                    == mp["total_chars"].as_u64().unwrap() as usize
                {
                    whole.push(serde_json::from_str(&part).unwrap());
                    part.clear();
                }
            }
            match &p["next"] {
                Value::Null => break,
                next => {
                    from = next["from"].as_u64().unwrap() as usize;
                    offset = next["offset"].as_u64().unwrap_or(0) as usize;
                }
            }
        }
        assert_eq!(whole, messages);
        assert!(page(&items, 99, 0).unwrap_err().starts_with("from:"));
    }

    #[test]
    fn digests_of_the_gateways_text_are_those_of_the_decoded_messages() {
        // Numbers, escapes and nesting as clients send them: the gateway's encoding of them
        // decodes and encodes again to the same bytes, message by message.
        let messages = vec![
            json!({"role": "system", "content": "caf\u{e9} \"quoted\" \u{1F600}", "n": 0.1}),
            json!({"role": "user", "content": [{"type": "text", "text": "a\nb"}], "x": 1e300}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c", "n": -0}]}),
        ];
        let raw = encoded(&messages);
        let items = raw.items().unwrap();
        for (item, value) in items.iter().zip(&messages) {
            assert_eq!(item.get(), serde_json::to_string(value).unwrap());
            let again: Value = serde_json::from_str(item.get()).unwrap();
            assert_eq!(serde_json::to_string(&again).unwrap(), item.get());
        }
        // So a conversation re-encoded from decoded messages (as mcp-bridge did before it kept
        // the text) is the same conversation, handed as a delta.
        let store = Conversations::new(true);
        let agent = store.session();
        answered(&store, &agent, "r1", None, &messages[..2], false);
        let decoded: Vec<Value> = raw.parse().unwrap();
        let next = answered(&store, &agent, "r2", None, &decoded, false);
        assert_eq!((next.from, next.total), (2, 3));
        // The same messages written otherwise by some other peer: a conversation of its own,
        // handed whole.
        let spaced = provider_shared::bridge::RawJson::from_text(
            raw.get().replace("\"role\":", "\"role\": "),
        )
        .unwrap();
        let plan = store.plan(&agent, "r3", None, &spaced.items().unwrap(), false);
        assert_eq!(plan.from, 0);
        assert_eq!(role_of(spaced.items().unwrap()[1]).as_deref(), Some("user"));
    }
}
