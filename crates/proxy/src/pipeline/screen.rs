//! Screen: what a request is refused for before anyone asks who sent it: a client address
//! the route does not admit.

use http::StatusCode;
use portcullis_core::Problem;

use super::context::RequestCtx;
use crate::runtime::Route;

/// `403` for a client address the route's `client_ips` do not admit.
pub fn screen(ctx: &RequestCtx, route: &Route) -> Result<(), Problem> {
    match &route.client_ips {
        Some(rules) if !rules.admits(ctx.client_ip) => Err(refused()),
        _ => Ok(()),
    }
}

#[cold]
fn refused() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "address_denied", "requests from this address are not allowed on this route")
}
