//! The whole pair on free ports: a scripted bridge peer, the real bridge-agent and the real
//! gateway, with helpers to talk to the gateway the way clients do.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::harness::{bin_path, free_port, get, wait_for, BridgeAgent, BridgeAgentProc, Service};
use crate::peer::ScriptedPeer;

pub const KEY: &str = "test-key-0123456789abcdef0123456789abcdef";
pub const ADMIN: &str = "admin-token-0123456789abcdef0123456789ab";
pub const MODEL: &str = "cursor-agent-local";

/// Builds a gateway process with test-friendly settings (limits high enough not to trigger).
pub struct GatewayProc {
    envs: BTreeMap<String, String>,
    dir: TempDir,
    open_files: Option<u64>,
}

impl GatewayProc {
    pub fn new(socket: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let audit = dir.path().join("logs").join("audit.log");
        let mut this = Self {
            envs: BTreeMap::new(),
            dir,
            open_files: None,
        };
        for (name, value) in [
            ("PORT", free_port().to_string()),
            ("API_KEY", KEY.to_owned()),
            ("ADMIN_TOKEN", ADMIN.to_owned()),
            ("BRIDGE_SOCKET", socket.display().to_string()),
            ("AUDIT_LOG", audit.display().to_string()),
            ("CONNECTION_TIMEOUT", "1".into()),
            ("KEEPALIVE_INTERVAL", "0.2".into()),
            ("SHUTDOWN_GRACE", "2".into()),
            ("RATE_LIMIT_RPM", "100000".into()),
            ("RATE_LIMIT_BURST", "100000".into()),
            ("AUTH_FAILURE_LIMIT", "1000".into()),
            ("LOG_LEVEL", "debug".into()),
        ] {
            this = this.env(name, value);
        }
        this
    }

    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.envs
            .insert(format!("LOCAL_PROVIDER_{name}"), value.to_string());
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.envs.remove(&format!("LOCAL_PROVIDER_{name}"));
        self
    }

    /// Runs the gateway with both its open-file limits at `n` (under util-linux's `prlimit`).
    pub fn open_file_limit(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    pub fn spawn(self) -> Gateway {
        let gateway = bin_path("gateway");
        let service = match self.open_files {
            None => Service::spawn(&gateway, &self.envs, self.dir.path()),
            Some(n) => Service::spawn_args(
                Path::new("prlimit"),
                [
                    format!("--nofile={n}:{n}").into(),
                    "--".into(),
                    gateway.into_os_string(),
                ],
                &self.envs,
                self.dir.path(),
            ),
        }
        .unwrap_or_else(|e| panic!("cannot start gateway: {e}"));
        let port = self.envs["LOCAL_PROVIDER_PORT"].parse().unwrap_or(0);
        let audit = self.envs.get("LOCAL_PROVIDER_AUDIT_LOG").map(PathBuf::from);
        Gateway {
            service,
            port,
            audit,
            _dir: self.dir,
        }
    }
}

pub struct Gateway {
    pub service: Service,
    pub port: u16,
    audit: Option<PathBuf>,
    _dir: TempDir,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The OpenAI base URL, as a user types it into an editor.
    pub fn base_url(&self) -> String {
        self.url("/v1")
    }

    pub async fn wait_live(&self) {
        crate::harness::wait_healthy(&self.url("/health/live"), Duration::from_secs(20)).await;
    }

    /// Waits until /health reports `status`.
    pub async fn wait_health(&self, status: &str, timeout: Duration) -> Value {
        let url = self.url("/health");
        wait_for(timeout, &format!("gateway /health {status}"), || async {
            match get(&url).await {
                Ok((_, body)) if body["status"] == status => Some(body),
                _ => None,
            }
        })
        .await
    }

    /// Where the audit log is written, when it is.
    pub fn audit_path(&self) -> Option<&Path> {
        self.audit.as_deref()
    }

    /// Every audit record so far.
    pub fn audit(&self) -> Vec<Value> {
        let Some(path) = &self.audit else {
            return vec![];
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// The raw audit log text.
    pub fn audit_text(&self) -> String {
        self.audit
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits for an audit record matching `pred`.
    pub async fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(10), what, || {
            let found = self.audit().into_iter().find(|v| pred(v));
            async move { found }
        })
        .await
    }

    pub fn post(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        with_auth(http().post(self.url(path)), token)
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        with_auth(http().get(self.url(path)), token)
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        with_auth(http().delete(self.url(path)), token)
    }

    /// `POST /v1/sessions` with the API key: the new session (`session_id`, `token`, …).
    pub async fn create_session(&self) -> Value {
        let resp = self
            .post("/v1/sessions", Some(KEY))
            .send()
            .await
            .unwrap_or_else(|e| panic!("session request: {e}"));
        assert_eq!(resp.status(), 200, "creating a session");
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("session body: {e}"))
    }

    /// `POST path` of `body` with the API key.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post(path, Some(KEY))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// `GET path` with the API key, and its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path, Some(KEY))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path} body: {e}"))
    }

    /// `POST /v1/chat/completions` with the API key.
    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.post("/v1/chat/completions", Some(KEY))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("chat request: {e}"))
    }
}

fn with_auth(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("http client: {e}"))
}

/// A chat body as VoidEditor sends it: only model, messages and stream.
pub fn chat_body(text: &str, stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream})
}

/// The events of a finished SSE body: `data:` payloads in order, and how many comment lines.
#[derive(Debug, Default)]
pub struct Sse {
    pub data: Vec<String>,
    pub comments: usize,
    /// Lines that are neither `data:` nor comments nor blank (there must be none).
    pub other: Vec<String>,
}

impl Sse {
    pub fn parse(text: &str) -> Self {
        let mut sse = Sse::default();
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data:") {
                sse.data.push(data.trim_start().to_owned());
            } else if line.starts_with(':') {
                sse.comments += 1;
            } else if !line.is_empty() {
                sse.other.push(line.to_owned());
            }
        }
        sse
    }

    /// The JSON events before `[DONE]`.
    pub fn json(&self) -> Vec<Value> {
        self.data
            .iter()
            .filter(|d| d.as_str() != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("event {d:?}: {e}")))
            .collect()
    }

    /// `delta.content` joined, as Void shows it.
    pub fn content(&self) -> String {
        self.delta_text("content")
    }

    pub fn delta_text(&self, field: &str) -> String {
        self.json()
            .iter()
            .filter_map(|e| e["choices"][0]["delta"][field].as_str().map(str::to_owned))
            .collect()
    }
}

/// The whole stack on free ports.
pub struct Stack {
    pub peer: ScriptedPeer,
    pub agent: BridgeAgent,
    pub gateway: Gateway,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|a| a, |g| g).await
    }

    /// Starts with the agent and gateway builders adjusted by `agent` and `gateway`.
    pub async fn start_with(
        agent: impl FnOnce(BridgeAgentProc) -> BridgeAgentProc,
        gateway: impl FnOnce(GatewayProc) -> GatewayProc,
    ) -> Self {
        let peer = ScriptedPeer::start().await;
        let agent = agent(BridgeAgentProc::new(&peer.url())).spawn();
        let gateway = gateway(GatewayProc::new(&agent.socket)).spawn();
        gateway
            .wait_health("healthy", Duration::from_secs(20))
            .await;
        Self {
            peer,
            agent,
            gateway,
        }
    }
}
