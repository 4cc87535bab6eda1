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

/// A short, non-reversible name for a secret, safe to log: the first 12 hex digits of its digest.
pub fn fingerprint(secret: &[u8]) -> String {
    let mut hex = sha256_hex(secret);
    hex.truncate(12);
    hex
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
    }
}
