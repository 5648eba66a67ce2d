//! Forward: the request goes to the route's target (an upstream, or the built-in echo),
//! and the response comes back; a `101` turns the exchange into a tunnel.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use portcullis_core::{Principal, Problem};
use portcullis_http::body::{ClientBodyErrorKind, RequestBody, ResponseBody};
use portcullis_http::client::{Added, Waits};
use portcullis_http::server::OnUpgrade;
use portcullis_state::State;
use portcullis_telemetry::UpstreamErrorKind;

use super::context::RequestCtx;
use super::propagate::protocols;
use super::protect::body_too_large;
use crate::headers;
use crate::runtime::{Route, Runtime, Target};
use crate::upstream::Failure;

/// The path and query to request upstream: the normalised path (the one routes and
/// policies saw), rewritten if the route says so, and the query unchanged.
pub fn forward_path(uri: &http::Uri, path: Cow<'_, str>, rewrite: Option<&(String, String)>) -> PathAndQuery {
    if let (Cow::Borrowed(_), None) = (&path, rewrite) {
        // Unchanged: reuse the request's own bytes.
        // An absolute-form target with an empty path (`http://h?q`) has none of its own.
        if let Some(pq) = uri.path_and_query()
            && pq.as_str().starts_with('/')
        {
            return pq.clone();
        }
    }
    let path: Cow<'_, str> = match rewrite {
        Some((prefix, replacement)) => {
            // Without case: the route matched it, with case or (`ignore_case`) without.
            let rest = match path.get(..prefix.len()) {
                Some(head) if head.eq_ignore_ascii_case(prefix) => &path[prefix.len()..],
                _ => &path,
            };
            let joined = match (replacement.ends_with('/'), rest.starts_with('/')) {
                (true, true) => format!("{replacement}{}", &rest[1..]),
                (false, false) if !rest.is_empty() => format!("{replacement}/{rest}"),
                _ => format!("{replacement}{rest}"),
            };
            Cow::Owned(if joined.is_empty() { "/".into() } else { joined })
        }
        None => path,
    };
    let s = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    PathAndQuery::try_from(s).unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// Sends the request to the route's target and relays the response.
// The request, and what the stages before made of it, each borrowed or moved once.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    route: &Route,
    mut parts: http::request::Parts,
    added: &Added,
    upgrade: Option<HeaderValue>,
    body: RequestBody,
    path: PathAndQuery,
) -> Result<Response<ResponseBody>, Problem> {
    let client_upgrade = upgrade.as_ref().and_then(|_| parts.extensions.remove::<OnUpgrade>());

    let upstream = match &route.target {
        Target::Echo => {
            added.insert_into(&mut parts.headers);
            parts.uri = http::Uri::from(path);
            return portcullis_http::boxed!(crate::echo::respond(Request::from_parts(parts, body))).await;
        }
        Target::Upstream(u) => u,
    };

    let started = Instant::now();
    // Boxed once for the whole exchange, so that no enclosing future (nor any idle
    // connection) holds its ~2 KiB state (`bench/RESULTS.md`, "Allocations and copies a
    // request").
    let waits = Waits { upstream: route.timeout, client_idle: rt.server.h1.header_read_timeout };
    let result = portcullis_http::boxed!(upstream.send(&mut parts, body, added, path, waits, upgrade.is_some())).await;
    let took = started.elapsed();
    ctx.upstream_elapsed = Some(took);
    route.metrics.upstream(took);

    let mut resp = match result {
        Ok(resp) => resp,
        Err(failure) => return Err(failed(route, failure)),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let watch = ctx.principal.clone().zip(rt.state().cloned());
        return switch_protocols(resp, upgrade, client_upgrade, route, watch);
    }

    // The lean client never passes hop-by-hop response fields on; hyper's client does.
    if !matches!(resp.body(), ResponseBody::Lean(_)) {
        headers::strip_hop_by_hop_response(resp.headers_mut());
    } else if resp.headers().capacity() == 0 {
        // The lean client's fields stay in its raw head and its map starts empty: the
        // request's map, emptied, takes the gateway's own fields (the request id) without
        // two allocations on every request.
        parts.headers.clear();
        *resp.headers_mut() = std::mem::take(&mut parts.headers);
    }
    Ok(resp)
}

/// A `101` from the upstream: the tunnel, if the switch is one the client asked for.
/// Out of line: once a connection at most, and not part of an ordinary request's code.
#[inline(never)]
fn switch_protocols(
    mut resp: Response<ResponseBody>,
    upgrade: Option<HeaderValue>,
    client_upgrade: Option<OnUpgrade>,
    route: &Route,
    watch: Option<(Arc<Principal>, State)>,
) -> Result<Response<ResponseBody>, Problem> {
    // The upstream must name what it switched to (RFC 9110 §7.8), and only to one of the
    // protocols the gateway passed on.
    let chosen = resp.headers().get(header::UPGRADE).cloned();
    if let (Some(offered), Some(chosen), Some(client)) = (upgrade, chosen, client_upgrade)
        && protocols(&chosen).next().is_some()
        && protocols(&chosen).all(|p| protocols(&offered).any(|o| o.eq_ignore_ascii_case(p)))
    {
        let upstream_io = hyper::upgrade::on(&mut resp);
        tokio::spawn(relay_upgraded(client, upstream_io, route.tunnel_idle, watch));
        let (mut p, _) = resp.into_parts();
        headers::strip_hop_by_hop_response(&mut p.headers);
        p.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        p.headers.insert(header::UPGRADE, chosen);
        return Ok(Response::from_parts(p, ResponseBody::empty()));
    }
    Err(Problem::bad_gateway("the upstream switched to a protocol that was not asked for"))
}

/// The problem an upstream exchange's failure is reported as.
#[cold]
#[inline(never)]
fn failed(route: &Route, failure: Failure) -> Problem {
    match failure {
        Failure::Connect => {
            route.metrics.upstream_error(UpstreamErrorKind::connect);
            Problem::bad_gateway("the upstream service could not be reached")
        }
        Failure::Timeout => {
            route.metrics.upstream_error(UpstreamErrorKind::timeout);
            Problem::gateway_timeout()
        }
        Failure::BodyTooLarge => body_too_large(),
        // The client's own body failed: not the upstream's error (RFC 9112 §7.1: a
        // malformed body is 400; a client that went away gets no answer at all).
        Failure::ClientBody(ClientBodyErrorKind::Malformed) => {
            Problem::bad_request("malformed_body", "the request body's framing is not valid")
        }
        Failure::ClientBody(ClientBodyErrorKind::Aborted) => {
            Problem::bad_request("incomplete_body", "the request body ended before it was complete")
        }
        Failure::ClientBody(ClientBodyErrorKind::Stalled) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body stopped arriving before it was complete",
        ),
        Failure::Protocol(e) => {
            route.metrics.upstream_error(UpstreamErrorKind::protocol);
            tracing::debug!(route = %route.id, error = %e, "upstream exchange failed");
            Problem::bad_gateway("the upstream service failed to answer")
        }
    }
}

async fn relay_upgraded(
    client: OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    watch: Option<(Arc<Principal>, State)>,
) {
    let (Some(client), Ok(upstream)) = (client.upgraded().await, upstream.await) else {
        return;
    };
    portcullis_http::tunnel::relay(client, hyper_util::rt::TokioIo::new(upstream), idle, revoked(watch)).await;
}

/// Completes when the caller of a tunnel is revoked (or revocations can no longer be read:
/// fail closed), looked at every 250 ms, so that a revocation closes open tunnels within a
/// second; never for a public route's anonymous caller.
async fn revoked(watch: Option<(Arc<Principal>, State)>) {
    let Some((principal, state)) = watch.filter(|(p, _)| p.method != portcullis_core::AuthnMethod::None) else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        match portcullis_authn::revoked_by(&state, &principal, None) {
            Ok(None) => {}
            Ok(Some(kind)) => {
                tracing::info!(by = kind.as_str(), "closing an upgraded connection: its credential was revoked");
                return;
            }
            Err(_) => {
                tracing::info!("closing an upgraded connection: revocations cannot be checked");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_paths() {
        let uri: http::Uri = "/api/orders/7?x=1".parse().unwrap();
        let rw = ("/api/orders".to_string(), "/orders".to_string());
        assert_eq!(forward_path(&uri, Cow::Borrowed("/api/orders/7"), Some(&rw)), "/orders/7?x=1");
        assert_eq!(forward_path(&uri, Cow::Borrowed("/api/orders"), Some(&rw)), "/orders?x=1");
        let root = ("/api".to_string(), "/".to_string());
        assert_eq!(forward_path(&uri, Cow::Borrowed("/api/orders/7"), Some(&root)), "/orders/7?x=1");
        assert_eq!(forward_path(&uri, Cow::Borrowed("/api"), Some(&root)), "/?x=1");
        // A route that ignores case cuts its prefix whatever the request's case.
        let ci = ("/api".to_string(), "/".to_string());
        assert_eq!(forward_path(&uri, Cow::Borrowed("/API/Orders/7"), Some(&ci)), "/Orders/7?x=1");
        let dotted: http::Uri = "/a/../b?q".parse().unwrap();
        assert_eq!(forward_path(&dotted, Cow::Owned("/b".into()), None), "/b?q");
    }
}
