//! compose.yaml itself: `docker-compose config` accepts it with every profile and it keeps its
//! promises (hardening, loopback-only ports, health checks, stop grace); and the stack comes up
//! from the locally built images (`scripts/build-test-images.sh`) and chats, with the scripted
//! peer laid over it as the MCP bridge, or (profile `team`) with two real mcp-bridges on Redis. Without a Docker engine these tests skip, or fail under
//! CI.
use std::time::{Duration, Instant};

use integration_tests::containers::compose::Project;
use integration_tests::containers::scene::wait_health;
use integration_tests::containers::{docker, output, Docker};
use integration_tests::harness::{free_port, wait_for};
use integration_tests::mcp_stack::{test_python, BRIDGE_TOKEN, MCP_TOKEN};
use integration_tests::shared_queue::QueueAgent;
use integration_tests::skip::missing_dependency;
use integration_tests::stack::{Sse, KEY};
use serde_json::Value;

use crate::containers::{chat, chat_content};

/// Whether `docker compose` or docker-compose works; skips (fails under CI) otherwise.
fn compose_available(docker: &Docker, test: &str) -> bool {
    match &docker.compose {
        Ok(_) => true,
        Err(why) => {
            missing_dependency(
                test,
                &format!("docker compose ({why})"),
                "install the compose plugin or docker-compose",
            );
            false
        }
    }
}

/// `docker-compose config` output as JSON (compose v1 prints YAML only).
fn compose_config(project: &Project, profiles: &[&str]) -> Value {
    let mut args = Vec::new();
    for p in profiles {
        args.extend(["--profile", p]);
    }
    args.push("config");
    let yaml = project
        .run(&args)
        .unwrap_or_else(|e| panic!("compose.yaml rejected: {e}"));
    serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("compose config output: {e}\n{yaml}"))
}

fn compose_env(docker: &Docker, key_file: &std::path::Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = docker
        .image_vars()
        .iter()
        .filter(|(k, _)| {
            [
                "PROVIDER_IMAGE_TAG",
                "PEER_IMAGE",
                "REDIS_IMAGE",
                "PROMETHEUS_IMAGE",
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("API_KEY_SECRET_FILE".into(), key_file.display().to_string()));
    let bridge_token = secret_file(key_file.parent().unwrap(), "bridge_token", BRIDGE_TOKEN);
    env.push((
        "BRIDGE_TOKEN_SECRET_FILE".into(),
        bridge_token.display().to_string(),
    ));
    let mcp_token = secret_file(key_file.parent().unwrap(), "mcp_http_token", MCP_TOKEN);
    env.push((
        "MCP_TOKEN_SECRET_FILE".into(),
        mcp_token.display().to_string(),
    ));
    env
}

fn write_key(dir: &std::path::Path) -> std::path::PathBuf {
    secret_file(dir, "api_key", KEY)
}

/// A secret file readable by the containers' user, as compose.yaml documents.
fn secret_file(dir: &std::path::Path, name: &str, value: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// A published port as `host_ip:published:target`, from either compose version's output.
fn port_spec(port: &Value) -> String {
    if let Some(short) = port.as_str() {
        // v1 adds the default protocol.
        return short.trim_end_matches("/tcp").to_owned();
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    format!(
        "{}:{}:{}",
        text(&port["host_ip"]),
        text(&port["published"]),
        text(&port["target"])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_yaml_is_accepted_and_publishes_nothing_beyond_loopback() {
    let Some(docker) = docker("compose::config").await else {
        return;
    };
    if !compose_available(docker, "compose::config") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = compose_env(docker, &write_key(dir.path()));
    let project = Project::new(docker, &[], &env);
    let config = compose_config(&project, &["redis", "monitoring", "team"]);
    let services = config["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for expected in [
        "gateway",
        "bridge-agent",
        "redis",
        "prometheus",
        "mcp-bridge-1",
        "mcp-bridge-2",
        "queue-redis",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for (name, service) in services {
        assert_eq!(service["restart"], "unless-stopped", "{name}");
        assert_eq!(service["read_only"], true, "{name}");
        assert_eq!(service["cap_drop"], serde_json::json!(["ALL"]), "{name}");
        let opts = service["security_opt"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            opts.contains(&Value::from("no-new-privileges:true")),
            "{name}: {opts:?}"
        );
        for port in service["ports"].as_array().into_iter().flatten() {
            // v1 keeps the short form, v2 prints the long one.
            let loopback = port.as_str().map_or(port["host_ip"] == "127.0.0.1", |s| {
                s.starts_with("127.0.0.1:")
            });
            assert!(loopback, "{name} publishes {port} beyond loopback");
        }
    }
    let gateway = &services["gateway"];
    let published: Vec<String> = gateway["ports"]
        .as_array()
        .expect("gateway ports")
        .iter()
        .map(port_spec)
        .collect();
    assert_eq!(published, ["127.0.0.1:8788:8788"]);
    assert!(
        services["bridge-agent"]["ports"].is_null(),
        "bridge-agent is not published"
    );
    assert_eq!(
        gateway["depends_on"]["bridge-agent"]["condition"],
        "service_healthy"
    );
    // bridge-agent's bearer for mcp-bridge comes from a secret, never from the environment.
    let agent_env = &services["bridge-agent"]["environment"];
    assert_eq!(
        agent_env["LOCAL_PROVIDER_MCP_BRIDGE_TOKEN_FILE"], "/run/secrets/bridge_token",
        "{agent_env}"
    );
    assert!(
        agent_env.get("LOCAL_PROVIDER_MCP_BRIDGE_TOKEN").is_none(),
        "{agent_env}"
    );
    // The team profile: both mcp-bridges answer to one name, on a Redis that syncs every write.
    for name in ["mcp-bridge-1", "mcp-bridge-2"] {
        let service = &services[name];
        let aliases = &service["networks"]["default"]["aliases"];
        assert_eq!(aliases, &serde_json::json!(["mcp-bridge"]), "{name}");
        assert_eq!(
            service["environment"]["LOCAL_PROVIDER_QUEUE"], "redis",
            "{name}"
        );
        assert_eq!(
            service["environment"]["LOCAL_PROVIDER_MCP_HTTP_TOKEN_FILE"],
            "/run/secrets/mcp_http_token",
            "{name}"
        );
    }
    let redis_command = services["queue-redis"]["command"].to_string();
    assert!(
        redis_command.contains("appendfsync") && redis_command.contains("always"),
        "{redis_command}"
    );
    // The stop grace outlasts the services' 10 s SHUTDOWN_GRACE, so streams can drain.
    for name in ["gateway", "bridge-agent"] {
        let grace = services[name]["stop_grace_period"]
            .as_str()
            .unwrap_or_default();
        let secs: u64 = grace.trim_end_matches('s').parse().unwrap_or(0);
        assert!(secs > 10, "{name} stop_grace_period {grace:?}");
        assert_eq!(services[name]["stop_signal"], "SIGTERM");
        let test = services[name]["healthcheck"]["test"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            test.get(2),
            Some(&Value::from("healthcheck")),
            "{name}: {test:?}"
        );
    }
}

/// The env file of a stack published on `port`, its bridge the scripted peer service.
fn stack_env(docker: &Docker, dir: &std::path::Path, port: u16) -> Vec<(String, String)> {
    let mut env = compose_env(docker, &write_key(dir));
    env.extend([
        ("GATEWAY_PUBLISHED_PORT".into(), port.to_string()),
        (
            "LOCAL_PROVIDER_MCP_BRIDGE_URL".into(),
            "ws://scripted-peer:8787".into(),
        ),
        ("LOCAL_PROVIDER_RECONNECT_DELAY".into(), "0.2".into()),
        // The peer refuses bridge-agents without the token of the bridge_token secret.
        ("SCRIPTED_PEER_TOKEN".into(), BRIDGE_TOKEN.into()),
    ]);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_profile_puts_the_gateway_on_the_compose_redis() {
    let Some(docker) = docker("compose::redis").await else {
        return;
    };
    if !compose_available(docker, "compose::redis") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env = stack_env(docker, dir.path(), port);
    env.extend([
        ("LOCAL_PROVIDER_SESSION_STORE".into(), "redis".into()),
        (
            "LOCAL_PROVIDER_REDIS_URL".into(),
            "redis://redis:6379/0".into(),
        ),
    ]);
    let project = Project::new(docker, &["tests/containers/compose.peer.yaml"], &env);
    project
        .run(&["--profile", "redis", "up", "--detach", "--no-build"])
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://127.0.0.1:{port}");
    let health = wait_health(&base, "healthy", Duration::from_secs(60)).await;
    assert_eq!(health["store"]["kind"], "redis", "{health}");
    assert_eq!(
        chat_content(&base, "sessions in redis").await,
        "echo: sessions in redis"
    );
    // compose.yaml's `redis-cli ping` health check works in the image it runs.
    let redis = project.container("redis");
    wait_for(
        Duration::from_secs(30),
        "the redis container healthy",
        || async {
            let status = output(
                "docker",
                &["inspect", "--format", "{{.State.Health.Status}}", &redis],
            );
            (status.as_deref() == Ok("healthy")).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_comes_up_with_the_local_images_and_chats() {
    let Some(docker) = docker("compose::up").await else {
        return;
    };
    if !compose_available(docker, "compose::up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = stack_env(docker, dir.path(), port);
    let project = Project::new(docker, &["tests/containers/compose.peer.yaml"], &env);
    let started = Instant::now();
    project
        .run(&["up", "--detach", "--no-build"])
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://127.0.0.1:{port}");
    wait_health(&base, "healthy", Duration::from_secs(60)).await;
    let serving = started.elapsed();

    assert_eq!(
        chat_content(&base, "through compose").await,
        "echo: through compose"
    );
    let resp = chat(&base, "[[chunks:3]] streamed through compose", true).await;
    assert_eq!(
        Sse::parse(&resp.text().await.unwrap()).content(),
        "echo: streamed through compose"
    );

    let gateway = project.container("gateway");
    wait_for(
        Duration::from_secs(30),
        "the gateway container healthy",
        || async {
            let status = output(
                "docker",
                &["inspect", "--format", "{{.State.Health.Status}}", &gateway],
            );
            (status.as_deref() == Ok("healthy")).then_some(())
        },
    )
    .await;
    eprintln!(
        "compose::up: `up` to /health healthy {:.1} s; to docker health `healthy` {:.1} s",
        serving.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// `/health` of a published mcp-bridge.
async fn bridge_health(port: u16) -> Value {
    integration_tests::harness::get(&format!("http://127.0.0.1:{port}/health"))
        .await
        .map(|(_, v)| v)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_profile_serves_one_queue_from_two_mcp_bridges_behind_one_name() {
    let Some(docker) = docker("compose::team").await else {
        return;
    };
    if !compose_available(docker, "compose::team") {
        return;
    }
    let Some(python) = test_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (port, one, two) = (free_port(), free_port(), free_port());
    let mut env = compose_env(docker, &write_key(dir.path()));
    env.extend([
        ("GATEWAY_PUBLISHED_PORT".into(), port.to_string()),
        ("MCP_BRIDGE_PUBLISHED_PORT".into(), one.to_string()),
        ("MCP_BRIDGE_2_PUBLISHED_PORT".into(), two.to_string()),
        (
            "LOCAL_PROVIDER_MCP_BRIDGE_URL".into(),
            "ws://mcp-bridge:8787".into(),
        ),
        ("LOCAL_PROVIDER_RECONNECT_DELAY".into(), "0.2".into()),
        // bridge-agent may start before either mcp-bridge answers to the name (docs/operations.md).
        ("LOCAL_PROVIDER_RECONNECT_ATTEMPTS".into(), "1000".into()),
        ("LOCAL_PROVIDER_LEASE_TIMEOUT".into(), "2".into()),
    ]);
    let project = Project::new(docker, &[], &env);
    project
        .run(&["--profile", "team", "up", "--detach", "--no-build"])
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://127.0.0.1:{port}");
    wait_health(&base, "healthy", Duration::from_secs(90)).await;
    // The one bridge-agent reached one of the two through the shared name.
    let (holding, other) = wait_for(
        Duration::from_secs(30),
        "bridge-agent on an mcp-bridge",
        || async {
            let on_one = bridge_health(one).await["bridge_agents"]
                .as_array()
                .is_some_and(|a| a.len() == 1);
            let on_two = bridge_health(two).await["bridge_agents"]
                .as_array()
                .is_some_and(|a| a.len() == 1);
            match (on_one, on_two) {
                (true, false) => Some(("mcp-bridge-1", two)),
                (false, true) => Some(("mcp-bridge-2", one)),
                _ => None,
            }
        },
    )
    .await;
    // An agent on the other one answers.
    let agent = QueueAgent::spawn_at(&python, &format!("http://127.0.0.1:{other}/mcp"), "T", &[]);
    agent.wait_event("connected", |_| true).await;
    assert_eq!(chat_content(&base, "through the team").await, "T:1 ");
    // The mcp-bridge holding bridge-agent's connection dies; bridge-agent reaches the name again.
    output("docker", &["kill", &project.container(holding)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chat_content(&base, "after a kill").await, "T:1 ");
}
