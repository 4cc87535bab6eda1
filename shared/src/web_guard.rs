//! What keeps web pages out of the HTTP services, checked before anything else on every route
//! (docs/security.md, "Web pages"): the `Host` a request is addressed to, the `Origin` a browser
//! stamps on it, and the type of any body it carries.
//!
//! - **Host**: a page that rebinds its own DNS name to 127.0.0.1 reaches us same-origin, but its
//!   requests still name that page's host. Only loopback names (`localhost`, `127.0.0.0/8`,
//!   `::1`), the address the service binds, and `LOCAL_PROVIDER_ALLOWED_HOSTS` are served. The
//!   port is ignored: rebinding changes the name, never the port.
//! - **Origin**: browsers send it on every cross-origin request and on every POST; a value not
//!   in `LOCAL_PROVIDER_ALLOWED_ORIGINS` is refused outright (CORS alone only hides the answer
//!   from the page, after the request was served). `null` (sandboxed frames, `file:` pages) is
//!   refused unless listed. Programs that are not browsers (SDKs, Electron main processes,
//!   curl) send no `Origin`.
//! - **Body type**: a page may send a "simple" POST (`text/plain`, form encodings) without
//!   asking first; a body must be declared `application/json`.
use std::net::IpAddr;

use http::{header, HeaderMap, StatusCode, Uri};

use crate::config::ConfigError;

/// Why a request was refused before it reached a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` named (empty when there was none).
    Host(String),
    /// The `Origin` given.
    Origin(String),
    /// The `Content-Type` of a request with a body (empty when there was none).
    ContentType(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Host(_) | Refusal::Origin(_) => StatusCode::FORBIDDEN,
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The error code clients see, also the audit record's `violation_type`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Host(_) => "host_not_allowed",
            Refusal::Origin(_) => "origin_not_allowed",
            Refusal::ContentType(_) => "unsupported_media_type",
        }
    }

    /// What was presented, for logs and the audit record: a header value (never a body), cut at
    /// 256 characters.
    pub fn presented(&self) -> String {
        match self {
            Refusal::Host(v) | Refusal::Origin(v) | Refusal::ContentType(v) => {
                v.chars().take(256).collect()
            }
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Host(h) if h.is_empty() => f.write_str(
                "the request names no Host: only requests addressed to this machine's loopback names or to LOCAL_PROVIDER_ALLOWED_HOSTS are served",
            ),
            Refusal::Host(h) => write!(
                f,
                "Host {h:?} is not allowed: only requests addressed to localhost, 127.0.0.1 or [::1] (any port) or to a name in LOCAL_PROVIDER_ALLOWED_HOSTS are served"
            ),
            Refusal::Origin(o) => write!(
                f,
                "Origin {o:?} is not allowed: web pages may call this service only from an origin in LOCAL_PROVIDER_ALLOWED_ORIGINS"
            ),
            Refusal::ContentType(t) if t.is_empty() => f.write_str(
                "the request body has no Content-Type: send it as JSON with Content-Type: application/json",
            ),
            Refusal::ContentType(t) => write!(
                f,
                "Content-Type {t:?} is not accepted: send the body as JSON with Content-Type: application/json"
            ),
        }
    }
}

/// The checks of one service, built once from its settings.
#[derive(Debug, Clone)]
pub struct WebGuard {
    /// Host names served besides the loopback ones: normalised, without ports.
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl WebGuard {
    /// `allowed_hosts` and `allowed_origins` as [`allowed_hosts`] and [`allowed_origins`]
    /// checked them; `bind_host` is the address the service listens on (served when it is a
    /// specific address: clients of a non-loopback bind reach it by that address).
    pub fn new(allowed_hosts: &[String], bind_host: &str, allowed_origins: &[String]) -> Self {
        let mut hosts: Vec<String> = allowed_hosts.iter().filter_map(|h| host_name(h)).collect();
        if let Some(bound) = host_name(bind_host) {
            let wildcard = bound.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
            if !wildcard && !hosts.contains(&bound) {
                hosts.push(bound);
            }
        }
        Self {
            hosts,
            origins: allowed_origins.to_vec(),
        }
    }

    /// Checks a request's `Host` (and the authority of an absolute-form target), `Origin` and,
    /// when it carries a body, its `Content-Type`.
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or(""));
        match host {
            None => return Err(Refusal::Host(String::new())),
            Some(host) if !self.host_allowed(host) => return Err(Refusal::Host(host.to_owned())),
            Some(_) => {}
        }
        if let Some(authority) = uri.authority() {
            if !self.host_allowed(authority.as_str()) {
                return Err(Refusal::Host(authority.to_string()));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !origin_allowed(&self.origins, origin) {
                return Err(Refusal::Origin(origin.to_owned()));
            }
        }
        if has_body(headers) {
            let given = headers
                .get(header::CONTENT_TYPE)
                .map(|t| t.to_str().unwrap_or(""));
            if !given.is_some_and(is_json) {
                return Err(Refusal::ContentType(given.unwrap_or("").to_owned()));
            }
        }
        Ok(())
    }

    /// True when a request addressed to `authority` (`name[:port]`) may be served.
    pub fn host_allowed(&self, authority: &str) -> bool {
        host_name(authority)
            .is_some_and(|name| is_loopback_name(&name) || self.hosts.contains(&name))
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        origin_allowed(&self.origins, origin)
    }
}

/// The name of `authority` (`name`, `name:port`, `[v6]:port`): lower case, without a trailing
/// dot or brackets; `None` when it is not a plain host (user info, a bad port, junk).
pub fn host_name(authority: &str) -> Option<String> {
    let authority = authority.trim();
    // A bare IPv6 address (a bind address, a setting) is a host without a port.
    if let Ok(v6) = authority.parse::<std::net::Ipv6Addr>() {
        return Some(v6.to_string());
    }
    let authority: http::uri::Authority = authority.parse().ok()?;
    let port = &authority.as_str()[authority.host().len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok());
    if authority.as_str().contains('@') || !port_ok {
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// `localhost` or a loopback address (also an IPv4 loopback address mapped into IPv6).
pub fn is_loopback_name(name: &str) -> bool {
    if name == "localhost" {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// True when `origin` is allowed by one of `patterns`: the origin itself, `scheme://host:*`
/// (any port), `scheme://*` (any host, for editors' own schemes such as `vscode-webview`),
/// `null`, or `*` (any).
pub fn origin_allowed(patterns: &[String], origin: &str) -> bool {
    let origin = origin.trim();
    patterns.iter().any(|p| {
        if p == "*" || p.eq_ignore_ascii_case(origin) {
            return true;
        }
        if let Some(scheme) = p.strip_suffix("://*") {
            return origin
                .split_once("://")
                .is_some_and(|(s, rest)| s.eq_ignore_ascii_case(scheme) && !rest.is_empty());
        }
        match p.strip_suffix(":*") {
            Some(base) => origin
                .get(..base.len())
                .filter(|head| head.eq_ignore_ascii_case(base))
                .and_then(|_| origin[base.len()..].strip_prefix(':'))
                .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())),
            None => false,
        }
    })
}

/// True when `value` is a JSON media type: `application/json`, with any parameters.
pub fn is_json(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// True when the request declares a body: a non-zero `Content-Length`, or any
/// `Transfer-Encoding`.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|n| n.to_str().map_or(true, |n| n.trim() != "0"))
}

/// Checks `LOCAL_PROVIDER_ALLOWED_HOSTS`: host names or addresses, without ports.
pub fn allowed_hosts(entries: &[String]) -> Result<Vec<String>, ConfigError> {
    entries
        .iter()
        .map(|entry| {
            let bare = entry.trim_start_matches('[').trim_end_matches(']');
            let is_v6 = bare.parse::<std::net::Ipv6Addr>().is_ok();
            match host_name(entry) {
                Some(name) if is_v6 || !entry.contains(':') => Ok(name),
                _ => Err(ConfigError::new(
                    "ALLOWED_HOSTS",
                    format!(
                        "expected host names or addresses without a port (the port does not matter: DNS rebinding changes the name), got {entry:?}"
                    ),
                )),
            }
        })
        .collect()
}

/// Checks `LOCAL_PROVIDER_ALLOWED_ORIGINS`: origins (`scheme://host[:port]`), a port may be
/// `*`, a host may be `*` (`vscode-webview://*`); `null` and `*` are accepted as given.
pub fn allowed_origins(entries: &[String]) -> Result<Vec<String>, ConfigError> {
    for entry in entries {
        if entry == "*" || entry == "null" {
            continue;
        }
        let well_formed = entry.split_once("://").is_some_and(|(scheme, rest)| {
            let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            let rest = rest.strip_suffix(":*").unwrap_or(rest);
            scheme_ok && (rest == "*" || (host_name(rest).is_some() && !rest.contains('/')))
        });
        if !well_formed {
            return Err(ConfigError::new(
                "ALLOWED_ORIGINS",
                format!(
                    "expected origins such as http://127.0.0.1:* (a port may be *) or vscode-webview://* (a host may be *), or null, got {entry:?}"
                ),
            ));
        }
    }
    Ok(entries.to_vec())
}

/// The default `LOCAL_PROVIDER_ALLOWED_ORIGINS`: pages served from this machine's loopback
/// names, and the editors' own origins (VS Code and its forks such as Void load their windows
/// from `vscode-file://vscode-app` and their webviews from `vscode-webview://…`), which no web
/// page can claim.
pub fn default_allowed_origins() -> Vec<String> {
    [
        "http://127.0.0.1:*",
        "http://localhost:*",
        "http://[::1]:*",
        "vscode-file://vscode-app",
        "vscode-webview://*",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn guard() -> WebGuard {
        WebGuard::new(
            &["gateway".to_owned(), "ai.example.com".to_owned()],
            "127.0.0.1",
            &default_allowed_origins(),
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn check(pairs: &[(&'static str, &str)]) -> Result<(), Refusal> {
        guard().check(&Uri::from_static("/v1/chat/completions"), &headers(pairs))
    }

    #[test]
    fn loopback_names_and_listed_hosts_pass_with_any_port() {
        let g = guard();
        for host in [
            "127.0.0.1:8788",
            "127.0.0.1",
            "localhost:1",
            "LOCALHOST.:8788",
            "[::1]:8788",
            "127.9.9.9:80",
            "[::ffff:127.0.0.1]:80",
            "gateway:8788",
            "AI.example.com",
        ] {
            assert!(g.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:8788",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "192.168.1.2:8788",
            "0.0.0.0:8788",
            "user@127.0.0.1:8788",
            "127.0.0.1:80:80",
            "",
            "[::2]:80",
        ] {
            assert!(!g.host_allowed(host), "{host}");
        }
    }

    #[test]
    fn a_specific_bind_address_is_served_a_wildcard_is_not() {
        let g = WebGuard::new(&[], "192.168.1.5", &[]);
        assert!(g.host_allowed("192.168.1.5:8788"));
        let g = WebGuard::new(&[], "0.0.0.0", &[]);
        assert!(!g.host_allowed("0.0.0.0:8788"));
        let g = WebGuard::new(&[], "::", &[]);
        assert!(!g.host_allowed("[::]:8788"));
    }

    #[test]
    fn each_refusal_says_what_was_wrong() {
        assert_eq!(check(&[("host", "127.0.0.1:1")]), Ok(()));
        assert_eq!(check(&[]), Err(Refusal::Host(String::new())));
        let err = check(&[("host", "evil.example:8788")]).unwrap_err();
        assert_eq!(
            (err.status().as_u16(), err.code()),
            (403, "host_not_allowed")
        );
        assert!(
            err.to_string().contains("LOCAL_PROVIDER_ALLOWED_HOSTS"),
            "{err}"
        );
        let err = check(&[("host", "localhost"), ("origin", "http://evil.example")]).unwrap_err();
        assert_eq!(err, Refusal::Origin("http://evil.example".into()));
        assert!(
            err.to_string().contains("LOCAL_PROVIDER_ALLOWED_ORIGINS"),
            "{err}"
        );
        assert_eq!(
            check(&[("host", "localhost"), ("origin", "null")]),
            Err(Refusal::Origin("null".into()))
        );
        for origin in [
            "http://localhost:3000",
            "vscode-file://vscode-app",
            "vscode-webview://1b2c3d",
        ] {
            assert_eq!(
                check(&[("host", "localhost"), ("origin", origin)]),
                Ok(()),
                "{origin}"
            );
        }
        // An absolute-form target names its host too.
        let err = guard()
            .check(
                &Uri::from_static("http://evil.example/v1/models"),
                &headers(&[("host", "localhost")]),
            )
            .unwrap_err();
        assert_eq!(err.code(), "host_not_allowed");
    }

    #[test]
    fn a_body_must_be_json() {
        let json = |t: &str| {
            check(&[
                ("host", "localhost"),
                ("content-length", "2"),
                ("content-type", t),
            ])
        };
        assert_eq!(json("application/json"), Ok(()));
        assert_eq!(json("Application/JSON; charset=utf-8"), Ok(()));
        for refused in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            let err = json(refused).unwrap_err();
            assert_eq!(
                (err.status().as_u16(), err.code()),
                (415, "unsupported_media_type"),
                "{refused}"
            );
        }
        assert_eq!(
            check(&[("host", "localhost"), ("transfer-encoding", "chunked")]),
            Err(Refusal::ContentType(String::new()))
        );
        // No body, no type needed (POST /v1/sessions, the admin routes).
        assert_eq!(
            check(&[("host", "localhost"), ("content-length", "0")]),
            Ok(())
        );
    }

    #[test]
    fn origin_patterns() {
        let p = vec![
            "http://127.0.0.1:*".to_owned(),
            "https://app.example".to_owned(),
            "vscode-webview://*".to_owned(),
        ];
        assert!(origin_allowed(&p, "http://127.0.0.1:3000"));
        assert!(!origin_allowed(&p, "http://127.0.0.1:"));
        assert!(!origin_allowed(&p, "http://127.0.0.1:80.evil.com"));
        assert!(!origin_allowed(&p, "http://127.0.0.10:80"));
        assert!(origin_allowed(&p, "https://app.example"));
        assert!(!origin_allowed(&p, "https://evil.example"));
        assert!(origin_allowed(&p, "vscode-webview://abc"));
        assert!(!origin_allowed(&p, "vscode-webview://"));
        assert!(!origin_allowed(&p, "null"));
        assert!(origin_allowed(&["null".to_owned()], "null"));
        assert!(origin_allowed(
            &["*".to_owned()],
            "https://anything.example"
        ));
    }

    #[test]
    fn settings_are_checked_and_name_their_variable() {
        assert_eq!(
            allowed_hosts(&[
                "Gateway".into(),
                "::1".into(),
                "[fe80::1]".into(),
                "10.0.0.2".into()
            ])
            .unwrap(),
            vec!["gateway", "::1", "fe80::1", "10.0.0.2"]
        );
        for bad in ["gateway:8788", "a b", "user@host", ""] {
            let err = allowed_hosts(&[bad.to_owned()]).unwrap_err();
            assert_eq!(err.var, "LOCAL_PROVIDER_ALLOWED_HOSTS", "{bad}");
        }
        assert!(allowed_origins(&default_allowed_origins()).is_ok());
        assert!(
            allowed_origins(&["null".into(), "*".into(), "https://a.example:8443".into()]).is_ok()
        );
        for bad in ["ftp//x", "http://", "http://a/b", "1http://a", "http://a:x"] {
            let err = allowed_origins(&[bad.to_owned()]).unwrap_err();
            assert_eq!(err.var, "LOCAL_PROVIDER_ALLOWED_ORIGINS", "{bad}");
        }
    }
}
