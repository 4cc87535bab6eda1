//! `gateway generate-api-key`: a fresh key from the OS's random source.
/// 48 random bytes, URL-safe base64: 64 characters after the `lp-` prefix.
pub fn generate_api_key() -> String {
    crate::secrets::prefixed_random::<48>("lp-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_and_distinct() {
        let (a, b) = (generate_api_key(), generate_api_key());
        assert_eq!(a.len(), 67);
        assert_ne!(a, b);
        assert!(a[3..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
