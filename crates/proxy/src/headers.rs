//! Header rules of a proxy: hop-by-hop headers removed (RFC 9110 §7.6.1), the client's
//! address, scheme and host passed on (`X-Forwarded-*` or RFC 7239 `Forwarded`), request
//! ids, and the size of a request head.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use portcullis_config::ForwardedHeaders;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
fn hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::TE,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// Removes hop-by-hop headers, including those named in `Connection`. Keeps `TE: trailers`,
/// which gRPC needs end to end. Returns whether the client asked for trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let mut wants_trailers = false;
    if let Some(te) = headers.get(header::TE) {
        wants_trailers = te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        // Headers the gateway adds itself are set after this, so naming them here is harmless.
        for n in named {
            headers.remove(&n);
        }
    }
    for h in hop_by_hop() {
        headers.remove(h);
    }
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    wants_trailers
}

/// Removes hop-by-hop headers from an upstream's response.
pub fn strip_hop_by_hop_response(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        strip_hop_by_hop(headers);
        headers.remove(header::TE);
    } else {
        for h in hop_by_hop() {
            headers.remove(h);
        }
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// Facts about the client for the forwarded headers.
pub struct ClientFacts<'a> {
    /// The address the connection came from.
    pub peer: IpAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The `Host` (or `:authority`) the client asked for.
    pub host: Option<&'a str>,
}

/// Whether `peer` is a proxy whose forwarded headers may be believed.
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&peer))
}

/// The client address: from a trusted proxy, the right-most untrusted address in
/// `X-Forwarded-For`; otherwise the peer itself.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut ip = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(addr) => {
                ip = addr;
                if !is_trusted(addr, trusted) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    ip
}

/// Sets the forwarded headers. From a trusted proxy, its chain is extended; from anyone
/// else, whatever the client wrote is replaced, so the upstream cannot be lied to.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    facts: &ClientFacts<'_>,
    trusted: &[IpNet],
    style: ForwardedHeaders,
) {
    let trust = is_trusted(facts.peer, trusted);
    let proto = if facts.tls { "https" } else { "http" };
    match style {
        ForwardedHeaders::XForwarded => {
            let mut xff = String::new();
            if trust {
                for v in headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                {
                    xff.push_str(v);
                    xff.push_str(", ");
                }
            }
            let _ = write!(xff, "{}", facts.peer);
            set(headers, &X_FORWARDED_FOR, &xff);
            if !(trust && headers.contains_key(&X_FORWARDED_PROTO)) {
                headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
            }
            if !(trust && headers.contains_key(&X_FORWARDED_HOST)) {
                match facts.host {
                    Some(h) => set(headers, &X_FORWARDED_HOST, h),
                    None => {
                        headers.remove(&X_FORWARDED_HOST);
                    }
                }
            }
            headers.remove(header::FORWARDED);
        }
        ForwardedHeaders::Forwarded => {
            let mut fwd = String::new();
            if trust {
                for v in headers
                    .get_all(header::FORWARDED)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                {
                    fwd.push_str(v);
                    fwd.push_str(", ");
                }
            }
            match facts.peer {
                IpAddr::V4(a) => {
                    let _ = write!(fwd, "for={a}");
                }
                IpAddr::V6(a) => {
                    let _ = write!(fwd, "for=\"[{a}]\"");
                }
            }
            let _ = write!(fwd, ";proto={proto}");
            if let Some(h) = facts
                .host
                .filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            {
                let _ = write!(fwd, ";host=\"{h}\"");
            }
            set(headers, &header::FORWARDED, &fwd);
            for h in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
                headers.remove(h);
            }
        }
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// The request id: the client's `X-Request-Id` when it is a sane token (at most 128
/// characters of `[A-Za-z0-9._:-]`), else a new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
        {
            return v.clone();
        }
    }
    new_request_id()
}

/// A random request id in UUID form.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut r = fastrand::u128(..);
    // Version 4, variant 1.
    r = (r & !(0xf << 76)) | (0x4 << 76);
    r = (r & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut j = 0;
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[((r >> (124 - 4 * i)) & 0xf) as usize];
        j += 1;
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Approximate size of a request head in HTTP/1.1 form (request line and header lines).
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go_including_named_ones() {
        let mut h = hm(&[
            ("connection", "keep-alive, x-secret-hop, authorization"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("authorization", "Bearer t"),
            ("x-keep", "1"),
        ]);
        assert!(strip_hop_by_hop(&mut h));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn forwarded_for_cannot_be_spoofed_by_untrusted_clients() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let facts = ClientFacts {
            peer: "203.0.113.9".parse().unwrap(),
            tls: true,
            host: Some("api.example"),
        };
        let mut h = hm(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil"),
        ]);
        set_forwarded(&mut h, &facts, &trusted, ForwardedHeaders::XForwarded);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert_eq!(
            client_ip(&hm(&[("x-forwarded-for", "1.2.3.4")]), facts.peer, &trusted),
            facts.peer
        );
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let facts = ClientFacts {
            peer,
            tls: false,
            host: Some("h"),
        };
        let mut h = hm(&[("x-forwarded-for", "198.51.100.7, 10.2.2.2")]);
        assert_eq!(
            client_ip(&h, peer, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        set_forwarded(&mut h, &facts, &trusted, ForwardedHeaders::XForwarded);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.2.2.2, 10.1.1.1");
        // A garbage hop stops the walk at the last good address.
        let h = hm(&[("x-forwarded-for", "198.51.100.7, junk, 10.2.2.2")]);
        assert_eq!(
            client_ip(&h, peer, &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn rfc7239_forwarded() {
        let facts = ClientFacts {
            peer: "2001:db8::1".parse().unwrap(),
            tls: false,
            host: Some("h.example"),
        };
        let mut h = hm(&[("forwarded", "for=evil"), ("x-forwarded-for", "evil")]);
        set_forwarded(&mut h, &facts, &[], ForwardedHeaders::Forwarded);
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";proto=http;host=\"h.example\""
        );
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn request_ids() {
        let ok = hm(&[("x-request-id", "abc-123_x.y:z")]);
        assert_eq!(request_id(&ok), "abc-123_x.y:z");
        for bad in ["<script>", "a b", &"x".repeat(129)] {
            let id = request_id(&hm(&[("x-request-id", bad)]));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 36);
        }
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(&s[14..15], "4");
        assert!(s.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        assert_ne!(new_request_id(), new_request_id());
    }
}
