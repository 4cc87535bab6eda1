//! The request queue on Redis (`LOCAL_PROVIDER_QUEUE=redis`): two mcp-bridges on one Redis (a
//! container of the locally built image, every write synced to its AOF), bridge-agent on the
//! first, the gateway, and agents written with the official Python `mcp` package on either. What
//! a team on several machines relies on: an agent on one mcp-bridge answers what came through the
//! other, and nothing acknowledged is lost when an mcp-bridge, an agent or Redis goes.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::containers::scene::Scene;
use integration_tests::containers::{docker, Running};
use integration_tests::harness::{free_port, Service};
use integration_tests::mcp_stack::{test_python, AgentRecipe, McpBridge, BRIDGE_TOKEN};
use integration_tests::shared_queue::{bridge_on, health, wait_health, QueueAgent};
use integration_tests::stack::{chat_body, Gateway, GatewayProc, Sse, KEY};
use serde_json::Value;

/// Containers before the scene: they are removed before its volume.
struct Team {
    redis: Running,
    a: McpBridge,
    b: McpBridge,
    gateway: Gateway,
    _bridge_agent: Service,
    _recipe: AgentRecipe,
    python: PathBuf,
    _scene: Scene,
}

/// Redis, mcp-bridges A and B on it, bridge-agent connected to A, and the gateway.
async fn team(test: &str) -> Option<Team> {
    let docker = docker(test).await?;
    let python = test_python()?;
    let scene = Scene::new(docker);
    let port = free_port();
    let redis = scene.durable_redis(port).await;
    let url = format!("redis://127.0.0.1:{port}/0");
    let a = bridge_on(&url, "team:").spawn();
    let b = bridge_on(&url, "team:").spawn();
    let recipe = AgentRecipe::new(&a.ws_url(), Some(BRIDGE_TOKEN));
    let bridge_agent = recipe.spawn();
    let gateway = GatewayProc::new(&recipe.socket()).spawn();
    gateway
        .wait_health("healthy", Duration::from_secs(30))
        .await;
    wait_health(&b, "both mcp-bridges on the queue", |h| {
        h["queue"]["mcp_bridges"] == 2 && h["connected_bridge_agents"] == 1
    })
    .await;
    Some(Team {
        redis,
        a,
        b,
        gateway,
        _bridge_agent: bridge_agent,
        _recipe: recipe,
        python,
        _scene: scene,
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .unwrap()
}

/// A chat through the gateway: its status and body.
async fn chat(gateway: &Gateway, text: &str, stream: bool) -> (u16, String) {
    let resp = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body(text, stream))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn content(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_one_mcp_bridge_answers_what_came_through_the_other() {
    let Some(team) = team("shared_queue::answers_across").await else {
        return;
    };
    let agent = QueueAgent::spawn(&team.python, &team.b, "B", &["--parts", "2"]);
    // The figures are the queue's, the same on both: A sees B's waiting poll.
    wait_health(&team.a, "A to see the poll on B", |h| {
        h["waiting_polls"] == 1
    })
    .await;

    let (status, body) = chat(&team.gateway, "across, whole", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), "B:1 B:2 ");
    let (status, body) = chat(&team.gateway, "across, streamed", true).await;
    assert_eq!(status, 200, "{body}");
    let sse = Sse::parse(&body);
    assert_eq!(sse.content(), "B:1 B:2 ");
    assert_eq!(sse.data.iter().filter(|d| *d == "[DONE]").count(), 1);
    let taken = agent
        .events()
        .iter()
        .filter(|e| e["event"] == "taken")
        .count();
    assert_eq!(taken, 2, "each request handed out once");
    let h = health(&team.a).await;
    assert_eq!(h["queue"]["kind"], "redis", "{h}");
    assert_eq!(h["queue"]["available"], true, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_before_an_mcp_bridge_is_killed_are_answered_after_it_restarts() {
    let Some(mut team) = team("shared_queue::killed_bridge").await else {
        return;
    };
    let chats: Vec<_> = (0..3)
        .map(|k| {
            let url = team.gateway.url("/v1/chat/completions");
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth(KEY)
                    .json(&chat_body(&format!("queued {k}"), false))
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            })
        })
        .collect();
    wait_health(&team.a, "three requests in the queue", |h| {
        h["queue_depth"] == 3
    })
    .await;
    // Neither mcp-bridge hands anything back: A dies with bridge-agent's connection, B goes too.
    team.a.kill_and_restart().await;
    team.b.service.kill().await.unwrap();
    wait_health(&team.a, "bridge-agent back on A", |h| {
        h["bridge_agents"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let agent = QueueAgent::spawn(&team.python, &team.a, "A", &[]);
    for chat in chats {
        let (status, body) = chat.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(content(&body), "A:1 ");
    }
    assert_eq!(
        agent
            .events()
            .iter()
            .filter(|e| e["event"] == "answered")
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_died_holding_a_lease_has_its_request_handed_to_another() {
    let Some(team) = team("shared_queue::dead_agent").await else {
        return;
    };
    let mut holder = QueueAgent::spawn(&team.python, &team.b, "X", &["--hold"]);
    wait_health(&team.a, "X polling", |h| h["waiting_polls"] == 1).await;
    let url = team.gateway.url("/v1/chat/completions");
    let asked = tokio::spawn(async move {
        let resp = client()
            .post(url)
            .bearer_auth(KEY)
            .json(&chat_body("who answers?", false))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    let taken = holder.wait_event("taken", |_| true).await;
    holder.kill().await;
    // Another agent, on the other mcp-bridge, gets it.
    let other = QueueAgent::spawn(&team.python, &team.a, "Y", &[]);
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(content(&body), "Y:1 ");
    let answered = other.wait_event("answered", |_| true).await;
    assert_eq!(answered["id"], taken["id"]);
}

/// A streamed chat answered by an agent on B in three parts, held after the first one reached
/// the client until [`Gate::open`].
struct HalfAnswered {
    agent: QueueAgent,
    gate: Gate,
    resp: reqwest::Response,
    /// What the client has read so far (up to and including the first part).
    body: String,
}

/// The file `queue_agent.py --gate` waits for between an answer's first part and the rest.
struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    fn file(&self) -> PathBuf {
        self.dir.path().join("go")
    }

    fn open(&self) {
        std::fs::write(self.file(), "").unwrap();
    }
}

async fn half_answered(team: &Team, text: &str) -> HalfAnswered {
    let gate = Gate {
        dir: tempfile::tempdir().unwrap(),
    };
    let agent = QueueAgent::spawn(
        &team.python,
        &team.b,
        "B",
        &["--parts", "3", "--gate", gate.file().to_str().unwrap()],
    );
    wait_health(&team.a, "B's agent polling", |h| h["waiting_polls"] == 1).await;
    let mut resp = client()
        .post(team.gateway.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat_body(text, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    while !body.contains("B:1") {
        let chunk = resp.chunk().await.unwrap().expect("the stream ended early");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    HalfAnswered {
        agent,
        gate,
        resp,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_agents_mcp_bridge_is_killed_mid_answer_ends_exactly_once() {
    let Some(mut team) = team("shared_queue::killed_mid_answer").await else {
        return;
    };
    let HalfAnswered {
        agent,
        gate,
        mut resp,
        mut body,
    } = half_answered(&team, "half an answer").await;
    agent.wait_event("part", |e| e["n"] == 1).await;
    team.b.service.kill().await.unwrap();
    gate.open();
    let started = Instant::now();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let sse = Sse::parse(&body);
    // The first part reached the client, so the request cannot go to another agent: it ends,
    // once, with an error, when its lease lapses (LEASE_TIMEOUT, 2 s here).
    assert_eq!(sse.content(), "B:1 ", "{body}");
    let errors: Vec<Value> = sse
        .json()
        .into_iter()
        .filter(|e| e.get("error").is_some())
        .collect();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["error"]["code"], "agent_timeout", "{body}");
    assert_eq!(sse.data.iter().filter(|d| *d == "[DONE]").count(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_under_load_loses_no_acknowledged_request() {
    let Some(team) = team("shared_queue::redis_restart").await else {
        return;
    };
    let _on_a = QueueAgent::spawn(&team.python, &team.a, "A", &[]);
    let _on_b = QueueAgent::spawn(&team.python, &team.b, "B", &[]);
    wait_health(&team.a, "two agents polling", |h| h["waiting_polls"] == 2).await;
    // Four editors send chats one after another, streamed and not, until Redis is back.
    let restarted = Arc::new(AtomicBool::new(false));
    let editors: Vec<_> = (0..4)
        .map(|e| {
            let url = team.gateway.url("/v1/chat/completions");
            let restarted = restarted.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                for k in 0.. {
                    if restarted.load(Ordering::SeqCst) && k > 2 {
                        break;
                    }
                    let stream = k % 2 == 0;
                    let resp = client()
                        .post(&url)
                        .bearer_auth(KEY)
                        .json(&chat_body(&format!("load {e}.{k}"), stream))
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status().as_u16();
                    done.push((
                        format!("{e}.{k}"),
                        stream,
                        status,
                        resp.text().await.unwrap(),
                    ));
                }
                done
            })
        })
        .collect();
    // Some chats are answered before the outage.
    wait_health(&team.a, "answers before the outage", |h| {
        h["answered"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    team.redis.stop().await.unwrap();
    team.redis.start().await.unwrap();
    restarted.store(true, Ordering::SeqCst);
    let (mut answered, mut refused) = (0, 0);
    for editor in editors {
        for (k, stream, status, body) in editor.await.unwrap() {
            match status {
                200 => {
                    let (text, errors) = if stream {
                        let sse = Sse::parse(&body);
                        let errors: Vec<Value> = sse
                            .json()
                            .into_iter()
                            .filter_map(|e| e.get("error").cloned())
                            .collect();
                        (sse.content(), errors)
                    } else {
                        (content(&body), Vec::new())
                    };
                    if let [error] = errors.as_slice() {
                        // A stream's refusal comes as its one event.
                        assert_eq!(error["code"], "agent_unavailable", "chat {k}: {body}");
                        assert_eq!(text, "", "chat {k}: {body}");
                        refused += 1;
                    } else {
                        assert!(errors.is_empty(), "chat {k}: {body}");
                        assert!(text.ends_with(":1 "), "chat {k}: {body}");
                        answered += 1;
                    }
                }
                // Refused before Redis took it: the editor was told at once, nothing acknowledged.
                503 => {
                    assert!(body.contains("agent_unavailable"), "chat {k}: {body}");
                    refused += 1;
                }
                other => panic!("chat {k}: {other} {body}"),
            }
        }
    }
    println!("{answered} answered, {refused} refused while Redis was down");
    // Back without restarting anything of ours.
    let (status, body) = chat(&team.gateway, "after the restart", false).await;
    assert_eq!(status, 200, "{body}");
    assert!(content(&body).ends_with(":1 "), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_bridge_agents_mcp_bridge_is_killed_mid_answer_completes_every_chunk_once() {
    let Some(mut team) = team("shared_queue::killed_connection").await else {
        return;
    };
    let HalfAnswered {
        agent,
        gate,
        mut resp,
        mut body,
    } = half_answered(&team, "carry on elsewhere").await;
    // The answer's path to the editor dies; the agent and its mcp-bridge go on.
    team.a.kill_and_restart().await;
    gate.open();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let sse = Sse::parse(&body);
    assert_eq!(sse.content(), "B:1 B:2 B:3 ", "{body}");
    assert!(
        sse.json().iter().all(|e| e.get("error").is_none()),
        "{body}"
    );
    assert_eq!(sse.data.iter().filter(|d| *d == "[DONE]").count(), 1);
    agent.wait_event("answered", |_| true).await;
}
