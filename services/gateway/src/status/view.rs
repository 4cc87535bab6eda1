//! The chain's links and the agent's state in words, from what bridge-agent last reported.
use std::time::Duration;

use provider_shared::bridge::BridgeReport;
use provider_shared::ipc::LinkState;
use serde_json::{json, Value};

use crate::agent_client::LinkStatus;

/// A `bridge_status` older than this is stale: mcp-bridge sends one at least every 10 s.
pub const REPORT_STALE_MS: u64 = 30_000;

/// The report mcp-bridge sent over a link that is up, if any.
pub fn report(link: &LinkStatus) -> Option<&BridgeReport> {
    if link.agent_connected && link.bridge.state == LinkState::Connected {
        link.bridge.mcp_bridge.as_ref()
    } else {
        None
    }
}

/// `gateway → bridge-agent` and `bridge-agent → mcp-bridge`.
pub fn links(link: &LinkStatus, socket: &str) -> (Value, Value) {
    let to_agent = json!({
        "state": if link.agent_connected { "connected" } else { "disconnected" },
        "detail": if link.agent_connected {
            format!("Unix socket {socket}")
        } else {
            format!("nothing answers on {socket}; the gateway reconnects by itself")
        },
    });
    let to_bridge = if link.agent_connected {
        let b = &link.bridge;
        json!({
            "state": b.state.as_str(),
            "detail": match b.state {
                LinkState::Connected => format!("{} · {} reconnects",
                    b.bridge_id.as_deref().unwrap_or("mcp-bridge"), b.reconnects),
                LinkState::Connecting => "bridge-agent is connecting to mcp-bridge".to_owned(),
                LinkState::Disconnected => "mcp-bridge is not reachable; bridge-agent retries".to_owned(),
            },
            "last_ping": b.last_ping,
            "bridge_id": b.bridge_id,
            "reconnects": b.reconnects,
        })
    } else {
        json!({"state": "unknown", "detail": "unknown while bridge-agent is not connected"})
    };
    (to_agent, to_bridge)
}

/// The agent's state: `polling`, `sampling`, `working`, `idle`, `gone` or `unknown`, with the
/// sentence the page leads with.
pub fn agent(link: &LinkStatus, now_ms: u64, gone_after: Duration) -> Value {
    let Some(r) = report(link) else {
        let why = if !link.agent_connected {
            "unknown: bridge-agent is not connected"
        } else if link.bridge.state != LinkState::Connected {
            "unknown: mcp-bridge is not reachable"
        } else {
            "unknown: mcp-bridge sends no status (an older version)"
        };
        return json!({"state": "unknown", "summary": why});
    };
    let ago = |ms: u64| now_ms.saturating_sub(ms);
    let gone_ms = u64::try_from(gone_after.as_millis()).unwrap_or(u64::MAX);
    let (state, summary) = if r.waiting_polls > 0 {
        let since = r.polling_since_ms.unwrap_or(now_ms);
        (
            "polling",
            format!(
                "an agent is polling now, for {} (since {})",
                words(ago(since)),
                clock(since)
            ),
        )
    } else if r.sampling_clients > 0 {
        (
            "sampling",
            format!("{} sampling client(s) connected", r.sampling_clients),
        )
    } else if r.leased > 0 {
        (
            "working",
            format!("the agent is answering {} request(s)", r.leased),
        )
    } else {
        match r.last_poll_ms {
            Some(last) if ago(last) < gone_ms => (
                "idle",
                format!(
                    "no poll open; an agent last asked for work {} ago",
                    words(ago(last))
                ),
            ),
            Some(last) => (
                "gone",
                format!("no agent has asked for work for {}", words(ago(last))),
            ),
            None => (
                "gone",
                "no agent has asked for work since mcp-bridge started".to_owned(),
            ),
        }
    };
    json!({
        "state": state,
        "summary": summary,
        "waiting_polls": r.waiting_polls,
        "sampling_clients": r.sampling_clients,
        "polling_since_ms": r.polling_since_ms,
        "last_poll_ms": r.last_poll_ms,
        "seconds_since_last_poll": r.last_poll_ms.map(|l| ago(l) / 1000),
        "gone_after_seconds": gone_after.as_secs_f64(),
    })
}

/// mcp-bridge's queue, or `null` when it is not known.
pub fn queue(link: &LinkStatus, now_ms: u64) -> Value {
    match report(link) {
        Some(r) => json!({
            "depth": r.queue_depth,
            "leased": r.leased,
            "answered": r.answered,
            "failed": r.failed,
            "connected_bridge_agents": r.connected_bridge_agents,
            "reported_at_ms": r.at_ms,
            "stale": now_ms.saturating_sub(r.at_ms) > REPORT_STALE_MS,
        }),
        None => Value::Null,
    }
}

/// "4 min", "12 s", "2 h 5 min".
pub fn words(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// `HH:MM:SS` UTC.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s % 3600) / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use provider_shared::ipc::BridgeStatus;

    fn link(report: Option<BridgeReport>) -> LinkStatus {
        LinkStatus {
            agent_connected: true,
            bridge: BridgeStatus {
                state: LinkState::Connected,
                mcp_bridge: report,
                ..BridgeStatus::disconnected()
            },
        }
    }

    const NOW: u64 = 1_800_000_000_000;
    const GONE: Duration = Duration::from_secs(60);

    #[test]
    fn the_agent_state_follows_the_report() {
        let polling = BridgeReport {
            waiting_polls: 1,
            polling_since_ms: Some(NOW - 180_000),
            last_poll_ms: Some(NOW),
            ..BridgeReport::default()
        };
        let v = agent(&link(Some(polling)), NOW, GONE);
        assert_eq!(v["state"], "polling");
        assert!(v["summary"].as_str().unwrap().contains("for 3 min"), "{v}");

        let working = BridgeReport {
            leased: 2,
            last_poll_ms: Some(NOW),
            ..BridgeReport::default()
        };
        assert_eq!(agent(&link(Some(working)), NOW, GONE)["state"], "working");

        let idle = BridgeReport {
            last_poll_ms: Some(NOW - 12_000),
            ..BridgeReport::default()
        };
        let v = agent(&link(Some(idle)), NOW, GONE);
        assert_eq!(v["state"], "idle");
        assert_eq!(v["seconds_since_last_poll"], 12);

        let gone = BridgeReport {
            last_poll_ms: Some(NOW - 240_000),
            ..BridgeReport::default()
        };
        let v = agent(&link(Some(gone)), NOW, GONE);
        assert_eq!(v["state"], "gone");
        assert_eq!(v["summary"], "no agent has asked for work for 4 min");

        let never = agent(&link(Some(BridgeReport::default())), NOW, GONE);
        assert_eq!(never["state"], "gone");
    }

    #[test]
    fn without_a_report_the_state_is_unknown_and_says_why() {
        let v = agent(&link(None), NOW, GONE);
        assert_eq!(v["state"], "unknown");
        assert!(v["summary"].as_str().unwrap().contains("older version"));
        let mut down = link(Some(BridgeReport::default()));
        down.agent_connected = false;
        assert!(agent(&down, NOW, GONE)["summary"]
            .as_str()
            .unwrap()
            .contains("bridge-agent is not connected"));
        assert_eq!(queue(&down, NOW), Value::Null);
        let (to_agent, to_bridge) = links(&down, "/tmp/s");
        assert_eq!(
            (to_agent["state"].as_str(), to_bridge["state"].as_str()),
            (Some("disconnected"), Some("unknown"))
        );
    }

    #[test]
    fn durations_read_as_words() {
        assert_eq!(words(4_500), "4 s");
        assert_eq!(words(240_000), "4 min");
        assert_eq!(words(7_500_000), "2 h 5 min");
        assert_eq!(clock(3_723_000), "01:02:03 UTC");
    }
}
