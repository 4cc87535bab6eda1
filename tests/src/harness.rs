//! Starting the real binaries as processes, for black-box tests.
//!
//! Each [`Service`] runs with every inherited `LOCAL_PROVIDER_*` variable removed and only the
//! ones given set, its output captured to a file; when a test panics, dropping the service prints
//! that file, so failures come with the service's logs.
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::ipc_client::IpcClient;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// `target/<profile>/<name>`, found from the test executable (`target/<profile>/deps/…`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no current exe: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Tests run from `deps/`, benchmark examples from `examples/`.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found; build the binaries first: cargo build --workspace --bins",
        path.display()
    );
    path
}

/// Polls `check` every 20 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("http client: {e}"))
}

/// GETs `url`: its status and body, parsed as JSON when it is JSON (else a JSON string).
pub async fn get(url: &str) -> Result<(u16, Value), String> {
    let resp = http()
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

/// An address of this machine that is not loopback (the first local IPv4 host address the
/// kernel lists in `/proc/net/fib_trie`), so a test can reach a service as another machine
/// would; `None` when there is none.
pub fn non_loopback_address() -> Option<std::net::IpAddr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let lines: Vec<&str> = trie.lines().collect();
    lines.windows(2).find_map(|pair| {
        let address = pair[0].trim().strip_prefix("|-- ")?;
        let ip: std::net::IpAddr = address.parse().ok()?;
        (pair[1].trim() == "/32 host LOCAL" && !ip.is_loopback()).then_some(ip)
    })
}

/// Waits until `url` answers 200; returns its body.
pub async fn wait_healthy(url: &str, timeout: Duration) -> Value {
    wait_for(timeout, &format!("{url} to answer 200"), || async {
        match get(url).await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    })
    .await
}

/// A running service binary.
pub struct Service {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Service {
    /// Starts `bin` with `envs` (full variable names) and no inherited `LOCAL_PROVIDER_*`,
    /// stdout and stderr going to `<log_dir>/<bin name>.log`.
    pub fn spawn<K, V>(
        bin: &Path,
        envs: impl IntoIterator<Item = (K, V)>,
        log_dir: &Path,
    ) -> io::Result<Self>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        Self::spawn_args(bin, std::iter::empty::<&OsStr>(), envs, log_dir)
    }

    /// [`Service::spawn`] with command-line arguments.
    pub fn spawn_args<A, K, V>(
        bin: &Path,
        args: impl IntoIterator<Item = A>,
        envs: impl IntoIterator<Item = (K, V)>,
        log_dir: &Path,
    ) -> io::Result<Self>
    where
        A: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "service".into());
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LOCAL_PROVIDER_") {
                cmd.env_remove(key);
            }
        }
        // Plain log files; a test that wants colour can set it back.
        cmd.env("NO_COLOR", "1")
            .args(args)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        Ok(Self {
            name,
            child,
            log_path,
            exited: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the service printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn print_logs(&self) {
        eprintln!(
            "----- {} log ({}) -----\n{}\n----- end of {} log -----",
            self.name,
            self.log_path.display(),
            self.logs(),
            self.name
        );
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> io::Result<()> {
        self.signal(rustix::process::Signal::TERM)
    }

    /// Sends SIGINT.
    pub fn interrupt(&self) -> io::Result<()> {
        self.signal(rustix::process::Signal::INT)
    }

    /// Sends SIGSTOP: the process stalls, its sockets open.
    pub fn pause(&self) -> io::Result<()> {
        self.signal(rustix::process::Signal::STOP)
    }

    /// Sends SIGCONT.
    pub fn unpause(&self) -> io::Result<()> {
        self.signal(rustix::process::Signal::CONT)
    }

    /// Sends SIGHUP (reopen the audit log).
    pub fn hangup(&self) -> io::Result<()> {
        self.signal(rustix::process::Signal::HUP)
    }

    fn signal(&self, signal: rustix::process::Signal) -> io::Result<()> {
        let pid = self
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| io::Error::other(format!("{} has exited", self.name)))?;
        rustix::process::kill_process(pid, signal).map_err(io::Error::from)
    }

    /// SIGKILL, then reaps it.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.child.kill().await
    }

    /// The exit status, if it has exited already.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exited = Some(status);
                Ok(status)
            }
            Ok(Err(e)) => Err(format!("{}: wait failed: {e}", self.name)),
            Err(_) => Err(format!("{} still running after {timeout:?}", self.name)),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}

/// Builds a bridge-agent process with test-friendly settings: short timeouts, quick and
/// unlimited-ish reconnects, a socket in its own temporary directory, a free health port.
pub struct BridgeAgentProc {
    envs: BTreeMap<String, String>,
    dir: TempDir,
}

impl BridgeAgentProc {
    pub fn new(bridge_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let socket = dir.path().join("run").join("bridge.sock");
        let mut this = Self {
            envs: BTreeMap::new(),
            dir,
        };
        for (name, value) in [
            ("MCP_BRIDGE_URL", bridge_url.to_owned()),
            ("BRIDGE_SOCKET", socket.display().to_string()),
            ("BRIDGE_AGENT_PORT", free_port().to_string()),
            ("AGENT_ID", "test-agent".into()),
            ("CONNECTION_TIMEOUT", "1".into()),
            ("HEARTBEAT_INTERVAL", "1".into()),
            ("RECONNECT_ATTEMPTS", "1000".into()),
            ("RECONNECT_DELAY", "0.05".into()),
            ("REQUEST_TIMEOUT", "5".into()),
            ("RESPONSE_TIMEOUT", "10".into()),
            ("SHUTDOWN_GRACE", "2".into()),
            ("LOG_LEVEL", "debug".into()),
        ] {
            this = this.env(name, value);
        }
        this
    }

    /// Sets `LOCAL_PROVIDER_<name>`.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.envs
            .insert(format!("LOCAL_PROVIDER_{name}"), value.to_string());
        self
    }

    /// Leaves `LOCAL_PROVIDER_<name>` unset.
    pub fn without(mut self, name: &str) -> Self {
        self.envs.remove(&format!("LOCAL_PROVIDER_{name}"));
        self
    }

    /// The temporary directory holding the socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(self.value("BRIDGE_SOCKET"))
    }

    fn value(&self, name: &str) -> String {
        self.envs
            .get(&format!("LOCAL_PROVIDER_{name}"))
            .cloned()
            .unwrap_or_default()
    }

    /// Starts the process (without waiting for it to be ready).
    pub fn spawn(self) -> BridgeAgent {
        let service = Service::spawn(&bin_path("bridge-agent"), &self.envs, self.dir.path())
            .unwrap_or_else(|e| panic!("cannot start bridge-agent: {e}"));
        BridgeAgent {
            socket: self.socket_path(),
            port: self.value("BRIDGE_AGENT_PORT").parse().unwrap_or(0),
            service,
            _dir: self.dir,
        }
    }
}

/// A running bridge-agent.
pub struct BridgeAgent {
    pub service: Service,
    pub socket: PathBuf,
    pub port: u16,
    _dir: TempDir,
}

impl BridgeAgent {
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits for /health/live, i.e. both listeners are up.
    pub async fn wait_live(&self, timeout: Duration) {
        wait_healthy(&self.url("/health/live"), timeout).await;
    }

    /// Waits until /health reports `status`; returns the body.
    pub async fn wait_health(&self, status: &str, timeout: Duration) -> Value {
        let url = self.url("/health");
        wait_for(timeout, &format!("/health status {status}"), || async {
            match get(&url).await {
                Ok((200, body)) if body["status"] == status => Some(body),
                _ => None,
            }
        })
        .await
    }

    /// Waits until the bridge WebSocket is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> Value {
        self.wait_health("healthy", timeout).await
    }

    /// A gateway connection (after hello/welcome).
    pub async fn connect(&self) -> IpcClient {
        IpcClient::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("ipc connect: {e}"))
    }
}
