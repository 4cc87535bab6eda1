//! SHA-256 helpers: secrets are kept and compared only as digests.
use sha2::{Digest, Sha256};

/// The SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The SHA-256 digest of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// The SHA-256 digest of `value` as compact JSON, lower-case hex: the same as
/// `sha256_hex(serde_json::to_string(value))`, without building the text.
pub fn sha256_hex_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let mut hasher = Sha256::new();
    // Writing into a hasher cannot fail; a value that cannot be serialised hashes what was written.
    let _ = serde_json::to_writer(&mut hasher, value);
    hex::encode(<[u8; 32]>::from(hasher.finalize()))
}

/// A short, non-reversible name for a secret, safe to log: the first 12 hex digits of its digest.
pub fn fingerprint(secret: &[u8]) -> String {
    fingerprint_of(&sha256(secret))
}

/// [`fingerprint`] of a secret whose digest is already at hand.
pub fn fingerprint_of(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(fingerprint(b"abc"), "ba7816bf8f01");
        assert_eq!(fingerprint_of(&sha256(b"abc")), "ba7816bf8f01");
    }

    #[test]
    fn a_json_digest_is_the_digest_of_its_text() {
        let value = serde_json::json!([{"role": "user", "content": "hé \"quoted\""}]);
        assert_eq!(
            sha256_hex_json(&value),
            sha256_hex(value.to_string().as_bytes())
        );
    }
}
