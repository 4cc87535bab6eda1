//! Random ids and secrets the gateway hands out: request and item ids, session ids and session
//! tokens. A leaf module, so that `auth.rs`, `sessions.rs` and `generate/` can all use it without
//! importing one another.
use base64::Engine;

/// The start of every session token; `auth.rs` looks only such bearers up in the store.
pub const TOKEN_PREFIX: &str = "lps_";

/// `bytes` random bytes as lowercase hex (twice as many characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(buf.as_mut_slice());
    hex::encode(buf)
}

/// A new session token: the prefix and 32 random bytes, URL-safe base64.
pub fn session_token() -> String {
    prefixed_random::<32>(TOKEN_PREFIX)
}

/// `prefix`, then `N` random bytes as URL-safe base64 without padding: session tokens and API
/// keys.
pub fn prefixed_random<const N: usize>(prefix: &str) -> String {
    let mut secret = [0u8; N];
    rand::fill(&mut secret);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tokens_have_their_shape_and_differ() {
        let id = random_hex(12);
        assert_eq!(id.len(), 24);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, random_hex(12));
        let token = session_token();
        assert!(token.starts_with(TOKEN_PREFIX));
        // 32 bytes are 43 characters of unpadded base64.
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(token, session_token());
    }
}
