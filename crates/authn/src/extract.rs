//! Where credentials come from (RFC 6750 §2): `Authorization: Bearer`, and only when a route
//! names them, a header, a cookie or a query parameter. A request may use one place only.

use http::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderName};

use crate::AuthnError;

/// Where a route looks for a bearer token besides `Authorization`.
#[derive(Clone, Debug, Default)]
pub struct Locations {
    /// A header whose whole value is the token.
    pub header: Option<HeaderName>,
    /// A cookie.
    pub cookie: Option<String>,
    /// A query parameter.
    pub query: Option<String>,
}

/// Removes `name` in every spelling that treats `-` and `_` alike (`x_api_key`, `x-api_key`):
/// many servers (CGI and WSGI among them) read them all as one header, so a credential
/// header must not reach the upstream in any of them.
pub fn remove_every_spelling(headers: &mut HeaderMap, name: &HeaderName) {
    headers.remove(name);
    let wanted = name.as_str().as_bytes();
    if !wanted.iter().any(|&b| b == b'-' || b == b'_') {
        return;
    }
    let same = |k: &HeaderName| {
        let k = k.as_str().as_bytes();
        k.len() == wanted.len()
            && k.iter().zip(wanted).all(|(&a, &b)| a == b || (matches!(a, b'-' | b'_') && matches!(b, b'-' | b'_')))
    };
    let others: Vec<HeaderName> = headers.keys().filter(|k| same(k)).cloned().collect();
    for k in others {
        headers.remove(k);
    }
}

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorization<'a> {
    /// No header.
    None,
    /// `Bearer <token>` (scheme case-insensitive): the token as sent, ASCII but not yet held
    /// to the `b64token` grammar. [`crate::RouteAuthenticator::token`] applies [`b64token`] to
    /// a token that its verified-token cache does not hold (the cache holds only tokens that
    /// passed it), so a repeated token is not scanned again on every request.
    Bearer(&'a str),
    /// Another scheme (e.g. `DPoP`, `Basic`) with its credentials.
    Other(&'a str, &'a str),
}

/// Reads the single `Authorization` header. Two of them are a bad request (RFC 9110
/// §11.6.2 allows one).
pub fn authorization(headers: &HeaderMap) -> Result<Authorization<'_>, AuthnError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(Authorization::None) };
    if values.next().is_some() {
        return Err(AuthnError::bad_request("credential_ambiguous", "more than one Authorization header"));
    }
    if let Some(token) = bearer_fast(value.as_bytes()) {
        return Ok(Authorization::Bearer(token));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthnError::bad_request("credential_malformed", "the Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim_start_matches(' ');
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Authorization::Bearer(rest))
    } else {
        Ok(Authorization::Other(scheme, rest))
    }
}

/// The common case, `Bearer <token>` with ASCII after the scheme: the same answer as the
/// general path in [`authorization`] or none (then the general path decides), in
/// word-at-a-time passes instead of `HeaderValue::to_str`'s byte-at-a-time one. This runs on
/// every request, over a token of hundreds of bytes.
fn bearer_fast(value: &[u8]) -> Option<&str> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme[..6].eq_ignore_ascii_case(b"bearer") || scheme[6] != b' ' {
        return None;
    }
    // A `HeaderValue` holds no control character but tab, so for one `to_str` refuses exactly
    // what is not ASCII.
    let token = std::str::from_utf8(&rest[rest.iter().position(|&b| b != b' ')?..]).ok()?;
    token.is_ascii().then_some(token)
}

/// Whether every byte is a `b64token` character (padding excluded). Branch-free within
/// 32-byte chunks, so that the compiler can vectorise it (~2 instructions a byte with SSE2).
fn b64token_chars(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(32);
    let whole = chunks.by_ref().all(|chunk| chunk.iter().fold(true, |ok, &b| ok & is_b64token_char(b)));
    whole && chunks.remainder().iter().all(|&b| is_b64token_char(b))
}

/// `ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"`, as comparisons that vectorise:
/// `b | 0x20` folds upper case onto lower case (and nothing else onto it), and `-`, `.`,
/// `/` and the digits are one run, 0x2D to 0x39.
fn is_b64token_char(b: u8) -> bool {
    let alpha = (b | 0x20).wrapping_sub(b'a') < 26;
    let run = b.wrapping_sub(b'-') <= b'9' - b'-';
    alpha | run | (b == b'_') | (b == b'~') | (b == b'+')
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn b64token(s: &str) -> Result<&str, AuthnError> {
    let body = s.trim_end_matches('=');
    if body.is_empty() || !b64token_chars(body.as_bytes()) {
        return Err(AuthnError::invalid("token_malformed", "the bearer token is not a b64token"));
    }
    Ok(s)
}

/// The bearer token of a request, from `Authorization` or a place the route names.
/// `authorization` is what [`authorization`] found.
pub fn bearer<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    authorization: &Authorization<'a>,
    locations: &Locations,
) -> Result<Option<&'a str>, AuthnError> {
    let mut found: Option<&'a str> = None;
    let mut take = |token: &'a str| -> Result<(), AuthnError> {
        if found.is_some() {
            return Err(AuthnError::bad_request("credential_ambiguous", "a token was sent in more than one place"));
        }
        found = Some(token);
        Ok(())
    };
    if let Authorization::Bearer(t) = authorization {
        take(t)?;
    }
    if let Some(name) = &locations.header
        && let Some(v) = headers.get(name)
    {
        let v = v.to_str().map_err(|_| AuthnError::invalid("token_malformed", "the token header is not ASCII"))?;
        take(b64token(v.trim())?)?;
    }
    if let Some(name) = &locations.cookie {
        for v in headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()) {
            for pair in v.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k == name
                {
                    take(b64token(val.trim_matches('"'))?)?;
                }
            }
        }
    }
    if let (Some(name), Some(q)) = (&locations.query, query) {
        for pair in q.split('&') {
            if let Some((k, val)) = pair.split_once('=')
                && k == name
            {
                take(b64token(val)?)?;
            }
        }
    }
    Ok(found)
}

/// Removes one cookie from the `Cookie` headers, keeping the others.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let values: Vec<String> =
        headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
    if values.is_empty() {
        return;
    }
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = http::HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(COOKIE, v);
    }
}

/// Removes a query parameter from a URI, keeping the rest in order.
pub fn remove_query_param(uri: &mut http::Uri, name: &str) {
    let Some(q) = uri.query() else { return };
    if !q.split('&').any(|p| p.split('=').next() == Some(name)) {
        return;
    }
    let kept: Vec<&str> = q.split('&').filter(|p| p.split('=').next() != Some(name)).collect();
    let path = uri.path();
    let pq = if kept.is_empty() { path.to_string() } else { format!("{path}?{}", kept.join("&")) };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(u) = http::Uri::from_parts(parts) {
            *uri = u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc.def", "bearer abc.def", "BEARER abc.def", "Bearer  abc.def"] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(authorization(&h).unwrap(), Authorization::Bearer("abc.def"), "{v}");
        }
        let h = headers(&[("authorization", "DPoP abc")]);
        assert_eq!(authorization(&h).unwrap(), Authorization::Other("DPoP", "abc"));
    }

    #[test]
    fn one_authorization_header_only() {
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(matches!(authorization(&h), Err(AuthnError::BadRequest { .. })));
    }

    #[test]
    fn tokens_must_be_b64tokens() {
        for t in ["", "a b", "a\"b", "é", "===", "a,b"] {
            assert!(b64token(t).is_err(), "{t:?}");
        }
        for t in ["abc", "a.b.c", "a-_~+/.9==", "x="] {
            assert!(b64token(t).is_ok(), "{t:?}");
        }
    }

    /// The `Authorization` parsing without the fast path, kept as the reference it must agree
    /// with. Neither holds the token to the `b64token` grammar: `RouteAuthenticator::token`
    /// does.
    fn reference(value: &HeaderValue) -> Result<Authorization<'_>, &'static str> {
        let value = value.to_str().map_err(|_| "credential_malformed")?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim_start_matches(' ');
        if scheme.eq_ignore_ascii_case("bearer") {
            Ok(Authorization::Bearer(rest))
        } else {
            Ok(Authorization::Other(scheme, rest))
        }
    }

    proptest::proptest! {
        /// The fast bearer path answers exactly as the general parsing does.
        #[test]
        fn fast_path_agrees_with_the_reference(
            scheme in "(Bearer|bearer|BEARER|BeArEr|Bearer |Bearer=|Bearerx|Basic|DPoP|bearer\t|)",
            spaces in " {0,3}",
            token in proptest::collection::vec(
                proptest::sample::select(b"aZ09-._~+/= \t\"%,\x7f\x80\xff".to_vec()), 0..40),
        ) {
            let mut bytes = format!("{scheme}{spaces}").into_bytes();
            bytes.extend(&token);
            let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, value.clone());
            proptest::prop_assert_eq!(authorization(&h).map_err(|e| e.code()), reference(&value));
        }

        /// Every byte is judged as the RFC 6750 grammar says, whatever its place in a chunk.
        #[test]
        fn b64token_characters(prefix in "[A-Za-z0-9]{0,40}", byte in proptest::num::u8::ANY) {
            let s = format!("{prefix}{}x", byte as char);
            let valid = byte.is_ascii_alphanumeric() || b"-._~+/".contains(&byte);
            proptest::prop_assert_eq!(b64token(&s).is_ok(), valid);
        }
    }

    #[test]
    fn other_places_only_when_named_and_never_two() {
        let h = headers(&[("x-token", "tok1"), ("cookie", "a=1; session=tok2")]);
        let none = Locations::default();
        assert_eq!(bearer(&h, Some("access_token=tok3"), &Authorization::None, &none).unwrap(), None, "nothing named");
        let header = Locations { header: Some(HeaderName::from_static("x-token")), ..Default::default() };
        assert_eq!(bearer(&h, None, &Authorization::None, &header).unwrap(), Some("tok1"));
        let cookie = Locations { cookie: Some("session".into()), ..Default::default() };
        assert_eq!(bearer(&h, None, &Authorization::None, &cookie).unwrap(), Some("tok2"));
        let query = Locations { query: Some("access_token".into()), ..Default::default() };
        assert_eq!(bearer(&h, Some("x=1&access_token=tok3"), &Authorization::None, &query).unwrap(), Some("tok3"));
        assert!(bearer(&h, None, &Authorization::Bearer("tok0"), &header).is_err(), "two places");
    }

    #[test]
    fn scrubbing_cookies_and_query_parameters() {
        let mut h = headers(&[("cookie", "a=1; session=tok; b=2"), ("cookie", "session=again")]);
        remove_cookie(&mut h, "session");
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = headers(&[("cookie", "session=tok")]);
        remove_cookie(&mut h, "session");
        assert!(h.get("cookie").is_none());
        let mut u: http::Uri = "/p?x=1&access_token=t&y=2".parse().unwrap();
        remove_query_param(&mut u, "access_token");
        assert_eq!(u, "/p?x=1&y=2");
        let mut u: http::Uri = "/p?access_token=t".parse().unwrap();
        remove_query_param(&mut u, "access_token");
        assert_eq!(u, "/p");
    }
}
