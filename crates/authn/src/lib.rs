//! The authenticate stage: who is calling.
//!
//! A route lists the methods it accepts; its [`RouteAuthenticator`] finds the credential
//! (`Authorization: Bearer`, or where the route says; an API-key header), checks it (a JWT
//! against the configured issuers and their keys, an opaque token by introspection, a key
//! against its hash) and produces the [`Principal`] that later stages read. Every failure is a
//! refusal: `401`, `400`, or `503` when something needed to decide is unavailable.

#![forbid(unsafe_code)]

pub mod apikey;
pub mod cache;
pub mod dpop;
mod error;
mod events;
pub mod extract;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod logout;
pub mod mtls;
pub mod signals;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use portcullis_config::{AuthMethod, Config, Invalid, IssuerConfig, KeyFetchConfig, RouteConfig, StateConfig};
use portcullis_core::{AuthnMethod, ByPrincipal, FileStamp, Principal, Problem};
use portcullis_jose::{HeaderPolicy, Jws};
use portcullis_state::State;

pub use apikey::ApiKeys;
pub use dpop::Dpop;
pub use error::{AuthnError, REALM, Schemes};
pub use introspection::Introspector;
pub use jwt::Issuer;
pub use mtls::ClientCert;

use cache::{Cache, Entry};
use extract::Locations;
use jwks::{KeyStore, Policy, Source};

thread_local! {
    static VERIFIED: RefCell<Cache<Arc<str>, Issuer, foldhash::quality::RandomState>> = RefCell::new(Cache::default());
    /// The DPoP form of the last token principal a DPoP request presented.
    static DPOP_PRINCIPAL: RefCell<ByPrincipal<Arc<Principal>>> = RefCell::new(ByPrincipal::new(1));
}

/// Called after a public-key signature check, whatever its outcome: lets the worker run the
/// other ready requests first, so that their upstream writes go out together instead of each
/// waking a sleeping peer (`bench/RESULTS.md`, "A pause after each signature check").
pub(crate) async fn after_signature_check() {
    tokio::task::yield_now().await;
}

/// The principal of a token presented with its DPoP proof: the token's, authenticated by
/// `dpop`. Made once per cached token principal and reused while the same token keeps coming
/// (as a client reuses its token), so a request neither copies the principal nor gives later
/// stages a new one (the authorization stage reuses its work for the same shared principal).
fn as_dpop(token: Arc<Principal>) -> Arc<Principal> {
    DPOP_PRINCIPAL.with_borrow_mut(|last| {
        if let Some(derived) = last.get(&token, ()) {
            return derived.clone();
        }
        let derived = Arc::new(Principal { method: AuthnMethod::Dpop, ..(*token).clone() });
        last.insert(&token, (), derived).clone()
    })
}

/// What authentication keeps across reloads: issuers' key stores, so that a reload keeps the
/// keys (and the cache entries they verified) of issuers whose key source did not change, and
/// the shared-state backend.
#[derive(Debug, Default)]
pub struct Retained {
    stores: Mutex<HashMap<KeySource, Weak<KeyStore>>>,
    /// The shared-state backend and the settings it was made with: kept while they do not
    /// change, so the DPoP replay window survives a reload.
    state: Mutex<Option<(StateConfig, State)>>,
}

/// What makes two issuers' key stores one: where the keys come from, how they are fetched,
/// and the files read for them as they are on disk. (The issuer's id is not part of it: two
/// issuers with one source share a store.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KeySource {
    origin: KeyOrigin,
    fetch: KeyFetchConfig,
    /// `keys.ca`.
    ca: Option<FileStamp>,
}

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyOrigin {
    /// `jwks_file`.
    File(FileStamp),
    /// `jwks_uri`.
    Uri(String),
    /// OIDC discovery for the issuer.
    Discovery(String),
}

impl KeySource {
    /// The source of `cfg`'s keys; `None` for an issuer without keys to fetch or read.
    fn of(cfg: &IssuerConfig) -> Option<KeySource> {
        let origin = if let Some(f) = &cfg.jwks_file {
            KeyOrigin::File(FileStamp::of(f))
        } else if let Some(u) = &cfg.jwks_uri {
            KeyOrigin::Uri(u.clone())
        } else if cfg.discovery {
            KeyOrigin::Discovery(cfg.issuer.clone())
        } else {
            return None;
        };
        Some(KeySource { origin, fetch: cfg.keys.clone(), ca: cfg.keys.ca.as_deref().map(FileStamp::of) })
    }
}

impl Retained {
    /// The shared-state backend for `cfg`, the same one as before when `cfg` is unchanged.
    pub fn state(&self, cfg: &StateConfig) -> Result<State, (&'static str, String)> {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, s)) = &*held
            && c == cfg
        {
            return Ok(s.clone());
        }
        let state = State::build(cfg)?;
        *held = Some((cfg.clone(), state.clone()));
        Ok(state)
    }

    fn key_store(&self, cfg: &IssuerConfig) -> Result<Option<Arc<KeyStore>>, (&'static str, String)> {
        let Some(source) = KeySource::of(cfg) else { return Ok(None) };
        let k = &cfg.keys;
        let policy = Policy {
            min_cache: k.min_cache.get(),
            max_cache: k.max_cache.get(),
            refetch_interval: k.refetch_interval.get(),
            stale_for: k.stale_for.get(),
            timeout: k.timeout.get(),
            allow_http: k.allow_http,
        };
        let fetched = match &source.origin {
            KeyOrigin::File(_) => None,
            KeyOrigin::Uri(u) => Some(Source::Uri(jwks::check_url(u, k.allow_http).map_err(|e| ("jwks_uri", e))?)),
            KeyOrigin::Discovery(issuer) => {
                jwks::check_url(issuer, k.allow_http).map_err(|e| ("issuer", e))?;
                Some(Source::Discovery(issuer.clone()))
            }
        };
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = stores.get(&source).and_then(Weak::upgrade) {
            return Ok(Some(s));
        }
        let store = match (fetched, &source.origin) {
            (Some(fetched), _) => {
                let client = jwks::http_client(policy.timeout, k.ca.as_deref()).map_err(|e| ("keys.ca", e))?;
                KeyStore::fetching(&cfg.id, fetched, policy, client)
            }
            (None, KeyOrigin::File(f)) => {
                KeyStore::from_file(&cfg.id, &f.path, policy).map_err(|e| ("jwks_file", e))?
            }
            (None, _) => return Ok(None),
        };
        stores.insert(source, Arc::downgrade(&store));
        Ok(Some(store))
    }
}

/// What revokes `p` now, if anything; `Err` when the revocations cannot be read (a stale
/// copy of a shared list), which callers treat as revoked (fail closed).
pub fn revoked_by(
    state: &State,
    p: &Principal,
    token: Option<&str>,
) -> Result<Option<portcullis_state::revocations::Kind>, portcullis_state::StateError> {
    let revoked = state.revoked()?;
    if revoked.is_empty() {
        return Ok(None);
    }
    let sid = || p.claims.as_ref()?.get("sid")?.as_str().map(str::to_string);
    let token_sha256 = || {
        use base64::Engine as _;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token?.as_bytes());
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()))
    };
    let who = portcullis_state::revocations::Subject {
        jti: p.token_id.as_deref(),
        sub: p.subject.as_deref(),
        client_id: p.client_id.as_deref(),
        sid: Some(&sid),
        spiffe_id: p.spiffe_id.as_deref(),
        issued_at: p.issued_at,
        token_sha256: Some(&token_sha256),
    };
    Ok(revoked.refuses(&who))
}

/// The credential verifiers of one config: its issuers, introspection, API keys and DPoP.
/// Each route's [`RouteAuthenticator`] takes the ones it accepts from them.
#[derive(Debug, Default)]
pub struct Verifiers {
    issuers: Vec<Arc<Issuer>>,
    introspector: Option<Arc<Introspector>>,
    api_keys: Option<Arc<ApiKeys>>,
    dpop: Option<Arc<Dpop>>,
    state: Option<State>,
}

impl Verifiers {
    /// Builds issuers, the introspector and the API keys; problems are located by key path.
    pub fn build(config: &Config, retained: &Retained) -> Result<Verifiers, Vec<Invalid>> {
        let mut errors = Vec::new();
        let mut issuers = Vec::new();
        for (i, ic) in config.issuers.iter().enumerate() {
            let built = retained.key_store(ic).and_then(|store| Issuer::new(ic, store));
            match built {
                Ok(issuer) => issuers.push(Arc::new(issuer)),
                Err((key, msg)) => errors.push(Invalid::new(format!("issuers[{i}].{key}"), msg)),
            }
        }
        let introspector = match &config.introspection {
            None => None,
            Some(c) => match Introspector::new(c) {
                Ok(i) => Some(Arc::new(i)),
                Err((key, msg)) => {
                    errors.push(Invalid::new(format!("introspection.{key}"), msg));
                    None
                }
            },
        };
        let api_keys = match &config.api_keys {
            None => None,
            Some(c) => match ApiKeys::new(c) {
                Ok(k) => Some(Arc::new(k)),
                Err(msg) => {
                    errors.push(Invalid::new("api_keys", msg));
                    None
                }
            },
        };
        let state = match retained.state(&config.state) {
            Err((key, msg)) => {
                errors.push(Invalid::new(format!("state.{key}"), msg));
                None
            }
            Ok(state) => Some(state),
        };
        let dpop = match state.clone() {
            None => None,
            Some(state) => match Dpop::new(&config.dpop, state) {
                Ok(d) => Some(Arc::new(d)),
                Err((key, msg)) => {
                    errors.push(Invalid::new(format!("dpop.{key}"), msg));
                    None
                }
            },
        };
        if errors.is_empty() { Ok(Verifiers { issuers, introspector, api_keys, dpop, state }) } else { Err(errors) }
    }

    /// The shared-state backend of the config.
    pub fn state(&self) -> Option<&State> {
        self.state.as_ref()
    }

    /// Whether every issuer has its keys (readiness).
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.ready())
    }

    /// The ids of the issuers without usable keys (per-route readiness).
    pub fn issuers_without_keys(&self) -> Vec<Arc<str>> {
        self.issuers.iter().filter(|i| !i.ready()).map(|i| i.id.clone()).collect()
    }

    /// The authenticator of a route, or `None` for a public route. `at` is its key path.
    pub fn route(&self, rc: &RouteConfig, at: &str) -> Result<Option<RouteAuthenticator>, Vec<Invalid>> {
        let methods = rc.authenticate.as_deref().unwrap_or_default();
        if methods == [AuthMethod::None] {
            return Ok(None);
        }
        let mut errors = Vec::new();
        let jwt = methods.contains(&AuthMethod::Jwt);
        let dpop = if methods.contains(&AuthMethod::Dpop) { self.dpop.clone() } else { None };
        if methods.contains(&AuthMethod::Dpop) && dpop.is_none() {
            errors.push(Invalid::new(format!("{at}.authenticate"), "DPoP is not available (see `dpop` and `state`)"));
        }
        // DPoP-bound tokens are JWTs of the same issuers.
        let issuers: Vec<Arc<Issuer>> = match (&rc.issuers, jwt || dpop.is_some()) {
            (_, false) => Vec::new(),
            (None, true) => self.issuers.clone(),
            (Some(ids), true) => self.issuers.iter().filter(|i| ids.iter().any(|id| **id == *i.id)).cloned().collect(),
        };
        // The issuers a route lists bind every path a token can take: a JWT of another issuer
        // is refused, not sent to introspection, and an introspection answer that names an
        // issuer must name one of these.
        let allowed_issuers: Option<Vec<Arc<str>>> = rc.issuers.as_ref().map(|ids| {
            self.issuers.iter().filter(|i| ids.iter().any(|id| **id == *i.id)).map(|i| i.issuer.clone()).collect()
        });
        let introspection = if methods.contains(&AuthMethod::Introspection) { self.introspector.clone() } else { None };
        let api_keys = if methods.contains(&AuthMethod::ApiKey) { self.api_keys.clone() } else { None };
        let mut locations = Locations::default();
        if let Some(c) = &rc.credentials {
            if let Some(h) = &c.header {
                match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => locations.header = Some(n),
                    Err(_) => errors
                        .push(Invalid::new(format!("{at}.credentials.header"), format!("`{h}` is not a header name"))),
                }
            }
            locations.cookie = c.cookie.clone();
            locations.query = c.query.clone();
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let max_token_bytes = issuers.iter().map(|i| i.max_token_bytes).max().unwrap_or(16 * 1024);
        Ok(Some(RouteAuthenticator {
            bearer: jwt || introspection.is_some(),
            dpop,
            mtls: methods.contains(&AuthMethod::Mtls),
            certificate_bound: rc.certificate_bound,
            issuers,
            allowed_issuers,
            introspection,
            api_keys,
            locations,
            max_token_bytes,
            state: self.state.clone(),
        }))
    }
}

/// The code of a request refused because revocations could not be checked.
pub const REVOCATIONS_UNAVAILABLE: &str = "revocations_unavailable";

/// The `DPoP` header.
const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");

/// What the authenticate stage knows of the request beyond its head.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The request came over TLS (the scheme of a DPoP proof's `htu`).
    pub https: bool,
    /// The authority the request was sent to (`host[:port]`).
    pub authority: &'a str,
    /// The connection's verified client certificate.
    pub client_cert: Option<&'a ClientCert>,
}

/// How one route authenticates callers: the credentials it accepts, where it finds them and
/// the verifiers that check them. (The token service checks subject and actor tokens with one
/// built like a route's.)
#[derive(Debug)]
pub struct RouteAuthenticator {
    /// Bearer tokens are accepted (JWT or introspection): 401s carry Bearer challenges.
    bearer: bool,
    /// DPoP-bound tokens are accepted, with their proofs.
    dpop: Option<Arc<Dpop>>,
    /// The client certificate of the connection is accepted as the credential.
    mtls: bool,
    /// Only certificate-bound tokens are accepted.
    certificate_bound: bool,
    issuers: Vec<Arc<Issuer>>,
    /// The `iss` of the issuers the route lists (`routes[].issuers`), when it lists them: a
    /// JWT-shaped token must name one (whether verified here or by introspection), and so must
    /// an introspection answer that has an `iss`.
    allowed_issuers: Option<Vec<Arc<str>>>,
    introspection: Option<Arc<Introspector>>,
    api_keys: Option<Arc<ApiKeys>>,
    locations: Locations,
    max_token_bytes: usize,
    /// Where revocations are looked up.
    state: Option<State>,
}

impl RouteAuthenticator {
    /// Authenticates a request: the principal, or the problem that refuses it.
    pub async fn authenticate(
        &self,
        parts: &http::request::Parts,
        cx: &Context<'_>,
    ) -> Result<Arc<Principal>, Problem> {
        match self.run(parts, cx).await.and_then(|p| self.not_revoked(p, parts)) {
            Ok(p) => Ok(p),
            Err(e) => {
                let dpop_request = matches!(
                    extract::authorization(&parts.headers),
                    Ok(extract::Authorization::Other(scheme, _)) if scheme.eq_ignore_ascii_case("dpop")
                );
                Err(e.into_problem(&Schemes {
                    realm: REALM,
                    bearer: self.bearer,
                    mtls: self.mtls,
                    dpop_algs: self.dpop.as_deref().map(|d| d.algs_header.as_str()),
                    api_key_header: self.api_keys.as_ref().map(|k| &k.header),
                    dpop_request,
                }))
            }
        }
    }

    /// The principal, unless a revocation names its credential, subject, client, session or
    /// workload (every request, cached credentials included). A stale copy of a shared list
    /// refuses (fail closed).
    fn not_revoked(&self, p: Arc<Principal>, parts: &http::request::Parts) -> Result<Arc<Principal>, AuthnError> {
        let Some(state) = &self.state else { return Ok(p) };
        // The token as sent (`Bearer` or `DPoP`), for revocations by its hash.
        let token = match extract::authorization(&parts.headers) {
            Ok(extract::Authorization::Bearer(t)) => Some(t),
            Ok(extract::Authorization::Other(scheme, t)) if scheme.eq_ignore_ascii_case("dpop") => Some(t),
            _ => None,
        };
        match revoked_by(state, &p, token) {
            Ok(None) => Ok(p),
            Ok(Some(kind)) => Err(AuthnError::invalid(
                "credential_revoked",
                format!("the credential has been revoked (by {})", kind.as_str()),
            )),
            Err(_) => Err(AuthnError::unavailable(
                REVOCATIONS_UNAVAILABLE,
                "revocations cannot be checked now; try again shortly",
            )),
        }
    }

    async fn run(&self, parts: &http::request::Parts, cx: &Context<'_>) -> Result<Arc<Principal>, AuthnError> {
        let authorization = extract::authorization(&parts.headers)?;
        // A route that takes bearer tokens checks one's grammar in `token` (past the cache);
        // any other refuses one outside it here, as it may be passed on as it came.
        if !self.bearer
            && let extract::Authorization::Bearer(token) = authorization
        {
            extract::b64token(token)?;
        }
        if let (Some(dpop), extract::Authorization::Other(scheme, token)) = (&self.dpop, &authorization)
            && scheme.eq_ignore_ascii_case("dpop")
        {
            return self.dpop(dpop, parts, cx, token).await;
        }
        if self.bearer
            && let Some(token) = extract::bearer(&parts.headers, parts.uri.query(), &authorization, &self.locations)?
        {
            let principal = self.token(token).await?;
            // RFC 9449 §7.2: a DPoP-bound token is worthless without its proof.
            if principal.confirmation.as_ref().is_some_and(|c| c.jkt.is_some()) {
                return Err(AuthnError::invalid(
                    "token_dpop_bound",
                    "this token is DPoP-bound: present it with the DPoP scheme and a proof",
                ));
            }
            self.certificate_binding(&principal, cx)?;
            return Ok(principal);
        }
        if self.dpop.is_some() && matches!(authorization, extract::Authorization::Bearer(_)) {
            return Err(AuthnError::invalid("dpop_required", "this route requires a DPoP-bound token and its proof"));
        }
        if let Some(keys) = &self.api_keys {
            let mut presented = parts.headers.get_all(&keys.header).iter();
            if let Some(v) = presented.next() {
                if presented.next().is_some() {
                    return Err(AuthnError::bad_request("credential_ambiguous", "more than one API-key header"));
                }
                return keys.check(v.as_bytes());
            }
        }
        if self.mtls
            && let Some(cert) = cx.client_cert
        {
            return Ok(cert.principal.clone());
        }
        Err(AuthnError::Missing)
    }

    /// `Authorization: DPoP <token>` with its `DPoP` proof header.
    async fn dpop(
        &self,
        dpop: &Dpop,
        parts: &http::request::Parts,
        cx: &Context<'_>,
        token: &str,
    ) -> Result<Arc<Principal>, AuthnError> {
        let token = extract::b64token(token)?;
        let mut proofs = parts.headers.get_all(DPOP).iter();
        let proof = proofs.next().ok_or_else(|| AuthnError::Proof {
            code: "dpop_proof_missing",
            description: "the request has no DPoP proof header".into(),
        })?;
        if proofs.next().is_some() {
            return Err(AuthnError::Proof {
                code: "dpop_proof_ambiguous",
                description: "the request has more than one DPoP header".into(),
            });
        }
        let proof = proof.to_str().map_err(|_| AuthnError::Proof {
            code: "dpop_proof_malformed",
            description: "the DPoP header is not ASCII".into(),
        })?;
        let url = format!("{}://{}{}", if cx.https { "https" } else { "http" }, cx.authority, parts.uri.path());
        let checked = dpop.check(proof, parts.method.as_str(), &url, token, jwt::unix_now());
        // A signature check, unless the proof was refused before it (as cheaply as a pause).
        after_signature_check().await;
        let checked = checked?;
        let principal = self.token(token).await?;
        match principal.confirmation.as_ref().and_then(|c| c.jkt.as_deref()) {
            Some(jkt) if jkt == checked.jkt => {}
            Some(_) => {
                return Err(AuthnError::Proof {
                    code: "dpop_jkt",
                    description: "the DPoP proof is not signed by the key the token is bound to".into(),
                });
            }
            None => return Err(AuthnError::invalid("token_not_dpop_bound", "the token is not bound to a DPoP key")),
        }
        self.certificate_binding(&principal, cx)?;
        dpop.remember(&checked).await?;
        Ok(as_dpop(principal))
    }

    /// RFC 8705 §3: a token bound to a certificate (`cnf.x5t#S256`) is accepted only on a
    /// connection authenticated with that certificate; a route may require binding.
    fn certificate_binding(&self, principal: &Principal, cx: &Context<'_>) -> Result<(), AuthnError> {
        let bound = principal.confirmation.as_ref().and_then(|c| c.x5t_s256.as_deref());
        match (bound, cx.client_cert) {
            (Some(x5t), Some(cert)) if x5t == &*cert.thumbprint => Ok(()),
            (Some(_), Some(_)) => Err(AuthnError::invalid(
                "token_certificate_mismatch",
                "the token is bound to another client certificate",
            )),
            (Some(_), None) => Err(AuthnError::invalid(
                "token_certificate_missing",
                "the token is certificate-bound: present it over TLS with its client certificate",
            )),
            (None, _) if self.certificate_bound => Err(AuthnError::invalid(
                "token_not_certificate_bound",
                "this route accepts only certificate-bound tokens",
            )),
            (None, _) => Ok(()),
        }
    }

    /// Removes every place this route reads credentials from, so that the upstream never
    /// sees the caller's credential: the API-key header, the token header, the token cookie
    /// and the token query parameter. (`Authorization` and `DPoP` are removed by the
    /// pipeline for every route.)
    pub fn scrub(&self, parts: &mut http::request::Parts) {
        if let Some(k) = &self.api_keys {
            extract::remove_every_spelling(&mut parts.headers, &k.header);
        }
        if let Some(h) = &self.locations.header {
            extract::remove_every_spelling(&mut parts.headers, h);
        }
        if let Some(name) = &self.locations.cookie {
            extract::remove_cookie(&mut parts.headers, name);
        }
        if let Some(name) = &self.locations.query {
            extract::remove_query_param(&mut parts.uri, name);
        }
    }

    /// Checks a bearer token: a JWT of an accepted issuer, else (if the route allows it) by
    /// introspection.
    ///
    /// On a route that lists its `issuers`, a token shaped like a JWT must name one of them in
    /// `iss` (read before anything is verified, to choose the path) or is refused, whichever
    /// path it would take: introspection does not rescue a JWT of an issuer the route does not
    /// accept. An introspection answer with an `iss` must name one of them too; an answer
    /// without `iss` is the endpoint's own word (set `introspection.issuer` to require one).
    pub async fn token(&self, token: &str) -> Result<Arc<Principal>, AuthnError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthnError::invalid("token_too_large", "the token is larger than accepted"));
        }
        if !self.issuers.is_empty() {
            // Only verified JWTs are cached: a hit needs no further look at the token.
            let now = jwt::unix_now();
            let cached =
                VERIFIED.with(|c| c.borrow_mut().get(token, now, |o| self.issuers.iter().any(|i| Arc::ptr_eq(i, o))));
            if let Some(Some(p)) = cached {
                return Ok(p);
            }
        }
        // Checked here rather than where the token was found: a cached token passed it.
        let token = extract::b64token(token)?;
        let restricted = self.allowed_issuers.as_deref();
        let jws = if (self.issuers.is_empty() && restricted.is_none()) || !looks_like_jwt(token) {
            None
        } else {
            match Jws::parse(token, HeaderPolicy::default()) {
                Ok(jws) => Some(jws),
                // Not `eyJ`-shaped (a header with leading whitespace was guessed): an opaque
                // token that happens to look so much like one goes to introspection, below,
                // unless the route restricts issuers (then its issuer must be readable).
                Err(_) if self.introspection.is_some() && restricted.is_none() && !token.starts_with("eyJ") => None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(jws) = jws {
            let claims = portcullis_jose::claims::TokenClaims::parse(&jws.payload).map_err(jwt::claims_error)?;
            let iss = match &claims.iss {
                portcullis_jose::claims::Claim::Text(iss) => Some(&**iss),
                _ => None,
            };
            if let Some(allowed) = restricted
                && !iss.is_some_and(|iss| allowed.iter().any(|a| **a == *iss))
            {
                return Err(AuthnError::invalid("issuer_unknown", "the token's issuer is not trusted here"));
            }
            match self.issuers.iter().find(|i| Some(&*i.issuer) == iss) {
                Some(issuer) => {
                    let (principal, key) = issuer.verify_parsed(&jws, &claims).await?;
                    drop(claims);
                    let principal = Arc::new(jwt::with_claims(principal, jws.payload));
                    let until = issuer.cacheable_until(principal.expires_at);
                    let entry =
                        Entry { principal: Some(principal.clone()), owner: issuer.clone(), key: Some(key), until };
                    VERIFIED.with(|c| c.borrow_mut().insert(Arc::from(token), entry));
                    return Ok(principal);
                }
                None if self.introspection.is_none() => {
                    return Err(AuthnError::invalid("issuer_unknown", "the token's issuer is not trusted here"));
                }
                None => {}
            }
        }
        match &self.introspection {
            Some(i) => {
                let principal = i.check(token, &cache::digest(token.as_bytes())).await?;
                // Checked on every answer, cached ones included: the cache is shared by routes.
                if let (Some(allowed), Some(iss)) = (restricted, principal.issuer.as_deref())
                    && !allowed.iter().any(|a| **a == *iss)
                {
                    return Err(AuthnError::invalid(
                        "issuer_not_allowed",
                        "the token's issuer (as introspection names it) is not trusted here",
                    ));
                }
                Ok(principal)
            }
            None => Err(AuthnError::invalid("token_malformed", "the token is not a JWT")),
        }
    }
}

/// Three segments, a JSON object for a header: worth treating as a JWT.
fn looks_like_jwt(token: &str) -> bool {
    if dots(token.as_bytes()) != 2 {
        return false;
    }
    // `{"` encodes as `eyJ`; a header that starts with JSON whitespace is a JWT too.
    if token.starts_with("eyJ") {
        return true;
    }
    let header = token.split('.').next().unwrap_or_default();
    // A prefix of whole 4-character groups decodes on its own (`get`: never split a character).
    let start = header.get(..header.len().min(64) / 4 * 4).unwrap_or_default();
    portcullis_jose::b64::decode(start)
        .is_some_and(|bytes| bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) == Some(&b'{'))
}

/// How many `.` there are: a byte counter per 32-byte chunk, which the compiler vectorises
/// (`filter().count()` adds into a word a byte, ~5 instructions a byte: 3,200 for a typical
/// access token, on every signature check).
fn dots(bytes: &[u8]) -> usize {
    let mut chunks = bytes.chunks_exact(32);
    let whole: usize = chunks.by_ref().map(|c| usize::from(c.iter().fold(0u8, |n, &b| n + u8::from(b == b'.')))).sum();
    whole + chunks.remainder().iter().filter(|&&b| b == b'.').count()
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Poll, Waker};

    use portcullis_jose::{Algorithm, SigningKey, b64};
    use serde_json::{Map, json};

    use super::*;

    #[test]
    fn what_is_taken_for_a_jwt() {
        let b64 = portcullis_jose::b64::encode;
        assert!(looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.e30.c2ln"));
        assert!(looks_like_jwt(&format!("{}.e30.c2ln", b64(b" {\"alg\":\"ES256\"}"))));
        assert!(looks_like_jwt(&format!("{}.e30.c2ln", b64(b"\r\n\t {\"alg\":\"ES256\"}"))));
        assert!(!looks_like_jwt(&format!("{}.e30.c2ln", b64(b"[\"alg\"]"))));
        assert!(!looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.e30"), "two segments");
        assert!(!looks_like_jwt("opaque-token-value"));
        // Never split a character, whatever comes in.
        assert!(!looks_like_jwt("ééééééééééééééééééééééééééééééééé.a.b"));
        assert!(!looks_like_jwt(".."));
        assert!(!looks_like_jwt(&format!("eyJ{}.e30.c2ln.x", "a".repeat(61))), "three dots, the last past a chunk");
    }

    proptest::proptest! {
        /// Counted a chunk at a time, the same as a byte at a time: all dots, none, and dots
        /// on either side of every chunk boundary.
        #[test]
        fn dots_are_counted(s in "[.a]{0,200}") {
            proptest::prop_assert_eq!(dots(s.as_bytes()), s.bytes().filter(|&b| b == b'.').count());
        }
    }

    #[test]
    fn dots_in_whole_chunks() {
        for n in [31, 32, 33, 64, 65, 255, 256, 1000] {
            assert_eq!(dots(".".repeat(n).as_bytes()), n);
            assert_eq!(dots("x".repeat(n).as_bytes()), 0);
        }
    }

    /// Polls `f` until it is ready (nothing here waits on anything else: keys come from a
    /// file, the replay cache is in memory); its output, and how many times it paused.
    fn run<F: Future>(f: F) -> (F::Output, usize) {
        let mut f = pin!(f);
        let mut cx = std::task::Context::from_waker(Waker::noop());
        for pauses in 0..8 {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return (v, pauses);
            }
        }
        panic!("the authenticate stage never finished");
    }

    fn now() -> u64 {
        jwt::unix_now()
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(path).header("host", "api.example");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// Every public-key signature check is followed by one pause, whatever its outcome, so a
    /// worker checks all the requests that are ready before it forwards any; nothing else
    /// pauses: a cached token, an HMAC token, a token no key fits.
    #[test]
    fn a_signature_check_is_followed_by_one_pause() {
        let dir = std::env::temp_dir().join(format!("portcullis-authn-pause-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let idp = SigningKey::generate(Algorithm::ES256, "idp-key").unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [idp.public_jwk()]}).to_string()).unwrap();
        let secret = "test-only-hmac-secret-0123456789abcdef";
        let yaml = format!(
            "server:\n  listen: 127.0.0.1:0\nissuers:\n\
             \x20 - id: idp\n    issuer: https://idp.example\n    jwks_file: {}\n    audiences: [api]\n    algorithms: [ES256]\n\
             \x20 - id: hs\n    issuer: https://hs.example\n    hmac_secret: {secret}\n    audiences: [api]\n    algorithms: [HS256]\n\
             routes:\n\
             \x20 - id: jwt\n    match: {{ path_prefix: /jwt }}\n    upstream: echo\n    authenticate: [jwt]\n\
             \x20 - id: dpop\n    match: {{ path_prefix: /dpop }}\n    upstream: echo\n    authenticate: [dpop]\n",
            jwks.display()
        );
        let loaded = portcullis_config::load_str(yaml, &dir.join("portcullis.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let config = &loaded.config;
        let authn = Verifiers::build(config, &Retained::default()).unwrap_or_else(|e| panic!("{e:?}"));
        let route = |i: usize| authn.route(&config.routes[i], "routes").unwrap().unwrap();
        let (bearer_route, dpop_route) = (route(0), route(1));
        std::fs::remove_dir_all(&dir).unwrap();
        let cx = Context { https: false, authority: "api.example", client_cert: None };
        let claims = |jti: &str| json!({"iss": "https://idp.example", "aud": "api", "sub": "alice", "exp": now() + 600, "jti": jti});
        let sign = |claims: serde_json::Value| idp.sign(Map::new(), claims.to_string().as_bytes()).unwrap();
        let bearer = |token: &str| request("/jwt/x", &[("authorization", &format!("Bearer {token}"))]);

        let token = sign(claims("t1"));
        let (outcome, pauses) = run(bearer_route.authenticate(&bearer(&token), &cx));
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(pauses, 1, "a token's signature checked");
        let (outcome, pauses) = run(bearer_route.authenticate(&bearer(&token), &cx));
        assert!(outcome.is_ok());
        assert_eq!(pauses, 0, "the same token again, from the cache");

        let other = sign(claims("t2"));
        let forged = format!("{}{}", &other[..other.len() - 4], if other.ends_with("AAAA") { "BBBB" } else { "AAAA" });
        let (outcome, pauses) = run(bearer_route.authenticate(&bearer(&forged), &cx));
        assert_eq!(outcome.unwrap_err().status, http::StatusCode::UNAUTHORIZED);
        assert_eq!(pauses, 1, "a forged signature, refused after its check");

        let mut header = Map::new();
        header.insert("kid".into(), json!("no-such-key"));
        let unknown = idp.sign(header, claims("t3").to_string().as_bytes()).unwrap();
        let (outcome, pauses) = run(bearer_route.authenticate(&bearer(&unknown), &cx));
        assert!(outcome.is_err());
        assert_eq!(pauses, 0, "no key fits: no signature checked");

        let hs = {
            let input = format!(
                "{}.{}",
                b64::encode(br#"{"alg":"HS256"}"#),
                b64::encode(
                    json!({"iss": "https://hs.example", "aud": "api", "sub": "b", "exp": now() + 600})
                        .to_string()
                        .as_bytes()
                )
            );
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
            format!("{input}.{}", b64::encode(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref()))
        };
        let (outcome, pauses) = run(bearer_route.authenticate(&bearer(&hs), &cx));
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(pauses, 0, "an HMAC check costs about as much as a pause");

        // DPoP: the proof's signature on every request, the token's on its first.
        let holder = SigningKey::generate(Algorithm::ES256, "holder").unwrap();
        let jkt = portcullis_jose::Jwk::from_value(holder.public_jwk()).unwrap().thumbprint;
        let bound = sign(
            json!({"iss": "https://idp.example", "aud": "api", "sub": "carol", "exp": now() + 600, "cnf": {"jkt": jkt}}),
        );
        let proof = |jti: &str| {
            let mut header = Map::new();
            header.insert("typ".into(), json!("dpop+jwt"));
            let mut jwk = holder.public_jwk();
            jwk.as_object_mut().unwrap().retain(|k, _| !matches!(k.as_str(), "kid" | "alg" | "use"));
            header.insert("jwk".into(), jwk);
            let ath = b64::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bound.as_bytes()).as_ref());
            let claims =
                json!({"htm": "GET", "htu": "http://api.example/dpop/x", "iat": now(), "jti": jti, "ath": ath});
            holder.sign(header, claims.to_string().as_bytes()).unwrap()
        };
        let auth = format!("DPoP {bound}");
        for (jti, expected) in [("p1", 2), ("p2", 1)] {
            let p = proof(jti);
            let parts = request("/dpop/x", &[("authorization", &auth), ("dpop", &p)]);
            let (outcome, pauses) = run(dpop_route.authenticate(&parts, &cx));
            assert!(outcome.is_ok(), "{outcome:?}");
            assert_eq!(pauses, expected, "proof {jti}");
        }
    }

    /// A reload keeps an issuer's key store while its source is unchanged, and builds a new
    /// one when the key file changes on disk or the fetch settings change.
    #[test]
    fn key_stores_are_kept_while_their_source_is_unchanged() {
        let dir = std::env::temp_dir().join(format!("portcullis-authn-retained-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = dir.join("jwks.json");
        let key = |kid: &str| SigningKey::generate(Algorithm::ES256, kid).unwrap().public_jwk();
        std::fs::write(&jwks, json!({"keys": [key("k1")]}).to_string()).unwrap();
        let yaml = format!(
            "server:\n  listen: 127.0.0.1:0\nissuers:\n\
             \x20 - id: idp\n    issuer: https://idp.example\n    jwks_file: {}\n    audiences: [api]\n    algorithms: [ES256]\n\
             routes:\n\
             \x20 - id: jwt\n    match: {{ path_prefix: / }}\n    upstream: echo\n    authenticate: [jwt]\n",
            jwks.display()
        );
        let loaded = portcullis_config::load_str(yaml, &dir.join("portcullis.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let issuer = &loaded.config.issuers[0];
        let retained = Retained::default();
        let store = |ic: &IssuerConfig| retained.key_store(ic).unwrap().unwrap();

        let first = store(issuer);
        assert!(Arc::ptr_eq(&first, &store(issuer)), "nothing changed");
        let mut other_settings = issuer.clone();
        other_settings.keys.stale_for = portcullis_config::values::Duration::from_secs(60);
        let other = store(&other_settings);
        assert!(!Arc::ptr_eq(&first, &other), "other fetch settings");
        std::fs::write(&jwks, json!({"keys": [key("k1"), key("k2")]}).to_string()).unwrap();
        let rewritten = store(issuer);
        assert!(!Arc::ptr_eq(&first, &rewritten), "the key file changed");
        assert!(Arc::ptr_eq(&rewritten, &store(issuer)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
