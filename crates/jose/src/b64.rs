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
}
