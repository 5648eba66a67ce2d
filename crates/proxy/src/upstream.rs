//! The forward stage's upstreams: endpoints chosen in turn, pooled connections (HTTP/1.1 and
//! HTTP/2, plain or TLS), timeouts, and passive health checking that ejects endpoints which
//! keep failing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::{Invalid, SpiffeConfig, UpstreamConfig, UpstreamProtocol};
use portcullis_telemetry::Counter;

use portcullis_http::body::{
    BoxError, ClientBodyErrorKind, HyperUpload, RequestBody, ResponseBody, Turn, UploadFailure, UpstreamBody,
};
use portcullis_http::client::h1;
use portcullis_http::client::{Added, Waits};

/// How a request to an upstream failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made (nothing was sent).
    Connect,
    /// No response head within the request timeout.
    Timeout,
    /// The client's body went over the route's size limit.
    BodyTooLarge,
    /// The client's body failed while it was sent (malformed, or the client went away):
    /// the client's fault, so it never counts against the endpoint's health.
    ClientBody(ClientBodyErrorKind),
    /// The exchange broke after sending began.
    Protocol(BoxError),
}

/// One address of an upstream, with its health.
#[derive(Debug)]
struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    /// Idle connections for the lean HTTP/1.1 client (plain-text HTTP/1.1 endpoints).
    lean: Option<Arc<h1::IdlePool>>,
    /// Consecutive failures.
    failures: AtomicU32,
    /// Ejections since it last served well (doubles the next ejection period).
    ejections: AtomicU32,
    /// Milliseconds since `Upstream::epoch` until which the endpoint is ejected.
    ejected_until: AtomicU64,
}

/// HTTP/2 flow-control windows of upstream connections. The requests to an HTTP/2 upstream
/// share a connection, whichever clients they come from; a response its client is slow to
/// read holds up to a stream window of that connection's until the client takes it. A stream
/// here can hold at most a thirty-second of the connection's window: it takes that many
/// stalled responses at once to stop the others (the stall timer, `timeouts.request`, ends
/// them). Few upstream connections exist, so their windows can be larger than clients'.
const H2_STREAM_WINDOW: u32 = 1 << 20;
/// See [`H2_STREAM_WINDOW`].
const H2_CONNECTION_WINDOW: u32 = 32 * H2_STREAM_WINDOW;

/// An upstream service: its endpoints and a connection pool to them. Kept across config
/// reloads while its settings do not change, so reloads do not drop pooled connections.
#[derive(Debug)]
pub struct Upstream {
    name: Arc<str>,
    endpoints: Box<[Endpoint]>,
    next: AtomicUsize,
    /// One pool per worker (see [`portcullis_http::listener::worker_slot`]), so that a connection is
    /// only ever used by the thread that drives it.
    clients: Box<[Client<HttpsConnector<HttpConnector>, HyperUpload>]>,
    /// Default time to wait for a response head (routes may override).
    pub request_timeout: Duration,
    connect_timeout: Duration,
    preserve_host: bool,
    failure_threshold: u32,
    ejection_time: Duration,
    max_ejection_time: Duration,
    epoch: Instant,
    ejection_counter: Counter,
    /// Requests in flight to it at most, over every route.
    pub concurrency: Option<portcullis_limits::concurrency::Concurrency>,
}

impl Upstream {
    /// Builds an upstream with a pool for each of `workers` workers; `at` is its key path,
    /// for errors.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        spiffe: &SpiffeConfig,
        at: &str,
        workers: usize,
        ejection_counter: Counter,
    ) -> Result<Upstream, Vec<Invalid>> {
        let mut errors = Vec::new();
        let mut endpoints = Vec::new();
        for (i, url) in cfg.endpoints.iter().enumerate() {
            match parse_endpoint(url) {
                Ok(ep) => endpoints.push(ep),
                Err(msg) => errors.push(Invalid::new(format!("{at}.endpoints[{i}]"), msg)),
            }
        }
        if cfg.protocol != UpstreamProtocol::Http2 {
            for ep in endpoints.iter_mut().filter(|e| e.scheme == Scheme::HTTP) {
                let pool = Arc::new(h1::IdlePool::new(workers, cfg.timeouts.idle.get(), cfg.max_idle_connections));
                h1::IdlePool::sweep_in_background(&pool);
                ep.lean = Some(pool);
            }
        }
        let any_tls = endpoints.iter().any(|e| e.scheme == Scheme::HTTPS);
        if cfg.tls.is_some() && !any_tls && errors.is_empty() {
            errors.push(Invalid::new(format!("{at}.tls"), "set, but no endpoint is https://"));
        }
        let tls = crate::tls::client_config(cfg.tls.as_ref(), spiffe)
            .map_err(|(key, msg)| {
                let at = if key.starts_with("spiffe.") { key } else { format!("{at}.tls.{key}") };
                errors.push(Invalid::new(at, msg))
            })
            .ok();
        let server_name = cfg.tls.as_ref().and_then(|t| t.server_name.clone());
        let (Some(tls), true) = (tls, errors.is_empty()) else {
            return Err(errors);
        };

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeouts.connect.get()));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
        let builder = match server_name {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                    vec![Invalid::new(format!("{at}.tls.server_name"), format!("`{name}` is not a valid server name"))]
                })?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = match cfg.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
            UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        };
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_idle_timeout(cfg.timeouts.idle.get())
            // An HTTP/2 connection is shared by the requests in flight: kept, whatever the limit.
            .pool_max_idle_per_host(match cfg.protocol {
                UpstreamProtocol::Http2 => cfg.max_idle_connections.max(1),
                _ => cfg.max_idle_connections,
            })
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_initial_stream_window_size(H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(H2_CONNECTION_WINDOW);
        if cfg.protocol == UpstreamProtocol::Http2 {
            client.http2_only(true);
        }
        // Slot 0 serves threads that are not workers.
        let clients = (0..=workers).map(|_| client.build(connector.clone())).collect();
        Ok(Upstream {
            name: name.into(),
            endpoints: endpoints.into_boxed_slice(),
            next: AtomicUsize::new(0),
            clients,
            request_timeout: cfg.timeouts.request.get(),
            connect_timeout: cfg.timeouts.connect.get(),
            preserve_host: cfg.preserve_host,
            failure_threshold: cfg.health.consecutive_failures,
            ejection_time: cfg.health.ejection_time.get(),
            max_ejection_time: cfg.health.max_ejection_time.get(),
            epoch: Instant::now(),
            ejection_counter,
            concurrency: cfg.concurrency.as_ref().map(portcullis_limits::concurrency::Concurrency::new),
        })
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The next endpoint in turn that is not ejected; if all are, the one whose ejection
    /// ends first (better to try than to refuse).
    fn pick(&self, avoid: Option<usize>) -> usize {
        let n = self.endpoints.len();
        if n == 1 {
            return 0;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| Some(i) != avoid && self.endpoints[i].ejected_until.load(Ordering::Relaxed) <= now)
            .unwrap_or_else(|| {
                (0..n).min_by_key(|&i| self.endpoints[i].ejected_until.load(Ordering::Relaxed)).unwrap_or(0)
            })
    }

    fn succeeded(&self, i: usize) {
        let ep = &self.endpoints[i];
        if ep.failures.load(Ordering::Relaxed) != 0 {
            ep.failures.store(0, Ordering::Relaxed);
        }
        if ep.ejections.load(Ordering::Relaxed) != 0 && ep.ejected_until.load(Ordering::Relaxed) <= self.now_ms() {
            ep.ejections.store(0, Ordering::Relaxed);
        }
    }

    fn failed(&self, i: usize) {
        if self.endpoints.len() == 1 {
            return; // Nowhere else to go: ejecting would change nothing.
        }
        let ep = &self.endpoints[i];
        let failures = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.failure_threshold {
            return;
        }
        ep.failures.store(0, Ordering::Relaxed);
        let k = ep.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let period = self.ejection_time.saturating_mul(1 << k).min(self.max_ejection_time);
        let until = self.now_ms().saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        ep.ejected_until.store(until, Ordering::Relaxed);
        self.ejection_counter.inc();
        tracing::warn!(upstream = %self.name, endpoint = %ep.authority, seconds = period.as_secs(), "endpoint ejected after consecutive failures");
    }

    /// Sends a request and waits for the response head (see [`Waits`]). The request's head stays the
    /// caller's (borrowed, not moved through every layer); `path` is the path and query to
    /// request; `upgrade` asks for an HTTP/1.1 protocol upgrade. A request without a body is
    /// retried once on another endpoint when the first could not be connected to.
    pub async fn send(
        &self,
        head: &mut http::request::Parts,
        body: RequestBody,
        added: &Added,
        path: PathAndQuery,
        waits: Waits,
        upgrade: bool,
    ) -> Result<Response<ResponseBody>, Failure> {
        let retry = self.endpoints.len() > 1 && body.is_end_stream();
        head.version = Version::HTTP_11;
        let first = self.pick(None);
        match self.send_to(first, head, body, added, &path, waits, upgrade, retry).await {
            Err(Failure::Connect) if retry => {
                let second = self.pick(Some(first));
                self.send_to(second, head, RequestBody::Empty, added, &path, waits, upgrade, false).await
            }
            result => result,
        }
    }

    /// Sends to endpoint `i`. `keep`: the head is needed again afterwards (for a retry).
    #[allow(clippy::too_many_arguments)]
    async fn send_to(
        &self,
        i: usize,
        head: &mut http::request::Parts,
        body: RequestBody,
        added: &Added,
        path: &PathAndQuery,
        waits: Waits,
        upgrade: bool,
        keep: bool,
    ) -> Result<Response<ResponseBody>, Failure> {
        let timeout = waits.upstream;
        let ep = &self.endpoints[i];
        // A request without a host of its own (HTTP/1.0) gets the endpoint's: an HTTP/1.1
        // request must carry one (RFC 9112 §3.2).
        let host = (!self.preserve_host || !head.headers.contains_key(http::header::HOST)).then_some(&ep.host);
        let result = match (&ep.lean, upgrade) {
            (Some(pool), false) => {
                // The timeout bounds the upstream's part only (see `h1::send`): a slow
                // upload is the client's, and never counts against the endpoint.
                match h1::send(pool, &ep.authority, self.connect_timeout, waits, head, body, added, host, path).await {
                    Err(h1::Error::Timeout) => Err(Failure::Timeout),
                    Ok(resp) => Ok(resp.map(ResponseBody::Lean)),
                    Err(h1::Error::Connect(_)) => Err(Failure::Connect),
                    Err(h1::Error::BodyTooLarge) => return Err(Failure::BodyTooLarge),
                    Err(h1::Error::ClientBody(kind, e)) => {
                        tracing::debug!(upstream = %self.name, error = %e, "the client's request body failed");
                        return Err(Failure::ClientBody(kind));
                    }
                    Err(h1::Error::Stale) => Err(Failure::Protocol("stale upstream connection".into())),
                    Err(h1::Error::Protocol(e)) => Err(Failure::Protocol(e)),
                }
            }
            _ => {
                // hyper's client takes the head: a copy of it if it may be needed again.
                let mut req = Request::new(body);
                if keep {
                    *req.method_mut() = head.method.clone();
                    *req.headers_mut() = head.headers.clone();
                } else {
                    let (mut parts, body) = req.into_parts();
                    std::mem::swap(&mut parts, head);
                    req = Request::from_parts(parts, body);
                }
                *req.version_mut() = Version::HTTP_11;
                added.insert_into(req.headers_mut());
                crate::headers::join_cookies(req.headers_mut());
                if let Some(h) = host {
                    req.headers_mut().insert(http::header::HOST, h.clone());
                }
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(ep.scheme.clone());
                parts.authority = Some(ep.authority.clone());
                parts.path_and_query = Some(path.clone());
                *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Failure::Connect)?;
                let client = &self.clients[portcullis_http::listener::worker_slot().min(self.clients.len() - 1)];
                // The timeout bounds the upstream's turns only, as on the lean path: a slow
                // upload is the client's (held to `client_idle` by the body), never the
                // endpoint's.
                let turn = Arc::new(Turn::new());
                let req = req.map(|body| HyperUpload::new(body, turn.clone(), waits.client_idle));
                let mut exchange = std::pin::pin!(client.request(req));
                let answer = loop {
                    // While it is the client's turn, look again after a while.
                    let due = turn.upstream_deadline(timeout);
                    let wait = due.unwrap_or_else(|| portcullis_http::timer::deadline(timeout));
                    match portcullis_http::timer::timeout_at(wait, exchange.as_mut()).await {
                        Ok(answer) => break Ok(answer),
                        // The same turn of the upstream's all along: it is late. (Compared as
                        // turns, not against the clock, which the wheel rounds.)
                        Err(late) if due.is_some() && turn.upstream_deadline(timeout) == due => break Err(late),
                        Err(_) => continue,
                    }
                };
                turn.answered();
                match answer {
                    Err(_) => Err(Failure::Timeout),
                    Ok(Ok(resp)) => Ok(resp.map(|b| ResponseBody::Upstream(Box::new(UpstreamBody::new(b, timeout))))),
                    // The upload's own account: hyper may report the body's error only as a
                    // reset stream (HTTP/2).
                    Ok(Err(e)) => match turn.upload_failure() {
                        Some(UploadFailure::TooLarge) => return Err(Failure::BodyTooLarge),
                        Some(UploadFailure::Client(kind)) => return Err(Failure::ClientBody(kind)),
                        None if e.is_connect() => Err(Failure::Connect),
                        None => Err(Failure::Protocol(e.into())),
                    },
                }
            }
        };
        match &result {
            Ok(resp) if matches!(resp.status().as_u16(), 502..=504) => self.failed(i),
            Ok(_) => self.succeeded(i),
            Err(_) => self.failed(i),
        }
        result
    }
}

/// Reads an endpoint URL. Messages show the URL with any credentials in it masked: a
/// config error is printed, and a password must never be.
fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let shown = redact_userinfo(url);
    let uri: Uri = url.parse().map_err(|_| format!("`{shown}` is not a valid URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        _ => return Err(format!("`{shown}`: use an http:// or https:// URL")),
    };
    let authority = uri.authority().cloned().ok_or_else(|| format!("`{shown}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("`{shown}`: credentials in upstream URLs are not supported"));
    }
    // `Authority` keeps a port it cannot read as a number (the default port would be used).
    let has_port = authority.as_str().rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    if has_port && authority.port_u16().is_none_or(|p| p == 0) {
        return Err(format!("`{shown}`: the port must be a number from 1 to 65535"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("`{shown}`: give only scheme, host and port; use `rewrite` to change paths"));
    }
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| format!("`{shown}` has an invalid host"))?;
    Ok(Endpoint {
        scheme,
        authority,
        host,
        lean: None,
        failures: AtomicU32::new(0),
        ejections: AtomicU32::new(0),
        ejected_until: AtomicU64::new(0),
    })
}

/// `url` with the user information of its authority (`user:password@`) replaced by `***`.
fn redact_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    // The config's own masking: it also finds a password with `/` or `?` in it.
    portcullis_config::values::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::Duration as D;

    fn upstream(endpoints: &[&str], threshold: u32) -> Upstream {
        let mut cfg = UpstreamConfig::for_endpoint(endpoints[0]);
        cfg.endpoints = endpoints.iter().map(|s| s.to_string()).collect();
        cfg.health.consecutive_failures = threshold;
        cfg.health.ejection_time = D::from_secs(10);
        cfg.health.max_ejection_time = D::from_secs(25);
        Upstream::new("u", &cfg, &Default::default(), "upstreams.u", 1, Counter::default()).unwrap()
    }

    #[test]
    fn round_robin_skips_ejected_endpoints() {
        let u = upstream(&["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"], 2);
        let picks: Vec<usize> = (0..6).map(|_| u.pick(None)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        u.failed(1);
        assert_eq!(u.endpoints[1].ejected_until.load(Ordering::Relaxed), 0, "one failure is not enough");
        u.failed(1);
        assert!(u.endpoints[1].ejected_until.load(Ordering::Relaxed) > 0);
        let picks: Vec<usize> = (0..6).map(|_| u.pick(None)).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(u.ejection_counter.get(), 1);
    }

    #[test]
    fn ejection_doubles_up_to_the_maximum() {
        let u = upstream(&["http://127.0.0.1:1", "http://127.0.0.1:2"], 1);
        let until = |u: &Upstream| u.endpoints[0].ejected_until.load(Ordering::Relaxed);
        u.failed(0);
        let first = until(&u);
        assert!((9_000..=10_100).contains(&first), "{first}");
        u.failed(0);
        assert!((19_000..=20_100).contains(&until(&u)));
        u.failed(0);
        assert!((24_000..=25_100).contains(&until(&u)), "capped at max_ejection_time");
    }

    #[test]
    fn all_ejected_still_picks_one() {
        let u = upstream(&["http://127.0.0.1:1", "http://127.0.0.1:2"], 1);
        u.failed(0);
        u.failed(1);
        u.failed(1);
        assert_eq!(u.pick(None), 0, "the one whose ejection ends first");
    }

    #[test]
    fn endpoint_urls_are_checked() {
        for (url, msg) in [
            ("ftp://x", "http:// or https://"),
            ("http://127.0.0.1:1/base", "rewrite"),
            ("http://user:pw@h:1", "credentials"),
            ("not a url", "not a valid URL"),
            ("http://127.0.0.1:99999", "1 to 65535"),
            ("http://127.0.0.1:0", "1 to 65535"),
            ("http://[::1]:70000", "1 to 65535"),
        ] {
            assert!(parse_endpoint(url).err().unwrap().contains(msg), "{url}");
        }
        for url in ["http://127.0.0.1:8080", "http://[::1]:1", "http://[::1]", "https://example.com"] {
            assert!(parse_endpoint(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn endpoint_errors_never_show_a_password() {
        for url in
            ["http://user:hunter2@h:1", "http://user:hunter2@h:1/base", "ftp://u:hunter2@h", "http://u:hunter2@h:x y"]
        {
            let msg = parse_endpoint(url).err().unwrap();
            assert!(!msg.contains("hunter2") && msg.contains("***@h"), "{msg}");
        }
        // A password with `/` in it ends the authority early for a naive reader.
        let msg = parse_endpoint("http://svc:hun/ter2@10.0.0.1:8080").err().unwrap();
        assert!(!msg.contains("ter2") && !msg.contains("hun/"), "{msg}");
    }
}
