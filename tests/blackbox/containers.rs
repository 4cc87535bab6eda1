//! The images, with testcontainers: the pair in two containers sharing the socket volume,
//! supervision across a killed bridge-agent container, two gateways on one Redis, Prometheus
//! scraping both services. Images come from `scripts/build-test-images.sh` (no registry needed;
//! build the release binaries first). Without a Docker engine these tests skip, or fail under
//! `CI=true`. compose.yaml itself is tested in `compose.rs`.
use std::time::{Duration, Instant};

use integration_tests::containers::scene::{wait_health, Scene};
use integration_tests::containers::{docker, hardened, image, unique, Running};
use integration_tests::harness::{get, wait_for};
use integration_tests::stack::{chat_body, http, Sse, KEY};
use serde_json::Value;
use testcontainers::bollard::query_parameters::KillContainerOptionsBuilder;
use testcontainers::core::client::docker_client_instance;
use testcontainers::ImageExt;

pub async fn chat(base: &str, text: &str, stream: bool) -> reqwest::Response {
    http()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body(text, stream))
        .send()
        .await
        .unwrap_or_else(|e| panic!("chat via {base}: {e}"))
}

pub async fn chat_content(base: &str, text: &str) -> String {
    let resp = chat(base, text, false).await;
    assert_eq!(resp.status(), 200, "chat via {base}");
    let body: Value = resp.json().await.unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {body}"))
        .to_owned()
}

/// The engine's view of a container's health check: `starting`, `healthy` or `unhealthy`.
fn docker_health(container: &Running) -> String {
    container.inspect()["State"]["Health"]["Status"]
        .as_str()
        .unwrap_or("none")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pair_in_two_containers_chats_through_the_loopback_published_port() {
    let Some(docker) = docker("containers::pair").await else {
        return;
    };
    let scene = Scene::new(docker);
    let started = Instant::now();
    let pair = scene.pair().await;
    let serving = started.elapsed();

    // Published on 127.0.0.1 only; bridge-agent and the peer publish nothing.
    let ports = &pair.gateway.inspect()["NetworkSettings"]["Ports"];
    let bindings = ports["8788/tcp"].as_array().expect("8788 is published");
    assert!(!bindings.is_empty());
    assert!(
        bindings.iter().all(|b| b["HostIp"] == "127.0.0.1"),
        "{ports}"
    );
    for other in [&pair.agent, &pair.peer] {
        let ports = &other.inspect()["NetworkSettings"]["Ports"];
        let published = ports.as_object().is_some_and(|m| {
            m.values()
                .any(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        });
        assert!(!published, "{} publishes {ports}", other.name);
    }

    assert_eq!(
        chat_content(&pair.base, "hello from a container").await,
        "echo: hello from a container"
    );
    let resp = chat(
        &pair.base,
        "[[chunks:4]] streamed through the volume socket",
        true,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let sse = Sse::parse(&resp.text().await.unwrap());
    assert_eq!(sse.content(), "echo: streamed through the volume socket");
    assert_eq!(sse.data.last().map(String::as_str), Some("[DONE]"));
    assert!(sse.other.is_empty(), "{:?}", sse.other);

    // The images' HEALTHCHECK (the binaries' `healthcheck` subcommand, no shell) passes.
    for container in [&pair.gateway, &pair.agent] {
        wait_for(
            Duration::from_secs(30),
            &format!("{} healthy", container.name),
            || async { (docker_health(container) == "healthy").then_some(()) },
        )
        .await;
    }
    eprintln!(
        "containers::pair: gateway serving /health healthy {:.1} s after the first container start; \
         docker health `healthy` after {:.1} s",
        serving.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_agent_container_degrades_the_gateway_until_it_is_restarted() {
    let Some(docker) = docker("containers::supervision").await else {
        return;
    };
    let scene = Scene::new(docker);
    let pair = scene.pair().await;
    let gateway_started = pair.gateway.inspect()["State"]["StartedAt"].clone();
    assert_eq!(chat_content(&pair.base, "before").await, "echo: before");

    let engine = docker_client_instance().await.expect("docker client");
    let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
    engine
        .kill_container(pair.agent.id(), Some(kill))
        .await
        .expect("kill bridge-agent");

    let health = wait_health(&pair.base, "degraded", Duration::from_secs(15)).await;
    assert_eq!(health["bridge_agent"]["status"], "disconnected", "{health}");
    let resp = chat(&pair.base, "anyone there?", false).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bridge_agent_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("bridge-agent"), "a clear message: {body}");

    // The same container back (as `restart: unless-stopped` does): its stale socket in the
    // volume is replaced, and the gateway reconnects by itself.
    pair.agent.start().await.expect("restart bridge-agent");
    wait_health(&pair.base, "healthy", Duration::from_secs(30)).await;
    assert_eq!(chat_content(&pair.base, "after").await, "echo: after");
    let resp = chat(&pair.base, "[[chunks:3]] streamed after", true).await;
    assert_eq!(
        Sse::parse(&resp.text().await.unwrap()).content(),
        "echo: streamed after"
    );

    let state = &pair.gateway.inspect()["State"];
    assert_eq!(
        state["StartedAt"], gateway_started,
        "the gateway was never restarted"
    );
    assert_eq!(state["Running"], true);
    assert_eq!(pair.gateway.inspect()["RestartCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_containers_on_one_redis_enforce_one_rate_limit() {
    let Some(docker) = docker("containers::redis").await else {
        return;
    };
    let scene = Scene::new(docker);
    let (redis, peer) = tokio::join!(scene.redis(), scene.peer());
    let _agent = scene
        .bridge_agent(&format!("ws://{}:8787", peer.name))
        .await;
    let redis_url = format!("redis://{}:6379/0", redis.name);
    // A burst of 3 shared by both, refilled at 1 a minute: the 4th request fails wherever it goes.
    let env = [
        ("LOCAL_PROVIDER_SESSION_STORE", "redis"),
        ("LOCAL_PROVIDER_REDIS_URL", redis_url.as_str()),
        ("LOCAL_PROVIDER_RATE_LIMIT_BURST", "3"),
        ("LOCAL_PROVIDER_RATE_LIMIT_RPM", "1"),
    ];
    let (one, two) = tokio::join!(scene.gateway(&env), scene.gateway(&env));
    let (a, b) = (one.url(8788).await, two.url(8788).await);
    wait_health(&a, "healthy", Duration::from_secs(30)).await;
    wait_health(&b, "healthy", Duration::from_secs(30)).await;

    assert_eq!(chat_content(&a, "one").await, "echo: one");
    assert_eq!(chat_content(&b, "two").await, "echo: two");
    assert_eq!(chat_content(&a, "three").await, "echo: three");
    for base in [&b, &a] {
        let resp = chat(base, "one too many", false).await;
        assert_eq!(resp.status(), 429, "via {base}");
        assert!(resp.headers().contains_key("retry-after"));
        assert_eq!(resp.headers()["x-ratelimit-limit-requests"], "1");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    }
}

/// deploy/prometheus/prometheus.compose.yml with the test's container names and a 1 s interval.
fn prometheus_config(gateway: &str, agent: &str) -> String {
    let path =
        integration_tests::containers::repo_root().join("deploy/prometheus/prometheus.compose.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    for needle in ["\"gateway:8788\"", "\"bridge-agent:8789\"", "15s"] {
        assert!(text.contains(needle), "{} lacks {needle}", path.display());
    }
    text.replace("\"gateway:8788\"", &format!("\"{gateway}:8788\""))
        .replace("\"bridge-agent:8789\"", &format!("\"{agent}:8789\""))
        .replace("15s", "1s")
}

async fn query(prometheus: &str, promql: &str) -> Vec<Value> {
    let url = format!("{prometheus}/api/v1/query?query={}", urlencode(promql));
    match get(&url).await {
        Ok((200, body)) => body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sample(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_in_a_container_scrapes_both_services() {
    let Some(docker) = docker("containers::prometheus").await else {
        return;
    };
    let scene = Scene::new(docker);
    let pair = scene.pair().await;
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        prometheus_config(&pair.gateway.name, &pair.agent.name),
    )
    .unwrap();
    let rules = integration_tests::containers::repo_root().join("deploy/prometheus/alerts.yml");
    for file in [&config, &rules] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert!(
            mode & 0o004 != 0,
            "{} must be world-readable for the nobody user",
            file.display()
        );
    }
    let name = unique("prometheus");
    let request = hardened(
        image(
            docker.image("PROMETHEUS_IMAGE"),
            "Server is ready to receive web requests.",
        ),
        &scene.network,
        &name,
        &[9090],
    )
    .with_user("65534:65534")
    .with_mount(Scene::file_mount(&config, "/etc/prometheus/prometheus.yml"))
    .with_mount(Scene::file_mount(&rules, "/etc/prometheus/alerts.yml"))
    .with_mount(scene.volume("prometheus-data", "/prometheus"))
    .with_cmd([
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--web.listen-address=:9090",
    ]);
    let prometheus = Running::start(&name, request).await;
    let api = prometheus.url(9090).await;

    for job in ["gateway", "bridge-agent"] {
        wait_for(
            Duration::from_secs(30),
            &format!("up{{job=\"{job}\"}} == 1"),
            || async {
                (sample(&query(&api, &format!("up{{job=\"{job}\"}}")).await) == Some(1.0))
                    .then_some(())
            },
        )
        .await;
    }
    // Every rule of deploy/prometheus/alerts.yml is loaded.
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let expected = rules_text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let (_, loaded) = get(&format!("{api}/api/v1/rules")).await.unwrap();
    let loaded: usize = loaded["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(expected > 0);
    assert_eq!(loaded, expected, "alert rules loaded by Prometheus");

    let counter = "sum(gateway_http_requests_total{route=\"/v1/chat/completions\"})";
    let before = sample(&query(&api, counter).await).unwrap_or(0.0);
    for i in 0..3 {
        chat_content(&pair.base, &format!("counted {i}")).await;
    }
    let after = wait_for(
        Duration::from_secs(30),
        "the chat counter to move",
        || async { sample(&query(&api, counter).await).filter(|v| *v >= before + 3.0) },
    )
    .await;
    assert!(after >= before + 3.0, "{before} -> {after}");
    drop(prometheus);
}
