//! The audit log over time: rotated by size keeping the configured backups, reopened on SIGHUP
//! (for an external logrotate), and the writer's figures in `/health` and `/metrics`.
use std::path::{Path, PathBuf};

use integration_tests::harness::{get, wait_for};
use integration_tests::stack::{Stack, KEY};
use serde_json::Value;

use crate::SOON;

fn backup(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {l:?}: {e}", path.display()))
        })
        .collect()
}

async fn audit_health(url: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(SOON, what, || async {
        let (_, health) = get(url).await.ok()?;
        pred(&health["audit"]).then_some(health["audit"].clone())
    })
    .await
}

#[tokio::test]
async fn the_audit_log_rotates_by_size_and_reopens_on_sighup() {
    let stack = Stack::start_with(
        |a| a,
        |g| {
            g.env("AUDIT_LOG_MAX_BYTES", 2000)
                .env("AUDIT_LOG_BACKUPS", 2)
        },
    )
    .await;
    let gw = &stack.gateway;
    let path = gw.audit_path().unwrap().to_owned();
    // Sessions made and ended: events written one line each (refusals would be coalesced).
    let sessions = 20;
    let mut last = String::new();
    for _ in 0..sessions {
        let session = gw.create_session().await;
        let id = session["session_id"].as_str().unwrap();
        last = id.to_owned();
        let resp = gw
            .delete(&format!("/v1/sessions/{id}"), Some(KEY))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The last line written means every rotation before it is complete (the counters below
    // can be read while the writer is still moving files for a later line).
    wait_for(
        SOON,
        "the last session's revocation in the file",
        || async {
            records(&path)
                .iter()
                .any(|r| r["event_type"] == "session_revoked" && r["session_id"] == last.as_str())
                .then_some(())
        },
    )
    .await;
    let health = gw.url("/health");
    let audit = audit_health(&health, "40 lines written, rotated", |a| {
        a["written"].as_u64() >= Some(2 * sessions) && a["rotations"].as_u64() >= Some(3)
    })
    .await;
    assert_eq!(audit["enabled"], true, "{audit}");
    assert_eq!(audit["dropped"], 0, "{audit}");
    assert_eq!(audit["write_errors"], 0, "{audit}");
    assert_eq!(audit["capacity"], 10_000, "{audit}");
    // Two backups kept, the oldest dropped; no file past the limit; every line whole.
    assert!(backup(&path, 1).exists() && backup(&path, 2).exists());
    assert!(!backup(&path, 3).exists());
    let mut kept = 0;
    for file in [backup(&path, 2), backup(&path, 1), path.clone()] {
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size <= 2000, "{} is {size} bytes", file.display());
        kept += records(&file)
            .iter()
            .filter(|r| r["event_type"] == "session_created")
            .count();
    }
    assert!(kept > 0 && kept < sessions as usize, "{kept}");

    // logrotate's way: move the file away, then SIGHUP; the next line goes to a new file.
    let moved = PathBuf::from(format!("{}.moved", path.display()));
    std::fs::rename(&path, &moved).unwrap();
    let before = records(&moved).len();
    gw.service.hangup().unwrap();
    audit_health(&health, "the audit log reopened", |a| a["reopens"] == 1).await;
    let resp = gw
        .get("/v1/models", Some("after-sighup"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    wait_for(SOON, "a record in the reopened file", || async {
        records(&path)
            .iter()
            .any(|r| r["event_type"] == "authentication")
            .then_some(())
    })
    .await;
    assert_eq!(
        records(&moved).len(),
        before,
        "the moved file is left alone"
    );
    // The service is still up after SIGHUP.
    stack.gateway.wait_health("healthy", SOON).await;

    let (_, metrics) = get(&gw.url("/metrics")).await.unwrap();
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for name in ["audit_log_rotations_total", "audit_log_queue_lines"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}
