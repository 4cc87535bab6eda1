//! A real `redis-server` (Debian's package, installed by `scripts/setup-test-deps.sh`) on a free
//! port in a temporary directory, for tests of the Redis store; and the switch that points a
//! gateway at it.
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::{free_port, wait_for, Service};
use crate::stack::GatewayProc;

/// The store a gateway under test uses.
#[derive(Debug, Clone)]
pub enum Backend {
    Memory,
    /// A Redis URL and the key prefix (gateways with the same prefix share everything).
    Redis {
        url: String,
        prefix: String,
    },
}

static PREFIXES: AtomicU32 = AtomicU32::new(0);

impl Backend {
    /// Sets the gateway's store variables.
    pub fn apply(&self, gateway: GatewayProc) -> GatewayProc {
        match self {
            Backend::Memory => gateway.env("SESSION_STORE", "memory"),
            // The default timeout (0.25 s) is for a quiet machine; the suite runs many gateways
            // on two cores at once, where ordinary answers take longer. Outage tests set it back.
            Backend::Redis { url, prefix } => gateway
                .env("SESSION_STORE", "redis")
                .env("REDIS_URL", url)
                .env("REDIS_PREFIX", prefix)
                .env("STORE_TIMEOUT", 2),
        }
    }

    /// The same store under a prefix of its own: another installation on the same Redis.
    pub fn isolated(&self) -> Backend {
        match self {
            Backend::Memory => Backend::Memory,
            Backend::Redis { url, .. } => Backend::Redis {
                url: url.clone(),
                prefix: format!(
                    "test-{}-{}:",
                    std::process::id(),
                    PREFIXES.fetch_add(1, Ordering::Relaxed)
                ),
            },
        }
    }
}

/// `redis-server` from `PATH`, if installed.
pub fn redis_server_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

/// A `redis-server` process owned by a test; killed when dropped.
pub struct RedisServer {
    service: Option<Service>,
    pub port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts one on a free port. Without `redis-server` installed this fails under CI and
    /// otherwise returns `None` after saying the test is skipped ([`crate::skip`]).
    pub async fn start() -> Option<Self> {
        let Some(_) = redis_server_bin() else {
            crate::skip::missing_dependency(
                "a test on the Redis store",
                "redis-server",
                "scripts/setup-test-deps.sh installs the Debian package redis-server",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut server = Self {
            service: None,
            port: free_port(),
            dir,
        };
        server.spawn().await;
        Some(server)
    }

    async fn spawn(&mut self) {
        let bin = redis_server_bin().unwrap_or_else(|| panic!("redis-server vanished"));
        // A config file, so the command line stays plain; no persistence, loopback only.
        let conf = self.dir.path().join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "port {}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {}\ndaemonize no\nprotected-mode no\n",
                self.port,
                self.dir.path().display()
            ),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
        let no_env: [(&str, &str); 0] = [];
        let service = Service::spawn_args(&bin, [conf.as_os_str()], no_env, self.dir.path())
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.service = Some(service);
        let port = self.port;
        wait_for(
            Duration::from_secs(10),
            &format!("redis-server on port {port}"),
            || async move { ping(port).await.then_some(()) },
        )
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The store switch for gateways on this server, under a fresh key prefix.
    pub fn backend(&self) -> Backend {
        Backend::Redis {
            url: self.url(),
            prefix: String::new(),
        }
        .isolated()
    }

    /// SIGKILL: the server is gone at once, as in a crash.
    pub async fn kill(&mut self) {
        if let Some(mut service) = self.service.take() {
            let _ = service.kill().await;
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// SIGSTOP: connections stay open but nothing answers, as with a hung or overloaded server.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = self
            .service
            .as_ref()
            .and_then(Service::pid)
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
            .unwrap_or_else(|| panic!("redis-server is not running"));
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("signal {signal:?} to redis-server: {e}"));
    }

    /// A command's reply, through a fresh connection.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap_or_else(|e| panic!("redis url: {e}"));
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to redis: {e}"));
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Clients connected right now, not counting the one asking.
    pub fn connected_clients(&self) -> u64 {
        let info: String = self.query(&["INFO", "clients"]);
        let n: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no connected_clients in {info}"));
        n.saturating_sub(1)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server would ignore SIGKILL's reaping otherwise; resume is harmless if running.
        if let Some(pid) = self
            .service
            .as_ref()
            .and_then(Service::pid)
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        }
    }
}

/// True when something on `port` answers `PING` with `+PONG`.
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"+PONG"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Ok(true))
    )
}
