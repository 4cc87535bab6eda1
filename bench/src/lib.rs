//! Benchmark support for `bench/run.sh`: the zero-delay bridge peer, the streaming probe and the
//! MCP agent.
//! Not part of the product.
#![forbid(unsafe_code)]

/// The resident set size of `pid` in bytes, from `/proc`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The file descriptors `pid` has open, from `/proc`.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// An environment variable as a number, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the hand-off probe (`stream-probe handoff`) writes into a chat's prompt and the MCP
/// agent (`mcp-agent`) reads back: the editor's wall-clock time when it sent the request, in
/// nanoseconds since the Unix epoch. Both run on the same machine, so they read the same clock.
pub const SENT_AT: &str = "sent_at_ns=";

/// Nanoseconds since the Unix epoch now (0 if the clock is before it).
pub fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The `SENT_AT` stamp in `text`, if it carries one.
pub fn sent_at(text: &str) -> Option<u128> {
    let (_, rest) = text.split_once(SENT_AT)?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}
