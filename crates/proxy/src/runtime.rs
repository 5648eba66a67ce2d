//! The runtime: a config compiled into the objects the request path uses (router, routes,
//! upstream pools, TLS settings, limits). Built once per load or reload and swapped in
//! atomically; requests in flight keep the runtime they started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use portcullis_config::{
    ConfigErrors, ECHO_UPSTREAM, ForwardedHeaders, Invalid, LoadedConfig, RouteConfig, SpiffeConfig, UpstreamConfig,
};
use portcullis_core::{FileStamp, Principal};
use portcullis_http::ServerSettings;
use portcullis_telemetry::{Metrics, RouteMetrics};

use crate::router::{Matcher, Router};
use crate::upstream::Upstream;

/// State that outlives any one config: metrics, and what later configs reuse while their
/// settings are unchanged (issuers' key stores, signing key rings, upstream connection pools).
#[derive(Debug)]
pub struct Lasting {
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Data-plane worker threads (fixed for the life of the process).
    pub workers: usize,
    /// Key stores of token issuers and the shared-state backend, kept across reloads.
    pub authn: portcullis_authn::Retained,
    /// The gateway's signing keys, kept across reloads.
    pub key_rings: portcullis_identity::KeyRings,
    /// The usage meter (the gateway's; none for tools that only compile a config).
    pub meter: Option<Arc<portcullis_state::usage::Meter>>,
    /// Upstreams by their source; weak so that ones no config uses any more are freed.
    /// Locked only while a config is compiled, never on the request path.
    upstreams: Mutex<HashMap<UpstreamSource, Weak<Upstream>>>,
}

/// What makes two upstream configs one pool: the name, the settings, and the files the
/// connections read (CA, client certificate and key, the gateway's SVID, the trust bundle)
/// as they are on disk, so a changed file (a rotated SVID, a new trust bundle) builds a new
/// pool.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UpstreamSource {
    name: String,
    settings: UpstreamConfig,
    files: Vec<FileStamp>,
}

impl UpstreamSource {
    fn of(name: &str, cfg: &UpstreamConfig, spiffe: &SpiffeConfig) -> UpstreamSource {
        let mut files = Vec::new();
        if let Some(tls) = &cfg.tls {
            let svid = spiffe.svid.as_ref().filter(|_| tls.svid).map(|s| [&s.cert, &s.key]);
            let bundle = tls
                .spiffe_id
                .as_deref()
                .and_then(portcullis_core::spiffe::parse_id)
                .and_then(|(domain, _)| spiffe.trust_domains.get(domain));
            let paths =
                [&tls.ca, &tls.cert, &tls.key].into_iter().flatten().chain(svid.into_iter().flatten()).chain(bundle);
            files.extend(paths.map(|f| FileStamp::of(f)));
        }
        UpstreamSource { name: name.to_string(), settings: cfg.clone(), files }
    }
}

impl Lasting {
    /// Lasting state with these metrics, for `workers` data-plane workers.
    pub fn new(metrics: Arc<Metrics>, workers: usize) -> Self {
        Self {
            metrics,
            workers,
            authn: Default::default(),
            key_rings: Default::default(),
            meter: None,
            upstreams: Mutex::default(),
        }
    }

    fn upstream(
        &self,
        name: &str,
        cfg: &UpstreamConfig,
        spiffe: &SpiffeConfig,
        at: &str,
    ) -> Result<Arc<Upstream>, Vec<Invalid>> {
        let key = UpstreamSource::of(name, cfg, spiffe);
        let mut cache = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, w| w.strong_count() > 0);
        if let Some(up) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(up);
        }
        let up = Arc::new(Upstream::new(name, cfg, spiffe, at, self.workers, self.metrics.ejection(name))?);
        cache.insert(key, Arc::downgrade(&up));
        Ok(up)
    }
}

/// Where a route sends requests.
#[derive(Debug)]
pub enum Target {
    /// The built-in echo upstream.
    Echo,
    /// An upstream service.
    Upstream(Arc<Upstream>),
}

/// Whether a route's callers must authenticate, and how.
#[derive(Debug)]
pub enum Authentication {
    /// A public route: every caller is the anonymous principal.
    Public,
    /// Callers must present one of the route's accepted credentials.
    Required(portcullis_authn::RouteAuthenticator),
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's id.
    pub id: Arc<str>,
    /// Where requests go.
    pub target: Target,
    /// How callers authenticate.
    pub authn: Authentication,
    /// What a caller must have or be: the route's rules and its slice of the policies.
    pub authz: portcullis_authz::RouteAuthz,
    /// Time to wait for the upstream's response head.
    pub timeout: Duration,
    /// How long an upgraded connection may carry no data before it is closed.
    pub tunnel_idle: Duration,
    /// The protocols a client may upgrade to (lower case; `h2c` never among them).
    pub upgrades: Box<[Box<str>]>,
    /// Largest request body.
    pub max_body: u64,
    /// `(matched prefix, replacement)` for `rewrite.path_prefix`.
    pub rewrite: Option<(String, String)>,
    /// What the upstream learns of the caller.
    pub propagate: Option<portcullis_identity::Propagation>,
    /// Which client addresses may use the route.
    pub client_ips: Option<portcullis_limits::ip::IpRules>,
    /// The route's rate limits and quotas.
    pub rate_limits: portcullis_limits::Limits,
    /// Requests in flight on the route at most.
    pub concurrency: Option<portcullis_limits::concurrency::Concurrency>,
    /// The media types and JSON shape a request body may have.
    pub body_rules: Option<portcullis_limits::body::BodyRules>,
    /// Metric handles.
    pub metrics: RouteMetrics,
}

impl Route {
    /// The route forwards the caller's own credential.
    pub fn passthrough(&self) -> bool {
        self.propagate.as_ref().is_some_and(|p| p.passthrough)
    }
}

/// Limits checked on every request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// A compiled config.
pub struct Runtime {
    /// 1 for the config loaded at start, +1 per successful reload.
    pub generation: u64,
    /// The config this was built from (shown, redacted, by the admin API).
    pub config: Arc<LoadedConfig>,
    pub(crate) router: Router<Arc<Route>>,
    /// How the transport serves connections (TLS, HTTP/1.1, HTTP/2).
    pub(crate) server: Arc<ServerSettings>,
    pub(crate) head_limits: HeadLimits,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) forwarded: ForwardedHeaders,
    pub(crate) access_log: Option<portcullis_telemetry::AccessLog>,
    pub(crate) no_route: RouteMetrics,
    pub(crate) anonymous: Arc<Principal>,
    /// The identity headers routes set: removed from every request, on every route.
    pub(crate) identity_headers: Arc<[http::HeaderName]>,
    /// The identity headers and the API-key header: their `_` spellings are removed too.
    pub(crate) guarded_headers: Arc<[http::HeaderName]>,
    /// The token service, when configured.
    pub token_service: Option<Arc<portcullis_identity::TokenService>>,
    /// The plans and their limits.
    pub(crate) plans: portcullis_limits::Plans,
    /// Meters each request (`usage.enabled`).
    pub(crate) meter: Option<Arc<portcullis_state::usage::Meter>>,
    /// Blocks addresses that fail authentication too often (`brute_force`).
    pub(crate) brute_force: Option<portcullis_limits::brute::BruteForce>,
    verifiers: portcullis_authn::Verifiers,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Compiles `config`. Every problem found is returned, located in the config file.
    pub fn build(
        config: Arc<LoadedConfig>,
        lasting: &Lasting,
        access_log: Option<portcullis_telemetry::AccessLog>,
        generation: u64,
    ) -> Result<Runtime, ConfigErrors> {
        let mut errors = Vec::new();
        let c = &config.config;

        let tls = match &c.server.tls {
            None => None,
            Some(t) => crate::tls::server_config(t, c.server.http2, &c.spiffe)
                .map_err(|(key, msg)| errors.push(Invalid::new(key, msg)))
                .ok(),
        };

        let mut upstreams = HashMap::new();
        for (name, up) in &c.upstreams {
            match lasting.upstream(name, up, &c.spiffe, &format!("upstreams.{name}")) {
                Ok(u) => {
                    upstreams.insert(name.as_str(), u);
                }
                Err(e) => errors.extend(e),
            }
        }

        let verifiers = match portcullis_authn::Verifiers::build(c, &lasting.authn) {
            Ok(a) => a,
            Err(e) => {
                errors.extend(e);
                portcullis_authn::Verifiers::default()
            }
        };

        let policies = portcullis_authz::load_policies(c).unwrap_or_else(|e| {
            errors.push(Invalid::new("authorization.cedar.policies", e));
            None
        });

        let ring = c.token_service.as_ref().and_then(|ts| {
            lasting
                .key_rings
                .ring(&ts.keys)
                .map_err(|(key, msg)| errors.push(Invalid::new(format!("token_service.keys.{key}"), msg)))
                .ok()
        });
        let token_service = match (&c.token_service, &ring) {
            (Some(ts), Some(ring)) => token_service(c, ts, ring, &verifiers, policies.as_ref(), lasting)
                .map_err(|e| errors.extend(e))
                .ok()
                .map(Arc::new),
            _ => None,
        };

        let tz = match c.quota_timezone.as_deref().map(portcullis_limits::window::time_zone) {
            None => jiff::tz::TimeZone::UTC,
            Some(Ok(tz)) => tz,
            Some(Err(e)) => {
                errors.push(Invalid::new("quota_timezone", e));
                jiff::tz::TimeZone::UTC
            }
        };
        let mut routes = Vec::new();
        for (i, rc) in c.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let matcher = Matcher::compile(&rc.matches, &format!("{at}.match"), c.server.ignore_path_case)
                .map_err(|e| errors.extend(e))
                .ok();
            let authz = portcullis_authz::RouteAuthz::new(
                &rc.id,
                rc.authorize.as_ref(),
                &c.authorization,
                policies.as_ref(),
                rc.authenticate.as_deref().is_some_and(|m| m.contains(&portcullis_config::AuthMethod::None)),
            );
            let propagate =
                portcullis_identity::Propagation::build(rc, c.token_service.as_ref().zip(ring.as_ref()), &at)
                    .map_err(|e| errors.extend(e))
                    .ok()
                    .flatten();
            let route =
                compile_route(rc, &at, lasting, &verifiers, authz, &upstreams, c.server.limits.max_body_bytes.bytes())
                    .map_err(|e| errors.extend(e))
                    .ok()
                    .map(|r| Route {
                        propagate,
                        rate_limits: portcullis_limits::route_limits(&rc.id, &rc.rate_limits, &rc.quotas, &tz),
                        ..r
                    });
            if let (Some(m), Some(r)) = (matcher, route) {
                routes.push((m, Arc::new(r), i));
            }
        }
        let router = match Router::new(routes) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.extend(e);
                None
            }
        };

        let (Some(router), true) = (router, errors.is_empty()) else {
            return Err(config.locate(errors));
        };

        let limits = &c.server.limits;
        let max_header_bytes = usize::try_from(limits.max_header_bytes.bytes()).unwrap_or(usize::MAX);
        let h1 = portcullis_http::server::h1::Settings {
            header_read_timeout: limits.header_read_timeout.get(),
            max_head: max_header_bytes,
            max_headers: limits.max_headers,
            http2: c.server.http2,
        };
        let h2 = c.server.http2.then(|| {
            let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            h2.timer(portcullis_http::timer::CoarseTimer)
                .max_concurrent_streams(limits.max_concurrent_streams)
                // Heads between our limit and twice it get a problem+json 431 from the
                // pipeline; hyper refuses larger ones on its own.
                .max_header_list_size(u32::try_from(2 * max_header_bytes).unwrap_or(u32::MAX))
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20))
                .initial_stream_window_size(portcullis_http::server::H2_STREAM_WINDOW)
                .initial_connection_window_size(portcullis_http::server::H2_CONNECTION_WINDOW);
            h2
        });

        let identity_headers = identity_headers(c);
        Ok(Runtime {
            generation,
            router,
            server: Arc::new(ServerSettings {
                tls,
                handshake_timeout: limits.header_read_timeout.get(),
                h1,
                h2,
                drain_timeout: c.server.drain_timeout.get(),
            }),
            head_limits: HeadLimits { max_header_bytes, max_headers: limits.max_headers },
            trusted_proxies: c.server.trusted_proxies.clone(),
            forwarded: c.server.forwarded_headers,
            access_log: access_log.filter(|_| c.access_log.enabled),
            no_route: lasting.metrics.route("(none)"),
            anonymous: Principal::anonymous(),
            guarded_headers: guarded_headers(c, &identity_headers),
            identity_headers,
            token_service,
            plans: portcullis_limits::Plans::new(c, &tz),
            meter: lasting.meter.clone().filter(|_| c.usage.enabled),
            brute_force: c.brute_force.as_ref().map(portcullis_limits::brute::BruteForce::new),
            verifiers,
            config,
        })
    }

    /// Whether everything needed to serve is loaded (issuers' keys): `/readyz`.
    pub fn ready(&self) -> bool {
        self.verifiers.ready()
    }

    /// The usage meter, when requests are metered.
    pub fn meter(&self) -> Option<&Arc<portcullis_state::usage::Meter>> {
        self.meter.as_ref()
    }

    /// The credential verifiers.
    pub(crate) fn verifiers(&self) -> &portcullis_authn::Verifiers {
        &self.verifiers
    }

    /// The shared-state backend (readiness pings it).
    pub fn state(&self) -> Option<&portcullis_state::State> {
        self.verifiers.state()
    }

    /// The ids of the issuers without usable keys: routes that need one are not ready.
    pub fn issuers_without_keys(&self) -> Vec<Arc<str>> {
        self.verifiers.issuers_without_keys()
    }

    /// A route's authorization, by id (for `authz replay`).
    pub fn route_authz(&self, id: &str) -> Option<&portcullis_authz::RouteAuthz> {
        self.router.iter().find(|(_, r)| &*r.id == id).map(|(_, r)| &r.authz)
    }

    /// Route ids, most specific first.
    pub fn route_ids(&self) -> Vec<Arc<str>> {
        self.router.iter().map(|(_, r)| r.id.clone()).collect()
    }

    /// Authorizes a described request offline, as the pipeline would (for `authz explain`
    /// and `authz replay`): the route named by the record (or matched from its method,
    /// host and path), then its rules and policies. `None` when no route takes the request.
    pub fn judge(
        &self,
        facts: &portcullis_authz::InputRecord,
        principal: &Arc<Principal>,
    ) -> Result<Option<(Arc<str>, portcullis_authz::Decision)>, String> {
        let method = http::Method::from_bytes(facts.method.as_bytes()).map_err(|_| "invalid method".to_string())?;
        // The same reading of host and path as live traffic gets (`pipeline::run`).
        let host = crate::router::route_host(&facts.host).map_err(|_| "invalid host".to_string())?;
        let routed = self.router.route(&host, &facts.path, &method);
        let path = match &routed {
            Ok(r) => r.path.clone(),
            Err(_) => crate::router::path::read(&facts.path, false).map_err(|e| e.detail().to_string())?.path,
        };
        let found = match &facts.route {
            Some(id) => self.router.iter().find(|(_, r)| &*r.id == id).map(|(_, r)| {
                let params = routed.as_ref().map(|r| r.params.clone()).unwrap_or_default();
                (r.clone(), params)
            }),
            None => routed.as_ref().ok().map(|r| (r.route.clone(), r.params.clone())),
        };
        let Some((route, mut params)) = found else { return Ok(None) };
        if !facts.params.is_empty() {
            params = facts.params.iter().map(|(k, v)| (Arc::from(k.as_str()), Box::from(v.as_str()))).collect();
        }
        let input = portcullis_authz::Input {
            principal,
            route: &route.id,
            method: method.as_str(),
            host: &host,
            path: &path,
            params: &params,
            client_ip: facts.context.client_ip,
            now: facts.time(),
            tls: facts.context.tls,
            mtls: facts.context.mtls,
            risk: facts.context.risk,
        };
        Ok(Some((route.id.clone(), route.authz.decide(&input))))
    }
}

fn compile_route(
    rc: &RouteConfig,
    at: &str,
    lasting: &Lasting,
    verifiers: &portcullis_authn::Verifiers,
    authz: portcullis_authz::RouteAuthz,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    default_max_body: u64,
) -> Result<Route, Vec<Invalid>> {
    let mut errors = Vec::new();
    let (target, upstream_timeout) = if rc.upstream == ECHO_UPSTREAM {
        (Some(Target::Echo), Duration::from_secs(30))
    } else if rc.upstream.contains("://") {
        // A URL: an anonymous upstream with default settings, named after the route.
        let cfg = UpstreamConfig::for_endpoint(rc.upstream.clone());
        match lasting.upstream(&rc.id, &cfg, &SpiffeConfig::default(), &format!("{at}.upstream")) {
            Ok(u) => {
                let t = u.request_timeout;
                (Some(Target::Upstream(u)), t)
            }
            Err(e) => {
                // Errors name `endpoints[0]` of a made-up upstream: point at the route's key.
                errors.extend(e.into_iter().map(|i| Invalid::new(format!("{at}.upstream"), i.message)));
                (None, Duration::ZERO)
            }
        }
    } else {
        match upstreams.get(rc.upstream.as_str()) {
            Some(u) => (Some(Target::Upstream(u.clone())), u.request_timeout),
            // Already reported by validation, or the upstream failed to build.
            None => (None, Duration::ZERO),
        }
    };

    let authn = match verifiers.route(rc, at) {
        Ok(None) => Some(Authentication::Public),
        Ok(Some(a)) => Some(Authentication::Required(a)),
        Err(e) => {
            errors.extend(e);
            None
        }
    };

    let rewrite = match (&rc.rewrite, &rc.matches.path_prefix) {
        (Some(rw), Some(prefix)) => {
            if !rw.path_prefix.starts_with('/') {
                errors.push(Invalid::new(format!("{at}.rewrite.path_prefix"), "must start with `/`"));
            }
            // A prefix cut from a path whose segments carry parameters would cut them apart.
            if rc.matches.path_parameters {
                errors.push(Invalid::new(
                    format!("{at}.rewrite"),
                    "cannot be combined with `match.path_parameters: true`",
                ));
            }
            Some((prefix.clone(), rw.path_prefix.clone()))
        }
        _ => None,
    };

    let client_ips = match &rc.client_ips {
        Some(rules) => portcullis_limits::ip::IpRules::build(rules, &format!("{at}.client_ips"))
            .map_err(|e| errors.extend(e.into_iter().map(|(key, msg)| Invalid::new(key, msg))))
            .ok(),
        None => None,
    };

    match (target, authn, errors.is_empty()) {
        (Some(target), Some(authn), true) => Ok(Route {
            id: rc.id.as_str().into(),
            target,
            authn,
            authz,
            timeout: rc.timeouts.as_ref().and_then(|t| t.request).map_or(upstream_timeout, |d| d.get()),
            tunnel_idle: rc
                .timeouts
                .as_ref()
                .and_then(|t| t.tunnel_idle)
                .map_or(portcullis_config::RouteTimeouts::DEFAULT_TUNNEL_IDLE, |d| d.get()),
            upgrades: match &rc.upgrades {
                Some(list) => list.iter().map(|p| p.to_ascii_lowercase().into()).collect(),
                None => RouteConfig::DEFAULT_UPGRADES.iter().map(|&p| p.into()).collect(),
            },
            max_body: rc.limits.as_ref().map_or(default_max_body, |l| l.max_body_bytes.bytes()),
            rewrite,
            propagate: None,
            client_ips,
            rate_limits: portcullis_limits::Limits::default(),
            concurrency: rc.concurrency.as_ref().map(portcullis_limits::concurrency::Concurrency::new),
            body_rules: portcullis_limits::body::BodyRules::of(rc),
            metrics: lasting.metrics.route(&rc.id),
        }),
        _ => Err(errors),
    }
}

/// The token service: subject and actor tokens are checked like a route's bearer tokens
/// (the configured issuers, and introspection when configured).
fn token_service(
    c: &portcullis_config::Config,
    ts: &portcullis_config::TokenServiceConfig,
    ring: &Arc<portcullis_identity::KeyRing>,
    verifiers: &portcullis_authn::Verifiers,
    policies: Option<&Arc<portcullis_authz::Policies>>,
    lasting: &Lasting,
) -> Result<portcullis_identity::TokenService, Vec<Invalid>> {
    let mut methods = Vec::new();
    if !c.issuers.is_empty() {
        methods.push("jwt");
    }
    if c.introspection.is_some() {
        methods.push("introspection");
    }
    let tokens = if methods.is_empty() {
        None
    } else {
        let rc: RouteConfig = serde_json::from_value(serde_json::json!({
            "id": "token_service", "upstream": ECHO_UPSTREAM, "authenticate": methods,
        }))
        .map_err(|e| vec![Invalid::new("token_service", e.to_string())])?;
        verifiers.route(&rc, "token_service")?
    };
    let state = lasting.authn.state(&c.state).ok();
    portcullis_identity::TokenService::new(ts, ring.clone(), &c.authorization, policies, tokens, state)
}

/// The headers besides [`crate::headers::GUARDED`] whose `_` spellings a client may not send:
/// the identity headers and the API-key header.
fn guarded_headers(c: &portcullis_config::Config, identity: &[http::HeaderName]) -> Arc<[http::HeaderName]> {
    let mut names: Vec<http::HeaderName> = identity.to_vec();
    if let Some(k) = &c.api_keys
        && let Ok(n) = http::HeaderName::from_bytes(k.header.as_bytes())
        && !names.contains(&n)
    {
        names.push(n);
    }
    names.into()
}

/// Every identity header a route sets (`propagate.headers`, and an internal token's own
/// header other than `Authorization`).
fn identity_headers(c: &portcullis_config::Config) -> Arc<[http::HeaderName]> {
    let mut names: Vec<http::HeaderName> = Vec::new();
    for p in c.routes.iter().filter_map(|r| r.propagate.as_ref()) {
        let token_header = p.internal_token.as_ref().and_then(|t| t.header.as_deref());
        for name in p.headers.keys().map(String::as_str).chain(token_header) {
            if let Ok(n) = http::HeaderName::from_bytes(name.as_bytes())
                && n != http::header::AUTHORIZATION
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    names.into()
}
