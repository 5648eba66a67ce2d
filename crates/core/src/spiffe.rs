//! SPIFFE IDs (the SPIFFE-ID specification, §2): `spiffe://<trust domain>/<path>`.

/// Splits a SPIFFE ID into its trust domain and path (`""` or `/a/b`), or `None` when it is
/// not one: the scheme is exactly `spiffe`, the trust domain is lower-case letters, digits,
/// `-`, `.` and `_`, path segments are non-empty, not `.` or `..`, and of letters, digits,
/// `-`, `.` and `_`; no query, fragment, port or user info.
pub fn parse_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let domain_ok = !domain.is_empty()
        && domain.len() <= 255
        && domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if !domain_ok || id.len() > 2048 {
        return None;
    }
    if !path.is_empty() {
        for seg in path[1..].split('/') {
            let ok = !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return None;
            }
        }
    }
    Some((domain, path))
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn valid_and_invalid_ids() {
        assert_eq!(parse_id("spiffe://example.org/ns/prod/sa/api"), Some(("example.org", "/ns/prod/sa/api")));
        assert_eq!(parse_id("spiffe://example.org"), Some(("example.org", "")));
        for bad in [
            "http://example.org/x",
            "SPIFFE://example.org/x",
            "spiffe://Example.org/x",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/a/../b",
            "spiffe://example.org:443/x",
            "spiffe://user@example.org/x",
            "spiffe://example.org/x?y",
            "spiffe://example.org/x#y",
            "spiffe:///x",
            "spiffe://example.org/a%20b",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
