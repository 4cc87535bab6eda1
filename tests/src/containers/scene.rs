//! One test's containers: a Docker network of its own, the socket volume bridge-agent and the
//! gateways share, the API key file, and starters for each service configured as compose.yaml
//! configures it (plus test-friendly timeouts). Containers are held by the test; declare the
//! scene first so they are removed before its volumes.
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use testcontainers::core::{AccessMode, Mount};
use testcontainers::ImageExt;

use super::{hardened, image, unique, Docker, Running, Volume};
use crate::harness::{get, wait_for};
use crate::stack::KEY;

/// Where compose.yaml mounts the shared socket volume and the API key secret.
pub const SOCKET_DIR: &str = "/run/mcp-local-provider";
pub const KEY_PATH: &str = "/run/secrets/api_key";

pub struct Scene {
    pub docker: &'static Docker,
    pub network: String,
    pub socket: Volume,
    volumes: Mutex<Vec<Volume>>,
    key_dir: TempDir,
}

impl Scene {
    pub fn new(docker: &'static Docker) -> Self {
        let key_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let key = key_dir.path().join("api_key");
        std::fs::write(&key, KEY).unwrap_or_else(|e| panic!("write {}: {e}", key.display()));
        // Readable by the containers' user (uid 10001), as compose.yaml documents for secrets.
        set_mode(&key, 0o644);
        Self {
            docker,
            network: unique("net"),
            socket: Volume::new("socket"),
            volumes: Mutex::new(Vec::new()),
            key_dir,
        }
    }

    /// A read-only bind mount of a host file, as compose mounts secrets and configuration.
    pub fn file_mount(host: &std::path::Path, at: &str) -> Mount {
        Mount::bind_mount(host.display().to_string(), at).with_access_mode(AccessMode::ReadOnly)
    }

    /// A fresh named volume mounted at `at`, removed with the scene (an image's directory there
    /// gives it its owner, as compose's named volumes get theirs).
    pub fn volume(&self, what: &str, at: &str) -> Mount {
        let volume = Volume::new(what);
        let mount = volume.mount(at);
        self.volumes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(volume);
        mount
    }

    /// The scripted bridge peer, reachable on the network as `ws://<name>:8787`.
    pub async fn peer(&self) -> Running {
        let name = unique("peer");
        let request = hardened(
            image(self.docker.image("PEER_IMAGE"), "scripted-peer listening"),
            &self.network,
            &name,
            &[],
        );
        Running::start(&name, request).await
    }

    /// bridge-agent talking to `bridge_url`, its socket in the shared volume.
    pub async fn bridge_agent(&self, bridge_url: &str) -> Running {
        let name = unique("bridge-agent");
        let request = hardened(
            image(
                self.docker.image("BRIDGE_AGENT_IMAGE"),
                "bridge-agent listening",
            ),
            &self.network,
            &name,
            &[],
        )
        .with_mount(self.socket.mount(SOCKET_DIR))
        .with_env_var("LOCAL_PROVIDER_MCP_BRIDGE_URL", bridge_url)
        // Prometheus scrapes it by its name, as under compose.yaml.
        .with_env_var("LOCAL_PROVIDER_ALLOWED_HOSTS", name.as_str())
        .with_env_var("LOCAL_PROVIDER_CONNECTION_TIMEOUT", "2")
        .with_env_var("LOCAL_PROVIDER_HEARTBEAT_INTERVAL", "1")
        .with_env_var("LOCAL_PROVIDER_RECONNECT_ATTEMPTS", "1000")
        .with_env_var("LOCAL_PROVIDER_RECONNECT_DELAY", "0.1")
        .with_env_var("LOCAL_PROVIDER_SHUTDOWN_GRACE", "2");
        Running::start(&name, request).await
    }

    /// A gateway on the shared socket with the API key file, published on 127.0.0.1, with
    /// limits out of the way unless `env` (full variable names) says otherwise.
    pub async fn gateway(&self, env: &[(&str, &str)]) -> Running {
        let name = unique("gateway");
        let mut request = hardened(
            image(self.docker.image("GATEWAY_IMAGE"), "gateway listening"),
            &self.network,
            &name,
            &[8788],
        )
        .with_mount(self.socket.mount(SOCKET_DIR))
        .with_mount(self.volume("gateway-logs", "/var/log/mcp-local-provider"))
        .with_mount(Self::file_mount(
            &self.key_dir.path().join("api_key"),
            KEY_PATH,
        ))
        .with_env_var("LOCAL_PROVIDER_API_KEY_FILE", KEY_PATH)
        // As compose.yaml serves its gateway by its service name: Prometheus scrapes it by name.
        .with_env_var("LOCAL_PROVIDER_ALLOWED_HOSTS", name.as_str())
        .with_env_var("LOCAL_PROVIDER_CONNECTION_TIMEOUT", "1")
        .with_env_var("LOCAL_PROVIDER_SHUTDOWN_GRACE", "2");
        let defaults = [
            ("LOCAL_PROVIDER_RATE_LIMIT_RPM", "100000"),
            ("LOCAL_PROVIDER_RATE_LIMIT_BURST", "100000"),
        ];
        for (key, value) in defaults {
            if !env.iter().any(|(k, _)| *k == key) {
                request = request.with_env_var(key, value);
            }
        }
        for (key, value) in env {
            request = request.with_env_var(*key, *value);
        }
        Running::start(&name, request).await
    }

    /// Redis as compose.yaml's `redis` service runs it.
    pub async fn redis(&self) -> Running {
        let name = unique("redis");
        let request = hardened(
            image(
                self.docker.image("REDIS_IMAGE"),
                "Ready to accept connections",
            ),
            &self.network,
            &name,
            &[],
        )
        .with_user("999:999")
        .with_cmd([
            "redis-server",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        Running::start(&name, request).await
    }

    /// Redis published on 127.0.0.1:`host_port` (a port of the test's choosing, kept when the
    /// container restarts), every write appended to its AOF and synced before it is answered,
    /// on a volume of its own: what the compose file's `shared-queue` profile runs.
    pub async fn durable_redis(&self, host_port: u16) -> Running {
        let name = unique("redis");
        let data = self.volume("redis-data", "/data");
        let request = hardened(
            image(
                self.docker.image("REDIS_IMAGE"),
                "Ready to accept connections",
            ),
            &self.network,
            &name,
            &[],
        )
        .with_user("999:999")
        .with_mount(data)
        .with_host_config_modifier(
            move |host: &mut testcontainers::bollard::models::HostConfig| {
                let binding = testcontainers::bollard::models::PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(host_port.to_string()),
                };
                host.publish_all_ports = Some(false);
                host.port_bindings = Some([("6379/tcp".to_owned(), Some(vec![binding]))].into());
            },
        )
        .with_cmd([
            "redis-server",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
        ]);
        Running::start(&name, request).await
    }

    /// Peer, bridge-agent and one gateway, waited on until the gateway reports `healthy`.
    pub async fn pair(&self) -> Pair {
        let peer = self.peer().await;
        let agent = self.bridge_agent(&format!("ws://{}:8787", peer.name)).await;
        let gateway = self.gateway(&[]).await;
        let base = gateway.url(8788).await;
        wait_health(&base, "healthy", Duration::from_secs(30)).await;
        Pair {
            gateway,
            agent,
            peer,
            base,
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Volumes after every container: the scene outlives the containers of its test.
        self.volumes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// The three containers of the pair, and the gateway's published base URL.
pub struct Pair {
    pub gateway: Running,
    pub agent: Running,
    pub peer: Running,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

/// Waits until `<base>/health` reports `status`; returns the body.
pub async fn wait_health(base: &str, status: &str, timeout: Duration) -> Value {
    let url = format!("{base}/health");
    wait_for(timeout, &format!("{url} to report {status}"), || async {
        match get(&url).await {
            Ok((_, body)) if body["status"] == status => Some(body),
            _ => None,
        }
    })
    .await
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
