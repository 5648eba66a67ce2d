//! Admit: the head is within limits, and its authority (host and port) is one the gateway
//! and the servers behind it read the same way.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{StatusCode, Version};
use portcullis_core::Problem;

use crate::headers;
use crate::router::{read_host, strip_port};
use crate::runtime::Runtime;

/// Where a request's authority lives (in the pipeline's frame) while the stages borrow it.
#[derive(Default)]
pub struct AuthoritySlot {
    read: RequestAuthority,
    /// The authority without its host's trailing dot, when it had one.
    undotted: Option<HeaderValue>,
}

/// A request's authority as the later stages read it, borrowed from its [`AuthoritySlot`].
#[derive(Clone)]
pub struct Authority<'a> {
    /// The host as routing reads it: lower case, without port or trailing dot.
    pub host: Cow<'a, str>,
    /// The authority as sent upstream, if the request had one.
    pub text: Option<&'a str>,
    /// The `Host` header's value itself, when that is where the authority came from.
    pub header_value: Option<&'a HeaderValue>,
}

/// Admits a request: limits, then the authority, which it leaves in `slot` for the later
/// stages to borrow. The authority of an absolute-form target (RFC 9112 §3.2.2) or of
/// HTTP/2's `:authority` (RFC 9113 §8.3.1) is the host: the `Host` field the upstream gets
/// says the same, so routing and the upstream can never see two different hosts.
/// `admin.example.com.` is `admin.example.com` to routing, and is forwarded so too.
pub fn admit<'a>(
    rt: &Runtime,
    parts: &mut http::request::Parts,
    slot: &'a mut AuthoritySlot,
) -> Result<Authority<'a>, Problem> {
    limits(rt, parts)?;
    let AuthoritySlot { read, undotted } = slot;
    *read = RequestAuthority::of(parts)?;
    if let RequestAuthority::Uri(a) = &*read
        && parts.headers.get(header::HOST).is_none_or(|h| h.as_bytes() != a.as_str().as_bytes())
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let read: &'a RequestAuthority = read;
    // Read once: a `Host` header's bytes are checked as text here, not again at each use.
    let text = read.as_str();
    let (host, dotted) = read_host(text.unwrap_or_default())
        .map_err(|_| Problem::bad_request("bad_host", "the Host header is not a valid host name"))?;
    if !dotted {
        return Ok(Authority { host, text, header_value: read.header_value() });
    }
    *undotted = text.and_then(without_trailing_dot);
    let undotted: &'a Option<HeaderValue> = undotted;
    if let Some(v) = undotted {
        parts.headers.insert(header::HOST, v.clone());
    }
    Ok(Authority {
        host,
        text: undotted.as_ref().and_then(|v| std::str::from_utf8(v.as_bytes()).ok()),
        header_value: undotted.as_ref(),
    })
}

/// The head is within the configured limits (`431`). (Ambiguous framing, such as both
/// `Content-Length` and `Transfer-Encoding`, never gets here: the HTTP/1.1 codec refuses
/// it, see [`portcullis_http::server::h1`].)
fn limits(rt: &Runtime, parts: &http::request::Parts) -> Result<(), Problem> {
    let limits = rt.head_limits;
    if parts.headers.len() > limits.max_headers
        || headers::head_size(&parts.method, &parts.uri, &parts.headers) > limits.max_header_bytes
    {
        return Err(Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request head is larger than this gateway accepts",
        ));
    }
    Ok(())
}

/// The authority (host and port) the client addressed: the URI's (HTTP/2 `:authority`, or
/// an absolute-form request line), else the `Host` header. Cheap to clone.
#[derive(Default)]
enum RequestAuthority {
    Uri(http::uri::Authority),
    Header(HeaderValue),
    #[default]
    Missing,
}

impl RequestAuthority {
    /// HTTP/1.1 requires one (RFC 9112 §3.2).
    fn of(parts: &http::request::Parts) -> Result<Self, Problem> {
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host = hosts.next();
        // Two Host headers would let the gateway and the upstream disagree on the host.
        if host.is_some() && hosts.next().is_some() {
            return Err(Problem::bad_request("bad_host", "more than one Host header"));
        }
        if let Some(a) = parts.uri.authority() {
            // User information has no place in a request's authority (RFC 9110 §4.2.4); it
            // would reach routing and the forwarded host.
            if a.as_str().contains('@') {
                return Err(Problem::bad_request("bad_host", "the request's authority carries user information"));
            }
            return Ok(Self::Uri(a.clone()));
        }
        match host {
            Some(h) if is_authority(h.as_bytes()) => Ok(Self::Header(h.clone())),
            Some(_) => Err(Problem::bad_request("bad_host", "the Host header is not valid")),
            None if parts.version == Version::HTTP_11 => {
                Err(Problem::bad_request("missing_host", "HTTP/1.1 requests need a Host header"))
            }
            None => Ok(Self::Missing),
        }
    }

    /// The `Host` header value itself, when that is where the authority came from.
    fn header_value(&self) -> Option<&HeaderValue> {
        match self {
            Self::Header(h) => Some(h),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Uri(a) => Some(a.as_str()),
            // ASCII (`is_authority` admitted it): `from_utf8` checks that a word at a time,
            // where `to_str` would check each byte again.
            Self::Header(h) => std::str::from_utf8(h.as_bytes()).ok(),
            Self::Missing => None,
        }
    }
}

/// The authority without a single trailing dot on its host (`a.example.:8443` is
/// `a.example:8443`); `None` when it has none.
fn without_trailing_dot(authority: &str) -> Option<HeaderValue> {
    let host = strip_port(authority);
    let bare = host.strip_suffix('.').filter(|h| !h.is_empty() && !h.ends_with('.'))?;
    HeaderValue::from_str(&format!("{bare}{}", &authority[host.len()..])).ok()
}

/// Whether `b` is made only of the characters an authority may hold (RFC 3986 §3.2).
fn is_authority(b: &[u8]) -> bool {
    const ALLOWED: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            t[i] = c.is_ascii_alphanumeric();
            i += 1;
        }
        let extra = b"-._~%!$&'()*+,;=:[]";
        let mut j = 0;
        while j < extra.len() {
            t[extra[j] as usize] = true;
            j += 1;
        }
        t
    };
    !b.is_empty() && b.iter().all(|&c| ALLOWED[usize::from(c)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_with_user_information_is_refused() {
        // As HTTP/2's `:authority` arrives: in the request's URI.
        let parts = |uri: &str| http::Request::get(uri).version(Version::HTTP_2).body(()).unwrap().into_parts().0;
        let err = RequestAuthority::of(&parts("http://user:pw@api.example/x")).err().expect("refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(!err.to_string().contains("pw"), "{err}");
        assert!(RequestAuthority::of(&parts("http://user@api.example/x")).is_err());
        assert!(RequestAuthority::of(&parts("http://api.example/x")).is_ok());
    }

    #[test]
    fn a_trailing_dot_is_dropped_from_the_authority() {
        assert_eq!(without_trailing_dot("a.example.:8443").unwrap(), "a.example:8443");
        assert_eq!(without_trailing_dot("A.example.").unwrap(), "A.example");
        assert!(without_trailing_dot("a.example:8443").is_none());
        assert!(without_trailing_dot("a.example..").is_none());
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        // Only a port of digits after the last colon goes; an empty one too.
        assert_eq!(strip_port("example.com:"), "example.com");
        assert_eq!(strip_port("example.com:http"), "example.com:http");
        assert_eq!(strip_port("a:1:2"), "a:1");
        assert_eq!(strip_port(""), "");
        use crate::router::route_host;
        assert_eq!(route_host("API.Example:8443").unwrap(), "api.example");
        assert!(matches!(route_host("api.example:8443"), Ok(Cow::Borrowed("api.example"))));
    }

    #[test]
    fn hosts_are_read_without_a_trailing_dot_and_odd_spellings_refused() {
        use crate::router::route_host;
        assert_eq!(read_host("A.example.:80").unwrap(), (Cow::Owned("a.example".into()), true));
        assert_eq!(read_host("a.example:80").unwrap(), (Cow::Borrowed("a.example"), false));
        assert_eq!(read_host("").unwrap(), (Cow::Borrowed(""), false));
        assert_eq!(route_host("Admin.Example.COM.").unwrap(), "admin.example.com");
        assert_eq!(route_host("admin.example.com.:8443").unwrap(), "admin.example.com");
        assert_eq!(route_host("[::1]:80").unwrap(), "[::1]");
        assert_eq!(route_host("admin.example.com:").unwrap(), "admin.example.com");
        for bad in [
            "admin.example.com..",
            ".admin.example.com",
            "admin..example.com",
            "adm%69n.example.com",
            ".",
            // nginx, Express and Go cut the host at the first `:` and read `admin.example.com`.
            "admin.example.com:abc",
            "admin.example.com:80:80",
            "admin.example.com:+80",
            "admin.example.com.:x",
            "admin.example.com:123456",
            "[::1]x",
            "[::1",
        ] {
            assert!(route_host(bad).is_err(), "{bad}");
        }
    }
}
