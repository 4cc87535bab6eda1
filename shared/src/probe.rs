//! The `healthcheck` subcommand of both binaries: one plain HTTP/1.1 `GET` to the service's own
//! `/health/live`, so a container HEALTHCHECK works in an image with no shell and no curl.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The liveness route both services serve.
pub const LIVE_PATH: &str = "/health/live";

/// Where to reach a service listening on `host:port` from the same host: a wildcard bind
/// (`0.0.0.0`, `::`) is probed on loopback; anything else as given.
pub fn target(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if port == 0 {
        return Err(
            "the port is 0 (chosen at start-up), so there is nothing fixed to probe".into(),
        );
    }
    let bare = host.trim_matches(|c| c == '[' || c == ']');
    match bare.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            let local = if ip.is_ipv4() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            };
            Ok(vec![SocketAddr::new(local, port)])
        }
        Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        Err(_) => (bare, port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| format!("cannot resolve {bare}: {e}")),
    }
}

/// `GET path` on the first address that accepts, all within `timeout`; `Ok` only for a 200.
pub fn get_ok(addrs: &[SocketAddr], path: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no address to probe");
    for addr in addrs {
        match get_one(*addr, path, deadline) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

fn get_one(addr: SocketAddr, path: &str, deadline: Instant) -> Result<(), String> {
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_owned())
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    // The status line is all we need; it arrives in the first bytes.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(_) => Err(format!("answered {line:?}")),
        None => Err(format!("not an HTTP answer: {line:?}")),
    }
}

/// Runs the probe for `service` and reports like a command-line tool: nothing on success, one
/// line on stderr on failure. Returns whether the service is live.
pub fn run(service: &str, host: &str, port: u16, timeout: Duration) -> bool {
    let result = target(host, port).and_then(|addrs| get_ok(&addrs, LIVE_PATH, timeout));
    if let Err(err) = &result {
        eprintln!("{service} healthcheck: {LIVE_PATH} on {host}:{port} not live: {err}");
    }
    result.is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = conn.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /health/live HTTP/1.1\r\n"));
            conn.write_all(answer.as_bytes()).unwrap();
        });
        addr
    }

    #[test]
    fn wildcard_binds_are_probed_on_loopback() {
        assert_eq!(
            target("0.0.0.0", 8788).unwrap(),
            vec!["127.0.0.1:8788".parse().unwrap()]
        );
        assert_eq!(
            target("::", 8789).unwrap(),
            vec!["[::1]:8789".parse().unwrap()]
        );
        assert_eq!(
            target("127.0.0.2", 1).unwrap(),
            vec!["127.0.0.2:1".parse().unwrap()]
        );
        assert!(target("127.0.0.1", 0).unwrap_err().contains("port is 0"));
    }

    #[test]
    fn a_200_is_live() {
        let addr = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        get_ok(&[addr], LIVE_PATH, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn any_other_status_is_not() {
        let addr = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = get_ok(&[addr], LIVE_PATH, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[test]
    fn nobody_listening_is_not() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = get_ok(&[addr], LIVE_PATH, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let err = get_ok(&[addr], LIVE_PATH, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "bounded: {err}");
        drop(listener);
    }
}
