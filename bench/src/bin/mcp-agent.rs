//! An MCP agent for `bench/run.sh`'s chain figures: `--agents N` sessions on mcp-bridge's `/mcp`
//! (Streamable HTTP through rmcp's client, with the `initialize` handshake and session that Cursor
//! uses), each looping on `wait_for_request` and answering every request with one
//! `submit_response` part (`done: true`, the fixed content `ok`): the real path without a model.
//!
//! `mcp-agent URL [--agents N]`; the bearer token for `/mcp`, if any, from
//! `LOCAL_PROVIDER_MCP_HTTP_TOKEN` (the variable mcp-bridge checks it against). Prints `ready N`
//! once all N sessions are initialized. For a request whose last message carries a `sent_at_ns=`
//! stamp (`stream-probe handoff`), prints `handoff_us X`: from the editor sending it to this
//! agent holding it, its `wait_for_request` result read. A refused answer (the editor left, as
//! when a timed load run ends) is logged on stderr and the loop goes on; a failed session ends
//! the process with an error. Runs until SIGTERM or SIGINT.
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

type Session = RunningService<RoleClient, ()>;

/// Calls `tool`; its result's JSON text, and whether the tool refused.
async fn call(session: &Session, tool: &'static str, args: Value) -> Result<(bool, Value), String> {
    let Value::Object(args) = args else {
        return Err(format!("{tool}: arguments must be an object"));
    };
    let result = session
        .call_tool(CallToolRequestParams::new(tool).with_arguments(args))
        .await
        .map_err(|e| format!("{tool}: {e}"))?;
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.as_str())
        .ok_or_else(|| format!("{tool}: no text in the result"))?;
    let refused = result.is_error == Some(true);
    let value = if refused {
        Value::String(text.to_owned())
    } else {
        serde_json::from_str(text).map_err(|e| format!("{tool}: {e}: {text}"))?
    };
    Ok((refused, value))
}

async fn connect(url: &str, token: Option<&str>) -> Result<Session, String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .map_err(|e| format!("initialize: {e}"))
}

/// The editor's send time carried by the request's last message, if any.
fn stamp(request: &Value) -> Option<u128> {
    let last = request["messages"].as_array()?.last()?;
    bench::sent_at(last["content"].as_str()?)
}

async fn serve(session: Session, agent: usize) -> Result<(), String> {
    let mut fresh = true;
    loop {
        let args = json!({"timeout_seconds": 60, "fresh": fresh});
        let (refused, request) = call(&session, "wait_for_request", args).await?;
        let held = bench::unix_ns();
        fresh = false;
        match request["status"].as_str() {
            Some("request") if !refused => {}
            Some("idle" | "cancelled") => continue,
            _ => return Err(format!("agent {agent}: wait_for_request: {request}")),
        }
        if let Some(sent) = stamp(&request) {
            let waited_ns = held as i128 - sent as i128;
            println!("handoff_us {:.1}", waited_ns as f64 / 1000.0);
        }
        let answer = json!({"request_id": request["request_id"], "lease_id": request["lease_id"],
                            "content": "ok", "done": true});
        let (refused, said) = call(&session, "submit_response", answer).await?;
        if refused {
            eprintln!("agent {agent}: submit_response refused: {said}");
        }
    }
}

async fn run(url: &str, agents: usize) -> Result<(), String> {
    let token = std::env::var("LOCAL_PROVIDER_MCP_HTTP_TOKEN").ok();
    let mut sessions = Vec::with_capacity(agents);
    for _ in 0..agents {
        sessions.push(connect(url, token.as_deref()).await?);
    }
    println!("ready {agents}");
    let mut serving = JoinSet::new();
    for (agent, session) in sessions.into_iter().enumerate() {
        serving.spawn(serve(session, agent));
    }
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        ended = serving.join_next() => match ended {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(e.to_string()),
            None => Ok(()),
        },
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [url] => Ok((url.to_string(), 1)),
        [url, "--agents", n] => n
            .parse()
            .map(|n| (url.to_string(), n))
            .map_err(|_| format!("--agents takes a whole number, got {n:?}")),
        _ => Err("usage: mcp-agent URL [--agents N]".to_owned()),
    };
    let result = match parsed {
        Ok((url, agents)) => run(&url, agents).await,
        Err(usage) => Err(usage),
    };
    if let Err(err) = result {
        eprintln!("mcp-agent: {err}");
        std::process::exit(1);
    }
}
