//! Propagate: the upstream gets the request as the gateway vouches for it. The caller's
//! credential is gone (unless the route passes it through), no field the client wrote can
//! pass for one the gateway sets, the caller's identity is set as the route says, and the
//! forwarded fields tell who the client is.

use http::Version;
use http::header::{self, HeaderValue};
use portcullis_core::Problem;
use portcullis_http::client::Added;

use super::admit::Authority;
use super::context::{Connection, RequestCtx};
use crate::headers::{self, X_REQUEST_ID};
use crate::runtime::{Route, Runtime};

/// Shapes the request's fields for the upstream; the fields to add when sending go to
/// `added` (kept in the pipeline's frame rather than moved from stage to stage). Returns the
/// protocols of an upgrade request the route allows, if this is one.
pub fn propagate(
    rt: &Runtime,
    conn: &Connection,
    ctx: &RequestCtx,
    route: &Route,
    authority: &Authority<'_>,
    parts: &mut http::request::Parts,
    added: &mut Added,
) -> Result<Option<HeaderValue>, Problem> {
    let present = headers::Present::scan(&parts.headers);
    if !route.passthrough() {
        headers::strip_credentials(&mut parts.headers, present);
    }
    // Identity headers any route sets are the gateway's to give, on every route.
    headers::strip_identity(&mut parts.headers, &rt.identity_headers);
    if present.any(headers::Present::UNDERSCORED) {
        headers::strip_confusable(&mut parts.headers, &rt.guarded_headers);
    }
    if present.any(headers::Present::OVERRIDE | headers::Present::CLIENT_FACT) {
        let trusted = headers::is_trusted(conn.peer_ip(), &rt.trusted_proxies);
        headers::strip_overrides(&mut parts.headers, present, trusted);
    }

    // An HTTP/1.1 protocol upgrade (WebSocket) is relayed as a byte stream after the 101.
    let upgrade = if present.any(headers::Present::UPGRADE) { upgrade_request(parts, &route.upgrades) } else { None };
    // The identity is set after the client's hop-by-hop fields are gone: a `Connection`
    // option cannot remove it.
    headers::strip_hop_by_hop(&mut parts.headers, present);
    if let (Some(p), Some(principal)) = (&route.propagate, &ctx.principal) {
        p.apply(principal, &mut parts.headers)?;
    }
    if let Some(proto) = &upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    let facts = headers::ClientFacts {
        peer: conn.peer_ip(),
        peer_value: &conn.peer_value,
        tls: conn.tls(),
        host: authority.text,
        host_value: authority.header_value,
    };
    headers::set_forwarded(&mut parts.headers, present, &facts, &rt.trusted_proxies, rt.forwarded, added);
    if present.any(headers::Present::X_REQUEST_ID) {
        parts.headers.remove(&X_REQUEST_ID);
    }
    added.push(&X_REQUEST_ID, ctx.request_id.clone());
    Ok(upgrade)
}

/// What an HTTP/1.1 upgrade request may pass on: the protocols it offers that the route
/// allows, in the client's order; `None` when there are none (or this is no upgrade request),
/// and the request is then served as plain HTTP (RFC 9110 §7.8 lets a server ignore
/// `Upgrade`).
fn upgrade_request(parts: &http::request::Parts, allowed: &[Box<str>]) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let wants = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    let offer = parts.headers.get(header::UPGRADE).filter(|_| wants)?;
    // Never to HTTP/2 (`h2c`, deprecated by RFC 9113 §3.1): a switched connection carries
    // requests the gateway would never see, past every stage of this pipeline. The config
    // refuses it in `upgrades`; it is left out here whatever the list says.
    let allows = |p: &str| {
        let name = p.split_once('/').map_or(p, |(name, _)| name);
        !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
    };
    let kept: Vec<&str> = protocols(offer).filter(|p| allows(p)).collect();
    match kept.len() {
        0 => None,
        n if n == protocols(offer).count() => Some(offer.clone()),
        _ => HeaderValue::from_str(&kept.join(", ")).ok(),
    }
}

/// The protocols an `Upgrade` field lists (`name` or `name/version`), in order; empty when the
/// field is not visible ASCII.
pub(super) fn protocols(field: &HeaderValue) -> impl Iterator<Item = &str> {
    field.to_str().unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn only_allowed_upgrades_are_passed_on() {
        let allowed: Vec<Box<str>> = vec!["websocket".into(), "foo".into()];
        let offer = |connection: &str, upgrade: &str| {
            let req = Request::get("/").header("connection", connection).header("upgrade", upgrade).body(()).unwrap();
            upgrade_request(&req.into_parts().0, &allowed).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(offer("Upgrade", "WebSocket").as_deref(), Some("WebSocket"));
        assert_eq!(offer("keep-alive, upgrade", "foo/2, websocket").as_deref(), Some("foo/2, websocket"));
        assert_eq!(offer("upgrade", "bar, websocket, h2c").as_deref(), Some("websocket"));
        assert_eq!(offer("upgrade", "bar, ,baz"), None);
        assert_eq!(offer("upgrade", "h2c"), None);
        assert_eq!(offer("keep-alive", "websocket"), None, "Connection must name `upgrade`");
        // `h2c` is left out even if a list were to allow it.
        let h2c: Vec<Box<str>> = vec!["h2c".into()];
        let req = Request::get("/").header("connection", "upgrade").header("upgrade", "h2c").body(()).unwrap();
        assert_eq!(upgrade_request(&req.into_parts().0, &h2c), None);
    }
}
