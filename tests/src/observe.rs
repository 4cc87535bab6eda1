//! What a test can observe of a running service from outside: its `/metrics` series and its
//! resident memory.
use crate::harness::get;

/// The Prometheus text of `url` (a service's `/metrics`).
pub async fn metrics(url: &str) -> String {
    match get(url).await {
        Ok((200, serde_json::Value::String(text))) => text,
        other => panic!("GET {url}: {other:?}"),
    }
}

/// The series in a Prometheus text: every sample line.
pub fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name))
        .collect()
}

/// The value of the sample named exactly `series` (name and labels as written), 0 when absent.
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Resident memory of a process, in MiB (0 when it cannot be read).
pub fn rss_mib(pid: Option<u32>) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", pid.unwrap_or(0))).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
