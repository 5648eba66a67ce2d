//! Authenticate: who sent the request, by the route's methods. A route without any is
//! public and its caller anonymous.

use std::sync::Arc;

use portcullis_core::{Principal, Problem};

use super::admit::Authority;
use super::context::Connection;
use crate::headers;
use crate::runtime::{Authentication, Route, Runtime};

/// The caller, or why it could not be told. Unless the route passes the caller's
/// credential through, the credential is removed from the request here.
pub async fn authenticate(
    rt: &Runtime,
    conn: &Connection,
    authority: &Authority<'_>,
    route: &Route,
    parts: &mut http::request::Parts,
) -> Result<Arc<Principal>, Problem> {
    let a = match &route.authn {
        Authentication::Public => return Ok(rt.anonymous.clone()),
        Authentication::Required(a) => a,
    };
    let (https, origin) = headers::external_origin(
        &parts.headers,
        conn.peer_ip(),
        &rt.trusted_proxies,
        conn.tls(),
        authority.text.unwrap_or(&authority.host),
    );
    let cx = portcullis_authn::Context { https, authority: origin, client_cert: conn.client_cert.as_ref() };
    // Boxed: the authenticators' state would otherwise enlarge every request's future.
    let principal = portcullis_http::boxed!(a.authenticate(parts, &cx)).await?;
    if !route.passthrough() {
        a.scrub(parts);
    }
    Ok(principal)
}
