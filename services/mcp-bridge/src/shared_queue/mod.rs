//! The request queue on Redis (`LOCAL_PROVIDER_QUEUE=redis`), shared by every mcp-bridge on one
//! Redis: a request from bridge-agent is an entry of one stream, read by whichever mcp-bridge has
//! an agent asking for work (a consumer group: the pending entry is the lease), and its answer
//! flows back through a stream of its own to the mcp-bridge holding bridge-agent's connection.
//! docs/ARCHITECTURE.md ("The request queue on Redis") walks through it.
//!
//! Each mcp-bridge keeps its own local queue (`queue/`) as it does in memory mode: what it read
//! from Redis for its agents waits there, is leased there, and its parts go out through
//! [`SharedQueue::sink`] instead of a bridge-agent connection. Every decision that two mcp-bridges
//! could race on is one Lua script (`lua/`), so it happens once in Redis.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use provider_shared::bridge::{BridgeFrame, ModelResult};
use provider_shared::ws_peer::{self, Outbound};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, Script};
use tokio::sync::{mpsc, Notify};

use crate::config::RedisSettings;
use crate::Error;

mod fetch;
mod follow;
mod intake;
mod sink;
mod view;

pub use intake::Command;
pub use view::View;

/// The consumer group every mcp-bridge reads the requests stream in.
const GROUP: &str = "agents";
/// The most requests the stream holds; a request beyond it is refused with `agent_unavailable`
/// (a 503 for the editor), never trimmed away.
pub const QUEUE_BOUND: usize = 10_000;
/// The most frames one request's parts stream keeps (trimmed from the oldest; a resume that
/// needs a trimmed chunk is refused, as in memory mode past `STREAM_BUFFER_BYTES`).
const PARTS_BOUND: usize = 10_000;
/// A live request's keys expire this long after its last write, so a request whose every
/// mcp-bridge and bridge-agent vanished does not stay forever.
const LIVE_TTL: Duration = Duration::from_secs(3600);
/// An ended request's keys stay this long, for a resume that replays its result.
const ENDED_TTL: Duration = Duration::from_secs(600);
/// A request handed out more often than this (its agents kept dying or vanishing before
/// answering) ends with an error instead of going round again.
pub const HANDOUT_BOUND: u32 = 10;
/// The longest blocking read; the connection's reply timeout is this plus `STORE_TIMEOUT`.
const BLOCK: Duration = Duration::from_secs(2);
/// Frames of local agents waiting to be written to Redis (`sink.rs`). At the bound a chunk
/// ends its own request with `slow_client`, as a full bridge-agent queue does.
const SINK_BOUND: usize = 4096;
/// Commands from bridge-agent connections waiting for Redis (`intake.rs`). At the bound a
/// request is answered at once with `agent_unavailable`.
const INTAKE_BOUND: usize = 4096;

/// Where one request lives in Redis.
struct Keys {
    base: String,
}

impl Keys {
    fn requests(&self) -> String {
        format!("{}requests", self.base)
    }
    fn request(&self, id: &str) -> String {
        format!("{}request:{id}", self.base)
    }
    fn parts(&self, id: &str) -> String {
        format!("{}parts:{id}", self.base)
    }
    /// The pub/sub channel that says a request ended, so an mcp-bridge holding it drops it.
    fn ended(&self) -> String {
        format!("{}ended", self.base)
    }
    fn bridges(&self) -> String {
        format!("{}bridges", self.base)
    }
}

struct Scripts {
    enqueue: Script,
    admit: Script,
    append: Script,
    finish: Script,
    resume: Script,
    renew: Script,
}

/// The queue as one mcp-bridge sees it.
pub struct SharedQueue {
    client: redis::Client,
    settings: RedisSettings,
    /// The connection for scripts and short commands; replaced after a failure.
    conn: Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    scripts: Scripts,
    /// This process's consumer name in the group, and the prefix of its followers' names.
    pub instance: String,
    lease_timeout: Duration,
    resume_grace: Duration,
    /// Requests this mcp-bridge read for its agents: request id → stream entry id.
    held: Mutex<HashMap<String, Held>>,
    follows: follow::Follows,
    /// A poll started waiting here: the fetcher reads for it.
    demand: Notify,
    sink: Outbound<BridgeFrame>,
    sink_rx: Mutex<Option<mpsc::Receiver<BridgeFrame>>>,
    intake: mpsc::Sender<Command>,
    intake_rx: Mutex<Option<mpsc::Receiver<Command>>>,
    view: Mutex<View>,
}

struct Held {
    entry: String,
    /// Seen waiting unleased at the last renewal: given back at the next one.
    idle_since_last: bool,
}

impl SharedQueue {
    pub fn new(
        settings: RedisSettings,
        lease_timeout: Duration,
        resume_grace: Duration,
    ) -> Result<Self, Error> {
        let client = redis::Client::open(settings.url.0.as_str()).map_err(|e| Error::Queue {
            address: settings.address.clone(),
            message: e.to_string(),
        })?;
        let (sink, sink_rx) = ws_peer::queue(SINK_BOUND);
        let (intake, intake_rx) = mpsc::channel(INTAKE_BOUND);
        let instance = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            rand::random::<u32>()
        );
        Ok(Self {
            client,
            keys: Keys {
                base: format!("{}queue:", settings.prefix),
            },
            settings,
            conn: Mutex::new(None),
            scripts: Scripts {
                enqueue: Script::new(include_str!("lua/enqueue.lua")),
                admit: Script::new(include_str!("lua/admit.lua")),
                append: Script::new(include_str!("lua/append.lua")),
                finish: Script::new(include_str!("lua/finish.lua")),
                resume: Script::new(include_str!("lua/resume.lua")),
                renew: Script::new(include_str!("lua/renew.lua")),
            },
            instance,
            lease_timeout,
            resume_grace,
            held: Mutex::new(HashMap::new()),
            follows: follow::Follows::default(),
            demand: Notify::new(),
            sink,
            sink_rx: Mutex::new(Some(sink_rx)),
            intake,
            intake_rx: Mutex::new(Some(intake_rx)),
            view: Mutex::new(View::default()),
        })
    }

    pub fn address(&self) -> &str {
        &self.settings.address
    }

    /// Where the local entries read from Redis send their chunks and results.
    pub fn sink(&self) -> Outbound<BridgeFrame> {
        self.sink.clone()
    }

    /// A poll is waiting here.
    pub fn wanted(&self) {
        self.demand.notify_one();
    }

    /// The cluster-wide figures for `get_status`, `/health` and `bridge_status`.
    pub fn view(&self) -> View {
        lock(&self.view).clone()
    }

    /// A frame from a bridge-agent connection, in the order they came; refused at once (with its
    /// one result) when the intake is full.
    pub fn command(&self, command: Command) {
        if let Err(mpsc::error::TrySendError::Full(command)) = self.intake.try_send(command) {
            tracing::warn!("the Redis intake is full; refusing the frame");
            command.refuse(&format!(
                "mcp-bridge has {INTAKE_BOUND} frames waiting for the request queue (Redis at {}); try again shortly",
                self.settings.address
            ));
        }
    }

    /// The connection for short commands, made on first use and after a failure.
    async fn conn(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = lock(&self.conn).clone() {
            return Ok(conn);
        }
        let conn = self.connect(self.settings.timeout).await?;
        *lock(&self.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// A connection of its own whose replies may take `reply` (a blocking read's wait).
    async fn connect(&self, reply: Duration) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(reply));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Forgets the command connection after an error that may have broken it.
    fn failed(&self, err: &RedisError) {
        if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() {
            *lock(&self.conn) = None;
        }
    }

    /// Runs `script` with `keys` and `args` (loading it again if Redis forgot it).
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[&str],
    ) -> Result<T, RedisError> {
        let mut conn = self.conn().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let out = invocation.invoke_async(&mut conn).await;
        if let Err(err) = &out {
            self.failed(err);
        }
        out
    }

    /// Ends request `id` once, with `result` as its last frame when given. `holder` or
    /// `follower`, when given, must still be the request's: an mcp-bridge that lost it ends
    /// nothing. True when this call ended it.
    async fn finish(
        &self,
        id: &str,
        why: &str,
        result: Option<&ModelResult>,
        holder: Option<&str>,
        follower: Option<&str>,
    ) -> Result<bool, RedisError> {
        let frame = result
            .map(|r| BridgeFrame::ModelResult(r.clone()).to_text())
            .unwrap_or_default();
        let keep = ENDED_TTL.as_millis().to_string();
        let ended: i64 = self
            .eval(
                &self.scripts.finish,
                &[
                    self.keys.request(id),
                    self.keys.parts(id),
                    self.keys.requests(),
                ],
                &[
                    why,
                    &frame,
                    GROUP,
                    holder.unwrap_or(""),
                    follower.unwrap_or(""),
                    &keep,
                    &self.keys.ended(),
                    id,
                ],
            )
            .await?;
        Ok(ended == 1)
    }

    /// The group exists (made at the start of the stream when Redis lost it, so that nothing
    /// queued meanwhile is skipped).
    async fn ensure_group(&self) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let made: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.requests())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match made {
            Err(e) if e.code() != Some("BUSYGROUP") => {
                self.failed(&e);
                Err(e)
            }
            _ => Ok(()),
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        lock(&self.held)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mcp-bridge".to_owned())
}

/// Wall-clock milliseconds: what one mcp-bridge can tell another about a moment.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A wait before the next try after `failures` failed ones in a row.
fn backoff(failures: u32) -> Duration {
    provider_shared::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
        .delay(failures, &mut rand::rng())
}

/// The queue's tasks, running until [`Running::finish`].
pub struct Running {
    done: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl SharedQueue {
    /// Starts the queue's tasks: reading for local polls and renewing until `broker.stopping`,
    /// the rest (bridge-agent's frames, answers both ways, the figures) until
    /// [`Running::finish`].
    pub fn start(self: &Arc<Self>, broker: &Arc<crate::broker::Broker>) -> Running {
        use tracing::Instrument;
        let done = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let stopping = broker.stopping.clone();
        tasks.spawn(
            self.clone()
                .fetch(broker.clone(), stopping.clone())
                .instrument(tracing::info_span!("queue_fetch")),
        );
        tasks.spawn(
            self.clone()
                .renew(broker.clone(), stopping)
                .instrument(tracing::info_span!("queue_renew")),
        );
        tasks.spawn(
            self.clone()
                .watch(broker.clone(), done.clone())
                .instrument(tracing::info_span!("queue_view")),
        );
        tasks.spawn(
            self.clone()
                .listen(broker.clone(), done.clone())
                .instrument(tracing::info_span!("queue_news")),
        );
        tasks.spawn(
            self.clone()
                .follow_parts(done.clone())
                .instrument(tracing::info_span!("queue_answers")),
        );
        if let Some(rx) = lock(&self.intake_rx).take() {
            tasks.spawn(
                self.clone()
                    .intake(broker.clone(), rx, done.clone())
                    .instrument(tracing::info_span!("queue_intake")),
            );
        }
        if let Some(rx) = lock(&self.sink_rx).take() {
            tasks.spawn(
                self.clone()
                    .write_parts(broker.clone(), rx, done.clone())
                    .instrument(tracing::info_span!("queue_sink")),
            );
        }
        tasks.close();
        Running { done, tasks }
    }

    /// Shutdown: the requests read here and not answered go back to the queue for another
    /// mcp-bridge's agents; an answer already begun cannot move, so it ends with
    /// `shutting_down`.
    pub async fn hand_back(&self, broker: &crate::broker::Broker, unanswered: Vec<String>) {
        self.give_back(broker, unanswered).await;
    }
}

impl Running {
    /// Lets the last frames out (bounded by `wait`) and stops the tasks.
    pub async fn finish(self, wait: Duration) {
        self.done.cancel();
        if tokio::time::timeout(wait, self.tasks.wait()).await.is_err() {
            tracing::warn!(?wait, "the request queue's tasks did not stop in time");
        }
    }
}
