//! Route: which of the gateway's own endpoints, or which configured route, takes the request.

use std::sync::Arc;

use http::StatusCode;
use http::header::{self, HeaderValue};
use portcullis_core::Problem;
use portcullis_identity::Endpoint;

use super::admit::Authority;
use crate::router::path::normalize;
use crate::router::{RouteError, Routed};
use crate::runtime::{Route, Runtime};

/// Where a request goes.
pub enum Destination<'r, 'p> {
    /// One of the gateway's own endpoints: its keys and its token service.
    Gateway(Endpoint),
    /// The Back-Channel Logout endpoint.
    Logout,
    /// The Shared Signals receiver.
    Signals,
    /// A configured route.
    Route(Routed<'r, 'p, Arc<Route>>),
}

/// Finds the request's destination, or the problem that no route takes it.
pub fn route<'r, 'p>(
    rt: &'r Runtime,
    authority: &Authority<'_>,
    path: &'p str,
    method: &http::Method,
) -> Result<Destination<'r, 'p>, Problem> {
    // The gateway's own endpoints, when it has any on this listener: one normalized path.
    let c = &rt.config.config;
    let token_service = rt.token_service.as_ref().filter(|ts| ts.serves(portcullis_config::Listener::Public));
    if (token_service.is_some() || c.backchannel_logout.is_some() || c.shared_signals.is_some())
        && let Ok(normalized) = normalize(path, false)
    {
        if token_service.is_some()
            && let Some(endpoint) = Endpoint::at(&normalized)
        {
            return Ok(Destination::Gateway(endpoint));
        }
        if c.backchannel_logout.as_ref().is_some_and(|l| *l.path == *normalized) {
            return Ok(Destination::Logout);
        }
        if c.shared_signals.as_ref().is_some_and(|s| *s.path == *normalized) {
            return Ok(Destination::Signals);
        }
    }
    rt.router.route(&authority.host, path, method).map(Destination::Route).map_err(refused)
}

/// The problem for a request no route takes.
#[cold]
#[inline(never)]
fn refused(e: RouteError) -> Problem {
    match e {
        RouteError::NotFound => Problem::no_route(),
        RouteError::MethodNotAllowed(allow) => Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the route for this path does not take this method",
        )
        .header(header::ALLOW, HeaderValue::from_str(&allow).unwrap_or_else(|_| HeaderValue::from_static(""))),
        RouteError::BadPath(e) => Problem::bad_request("invalid_path", e.detail()),
        RouteError::CaseFold => Problem::bad_request(
            "invalid_path",
            "the path holds a character that case-insensitive servers read as an ASCII letter",
        ),
        RouteError::PathParameters => Problem::bad_request(
            "path_parameters",
            "path segment parameters (`;`) are not accepted here: servers read them differently",
        ),
    }
}
