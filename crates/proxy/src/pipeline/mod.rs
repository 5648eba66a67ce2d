//! The request pipeline: every request passes the same short list of stages, in order.
//!
//! ```text
//! admit → route → screen → authenticate → authorize → limit → protect → propagate → forward → log
//! ```
//!
//! Each stage is a file here with one job. A stage returns what it found (a typed value the
//! later stages take), or stops the request with a [`Problem`], which [`handle`] turns into
//! the response. Nothing reaches the upstream unless every stage before `forward` passed.
//! Adding a stage is adding a file and a line to [`run`].

pub mod admit;
pub mod authenticate;
pub mod authorize;
pub mod context;
pub mod forward;
pub mod limit;
pub mod log;
pub mod propagate;
pub mod protect;
pub mod route;
pub mod screen;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use portcullis_core::Problem;
use portcullis_http::body::{ClientBody, ResponseBody};
use portcullis_http::client::Added;
use portcullis_http::{Attached, ConnInfo, Handler, ResponseFuture, ServerSettings};

pub use context::{Connection, Decision, Explained, RequestCtx};

use crate::headers::{self, X_REQUEST_ID};
use crate::runtime::Runtime;

/// The pipeline as the transport's [`Handler`]: each request runs on the runtime current
/// when it arrives, so a reload applies to open keep-alive connections too.
pub struct Pipeline {
    runtime: Arc<ArcSwap<Runtime>>,
}

impl Pipeline {
    /// Serves requests with whatever runtime `runtime` holds at the time.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Self {
        Pipeline { runtime }
    }
}

impl Handler for Pipeline {
    fn settings(&self) -> Arc<ServerSettings> {
        self.runtime.load().server.clone()
    }

    fn connect(&self, info: ConnInfo) -> Attached {
        Arc::new(Connection::new(info))
    }

    fn handle(&self, conn: &Attached, req: Request<ClientBody>) -> ResponseFuture {
        let rt = self.runtime.load_full();
        match conn.clone().downcast::<Connection>() {
            // Built in its box: the request's future (kilobytes) is neither copied on its
            // way to the connection's task nor held by an idle keep-alive connection.
            Ok(conn) => {
                let fut: std::pin::Pin<Box<_>> = portcullis_http::boxed!(handle(rt, conn, req));
                fut
            }
            Err(_) => Box::pin(std::future::ready(unattached())),
        }
    }

    fn refused(&self, status: StatusCode) {
        self.runtime.load().no_route.request(status.as_u16(), std::time::Duration::ZERO);
    }
}

/// A connection this handler did not record (it never happens: every connection is
/// attached by `connect`): refused rather than served without its facts.
#[cold]
fn unattached() -> Response<ResponseBody> {
    tracing::error!("a request arrived on a connection the pipeline did not record");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the request could not be served")
        .to_response(None)
        .map(ResponseBody::full)
}

/// Runs a request through the pipeline and returns the response to send.
pub async fn handle(rt: Arc<Runtime>, conn: Arc<Connection>, req: Request<ClientBody>) -> Response<ResponseBody> {
    let start = Instant::now();
    let mut ctx = RequestCtx {
        request_id: headers::request_id(req.headers()),
        client_ip: headers::client_ip(req.headers(), conn.peer_ip(), &rt.trusted_proxies),
        route: None,
        params: Vec::new(),
        principal: None,
        decision: None,
        upstream_elapsed: None,
        reason: None,
        explained: None,
        request_bytes: 0,
        request_tally: None,
    };
    let log_fields = rt.access_log.as_ref().map(|_| log::log_fields(&req));

    // A refused HTTP/1 request may leave its body unread: the connection cannot carry another
    // request, and the client must be told so rather than find out by a reset.
    let unread_body = req.version() <= Version::HTTP_11 && !http_body::Body::is_end_stream(req.body());
    let mut resp = match run(&rt, &conn, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(problem) => refused(&mut ctx, problem, unread_body),
    };
    resp.headers_mut().insert(&X_REQUEST_ID, ctx.request_id.clone());
    log::log(&rt, &mut ctx, log_fields, resp.status().as_u16(), start.elapsed());
    if let Some(meter) = &rt.meter {
        log::meter(meter, &rt, &ctx, &mut resp);
    }
    resp
}

/// The stages, in order.
async fn run(
    rt: &Runtime,
    conn: &Connection,
    ctx: &mut RequestCtx,
    req: Request<ClientBody>,
) -> Result<Response<ResponseBody>, Problem> {
    let (mut parts, body) = req.into_parts();
    // A cheap clone (shared bytes): the path borrows from it while later stages may rewrite
    // `parts.uri` (removing a credential from the query).
    let uri = parts.uri.clone();

    let mut slot = admit::AuthoritySlot::default();
    let authority = admit::admit(rt, &mut parts, &mut slot)?;
    let routed = match route::route(rt, &authority, uri.path(), &parts.method)? {
        route::Destination::Route(routed) => routed,
        route::Destination::Gateway(endpoint) => {
            // Boxed: a rare path whose state would otherwise enlarge every request's future.
            return portcullis_http::boxed!(own_endpoint(rt, conn, ctx, &authority.host, endpoint, parts, body)).await;
        }
        route::Destination::Logout => return portcullis_http::boxed!(crate::receivers::logout(rt, &parts, body)).await,
        route::Destination::Signals => {
            return portcullis_http::boxed!(crate::receivers::signals(rt, &parts, body)).await;
        }
    };
    let route = routed.route.clone();
    ctx.route = Some(route.clone());
    ctx.params = routed.params;
    screen::screen(ctx, &route)?;
    if let Some(bf) = &rt.brute_force {
        bf.check(ctx.client_ip)?;
    }
    let principal = match authenticate::authenticate(rt, conn, &authority, &route, &mut parts).await {
        Ok(p) => p,
        Err(problem) if rt.brute_force.is_none() => return Err(problem),
        // Boxed: the counting's state would otherwise enlarge every request's future.
        Err(problem) => return Err(portcullis_http::boxed!(failed_authentication(rt, ctx, problem)).await),
    };
    ctx.principal = Some(principal.clone());
    authorize::authorize(rt, conn, ctx, &route, &principal, &parts.method, &authority.host, &routed.path)?;
    let limited = limit::limit(rt, ctx, &route, &principal, &parts.headers).await?;
    let mut body =
        protect::protect(&parts, body, route.max_body, route.body_rules.as_ref(), &rt.identity_headers).await?;
    if rt.meter.is_some() {
        body = log::count_request(ctx, body);
    }
    let mut added = Added::default();
    let upgrade = propagate::propagate(rt, conn, ctx, &route, &authority, &mut parts, &mut added)?;
    let path =
        forward::forward_path(&parts.uri, routed.forward.map_or(routed.path, Into::into), route.rewrite.as_ref());
    let mut resp = forward::forward(rt, ctx, &route, parts, &added, upgrade, body, path).await?;
    if let Some(limited) = limited {
        if let Some(report) = limited.report {
            report.apply(resp.headers_mut());
        }
        // The slots are given back once the response head is in.
        drop(limited.slots);
    }
    Ok(resp)
}

/// A refused credential: counted against its address when brute-force blocking is on. Not
/// counted: a missing credential, a DPoP nonce to use, and credentials that were good once
/// (expired, not yet valid, revoked): clients behind one address that hold such tokens are
/// not guessing.
#[cold]
async fn failed_authentication(rt: &Runtime, ctx: &RequestCtx, problem: Problem) -> Problem {
    const NOT_GUESSES: [&str; 5] =
        ["credential_missing", "dpop_nonce_required", "token_expired", "token_not_yet_valid", "credential_revoked"];
    match (&rt.brute_force, rt.state()) {
        (Some(bf), Some(state))
            if problem.status == StatusCode::UNAUTHORIZED && !NOT_GUESSES.contains(&problem.code) =>
        {
            bf.failed(state, ctx.client_ip, problem).await
        }
        _ => problem,
    }
}

/// The gateway's own endpoints on the public listener: its keys and its token service.
async fn own_endpoint(
    rt: &Runtime,
    conn: &Connection,
    ctx: &RequestCtx,
    host: &str,
    endpoint: portcullis_identity::Endpoint,
    parts: http::request::Parts,
    body: ClientBody,
) -> Result<Response<ResponseBody>, Problem> {
    let Some(ts) = &rt.token_service else { return Err(Problem::no_route()) };
    let caller = portcullis_identity::Caller {
        client_cert: conn.client_cert.as_ref(),
        client_ip: ctx.client_ip,
        tls: conn.tls(),
        host,
    };
    crate::token_endpoint::serve(ts, endpoint, parts, body, caller).await
}

/// The response for a request a stage stopped.
#[cold]
#[inline(never)]
fn refused(ctx: &mut RequestCtx, problem: Problem, unread_body: bool) -> Response<ResponseBody> {
    ctx.reason = Some(problem.code);
    if problem.status.is_server_error() {
        tracing::debug!(request_id = ctx.request_id.to_str().unwrap_or_default(), %problem, "request failed");
    }
    let mut resp = problem.to_response(ctx.request_id.to_str().ok()).map(ResponseBody::full);
    if unread_body {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
