//! Base64url without padding (RFC 7515 §2), strict: padding, non-alphabet characters and
//! non-canonical trailing bits are all errors, so one token has exactly one encoding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Decodes strict base64url.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Encodes as base64url without padding.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict() {
        assert_eq!(decode("aGk").unwrap(), b"hi");
        assert!(decode("aGk=").is_none(), "padding");
        assert!(decode("aGl").is_none(), "non-canonical trailing bits");
        assert!(decode("a+k").is_none(), "not url-safe");
        assert!(decode("aG k").is_none());
        assert_eq!(encode(b"\xfb\xff"), "-_8");
    }

    proptest::proptest! {
        /// Whatever is encoded decodes back, from the URL-safe alphabet only.
        #[test]
        fn round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let s = encode(&bytes);
            proptest::prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            proptest::prop_assert_eq!(decode(&s), Some(bytes));
        }

        /// Whatever decodes was the one encoding of its value (no padding, no other
        /// alphabet, no stray trailing bits), so a token cannot be re-spelt.
        #[test]
        fn one_spelling_per_value(s in "[A-Za-z0-9_=+/ -]{0,64}") {
            if let Some(bytes) = decode(&s) {
                proptest::prop_assert_eq!(encode(&bytes), s);
            }
        }
    }
}
