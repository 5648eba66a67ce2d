//! Header rules of a proxy: hop-by-hop headers removed (RFC 9110 §7.6.1), the client's
//! address, scheme and host passed on (`X-Forwarded-*` or RFC 7239 `Forwarded`), request
//! ids, and the size of a request head.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use portcullis_config::ForwardedHeaders;
use portcullis_http::client::Added;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static FORWARDED: HeaderName = header::FORWARDED;
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static DPOP: HeaderName = HeaderName::from_static("dpop");

/// Which headers the proxy acts on a message has, found in one pass over its names, so
/// that the common message (none of them) costs no map lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Present(u32);

impl Present {
    /// `Connection`.
    pub const CONNECTION: u32 = 1;
    /// `Keep-Alive`.
    pub const KEEP_ALIVE: u32 = 1 << 1;
    /// `Proxy-Connection`.
    pub const PROXY_CONNECTION: u32 = 1 << 2;
    /// `Transfer-Encoding`.
    pub const TRANSFER_ENCODING: u32 = 1 << 3;
    /// `TE`.
    pub const TE: u32 = 1 << 4;
    /// `Upgrade`.
    pub const UPGRADE: u32 = 1 << 5;
    /// `Proxy-Authorization`.
    pub const PROXY_AUTHORIZATION: u32 = 1 << 6;
    /// `Proxy-Authenticate`.
    pub const PROXY_AUTHENTICATE: u32 = 1 << 7;
    /// `Forwarded`.
    pub const FORWARDED: u32 = 1 << 8;
    /// `X-Forwarded-For`.
    pub const X_FORWARDED_FOR: u32 = 1 << 9;
    /// `X-Forwarded-Proto`.
    pub const X_FORWARDED_PROTO: u32 = 1 << 10;
    /// `X-Forwarded-Host`.
    pub const X_FORWARDED_HOST: u32 = 1 << 11;
    /// `Authorization`.
    pub const AUTHORIZATION: u32 = 1 << 12;
    /// `DPoP`.
    pub const DPOP: u32 = 1 << 13;
    /// `X-Request-Id`.
    pub const X_REQUEST_ID: u32 = 1 << 14;
    /// A name with `_` in it, which some servers read as `-` (see [`strip_confusable`]).
    pub const UNDERSCORED: u32 = 1 << 15;
    /// A field that makes some servers act on another path or method than the request's
    /// (see [`strip_overrides`]).
    pub const OVERRIDE: u32 = 1 << 16;
    /// A field that some servers take as a proxy's word on the client (see
    /// [`strip_overrides`]).
    pub const CLIENT_FACT: u32 = 1 << 17;

    /// All hop-by-hop headers (RFC 9110 §7.6.1) and the credentials meant for a proxy.
    const HOP_BY_HOP: u32 = Self::CONNECTION
        | Self::KEEP_ALIVE
        | Self::PROXY_CONNECTION
        | Self::TRANSFER_ENCODING
        | Self::TE
        | Self::UPGRADE
        | Self::PROXY_AUTHORIZATION
        | Self::PROXY_AUTHENTICATE;

    /// Scans the header names once.
    pub fn scan(headers: &HeaderMap) -> Present {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= match name.as_str() {
                "connection" => Self::CONNECTION,
                "keep-alive" => Self::KEEP_ALIVE,
                "proxy-connection" => Self::PROXY_CONNECTION,
                "transfer-encoding" => Self::TRANSFER_ENCODING,
                "te" => Self::TE,
                "upgrade" => Self::UPGRADE,
                "proxy-authorization" => Self::PROXY_AUTHORIZATION,
                "proxy-authenticate" => Self::PROXY_AUTHENTICATE,
                "forwarded" => Self::FORWARDED,
                "x-forwarded-for" => Self::X_FORWARDED_FOR,
                "x-forwarded-proto" => Self::X_FORWARDED_PROTO,
                "x-forwarded-host" => Self::X_FORWARDED_HOST,
                "authorization" => Self::AUTHORIZATION,
                "dpop" => Self::DPOP,
                "x-request-id" => Self::X_REQUEST_ID,
                // As `OVERRIDES` and `CLIENT_FACTS` list them.
                "x-original-url"
                | "x-rewrite-url"
                | "x-http-method-override"
                | "x-http-method"
                | "x-method-override" => Self::OVERRIDE,
                "x-real-ip"
                | "x-client-ip"
                | "true-client-ip"
                | "x-forwarded-port"
                | "x-forwarded-prefix"
                | "x-forwarded-client-cert"
                | "x-client-cert" => Self::CLIENT_FACT,
                n if n.as_bytes().contains(&b'_') => Self::UNDERSCORED,
                _ => 0,
            };
        }
        Present(bits)
    }

    /// Whether any of `bits` is present.
    pub fn any(self, bits: u32) -> bool {
        self.0 & bits != 0
    }
}

/// Removes hop-by-hop headers, including those named in `Connection`. Keeps `TE: trailers`,
/// which gRPC needs end to end. Returns whether the client asked for trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, present: Present) -> bool {
    if !present.any(Present::HOP_BY_HOP) {
        return false;
    }
    let mut wants_trailers = false;
    if present.any(Present::TE)
        && let Some(te) = headers.get(header::TE)
    {
        wants_trailers = te.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    }
    if present.any(Present::CONNECTION) {
        // Options other than the usual ones name extra headers to remove (RFC 9110 §7.6.1).
        let mut named: Vec<HeaderName> = Vec::new();
        for token in
            headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
        {
            let token = token.trim();
            let usual = ["keep-alive", "close", "upgrade", "te"].iter().any(|u| token.eq_ignore_ascii_case(u));
            if !usual
                && let Ok(n) = HeaderName::from_bytes(token.as_bytes())
                && !END_TO_END.contains(&n.as_str())
            {
                named.push(n);
            }
        }
        // Headers the gateway adds itself are set after this, so naming them here is harmless;
        // those it reads or frames with are never hop-by-hop (`END_TO_END`).
        for n in named {
            headers.remove(&n);
        }
    }
    let table: [(u32, &HeaderName); 8] = [
        (Present::CONNECTION, &header::CONNECTION),
        (Present::KEEP_ALIVE, &KEEP_ALIVE),
        (Present::PROXY_CONNECTION, &PROXY_CONNECTION),
        (Present::TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
        (Present::TE, &header::TE),
        (Present::UPGRADE, &header::UPGRADE),
        (Present::PROXY_AUTHORIZATION, &header::PROXY_AUTHORIZATION),
        (Present::PROXY_AUTHENTICATE, &header::PROXY_AUTHENTICATE),
    ];
    for (bit, name) in table {
        if present.any(bit) {
            headers.remove(name);
        }
    }
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    wants_trailers
}

/// Fields `Connection` may not name: the gateway routes on, frames with or passes these on, so
/// a client must not be able to take them from the upstream's view (`Connection: host` would
/// leave an HTTP/1.1 request without a host).
const END_TO_END: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Names that servers which read `_` as `-` (CGI, PHP, WSGI, Rack and nginx with
/// `underscores_in_headers`) would take for a field the gateway frames with, routes on,
/// authenticates by or sets itself. A client's `Content_Length` or `X_Forwarded_For` beside the
/// gateway's own field would let the upstream read the request differently.
pub const GUARDED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "content-type",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "x-api-key",
];

/// Fields that make servers act on another path than the request line's (`X-Original-URL`:
/// IIS URL Rewrite, Symfony, Zend, Drupal) or another method (`X-HTTP-Method-Override`:
/// Express, Rack, Spring, Laravel): the route and its policies judged the request's own.
const OVERRIDES: &[&str] =
    &["x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override"];

/// Fields some servers take as a proxy's word on the client's address, port, prefix or
/// certificate: believed only from `server.trusted_proxies`.
const CLIENT_FACTS: &[&str] = &[
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-client-cert",
    "x-client-cert",
];

/// Removes [`OVERRIDES`] always, and [`CLIENT_FACTS`] unless the peer is a trusted proxy.
pub fn strip_overrides(headers: &mut HeaderMap, present: Present, trusted: bool) {
    if present.any(Present::OVERRIDE) {
        for name in OVERRIDES {
            headers.remove(*name);
        }
    }
    if present.any(Present::CLIENT_FACT) && !trusted {
        for name in CLIENT_FACTS {
            headers.remove(*name);
        }
    }
}

/// Removes fields whose names, with `_` read as `-`, are [`GUARDED`], [`OVERRIDES`],
/// [`CLIENT_FACTS`] or one of `extra` (the identity headers and API-key header the config
/// names).
pub fn strip_confusable(headers: &mut HeaderMap, extra: &[HeaderName]) {
    let dashed = |k: &HeaderName| k.as_str().replace('_', "-");
    let confusable: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .filter(|k| {
            let d = dashed(k);
            [GUARDED, OVERRIDES, CLIENT_FACTS].iter().any(|list| list.contains(&d.as_str()))
                || extra.iter().any(|n| n.as_str() == d)
        })
        .cloned()
        .collect();
    for k in confusable {
        headers.remove(&k);
    }
}

/// Removes hop-by-hop headers from an upstream's response.
pub fn strip_hop_by_hop_response(headers: &mut HeaderMap) {
    let present = Present::scan(headers);
    if present.any(Present::HOP_BY_HOP) {
        strip_hop_by_hop(headers, present);
        headers.remove(header::TE);
    }
}

/// Removes the caller's credentials (`Authorization`, `DPoP`): the upstream gets the
/// identity the gateway vouches for, not the credential itself.
pub fn strip_credentials(headers: &mut HeaderMap, present: Present) {
    if present.any(Present::AUTHORIZATION) {
        headers.remove(header::AUTHORIZATION);
    }
    if present.any(Present::DPOP) {
        headers.remove(&DPOP);
    }
}

/// Joins the `Cookie` fields that an HTTP/2 client may have split into the one field HTTP/1.1
/// allows, the pairs separated by "; " (RFC 9113 §8.2.3, RFC 6265 §5.4). One field is as valid
/// over HTTP/2, so this is right whichever version the upstream turns out to speak. (The lean
/// HTTP/1.1 client joins them as it writes the head, without this map work.)
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let Some(first) = values.next() else { return };
    let mut joined: Option<Vec<u8>> = None;
    for more in values {
        let j = joined.get_or_insert_with(|| first.as_bytes().to_vec());
        j.extend_from_slice(b"; ");
        j.extend_from_slice(more.as_bytes());
    }
    if let Some(Ok(v)) = joined.map(HeaderValue::from_maybe_shared) {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes the identity headers the gateway sets (on any route) from what a client sent,
/// including spellings with `_` for `-`, which CGI-style servers read as the same header.
pub fn strip_identity(headers: &mut HeaderMap, names: &[HeaderName]) {
    if names.is_empty() {
        return;
    }
    for n in names {
        headers.remove(n);
    }
    let same = |k: &HeaderName, n: &HeaderName| {
        k.as_str().len() == n.as_str().len()
            && k.as_str().bytes().zip(n.as_str().bytes()).all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    let spoofs: Vec<HeaderName> =
        headers.keys().filter(|k| k.as_str().contains('_') && names.iter().any(|n| same(k, n))).cloned().collect();
    for k in spoofs {
        headers.remove(&k);
    }
}

/// Facts about the client for the forwarded headers.
pub struct ClientFacts<'a> {
    /// The address the connection came from.
    pub peer: IpAddr,
    /// `peer` as a header value, made once per connection.
    pub peer_value: &'a HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The `Host` (or `:authority`) the client asked for.
    pub host: Option<&'a str>,
    /// The same host as a header value, when the client sent one (reused, not copied).
    pub host_value: Option<&'a HeaderValue>,
}

/// The scheme and authority the client addressed: the connection's own, or, from a trusted
/// proxy, its `X-Forwarded-Proto` and `X-Forwarded-Host` (a TLS-terminating load balancer in
/// front of the gateway). DPoP proofs name this URI (`htu`).
pub fn external_origin<'a>(
    headers: &'a HeaderMap,
    peer: IpAddr,
    trusted: &[IpNet],
    tls: bool,
    authority: &'a str,
) -> (bool, &'a str) {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return (tls, authority);
    }
    let single = |name: &HeaderName| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok().map(str::trim).filter(|v| !v.is_empty() && !v.contains(',')),
            _ => None,
        }
    };
    let https = match single(&X_FORWARDED_PROTO) {
        Some(p) => p.eq_ignore_ascii_case("https"),
        None => tls,
    };
    (https, single(&X_FORWARDED_HOST).unwrap_or(authority))
}

/// Whether `peer` is a proxy whose forwarded headers may be believed.
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&peer))
}

/// The client address: from a trusted proxy, the right-most untrusted address in
/// `X-Forwarded-For` (`ip`, or `ip:port` as some proxies write it); otherwise the peer
/// itself. A hop a trusted proxy wrote that is not an address makes the client unknown:
/// `0.0.0.0`, which no allow list of addresses admits and which rate limits count as one
/// caller. (Taking the last trusted hop instead would make an internal proxy the client.)
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
        let parsed = hop.parse::<IpAddr>().or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()));
        match parsed {
            Ok(addr) => {
                ip = addr.to_canonical();
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            Err(_) => return IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }
    ip
}

/// Works out the forwarded headers into `added`. From a trusted proxy, its chain is
/// extended; from anyone else, whatever the client wrote is replaced (removed from
/// `headers`), so the upstream cannot be lied to.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    present: Present,
    facts: &ClientFacts<'_>,
    trusted: &[IpNet],
    style: ForwardedHeaders,
    added: &mut Added,
) {
    let trust = !trusted.is_empty() && is_trusted(facts.peer, trusted);
    let proto = HeaderValue::from_static(if facts.tls { "https" } else { "http" });
    // Removes the client's copy unless it is believed; returns whether it is kept.
    fn keep_or_remove(headers: &mut HeaderMap, present: Present, bit: u32, name: &HeaderName, keep: bool) -> bool {
        if present.any(bit) {
            if keep {
                return true;
            }
            headers.remove(name);
        }
        false
    }
    match style {
        ForwardedHeaders::XForwarded => {
            if trust && present.any(Present::X_FORWARDED_FOR) {
                let mut xff = String::new();
                for v in headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
                    xff.push_str(v);
                    xff.push_str(", ");
                }
                let _ = write!(xff, "{}", facts.peer);
                headers.remove(&X_FORWARDED_FOR);
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    added.push(&X_FORWARDED_FOR, v);
                }
            } else {
                keep_or_remove(headers, present, Present::X_FORWARDED_FOR, &X_FORWARDED_FOR, false);
                added.push(&X_FORWARDED_FOR, facts.peer_value.clone());
            }
            if !keep_or_remove(headers, present, Present::X_FORWARDED_PROTO, &X_FORWARDED_PROTO, trust) {
                added.push(&X_FORWARDED_PROTO, proto);
            }
            if !keep_or_remove(headers, present, Present::X_FORWARDED_HOST, &X_FORWARDED_HOST, trust) {
                let value = match facts.host_value {
                    Some(v) => Some(v.clone()),
                    None => facts.host.and_then(|h| HeaderValue::from_str(h).ok()),
                };
                if let Some(v) = value {
                    added.push(&X_FORWARDED_HOST, v);
                }
            }
            keep_or_remove(headers, present, Present::FORWARDED, &FORWARDED, false);
        }
        ForwardedHeaders::Forwarded => {
            let mut fwd = String::new();
            if trust {
                for v in headers.get_all(&FORWARDED).iter().filter_map(|v| v.to_str().ok()) {
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
            let _ = write!(fwd, ";proto={}", if facts.tls { "https" } else { "http" });
            if let Some(h) = facts.host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
                let _ = write!(fwd, ";host=\"{h}\"");
            }
            keep_or_remove(headers, present, Present::FORWARDED, &FORWARDED, false);
            if let Ok(v) = HeaderValue::from_str(&fwd) {
                added.push(&FORWARDED, v);
            }
            for (bit, h) in [
                (Present::X_FORWARDED_FOR, &X_FORWARDED_FOR),
                (Present::X_FORWARDED_PROTO, &X_FORWARDED_PROTO),
                (Present::X_FORWARDED_HOST, &X_FORWARDED_HOST),
            ] {
                keep_or_remove(headers, present, bit, h, false);
            }
        }
    }
}

/// A header value for an IP address (once per connection).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The request id: the client's `X-Request-Id` when it is a sane token (at most 128
/// characters of `[A-Za-z0-9._:-]`), else a new random one.
///
/// The value is marked sensitive, which over HTTP/2 keeps it out of the HPACK tables: it
/// differs on every request, so indexing it would only push out the fields that repeat.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut id = match headers.get(&X_REQUEST_ID) {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.as_bytes().iter().all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c)) =>
        {
            v.clone()
        }
        _ => new_request_id(),
    };
    id.set_sensitive(true);
    id
}

/// A random request id in UUID form.
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        // Ids are cut from one shared buffer per thread instead of one allocation each.
        static SLAB: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
    }
    let mut r = fastrand::u128(..);
    // Version 4, variant 1.
    r = (r & !(0xf << 76)) | (0x4 << 76);
    r = (r & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [b'-'; 36];
    let bytes = r.to_be_bytes();
    let mut j = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            j += 1;
        }
        out[j..j + 2].copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
        j += 2;
    }
    let id = SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() - slab.len() < out.len() {
            *slab = bytes::BytesMut::with_capacity(64 * 1024);
        }
        slab.extend_from_slice(&out);
        slab.split().freeze()
    });
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two hex digits: one look-up per byte instead of two.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX_DIGITS[i >> 4], HEX_DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// Approximate size of a request head in HTTP/1.1 form (request line and header lines).
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    headers.iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
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
        let present = Present::scan(&h);
        assert!(strip_hop_by_hop(&mut h, present));
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep", "te"]);
        assert_eq!(h["te"], "trailers");
    }

    fn forward(h: &mut HeaderMap, peer: &str, tls: bool, host: &str, trusted: &[IpNet], style: ForwardedHeaders) {
        let peer: IpAddr = peer.parse().unwrap();
        let pv = ip_value(peer);
        let facts = ClientFacts { peer, peer_value: &pv, tls, host: Some(host), host_value: None };
        let mut added = Added::default();
        set_forwarded(h, Present::scan(h), &facts, trusted, style, &mut added);
        added.insert_into(h);
    }

    #[test]
    fn forwarded_for_cannot_be_spoofed_by_untrusted_clients() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = hm(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-proto", "http"), ("x-forwarded-host", "evil")]);
        forward(&mut h, "203.0.113.9", true, "api.example", &trusted, ForwardedHeaders::XForwarded);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(&hm(&[("x-forwarded-for", "1.2.3.4")]), peer, &trusted), peer);
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let mut h = hm(&[("x-forwarded-for", "198.51.100.7, 10.2.2.2")]);
        assert_eq!(client_ip(&h, peer, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        forward(&mut h, "10.1.1.1", false, "h", &trusted, ForwardedHeaders::XForwarded);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.2.2.2, 10.1.1.1");
        // A garbage hop behind trusted ones makes the client unknown, never a trusted proxy.
        let h = hm(&[("x-forwarded-for", "198.51.100.7, junk, 10.2.2.2")]);
        assert_eq!(client_ip(&h, peer, &trusted), "0.0.0.0".parse::<IpAddr>().unwrap());
        // Beyond the first untrusted hop, nothing is read.
        let h = hm(&[("x-forwarded-for", "junk, 198.51.100.7, 10.2.2.2")]);
        assert_eq!(client_ip(&h, peer, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        // `ip:port` and `[v6]:port`, as some proxies write them; IPv4-mapped as IPv4.
        let h = hm(&[("x-forwarded-for", "198.51.100.7:5123, 10.2.2.2")]);
        assert_eq!(client_ip(&h, peer, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        let h = hm(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(client_ip(&h, peer, &trusted), "2001:db8::1".parse::<IpAddr>().unwrap());
        let h = hm(&[("x-forwarded-for", "::ffff:198.51.100.7")]);
        assert_eq!(client_ip(&h, peer, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rfc7239_forwarded() {
        let mut h = hm(&[("forwarded", "for=evil"), ("x-forwarded-for", "evil")]);
        forward(&mut h, "2001:db8::1", false, "h.example", &[], ForwardedHeaders::Forwarded);
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=http;host=\"h.example\"");
        assert!(!h.contains_key("x-forwarded-for"));
    }

    #[test]
    fn overrides_always_go_and_client_facts_unless_from_a_trusted_proxy() {
        let sent = [
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-real-ip", "10.0.0.1"),
            ("true-client-ip", "10.0.0.1"),
            ("x-forwarded-client-cert", "Hash=1"),
            ("x-kept", "1"),
        ];
        for (trusted, kept) in
            [(false, vec!["x-kept"]), (true, vec!["x-real-ip", "true-client-ip", "x-forwarded-client-cert", "x-kept"])]
        {
            let mut h = hm(&sent);
            let present = Present::scan(&h);
            strip_overrides(&mut h, present, trusted);
            let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            let mut kept = kept;
            names.sort_unstable();
            kept.sort_unstable();
            assert_eq!(names, kept, "trusted: {trusted}");
        }
    }

    #[test]
    fn underscore_spellings_of_guarded_fields_go() {
        let mut h = hm(&[
            ("content_length", "500"),
            ("transfer_encoding", "chunked"),
            ("x_forwarded_for", "10.0.0.1"),
            ("x-forwarded_host", "evil"),
            ("x_original_url", "/admin"),
            ("x_user_email", "a@b"),
            ("x_custom_thing", "kept"),
        ]);
        assert!(Present::scan(&h).any(Present::UNDERSCORED));
        strip_confusable(&mut h, &[HeaderName::from_static("x-user-email")]);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x_custom_thing"]);
    }

    #[test]
    fn connection_cannot_name_end_to_end_fields() {
        let mut h = hm(&[
            ("connection", "host, content-length, x-forwarded-for, x-request-id, x-hop"),
            ("host", "a.example"),
            ("content-length", "5"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "r1"),
            ("x-hop", "1"),
        ]);
        let present = Present::scan(&h);
        strip_hop_by_hop(&mut h, present);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host", "x-forwarded-for", "x-request-id"]);
    }

    #[test]
    fn credentials_are_stripped() {
        let mut h = hm(&[("authorization", "Bearer x"), ("dpop", "proof"), ("x-keep", "1")]);
        let present = Present::scan(&h);
        strip_credentials(&mut h, present);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn request_ids() {
        let ok = hm(&[("x-request-id", "abc-123_x.y:z")]);
        assert_eq!(request_id(&ok), "abc-123_x.y:z");
        // Kept out of HTTP/2's header compression tables, the client's and a new one alike.
        assert!(request_id(&ok).is_sensitive());
        for bad in ["<script>", "a b", &"x".repeat(129)] {
            let id = request_id(&hm(&[("x-request-id", bad)]));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 36);
            assert!(id.is_sensitive());
        }
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(&s[14..15], "4");
        assert!(s.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        assert_ne!(new_request_id(), new_request_id());
    }
}
