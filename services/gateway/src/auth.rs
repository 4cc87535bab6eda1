//! Bearer authentication: the API key compared as a SHA-256 digest in constant time, or a live
//! session token looked up by its digest. Failures are audited and throttled per client address.
use std::net::IpAddr;

use axum::http::{header, HeaderMap};
use provider_shared::digest;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::state::AppState;
use crate::store::Session;

#[derive(Debug, Clone)]
pub enum Principal {
    ApiKey,
    Session(Session),
    /// No credential, on a gateway that allows keyless generation (`ALLOW_KEYLESS_GENERATION`).
    Keyless,
}

impl Principal {
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Principal::ApiKey | Principal::Keyless => None,
            Principal::Session(s) => Some(&s.id),
        }
    }

    /// The rate-limit client: the API key, also for the sessions it made.
    pub fn client<'a>(&'a self, state: &'a AppState) -> &'a str {
        // Keyless callers share the key's budget: opting in must not lift the limits.
        match self {
            Principal::ApiKey | Principal::Keyless => &state.key_client,
            Principal::Session(s) => &s.owner,
        }
    }
}

/// Which credentials a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    KeyOnly,
    KeyOrSession,
    /// The key or a session if given; anyone otherwise (generation with the keyless opt-in).
    Anyone,
}

/// What the generating routes accept on this gateway.
pub fn for_generation(state: &AppState) -> Accept {
    if state.settings.allow_keyless_generation {
        Accept::Anyone
    } else {
        Accept::KeyOrSession
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The key as Anthropic's clients send it: `x-api-key: <key>`.
pub fn x_api_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("x-api-key")?.to_str().ok()?.trim();
    (!value.is_empty()).then_some(value)
}

fn failure_key(addr: IpAddr) -> String {
    format!("authfail:{addr}")
}

/// Refuses an address that has used up its failed attempts, before looking at its credentials.
pub async fn check_throttle(state: &AppState, addr: IpAddr) -> Result<(), Error> {
    let budget = state
        .store
        .peek(&failure_key(addr), state.auth_failure_spec())
        .await?;
    if budget.remaining == 0 {
        let retry_after = budget
            .reset_after
            .min(std::time::Duration::from_secs(60))
            .max(std::time::Duration::from_secs(1));
        metrics::counter!("gateway_rate_limited_total", "kind" => "auth").increment(1);
        state.audit.record_repeated(
            "security_violation",
            json!({"client_ip": addr.to_string(), "violation_type": "auth_throttled",
                   "details": "too many failed authentication attempts"}),
            &["details"],
        );
        return Err(Error::RateLimited {
            kind: "auth",
            message: format!(
                "too many failed authentication attempts from {addr}; try again in {}s",
                crate::error::retry_after_secs(retry_after)
            ),
            retry_after,
            headers: None,
        });
    }
    Ok(())
}

pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    addr: IpAddr,
    accept: Accept,
) -> Result<Principal, Error> {
    check_throttle(state, addr).await?;
    let presented = bearer(headers).or_else(|| x_api_key(headers));
    // One digest per request: it is compared, looked up and fingerprinted.
    let presented_digest = presented.map(|token| digest::sha256(token.as_bytes()));
    let principal = match presented.zip(presented_digest.as_ref()) {
        None => None,
        Some((token, digest)) => {
            if bool::from(digest.ct_eq(&state.settings.api_key_digest)) {
                Some(Principal::ApiKey)
            } else if accept != Accept::KeyOnly && token.starts_with(crate::secrets::TOKEN_PREFIX) {
                // Only session-shaped tokens are looked up: a plain wrong key is refused even
                // while the store is unreachable.
                state
                    .store
                    .use_session(digest)
                    .await?
                    .map(Principal::Session)
            } else {
                None
            }
        }
    };
    // Keyless means no credential at all, from this machine: a wrong key is a wrong key.
    let principal = match principal {
        None if accept == Accept::Anyone && presented.is_none() && addr.is_loopback() => {
            Some(Principal::Keyless)
        }
        other => other,
    };
    let fingerprint = presented_digest.as_ref().map(digest::fingerprint_of);
    // Coalesced per client, credential and outcome: every request authenticates, and a client
    // refused by a limit would otherwise write a line per request (docs/operations.md).
    state.audit.record_repeated(
        "authentication",
        json!({
            "client_ip": addr.to_string(),
            "key_fingerprint": fingerprint,
            "credential": match &principal {
                Some(Principal::ApiKey) => "api_key",
                Some(Principal::Session(_)) => "session",
                Some(Principal::Keyless) => "keyless",
                None => "none",
            },
            "session_id": principal.as_ref().and_then(Principal::session_id),
            "success": principal.is_some(),
            "reason": match (&principal, presented) {
                (Some(_), _) => None,
                (None, None) => Some("missing"),
                (None, Some(_)) => Some("wrong"),
            },
        }),
        &["key_fingerprint"],
    );
    match principal {
        Some(p) => Ok(p),
        None => {
            metrics::counter!("gateway_auth_failures_total").increment(1);
            state
                .store
                .take(&failure_key(addr), state.auth_failure_spec(), 1)
                .await?;
            Err(Error::Unauthorized(match (presented, accept) {
                (None, _) => {
                    "missing API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)"
                        .into()
                }
                (Some(_), Accept::KeyOrSession | Accept::Anyone) => {
                    "invalid API key or session token (sessions end after their TTL or idle time)"
                        .into()
                }
                (Some(_), Accept::KeyOnly) => "invalid API key".into(),
            }))
        }
    }
}

/// Checks the admin token; admin routes are off unless `LOCAL_PROVIDER_ADMIN_TOKEN` is set.
pub async fn authenticate_admin(
    state: &AppState,
    headers: &HeaderMap,
    addr: IpAddr,
) -> Result<(), Error> {
    let Some(expected) = state.settings.admin_token_digest else {
        return Err(Error::Forbidden(
            "the admin API is off: set LOCAL_PROVIDER_ADMIN_TOKEN to turn it on".into(),
        ));
    };
    check_throttle(state, addr).await?;
    let presented = bearer(headers);
    let ok = presented
        .map(|t| bool::from(digest::sha256(t.as_bytes()).ct_eq(&expected)))
        .unwrap_or(false);
    state.audit.record_repeated(
        "authentication",
        json!({"client_ip": addr.to_string(), "credential": "admin_token",
        "key_fingerprint": presented.map(|t| digest::fingerprint(t.as_bytes())),
        "success": ok,
        "reason": match (ok, presented) {
            (true, _) => None,
            (false, None) => Some("missing"),
            (false, Some(_)) => Some("wrong"),
        }}),
        &["key_fingerprint"],
    );
    if ok {
        return Ok(());
    }
    metrics::counter!("gateway_auth_failures_total").increment(1);
    state
        .store
        .take(&failure_key(addr), state.auth_failure_spec(), 1)
        .await?;
    Err(Error::Unauthorized("invalid admin token".into()))
}

/// True when the request carries the admin token. A good token passes quietly (a status page
/// or a scraper polls every few seconds); check anything else with [`authenticate_admin`], which
/// audits and throttles it.
pub fn holds_admin_token(state: &AppState, headers: &HeaderMap) -> bool {
    match (state.settings.admin_token_digest, bearer(headers)) {
        (Some(expected), Some(token)) => {
            bool::from(digest::sha256(token.as_bytes()).ct_eq(&expected))
        }
        _ => false,
    }
}

/// Whether the caller may see the operations detail (`/metrics`, `/health` detail): always,
/// unless `PROTECT_OPERATIONS` is on; then only with the admin token. Without any credential
/// the answer is no; a wrong one is refused (audited and throttled).
pub async fn sees_operations(
    state: &AppState,
    headers: &HeaderMap,
    addr: IpAddr,
) -> Result<bool, Error> {
    if !state.settings.protect_operations || holds_admin_token(state, headers) {
        return Ok(true);
    }
    if headers.contains_key(header::AUTHORIZATION) {
        authenticate_admin(state, headers, addr).await?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
        assert_eq!(x_api_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static(" key "));
        assert_eq!(x_api_key(&h), Some("key"));
    }
}
