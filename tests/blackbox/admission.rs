//! Admission before work, against the real gateway: a body declared larger than its route's
//! bound is refused before a byte of it is read (four concurrent unauthenticated 50 MB
//! `/api/show` bodies leave the gateway's memory as it was); a body without a declared length
//! is read only up to the bound; bodies in flight share a byte budget; `count_tokens` wants the
//! key (even in keyless mode) and is rate-limited before it counts.
use std::time::Duration;

use futures_util::future::join_all;
use integration_tests::observe::{metrics, rss_mib, value};
use integration_tests::stack::{chat_body, Gateway, Stack, KEY, MODEL};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::SOON;

const FIFTY_MB: u64 = 50 * 1000 * 1000;

/// Sends a request head declaring `length` bytes of JSON body (and none of it), then reads the
/// answer: its status line and body. The gateway must answer without the body.
async fn declare(gw: &Gateway, path: &str, key: Option<&str>, length: u64) -> (String, Value) {
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    tcp.write_all(head(gw, path, key, length).as_bytes())
        .await
        .unwrap();
    answer(&mut tcp).await
}

fn head(gw: &Gateway, path: &str, key: Option<&str>, length: u64) -> String {
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\n{auth}content-length: {length}\r\n\r\n",
        gw.port
    )
}

/// Sends a head declaring `length` bytes and then the bytes, as fast as the gateway takes
/// them, while reading the answer: its status line and body, and how much was sent.
async fn send_declared(gw: &Gateway, path: &str, length: u64) -> (String, Value, u64) {
    let tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    writer
        .write_all(head(gw, path, None, length).as_bytes())
        .await
        .unwrap();
    let sending = tokio::spawn(async move {
        let block = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < length && writer.write_all(&block).await.is_ok() {
            sent += block.len() as u64;
        }
        sent
    });
    let (status, body) = answer(&mut reader).await;
    (status, body, sending.await.unwrap())
}

/// The status line and JSON body of one answer with `content-length`.
async fn answer(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> (String, Value) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "closed mid-head");
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(SOON, read)
        .await
        .expect("an answer without the body being sent");
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn bodies_declared_over_their_bound_are_refused_before_they_are_read() {
    let stack = Stack::start().await;
    let gw = &stack.gateway;
    // Warm: the routes' first answers allocate what they keep.
    for _ in 0..3 {
        declare(gw, "/api/show", None, FIFTY_MB).await;
    }
    let before = rss_mib(gw.service.pid());
    let refused = join_all((0..4).map(|_| send_declared(gw, "/api/show", FIFTY_MB))).await;
    let after = rss_mib(gw.service.pid());
    let sent: Vec<u64> = refused.iter().map(|r| r.2).collect();
    println!(
        "gateway RSS around four 50 MB /api/show bodies: {before:.1} → {after:.1} MiB; the clients got {sent:?} bytes out before the gateway closed"
    );
    for (status, body, sent) in &refused {
        assert!(status.starts_with("HTTP/1.1 413"), "{status} {body}");
        assert!(*sent < FIFTY_MB, "the whole body was taken");
        // Ollama's path, Ollama's shape.
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("larger than 65536 bytes"), "{message}");
    }
    assert!(after < before + 8.0, "RSS {before:.1} → {after:.1} MiB");

    // An authenticated route is bounded by MAX_BODY_BYTES the same way; without the key,
    // nothing at all is read.
    let (status, body) = declare(gw, "/v1/chat/completions", Some(KEY), FIFTY_MB).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status} {body}");
    assert_eq!(body["error"]["code"], "request_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than 33554432 bytes"),
        "{body}"
    );
    let (status, body) = declare(gw, "/v1/messages", Some(KEY), FIFTY_MB).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status} {body}");
    assert_eq!(
        body["error"]["type"], "request_too_large",
        "Anthropic's shape"
    );
    let (status, _) = declare(gw, "/v1/chat/completions", None, FIFTY_MB).await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");

    // Without a declared length (chunked), a body is read up to the bound and refused there:
    // the answer comes while the client is still sending.
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let head = format!(
        "POST /api/show HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        gw.port
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    let sending = tokio::spawn(async move {
        let chunk = format!("4000\r\n{}\r\n", " ".repeat(0x4000));
        let mut sent = 0;
        // Up to 50 MB, until the gateway stops taking it.
        while sent < FIFTY_MB && writer.write_all(chunk.as_bytes()).await.is_ok() {
            sent += 0x4000;
        }
        sent
    });
    let mut first = [0u8; 12];
    tokio::time::timeout(SOON, reader.read_exact(&mut first))
        .await
        .expect("an answer while the body is still coming")
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 413");
    let sent = sending.await.unwrap();
    assert!(
        sent < FIFTY_MB,
        "the gateway stopped taking the body after {sent} bytes"
    );
    // A small one is answered as ever.
    let show = gw
        .post("/api/show", None)
        .json(&json!({"model": MODEL}))
        .send()
        .await
        .unwrap();
    assert_eq!(show.status(), 200);
    assert!(stack.peer.invokes().is_empty());
}

#[tokio::test]
async fn bodies_in_flight_share_a_byte_budget() {
    // Room for one body of the cap at a time.
    let stack = Stack::start_with(
        |a| a,
        |g| {
            g.env("MAX_BODY_BYTES", 1 << 20)
                .env("MAX_BODY_BYTES_IN_FLIGHT", 1 << 20)
        },
    )
    .await;
    let gw = &stack.gateway;
    // A client holds the budget: it declares the whole cap and sends a few bytes of it.
    let mut holder = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nauthorization: Bearer {KEY}\r\ncontent-length: {}\r\n\r\n{{\"model\"",
        1 << 20
    );
    holder.write_all(head.as_bytes()).await.unwrap();
    let held = || async {
        let text = metrics(&gw.url("/metrics")).await;
        value(&text, "gateway_body_bytes_in_flight")
    };
    integration_tests::harness::wait_for(SOON, "the holder's room taken", || async {
        (held().await >= (1 << 20) as f64).then_some(())
    })
    .await;
    // Any other body waits for room, then is told to come back (OpenAI clients retry a 503).
    let waited = std::time::Instant::now();
    let resp = gw.chat(chat_body("waiting for room", false)).await;
    let status = resp.status();
    let retry_after = resp.headers()["retry-after"].clone();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after, "1");
    assert_eq!(body["error"]["code"], "server_overloaded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MAX_BODY_BYTES_IN_FLIGHT"),
        "{body}"
    );
    assert!(
        waited.elapsed() >= Duration::from_secs(9),
        "it waited for room first"
    );
    // The holder goes away: its room is given back, and the next body is read.
    drop(holder);
    integration_tests::harness::wait_for(SOON, "the holder's room given back", || async {
        (held().await == 0.0).then_some(())
    })
    .await;
    integration_tests::harness::wait_for(SOON, "room in the budget again", || async {
        (gw.chat(chat_body("room again", false)).await.status() == 200).then_some(())
    })
    .await;
}

async fn count_tokens(gw: &Gateway, key: Option<&str>, text: &str) -> (u16, Value) {
    let resp = gw
        .post("/v1/messages/count_tokens", key)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn count_tokens_wants_the_key_and_is_rate_limited_before_it_counts() {
    // Keyless generation on: counting still wants the key or a session.
    let stack = Stack::start_with(
        |a| a,
        |g| {
            g.env("ALLOW_KEYLESS_GENERATION", "true")
                .env("RATE_LIMIT_RPM", 1)
                .env("RATE_LIMIT_BURST", 2)
        },
    )
    .await;
    let gw = &stack.gateway;
    let counted = || async {
        let text = metrics(&gw.url("/metrics")).await;
        value(&text, "gateway_prompt_count_seconds_count")
    };
    for key in [None, Some("not-the-key-0123456789abcdef0123456789")] {
        let (status, body) = count_tokens(gw, key, "hello").await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    assert_eq!(counted().await, 0.0, "nothing was counted for them");
    for _ in 0..2 {
        let (status, body) = count_tokens(gw, Some(KEY), "hello there").await;
        assert_eq!(status, 200, "{body}");
        assert!(body["input_tokens"].as_u64().unwrap() > 0, "{body}");
    }
    assert_eq!(counted().await, 2.0);
    // The burst is spent: refused before counting, however large the prompt.
    let huge = "word ".repeat(400_000);
    let resp = gw
        .post("/v1/messages/count_tokens", Some(KEY))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": huge}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(counted().await, 2.0, "the refused prompt was not counted");
    // Counting has a bucket of its own: the chats' rate is untouched.
    assert_eq!(
        gw.chat(chat_body("still served", false)).await.status(),
        200
    );
    let record = gw
        .wait_audit("the refused count audited", |v| {
            v["event_type"] == "rate_limit_exceeded" && v["limit_type"] == "counts"
        })
        .await;
    assert_eq!(record["client_ip"], "127.0.0.1");
}
