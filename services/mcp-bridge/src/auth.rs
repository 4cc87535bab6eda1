//! Bearer tokens held as SHA-256 digests and compared in constant time (sha2 + subtle). A door
//! without a token (`MCP_ALLOW_NO_TOKEN`) opens only to this machine's own processes.
use std::net::IpAddr;

use axum::http::{header, HeaderMap, StatusCode};
use provider_shared::config::Secret;
use provider_shared::digest;
use subtle::ConstantTimeEq;

/// An expected bearer token, or none (then any process on this machine passes).
#[derive(Clone)]
pub struct Token(Option<[u8; 32]>);

/// Why a request was refused, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Wrong,
    /// No token is set and the caller is not on this machine: whatever `Host` it names, a
    /// remote peer never reaches a door left open by `MCP_ALLOW_NO_TOKEN`.
    NotLoopback,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Wrong => "wrong",
            Denied::NotLoopback => "not_loopback",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Denied::Missing | Denied::Wrong => StatusCode::UNAUTHORIZED,
            Denied::NotLoopback => StatusCode::FORBIDDEN,
        }
    }

    /// What the refused caller is told; `door` names the token variable.
    pub fn message(self, door: &str) -> String {
        match self {
            Denied::Missing | Denied::Wrong => format!(
                "{} bearer token: send Authorization: Bearer <LOCAL_PROVIDER_{door}>",
                self.as_str()
            ),
            Denied::NotLoopback => format!(
                "LOCAL_PROVIDER_{door} is not set, so only processes on this machine may connect; set the token to serve other machines"
            ),
        }
    }
}

impl Token {
    pub fn new(secret: Option<&Secret>) -> Self {
        Token(secret.map(|s| digest::sha256(s.0.as_bytes())))
    }

    pub fn required(&self) -> bool {
        self.0.is_some()
    }

    /// Checks the `Authorization: Bearer …` header of a caller at `peer`; on failure also the
    /// fingerprint of what was presented (never the token).
    pub fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), (Denied, Option<String>)> {
        let Some(want) = &self.0 else {
            return if peer.is_loopback() {
                Ok(())
            } else {
                Err((Denied::NotLoopback, None))
            };
        };
        let Some(given) = bearer(headers) else {
            return Err((Denied::Missing, None));
        };
        let got = digest::sha256(given.as_bytes());
        if bool::from(got.ct_eq(want)) {
            Ok(())
        } else {
            Err((Denied::Wrong, Some(digest::fingerprint(given.as_bytes()))))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const AWAY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 9));

    #[test]
    fn checks_bearer_tokens() {
        let open = Token::new(None);
        assert!(open.check(&HeaderMap::new(), HERE).is_ok());
        assert_eq!(
            open.check(&headers("Bearer anything"), AWAY).unwrap_err().0,
            Denied::NotLoopback,
            "a door without a token is this machine's only"
        );
        let t = Token::new(Some(&Secret("s3cret".into())));
        assert!(t.check(&headers("Bearer s3cret"), HERE).is_ok());
        assert!(t.check(&headers("bearer  s3cret "), AWAY).is_ok());
        assert_eq!(
            t.check(&HeaderMap::new(), HERE).unwrap_err().0,
            Denied::Missing
        );
        let (why, fp) = t.check(&headers("Bearer nope"), HERE).unwrap_err();
        assert_eq!(why, Denied::Wrong);
        assert_eq!(fp.unwrap(), digest::fingerprint(b"nope"));
        assert_eq!(
            t.check(&headers("Basic s3cret"), HERE).unwrap_err().0,
            Denied::Missing
        );
    }
}
