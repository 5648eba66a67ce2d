//! The admin listener: `/healthz`, `/readyz`, `/metrics` (the Prometheus text format, or
//! OpenMetrics when the `Accept` header prefers it) and `/config`, and the token service's
//! endpoints when `token_service.serve_on` lists `admin`.
//!
//! Who may call what:
//! * `/healthz` and `/readyz` are open, so that probes need no credential;
//! * `/readyz?verbose`, `/metrics` and `/config` need the admin credential when one is
//!   configured (`admin.auth.bearer_token`, or a client certificate verified against
//!   `admin.tls.client_ca`);
//! * the token service's endpoints authenticate their own clients (OAuth client
//!   authentication uses the `Authorization` header), so the admin credential is not asked.
//!
//! A handful of endpoints do not need a web framework; hyper's HTTP/1 server and a match on
//! the path are the whole router. A known path called with a method it does not take gets
//! `405` and `Allow` (RFC 9110 §15.5.6); `HEAD` is served wherever `GET` is (§9.3.2).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, VARY, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_config::{AdminConfig, AuthMethod, Config, Listener};
use portcullis_core::Problem;
use portcullis_http::body::ResponseBody;
use portcullis_identity::{Caller, Endpoint};
use portcullis_proxy::Runtime;
use portcullis_proxy::token_endpoint;
use portcullis_telemetry::{Exposition, Metrics};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The realm of the admin API's bearer challenges.
const REALM: &str = "portcullis-admin";

/// What the admin endpoints read.
pub struct AdminState {
    /// The runtime being served.
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// False until the gateway serves, and again once it drains.
    pub ready: AtomicBool,
    /// When the gateway started serving (the start of the start-up grace, see [`readiness`]).
    pub started: Instant,
    /// Set once every route has been ready: from then on, one route's missing keys no longer
    /// hold the gateway not-ready.
    pub settled: AtomicBool,
    /// What `/status` reports.
    pub status: crate::fleet::Shared,
}

impl AdminState {
    /// The admin state of a gateway that starts serving now.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, metrics: Arc<Metrics>) -> AdminState {
        AdminState {
            runtime,
            metrics,
            ready: AtomicBool::new(true),
            started: Instant::now(),
            settled: AtomicBool::new(false),
            status: Default::default(),
        }
    }
}

/// The admin listener's TLS settings (`admin.tls`), built with the public listener's code.
/// `Err` is the key path at fault and why.
pub fn tls_config(admin: &AdminConfig) -> Result<Option<Arc<rustls::ServerConfig>>, (String, String)> {
    let Some(tls) = &admin.tls else { return Ok(None) };
    portcullis_proxy::tls::server_config(tls, false, &Default::default())
        .map(Some)
        .map_err(|(key, msg)| (key.replacen("server.tls", "admin.tls", 1), msg))
}

/// Serves the admin endpoints for the life of the process, over TLS when `tls` is set.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, tls: Option<Arc<rustls::ServerConfig>>) {
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => connection(TokioIo::new(stream), state, peer, false).await,
                Some(a) => {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), a.accept(stream)).await else {
                        return;
                    };
                    // The verifier checked any certificate the client presented.
                    let cert = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    connection(TokioIo::new(tls), state, peer, cert).await;
                }
            }
        });
    }
}

async fn connection<T>(io: TokioIo<T>, state: Arc<AdminState>, peer: SocketAddr, client_cert: bool)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, req, peer, client_cert).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(io, service)
        .await;
}

/// The admin endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdminEndpoint {
    Healthz,
    Readyz,
    Metrics,
    Config,
    Revocations,
    Usage,
    Status,
}

impl AdminEndpoint {
    fn at(path: &str) -> Option<AdminEndpoint> {
        Some(match path {
            "/healthz" => AdminEndpoint::Healthz,
            "/readyz" => AdminEndpoint::Readyz,
            "/metrics" => AdminEndpoint::Metrics,
            "/config" => AdminEndpoint::Config,
            "/revocations" => AdminEndpoint::Revocations,
            "/usage" => AdminEndpoint::Usage,
            "/status" => AdminEndpoint::Status,
            _ => return None,
        })
    }

    /// The methods the endpoint takes, as the `Allow` header lists them.
    fn allow(self) -> &'static str {
        match self {
            AdminEndpoint::Revocations => "GET, HEAD, POST, DELETE",
            _ => "GET, HEAD",
        }
    }

    fn takes(self, method: &Method) -> bool {
        method == Method::GET
            || method == Method::HEAD
            || (self == AdminEndpoint::Revocations && (method == Method::POST || method == Method::DELETE))
    }
}

async fn respond(
    state: &AdminState,
    req: Request<Incoming>,
    peer: SocketAddr,
    client_cert: bool,
) -> Response<ResponseBody> {
    let rt = state.runtime.load_full();
    if let Some(ts) = rt.token_service.as_ref().filter(|ts| ts.serves(Listener::Admin))
        && let Some(endpoint) = Endpoint::at(req.uri().path())
    {
        let (parts, body) = req.into_parts();
        let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        let caller = Caller { client_cert: None, client_ip: peer.ip(), tls: false, host: &host };
        return match token_endpoint::serve(ts, endpoint, parts, body, caller).await {
            Ok(r) => r,
            Err(p) => problem(p),
        };
    }
    let Some(endpoint) = AdminEndpoint::at(req.uri().path()) else {
        return problem(Problem::new(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"));
    };
    let verbose = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
    let open = matches!(endpoint, AdminEndpoint::Healthz) || (endpoint == AdminEndpoint::Readyz && !verbose);
    if !open && let Err(p) = authenticate(rt.config.config.admin.as_ref(), req.headers(), client_cert) {
        return problem(p);
    }
    if !endpoint.takes(req.method()) {
        return problem(
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} takes {}", req.uri().path(), endpoint.allow()),
            )
            .header(ALLOW, HeaderValue::from_static(endpoint.allow())),
        );
    }
    // HEAD gets GET's head; hyper sends no body for it.
    match endpoint {
        AdminEndpoint::Healthz => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        AdminEndpoint::Readyz => {
            let mut r = readiness(state, &rt);
            // The shared state answers (a `PING` within `state.redis.timeout`): a replay check
            // it cannot make refuses the request, so the replica is not ready without it.
            if let Some(s) = rt.state()
                && let Err(e) = match s.ping().await {
                    // Authenticated requests are refused while the revocation list is stale.
                    Ok(()) => s.revoked().map(drop),
                    Err(e) => Err(e),
                }
            {
                r.state = Some(format!("{}: {e}", s.backend()));
                if r.ready {
                    r.ready = false;
                    r.status = "not ready";
                    r.reason = Some(format!("shared state ({}) unavailable", s.backend()));
                }
            }
            let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            if verbose {
                text(status, "application/json", serde_json::to_string(&r).unwrap_or_default())
            } else {
                let body = match (&r.ready, &r.reason) {
                    (true, _) => "ready\n".to_string(),
                    (false, Some(reason)) if r.state.is_some() => format!("not ready: {reason}\n"),
                    (false, _) => "not ready\n".to_string(),
                };
                text(status, "text/plain; charset=utf-8", body)
            }
        }
        AdminEndpoint::Metrics => {
            // The Prometheus text format unless the scraper asks for OpenMetrics.
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Exposition::negotiate(accept);
            let mut r = text(StatusCode::OK, format.content_type(), state.metrics.encode(format));
            r.headers_mut().insert(VARY, HeaderValue::from_static("accept"));
            r
        }
        AdminEndpoint::Revocations => match rt.state() {
            Some(state) => crate::revoke::serve(state, req).await.unwrap_or_else(problem),
            None => problem(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", "no shared state")),
        },
        AdminEndpoint::Usage => {
            let query = req.uri().query().unwrap_or_default();
            crate::usage::serve(rt.meter().map(|m| &**m), query).await.unwrap_or_else(problem)
        }
        AdminEndpoint::Status => {
            let mut status = crate::fleet::snapshot(&state.status);
            if let Some(id) = &rt.config.config.fleet.id {
                status.id.clone_from(id);
            }
            text(StatusCode::OK, "application/json", serde_json::to_string(&status).unwrap_or_default())
        }
        AdminEndpoint::Config => {
            let body = serde_json::json!({
                "generation": rt.generation,
                "file": rt.config.file,
                "config": portcullis_config::redacted(&rt.config.config),
            });
            text(StatusCode::OK, "application/json", body.to_string())
        }
    }
}

/// Checks the admin credential, when the config asks for one: a verified client certificate
/// (with `admin.tls.client_ca`) or the bearer token.
fn authenticate(admin: Option<&AdminConfig>, headers: &HeaderMap, client_cert: bool) -> Result<(), Problem> {
    let Some(admin) = admin.filter(|a| a.authenticates()) else { return Ok(()) };
    if client_cert && admin.mtls() {
        return Ok(());
    }
    let Some(token) = admin.bearer_token() else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "the admin API needs a client certificate",
        ));
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match presented {
        Some(t) if same_secret(t, token.expose()) => Ok(()),
        Some(_) => Err(Problem::new(StatusCode::UNAUTHORIZED, "invalid_token", "the admin token is not valid")
            .header(WWW_AUTHENTICATE, challenge(Some("invalid_token")))),
        None => Err(Problem::new(StatusCode::UNAUTHORIZED, "missing_credential", "the admin API needs a bearer token")
            .header(WWW_AUTHENTICATE, challenge(None))),
    }
}

/// `Bearer realm="..."`, with an error code when a credential was presented (RFC 6750 §3).
fn challenge(error: Option<&str>) -> HeaderValue {
    let v = match error {
        None => format!("Bearer realm=\"{REALM}\""),
        Some(e) => format!("Bearer error=\"{e}\", realm=\"{REALM}\""),
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// Compares two secrets in constant time: their SHA-256 digests are compared, so neither the
/// content nor the length of the expected value leaks through timing.
fn same_secret(presented: &str, expected: &str) -> bool {
    use aws_lc_rs::digest::{SHA256, digest};
    let (a, b) = (digest(&SHA256, presented.as_bytes()), digest(&SHA256, expected.as_bytes()));
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
}

/// The gateway's readiness, route by route (`/readyz?verbose`).
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// What `/readyz` answers: 200 when true.
    pub ready: bool,
    /// `ready` or `not ready`.
    pub status: &'static str,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the shared-state backend cannot answer, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The config generation being served.
    pub generation: u64,
    /// Each route, in config order.
    pub routes: Vec<RouteReadiness>,
}

/// One route's readiness.
#[derive(Debug, Serialize)]
pub struct RouteReadiness {
    /// The route's id.
    pub id: String,
    /// Whether it can authenticate its callers: every issuer it accepts has keys.
    pub ready: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The issuers it accepts that have no usable keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issuers_without_keys: Vec<String>,
}

/// Readiness, per route and overall.
///
/// A route is ready when every issuer whose tokens it accepts has usable keys (a route that
/// is not ready still fails closed: `503` for a token it cannot verify). The gateway is
/// ready when it serves (config loaded, not draining) and:
/// * every route is ready; or
/// * at least one route is ready, once start-up is over: every route has been ready once,
///   or the start-up grace has passed (the longest `keys.timeout` of the issuers: one fetch
///   attempt). Until then it waits for every issuer's first keys, so that a load balancer
///   sends no request a route would refuse only because its keys are still on the way.
///
/// So one unreachable identity provider does not take every route out of the load
/// balancer; `/readyz?verbose` shows which routes wait for which issuer.
pub fn readiness(state: &AdminState, rt: &Runtime) -> Readiness {
    let config = &rt.config.config;
    let lacking = rt.issuers_without_keys();
    let routes: Vec<RouteReadiness> = config
        .routes
        .iter()
        .map(|rc| {
            let methods = rc.authenticate.as_deref().unwrap_or_default();
            let needs_keys = methods.iter().any(|m| matches!(m, AuthMethod::Jwt | AuthMethod::Dpop));
            let missing: Vec<String> = if needs_keys {
                lacking
                    .iter()
                    .filter(|id| rc.issuers.as_ref().is_none_or(|ids| ids.iter().any(|i| i == &***id)))
                    .map(|id| id.to_string())
                    .collect()
            } else {
                Vec::new()
            };
            RouteReadiness {
                id: rc.id.clone(),
                ready: missing.is_empty(),
                reason: (!missing.is_empty()).then(|| {
                    let names: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
                    format!("no usable keys for issuer {}", names.join(", "))
                }),
                issuers_without_keys: missing,
            }
        })
        .collect();
    let all = routes.iter().all(|r| r.ready);
    if all {
        state.settled.store(true, Ordering::Release);
    }
    let any = routes.is_empty() || routes.iter().any(|r| r.ready);
    let past_start = state.settled.load(Ordering::Acquire) || state.started.elapsed() >= grace(config);
    let reason = if !state.ready.load(Ordering::Acquire) {
        Some("not serving (starting or draining)".to_string())
    } else if all || (any && past_start) {
        None
    } else if any {
        Some("starting: waiting for every issuer's first keys".to_string())
    } else {
        Some("no route can serve: its issuers have no usable keys".to_string())
    };
    Readiness {
        ready: reason.is_none(),
        status: if reason.is_none() { "ready" } else { "not ready" },
        reason,
        state: None,
        generation: rt.generation,
        routes,
    }
}

/// How long start-up waits for every issuer's first keys.
fn grace(config: &Config) -> Duration {
    config.issuers.iter().map(|i| i.keys.timeout.get()).max().unwrap_or_default()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn problem(p: Problem) -> Response<ResponseBody> {
    p.to_response(None).map(ResponseBody::full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(json: &str) -> AdminConfig {
        serde_json::from_str(json).unwrap()
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        h
    }

    #[test]
    fn bearer_token_is_checked() {
        let a = admin(r#"{"listen": "127.0.0.1:1", "auth": {"bearer_token": "0123456789abcdef"}}"#);
        assert!(authenticate(Some(&a), &bearer("0123456789abcdef"), false).is_ok());
        let wrong = authenticate(Some(&a), &bearer("0123456789abcdeX"), false).unwrap_err();
        assert_eq!(wrong.code, "invalid_token");
        let none = authenticate(Some(&a), &HeaderMap::new(), false).unwrap_err();
        assert_eq!(none.status, StatusCode::UNAUTHORIZED);
        assert_eq!(none.headers[0].1, "Bearer realm=\"portcullis-admin\"");
        // A client certificate is no credential unless `client_ca` is configured.
        assert!(authenticate(Some(&a), &HeaderMap::new(), true).is_err());
    }

    #[test]
    fn no_auth_configured_lets_everyone_in() {
        let a = admin(r#"{"listen": "127.0.0.1:1"}"#);
        assert!(authenticate(Some(&a), &HeaderMap::new(), false).is_ok());
        assert!(authenticate(None, &HeaderMap::new(), false).is_ok());
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
