//! The scripted bridge peer ([`integration_tests::peer`]) as a program, for the container tests:
//! it runs in a container of its own on the test's Docker network, where bridge-agent containers
//! reach it by name. Listens on all addresses, port `SCRIPTED_PEER_PORT` (default 8787), until
//! SIGTERM or SIGINT. With `SCRIPTED_PEER_TOKEN` set it refuses bridge-agents that do not present
//! that bearer, as mcp-bridge does.
use std::net::SocketAddr;
use std::process::ExitCode;

use integration_tests::peer::ScriptedPeer;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> ExitCode {
    let port = match std::env::var("SCRIPTED_PEER_PORT") {
        Err(_) => 8787,
        Ok(raw) => match raw.trim().parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("scripted-peer: SCRIPTED_PEER_PORT: expected a port number, got {raw:?}");
                return ExitCode::from(2);
            }
        },
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("scripted-peer: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let mut peer = ScriptedPeer::start_on_addr(SocketAddr::from(([0, 0, 0, 0], port))).await;
    peer.expected_token(
        std::env::var("SCRIPTED_PEER_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    );
    // The container tests wait for this line.
    println!("scripted-peer listening on {}", peer.url());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    peer.stop().await;
    ExitCode::SUCCESS
}
