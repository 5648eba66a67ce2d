//! The request pipeline: every request passes the same short list of stages, in order.
//!
//! ```text
//! admit → match → authenticate → authorize → protect → propagate → forward → log
//! ```
//!
//! Each stage is a function below with one job. A stage either fills the [`RequestCtx`]
//! and passes the request on, or stops it with a [`Problem`], which [`handle`] turns into the
//! response. Nothing reaches the upstream unless every stage before `forward` passed.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Limited;
use portcullis_core::{Challenge, ChallengeScheme, Principal, Problem};
use portcullis_telemetry::{AccessRecord, UpstreamErrorKind};

use crate::body::{ClientBody, RequestBody, ResponseBody};
use crate::headers::{self, X_REQUEST_ID};
use crate::router::path::normalize;
use crate::router::{PathParams, RouteError, read_host, strip_port};
use crate::runtime::{Authentication, Route, Runtime, Target};
use crate::upstream::Failure;

/// What the gateway knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// The peer's IP address as a header value (for `X-Forwarded-For`), made once.
    pub peer_value: HeaderValue,
    /// TLS facts, for HTTPS connections.
    pub tls: Option<TlsInfo>,
}

/// Facts about a TLS connection.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The SNI host name the client sent.
    pub sni: Option<String>,
    /// The client's certificate chain (leaf first), when it presented one.
    pub peer_certificates: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// The client's verified certificate, read once for the connection.
    pub client_cert: Option<portcullis_authn::ClientCert>,
}

/// What the stages learn about a request as it passes.
#[derive(Debug)]
pub struct RequestCtx {
    /// Sent upstream, returned to the client, and logged.
    pub request_id: HeaderValue,
    /// The client's address (see `server.trusted_proxies`).
    pub client_ip: IpAddr,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// Template parameters of the matched path.
    pub params: PathParams,
    /// Who sent the request.
    pub principal: Option<Arc<Principal>>,
    /// The authorization outcome.
    pub decision: Option<&'static str>,
    /// How long the upstream took to answer.
    pub upstream_elapsed: Option<Duration>,
    /// Why the request was stopped, if it was.
    pub reason: Option<&'static str>,
    /// The authorization decision's explanation, for the audit log.
    pub explained: Option<Explained>,
}

/// A decision's explanation, as the audit log records it.
#[derive(Debug)]
pub struct Explained {
    /// The policies that decided.
    pub policies: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// The decision's input.
    pub facts: Option<serde_json::Value>,
}

/// Runs a request through the pipeline and returns the response to send.
pub async fn handle(rt: Arc<Runtime>, conn: Arc<ConnInfo>, req: Request<ClientBody>) -> Response<ResponseBody> {
    let start = Instant::now();
    let mut ctx = RequestCtx {
        request_id: headers::request_id(req.headers()),
        client_ip: headers::client_ip(req.headers(), conn.peer.ip(), &rt.trusted_proxies),
        route: None,
        params: Vec::new(),
        principal: None,
        decision: None,
        upstream_elapsed: None,
        reason: None,
        explained: None,
    };
    let log_fields = rt.access_log.as_ref().map(|_| log_fields(&req));

    // A refused HTTP/1 request may leave its body unread: the connection cannot carry another
    // request, and the client must be told so rather than find out by a reset.
    let unread_body = req.version() <= Version::HTTP_11 && !http_body::Body::is_end_stream(req.body());
    let mut resp = match run(&rt, &conn, &mut ctx, req).await {
        Ok(resp) => resp,
        Err(problem) => refused(&mut ctx, problem, unread_body),
    };
    resp.headers_mut().insert(&X_REQUEST_ID, ctx.request_id.clone());

    // Log stage.
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    match &ctx.route {
        Some(route) => route.metrics.request(status, elapsed),
        None => rt.no_route.request(status, elapsed),
    }
    if let (Some(log), Some(fields)) = (&rt.access_log, log_fields) {
        write_access_log(log, &mut ctx, fields, status, elapsed);
    }
    resp
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

/// What the access log needs of the request, taken before the stages consume it.
type LogFields = (SystemTime, String, String, &'static str);

/// The log stage's record. Out of line (not cold: many deployments log every request), so
/// that `handle` holds only what every request runs (`bench/RESULTS.md`, "The code a request
/// touches").
#[inline(never)]
fn write_access_log(
    log: &portcullis_telemetry::AccessLog,
    ctx: &mut RequestCtx,
    (time, method, path, protocol): LogFields,
    status: u16,
    elapsed: Duration,
) {
    log.write(&AccessRecord {
        time,
        request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
        client_ip: ctx.client_ip,
        protocol,
        method,
        path,
        route: ctx.route.as_ref().map(|r| r.id.clone()),
        status,
        duration_ms: elapsed.as_secs_f64() * 1e3,
        upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1e3),
        principal: ctx.principal.as_ref().and_then(|p| p.subject.clone().or_else(|| p.client_id.clone())),
        auth_method: ctx.principal.as_ref().map(|p| p.method.as_str()),
        decision: ctx.decision,
        reason: ctx.reason,
        policies: ctx.explained.as_mut().map(|e| std::mem::take(&mut e.policies)),
        policy_errors: ctx.explained.as_mut().map(|e| std::mem::take(&mut e.errors)).filter(|e| !e.is_empty()),
        authz: ctx.explained.as_mut().and_then(|e| e.facts.take()),
    });
}

/// Taken only when the access log is on; out of line for the same reason.
#[inline(never)]
fn log_fields(req: &Request<ClientBody>) -> LogFields {
    (SystemTime::now(), req.method().to_string(), req.uri().path().to_string(), protocol(req.version()))
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The stages, in order.
async fn run(
    rt: &Runtime,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    req: Request<ClientBody>,
) -> Result<Response<ResponseBody>, Problem> {
    let (mut parts, body) = req.into_parts();

    // Admit: the head is within limits and the path is one we can reason about.
    admit(rt, &parts)?;
    // A cheap clone (shared bytes): the path borrows from it while later stages may rewrite
    // `parts.uri` (removing a credential from the query).
    let uri = parts.uri.clone();
    let authority = RequestAuthority::of(&parts)?;
    // The authority of an absolute-form target (RFC 9112 §3.2.2) or of HTTP/2's `:authority`
    // (RFC 9113 §8.3.1) is the host: the `Host` field the upstream gets says the same, so
    // routing and the upstream can never see two different hosts.
    if let RequestAuthority::Uri(a) = &authority
        && parts.headers.get(header::HOST).is_none_or(|h| h.as_bytes() != a.as_str().as_bytes())
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    // Read once: a `Host` header's bytes are checked as text here, not again at each use.
    let mut authority_str = authority.as_str();
    let (host, dotted) = read_host(authority_str.unwrap_or_default())
        .map_err(|_| Problem::bad_request("bad_host", "the Host header is not a valid host name"))?;
    let mut host_value = authority.header_value();
    // `admin.example.com.` is `admin.example.com` to routing, and is forwarded so too.
    let undotted: Option<HeaderValue>;
    if dotted {
        undotted = authority_str.and_then(without_trailing_dot);
        if let Some(v) = &undotted {
            parts.headers.insert(header::HOST, v.clone());
        }
        authority_str = undotted.as_ref().and_then(|v| v.to_str().ok());
        host_value = undotted.as_ref();
    }

    // The gateway's own endpoints: its keys and its token service.
    if let Some(ts) = &rt.token_service
        && ts.serves(portcullis_config::Listener::Public)
        && let Ok(path) = normalize(uri.path(), false)
        && let Some(endpoint) = portcullis_identity::Endpoint::at(&path)
    {
        let client_cert = conn.tls.as_ref().and_then(|t| t.client_cert.as_ref());
        let caller =
            portcullis_identity::Caller { client_cert, client_ip: ctx.client_ip, tls: conn.tls.is_some(), host: &host };
        // Boxed: a rare path whose state would otherwise enlarge every request's future.
        return crate::boxed!(token_service(ts, endpoint, parts, body, caller)).await;
    }

    // Match.
    let routed = rt.router.route(&host, uri.path(), &parts.method).map_err(route_refused)?;
    let route = routed.route.clone();
    ctx.route = Some(route.clone());
    ctx.params = routed.params;
    let path = routed.path;

    // Authenticate.
    let passthrough = route.propagate.as_ref().is_some_and(|p| p.passthrough);
    let principal = match &route.authn {
        Authentication::Public => rt.anonymous.clone(),
        Authentication::Required(a) => {
            let (https, origin) = headers::external_origin(
                &parts.headers,
                conn.peer.ip(),
                &rt.trusted_proxies,
                conn.tls.is_some(),
                authority_str.unwrap_or(&host),
            );
            let cx = portcullis_authn::Context {
                https,
                authority: origin,
                client_cert: conn.tls.as_ref().and_then(|t| t.client_cert.as_ref()),
            };
            // Boxed for the same reason as the upstream exchange.
            let principal = crate::boxed!(a.authenticate(&parts, &cx)).await?;
            if !passthrough {
                a.scrub(&mut parts);
            }
            principal
        }
    };
    ctx.principal = Some(principal.clone());

    // Authorize: the route's rules and policies.
    authorize(rt, conn, ctx, &route, &principal, &parts.method, &host, &path)?;

    // Protect: the body may not exceed the route's limit.
    let body = protect_body(&parts, body, route.max_body, &rt.identity_headers)?;

    // Propagate: the upstream never sees the caller's credential (unless the route passes it
    // through); the identity it gets is set in `forward`, after the client's hop-by-hop
    // headers are gone.
    let present = headers::Present::scan(&parts.headers);
    if !passthrough {
        headers::strip_credentials(&mut parts.headers, present);
    }
    // Identity headers any route sets are the gateway's to give, on every route.
    headers::strip_identity(&mut parts.headers, &rt.identity_headers);
    if present.any(headers::Present::UNDERSCORED) {
        headers::strip_confusable(&mut parts.headers, &rt.guarded_headers);
    }
    if present.any(headers::Present::OVERRIDE | headers::Present::CLIENT_FACT) {
        let trusted = headers::is_trusted(conn.peer.ip(), &rt.trusted_proxies);
        headers::strip_overrides(&mut parts.headers, present, trusted);
    }

    // Forward.
    let path = forward_path(&parts.uri, routed.forward.map_or(path, Cow::Owned), route.rewrite.as_ref());
    let facts = headers::ClientFacts {
        peer: conn.peer.ip(),
        peer_value: &conn.peer_value,
        tls: conn.tls.is_some(),
        host: authority_str,
        host_value,
    };
    forward(rt, ctx, &route, parts, present, body, path, facts).await
}

/// The route's rules, then its policies. A refusal is `403` with RFC 6750 §3.1
/// `insufficient_scope` (naming the scopes the route requires, when it does).
#[allow(clippy::too_many_arguments)]
fn authorize(
    rt: &Runtime,
    conn: &ConnInfo,
    ctx: &mut RequestCtx,
    route: &Route,
    principal: &Arc<Principal>,
    method: &http::Method,
    host: &str,
    path: &str,
) -> Result<(), Problem> {
    if route.authz.is_open() {
        ctx.decision = Some("allow");
        return Ok(());
    }
    let input = portcullis_authz::Input {
        principal,
        route: &route.id,
        method: method.as_str(),
        host,
        path,
        params: &ctx.params,
        client_ip: ctx.client_ip,
        now: SystemTime::now(),
        tls: conn.tls.is_some(),
        mtls: conn.tls.as_ref().is_some_and(|t| t.peer_certificates.is_some()),
        risk: None,
    };
    let decision = route.authz.decide(&input);
    ctx.decision = Some(if decision.allowed { "allow" } else { "deny" });
    if route.authz.uses_cedar() || !decision.allowed {
        // Claims the log does not keep are withheld here, before the record is built.
        let facts = rt.access_log.as_ref().and_then(|log| {
            let mut facts = portcullis_authz::InputRecord::of(&input);
            facts.principal.withhold_claims(&log.kept_claims());
            serde_json::to_value(facts).ok()
        });
        ctx.explained = Some(Explained { policies: decision.policies, errors: decision.errors, facts });
    }
    if decision.allowed {
        return Ok(());
    }
    Err(Problem::new(StatusCode::FORBIDDEN, decision.code, decision.detail).challenge(Challenge {
        scope: route.authz.scope_list().map(|s| s.to_string()),
        ..Challenge::new(ChallengeScheme::Bearer, "insufficient_scope")
    }))
}

/// The head is within the configured limits (`431`). (Ambiguous framing, such as both
/// `Content-Length` and `Transfer-Encoding`, never gets here: the HTTP/1.1 codec refuses
/// it, see [`crate::server::h1`].)
fn admit(rt: &Runtime, parts: &http::request::Parts) -> Result<(), Problem> {
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
enum RequestAuthority {
    Uri(http::uri::Authority),
    Header(HeaderValue),
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

/// The problem for a request no route takes.
#[cold]
#[inline(never)]
fn route_refused(e: RouteError) -> Problem {
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

/// A `101` from the upstream: the tunnel, if the switch is one the client asked for.
/// Out of line: once a connection at most, and not part of an ordinary request's code.
#[inline(never)]
fn switch_protocols(
    mut resp: Response<ResponseBody>,
    upgrade: Option<HeaderValue>,
    client_upgrade: Option<crate::server::OnUpgrade>,
    route: &Route,
) -> Result<Response<ResponseBody>, Problem> {
    // The upstream must name what it switched to (RFC 9110 §7.8), and only to one of the
    // protocols the gateway passed on.
    let chosen = resp.headers().get(header::UPGRADE).cloned();
    if let (Some(offered), Some(chosen), Some(client)) = (upgrade, chosen, client_upgrade)
        && protocols(&chosen).next().is_some()
        && protocols(&chosen).all(|p| protocols(&offered).any(|o| o.eq_ignore_ascii_case(p)))
    {
        let upstream_io = hyper::upgrade::on(&mut resp);
        tokio::spawn(relay_upgraded(client, upstream_io, route.tunnel_idle));
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
        Failure::ClientBody(crate::body::ClientBodyErrorKind::Malformed) => {
            Problem::bad_request("malformed_body", "the request body's framing is not valid")
        }
        Failure::ClientBody(crate::body::ClientBodyErrorKind::Aborted) => {
            Problem::bad_request("incomplete_body", "the request body ended before it was complete")
        }
        Failure::ClientBody(crate::body::ClientBodyErrorKind::Stalled) => Problem::new(
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

/// `413` problem.
pub(crate) fn body_too_large() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is larger than this route accepts")
}

/// Refuses a declared length over the limit at once; otherwise counts as the body streams.
fn protect_body(
    parts: &http::request::Parts,
    body: ClientBody,
    max: u64,
    identity: &Arc<[http::HeaderName]>,
) -> Result<RequestBody, Problem> {
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Problem::bad_request("bad_content_length", "invalid Content-Length"))?;
        if len > max {
            return Err(body_too_large());
        }
    }
    if http_body::Body::is_end_stream(&body) {
        return Ok(RequestBody::Empty);
    }
    Ok(RequestBody::Client(Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)), identity.clone()))
}

/// The path and query to request upstream: the normalised path (the one routes and
/// policies saw), rewritten if the route says so, and the query unchanged.
fn forward_path(uri: &http::Uri, path: Cow<'_, str>, rewrite: Option<&(String, String)>) -> PathAndQuery {
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
#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    route: &Route,
    mut parts: http::request::Parts,
    present: headers::Present,
    body: RequestBody,
    path: PathAndQuery,
    facts: headers::ClientFacts<'_>,
) -> Result<Response<ResponseBody>, Problem> {
    // An HTTP/1.1 protocol upgrade (WebSocket) is relayed as a byte stream after the 101.
    let upgrade = if present.any(headers::Present::UPGRADE) { upgrade_request(&parts, &route.upgrades) } else { None };
    let client_upgrade = upgrade.as_ref().and_then(|_| parts.extensions.remove::<crate::server::OnUpgrade>());

    headers::strip_hop_by_hop(&mut parts.headers, present);
    if let (Some(p), Some(principal)) = (&route.propagate, &ctx.principal) {
        p.apply(principal, &mut parts.headers)?;
    }
    if let Some(proto) = &upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto.clone());
    }
    let mut added = headers::Added::default();
    headers::set_forwarded(&mut parts.headers, present, &facts, &rt.trusted_proxies, rt.forwarded, &mut added);
    if present.any(headers::Present::X_REQUEST_ID) {
        parts.headers.remove(&X_REQUEST_ID);
    }
    added.push(&X_REQUEST_ID, ctx.request_id.clone());

    let upstream = match &route.target {
        Target::Echo => {
            added.insert_into(&mut parts.headers);
            parts.uri = http::Uri::from(path);
            return crate::boxed!(crate::echo::respond(Request::from_parts(parts, body))).await;
        }
        Target::Upstream(u) => u,
    };

    let started = Instant::now();
    // Boxed once for the whole exchange, so that no enclosing future (nor any idle
    // connection) holds its ~2 KiB state (`bench/RESULTS.md`, "Allocations and copies a
    // request").
    let waits = crate::upstream::Waits { upstream: route.timeout, client_idle: rt.h1.header_read_timeout };
    let result = crate::boxed!(upstream.send(&mut parts, body, &added, path, waits, upgrade.is_some())).await;
    let took = started.elapsed();
    ctx.upstream_elapsed = Some(took);
    route.metrics.upstream(took);

    let mut resp = match result {
        Ok(resp) => resp,
        Err(failure) => return Err(failed(route, failure)),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return switch_protocols(resp, upgrade, client_upgrade, route);
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

/// Serves the token service's endpoints: the JWK Set and discovery document (`GET`), and
/// the token endpoint (`POST`, a form). Token responses are never cached (RFC 6749 §5.1).
pub async fn token_service<B>(
    ts: &portcullis_identity::TokenService,
    endpoint: portcullis_identity::Endpoint,
    parts: http::request::Parts,
    body: B,
    caller: portcullis_identity::Caller<'_>,
) -> Result<Response<ResponseBody>, Problem>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use portcullis_identity::Endpoint;
    let json = |status: StatusCode, body: bytes::Bytes, cache: &'static str| {
        let mut resp = Response::new(ResponseBody::full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        if cache == "no-store" {
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        }
        resp
    };
    let method_not_allowed = |allow: &'static str| {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
            .header(header::ALLOW, HeaderValue::from_static(allow))
    };
    match endpoint {
        Endpoint::Jwks | Endpoint::Discovery => {
            if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
                return Err(method_not_allowed("GET, HEAD"));
            }
            let doc = if endpoint == Endpoint::Jwks { ts.jwks() } else { ts.discovery() };
            // Short enough that a verifier sees a rotation's new key long before it signs.
            Ok(json(StatusCode::OK, doc, "public, max-age=300"))
        }
        Endpoint::Token => {
            if parts.method != http::Method::POST {
                return Err(method_not_allowed("POST"));
            }
            let form_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
            let result = if form_type {
                let limited = Limited::new(body, portcullis_identity::service::MAX_FORM_BYTES);
                let read = tokio::time::timeout(
                    portcullis_identity::service::FORM_TIMEOUT,
                    http_body_util::BodyExt::collect(limited),
                );
                match read.await {
                    Ok(Ok(collected)) => ts.token(&collected.to_bytes(), &caller).await,
                    _ => Err(portcullis_identity::OAuthError::invalid_request(
                        "the request body could not be read in time or is too large",
                    )),
                }
            } else {
                Err(portcullis_identity::OAuthError::invalid_request(
                    "send the parameters as application/x-www-form-urlencoded",
                ))
            };
            Ok(match result {
                Ok(body) => json(StatusCode::OK, body, "no-store"),
                Err(e) => json(e.status, e.body(), "no-store"),
            })
        }
    }
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
fn protocols(field: &HeaderValue) -> impl Iterator<Item = &str> {
    field.to_str().unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty())
}

async fn relay_upgraded(client: crate::server::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, idle: Duration) {
    let (Some(client), Ok(upstream)) = (client.upgraded().await, upstream.await) else {
        return;
    };
    crate::tunnel::relay(client, hyper_util::rt::TokioIo::new(upstream), idle).await;
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

    #[test]
    fn an_authority_with_user_information_is_refused() {
        // As HTTP/2's `:authority` arrives: in the request's URI.
        let parts = |uri: &str| Request::get(uri).version(Version::HTTP_2).body(()).unwrap().into_parts().0;
        let err = RequestAuthority::of(&parts("http://user:pw@api.example/x")).err().expect("refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(!err.to_string().contains("pw"), "{err}");
        assert!(RequestAuthority::of(&parts("http://user@api.example/x")).is_err());
        assert!(RequestAuthority::of(&parts("http://api.example/x")).is_ok());
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
        assert_eq!(without_trailing_dot("a.example.:8443").unwrap(), "a.example:8443");
        assert_eq!(without_trailing_dot("A.example.").unwrap(), "A.example");
        assert!(without_trailing_dot("a.example:8443").is_none());
        assert!(without_trailing_dot("a.example..").is_none());
    }
}
