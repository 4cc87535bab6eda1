//! Support for the container tests: the Docker engine (or a clear skip, or a failure under
//! `CI=true`), the images `scripts/build-test-images.sh` builds from this machine's binaries, and
//! containers started the way compose.yaml runs them: read-only root, no capabilities, no new
//! privileges, ports published on 127.0.0.1 only, on a Docker network of the test's own.
pub mod compose;
pub mod scene;
pub mod shim;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use shim::ApiVersion;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// What the container tests need, found once per test process.
pub struct Docker {
    images: BTreeMap<String, String>,
    /// `docker compose` or `docker-compose`, or why neither works.
    pub compose: Result<Vec<String>, String>,
}

impl Docker {
    /// An image reference printed by the build script, e.g. `GATEWAY_IMAGE`.
    pub fn image(&self, key: &str) -> &str {
        self.images
            .get(key)
            .unwrap_or_else(|| panic!("scripts/build-test-images.sh printed no {key}"))
    }

    /// Every `NAME=IMAGE` line of the build script.
    pub fn image_vars(&self) -> &BTreeMap<String, String> {
        &self.images
    }
}

enum Missing {
    /// No engine: skipped outside CI.
    Engine(String),
    /// An engine, but the set-up failed: always a failure.
    Broken(String),
}

static DOCKER: OnceCell<Result<Docker, Missing>> = OnceCell::const_new();

/// The engine and the test images; `None` (after saying why) when `test` must be skipped.
/// Panics when the engine is missing under CI ([`crate::skip`]), or when the images cannot be
/// built.
pub async fn docker(test: &str) -> Option<&'static Docker> {
    match DOCKER.get_or_init(init).await {
        Ok(docker) => Some(docker),
        Err(Missing::Engine(why)) => {
            crate::skip::missing_dependency(
                test,
                &format!("a Docker engine ({why})"),
                "install Docker",
            );
            None
        }
        Err(Missing::Broken(why)) => panic!("{test}: {why}"),
    }
}

async fn init() -> Result<Docker, Missing> {
    let api = output("docker", &["version", "--format", "{{.Server.APIVersion}}"])
        .map_err(Missing::Engine)?;
    let api = ApiVersion::parse(&api)
        .ok_or_else(|| Missing::Engine(format!("unexpected engine API version {api:?}")))?;
    let client = testcontainers::bollard::API_DEFAULT_VERSION;
    let client = ApiVersion(client.major_version as u32, client.minor_version as u32);
    if api < client {
        let upstream = match std::env::var("DOCKER_HOST") {
            Err(_) => PathBuf::from("/var/run/docker.sock"),
            Ok(host) => match host.strip_prefix("unix://") {
                Some(path) => PathBuf::from(path),
                None => {
                    return Err(Missing::Broken(format!(
                    "the engine speaks API {api}, testcontainers {client}, and DOCKER_HOST={host} \
                         is not a Unix socket the version shim can stand in front of"
                )))
                }
            },
        };
        let socket = shim::start(upstream, api)
            .map_err(|e| Missing::Broken(format!("cannot start the Docker API shim: {e}")))?;
        // testcontainers reads DOCKER_HOST when it first connects, which is after this.
        std::env::set_var("DOCKER_HOST", format!("unix://{}", socket.display()));
    }
    // --no-cargo: like the harness's debug binaries, the release binaries are built beforehand
    // (scripts/test.sh does); a build from inside a test would race the other test processes.
    let script = repo_root().join("scripts/build-test-images.sh");
    let out = tokio::process::Command::new(&script)
        .arg("--no-cargo")
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| Missing::Broken(format!("cannot run {}: {e}", script.display())))?;
    if !out.status.success() {
        return Err(Missing::Broken(format!(
            "{} failed ({}); its messages are above",
            script.display(),
            out.status
        )));
    }
    let images = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(Docker {
        images,
        compose: find_compose(),
    })
}

/// Runs a command; its trimmed stdout, or a one-line reason.
pub fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn find_compose() -> Result<Vec<String>, String> {
    let v2 = output("docker", &["compose", "version"]);
    if v2.is_ok() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    match output("docker-compose", &["version"]) {
        Ok(_) => Ok(vec!["docker-compose".into()]),
        Err(e) => Err(format!(
            "neither `docker compose` nor docker-compose works: {e}"
        )),
    }
}

static NAMES: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or test process) uses: for containers, networks, volumes, projects.
pub fn unique(what: &str) -> String {
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    format!("mlp-test-{what}-{}-{n}", std::process::id())
}

/// `name:tag` as testcontainers wants it, waiting for `ready` in the container's output.
pub fn image(reference: &str, ready: &str) -> GenericImage {
    let (name, tag) = reference
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("image reference without a tag: {reference}"));
    GenericImage::new(name, tag).with_wait_for(WaitFor::message_on_either_std(ready))
}

/// A container request as compose.yaml runs its services: read-only root, no capabilities, no
/// new privileges; named `name` (its DNS name) on `network`; `published` container ports bound to
/// 127.0.0.1 on ports the engine picks, and nothing else published.
pub fn hardened(
    image: GenericImage,
    network: &str,
    name: &str,
    published: &'static [u16],
) -> ContainerRequest<GenericImage> {
    image
        .with_network(network)
        .with_container_name(name)
        .with_label("mcp-local-provider.test", "1")
        .with_readonly_rootfs(true)
        .with_cap_drop("ALL")
        .with_security_opt("no-new-privileges:true")
        .with_host_config_modifier(move |host: &mut HostConfig| {
            host.publish_all_ports = Some(false);
            host.port_bindings = Some(
                published
                    .iter()
                    .map(|port| {
                        let binding = PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(String::new()),
                        };
                        (format!("{port}/tcp"), Some(vec![binding]))
                    })
                    .collect(),
            );
        })
}

/// A started container that prints its output if the test fails, and is removed when dropped
/// (by testcontainers).
pub struct Running {
    pub name: String,
    container: ContainerAsync<GenericImage>,
}

impl Running {
    pub async fn start(name: &str, request: ContainerRequest<GenericImage>) -> Self {
        let container = request
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start container {name}: {e}\n{}", logs(name)));
        Self {
            name: name.to_owned(),
            container,
        }
    }

    /// `http://127.0.0.1:<published port>` for `port` inside the container.
    pub async fn url(&self, port: u16) -> String {
        let host_port = self
            .container
            .get_host_port_ipv4(port)
            .await
            .unwrap_or_else(|e| panic!("{}: port {port} is not published: {e}", self.name));
        format!("http://127.0.0.1:{host_port}")
    }

    /// `docker inspect` of this container, as JSON.
    pub fn inspect(&self) -> serde_json::Value {
        let text = output(
            "docker",
            &["inspect", "--type", "container", self.container.id()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut all: Vec<serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("docker inspect: {e}"));
        all.pop().unwrap_or_default()
    }
}

impl Deref for Running {
    type Target = ContainerAsync<GenericImage>;
    fn deref(&self) -> &Self::Target {
        &self.container
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- container {} -----\n{}\n----- end of {} -----",
                self.name,
                logs(&self.name),
                self.name
            );
        }
    }
}

/// The container's output so far (stdout and stderr), or why not.
pub fn logs(name: &str) -> String {
    match Command::new("docker")
        .args(["logs", "--tail", "200", name])
        .output()
    {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("(docker logs failed: {e})"),
    }
}

/// A named volume, removed when dropped; declare it before the containers that mount it, so
/// they are gone first.
pub struct Volume {
    pub name: String,
}

impl Volume {
    pub fn new(what: &str) -> Self {
        let name = unique(what);
        output(
            "docker",
            &[
                "volume",
                "create",
                "--label",
                "mcp-local-provider.test=1",
                &name,
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Self { name }
    }

    pub fn mount(&self, at: &str) -> Mount {
        Mount::volume_mount(&self.name, at)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.name])
            .output();
    }
}
