//! Bearer tokens held as SHA-256 digests and compared in constant time (sha2 + subtle).
use axum::http::{header, HeaderMap};
use provider_shared::config::Secret;
use provider_shared::digest;
use subtle::ConstantTimeEq;

/// An expected bearer token, or none (then anything passes).
#[derive(Clone)]
pub struct Token(Option<[u8; 32]>);

/// Why a request was refused, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Wrong,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Wrong => "wrong",
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

    /// Checks the `Authorization: Bearer …` header; on failure also the fingerprint of what
    /// was presented (never the token).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), (Denied, Option<String>)> {
        let Some(want) = &self.0 else { return Ok(()) };
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

    #[test]
    fn checks_bearer_tokens() {
        let open = Token::new(None);
        assert!(open.check(&HeaderMap::new()).is_ok());
        let t = Token::new(Some(&Secret("s3cret".into())));
        assert!(t.check(&headers("Bearer s3cret")).is_ok());
        assert!(t.check(&headers("bearer  s3cret ")).is_ok());
        assert_eq!(t.check(&HeaderMap::new()).unwrap_err().0, Denied::Missing);
        let (why, fp) = t.check(&headers("Bearer nope")).unwrap_err();
        assert_eq!(why, Denied::Wrong);
        assert_eq!(fp.unwrap(), digest::fingerprint(b"nope"));
        assert_eq!(
            t.check(&headers("Basic s3cret")).unwrap_err().0,
            Denied::Missing
        );
    }
}
