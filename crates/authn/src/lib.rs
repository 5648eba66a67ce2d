//! The authenticate stage: who is calling.
//!
//! A route lists the methods it accepts; its [`Authenticator`] finds the credential
//! (`Authorization: Bearer`, or where the route says; an API-key header), checks it (a JWT
//! against the configured issuers and their keys, an opaque token by introspection, a key
//! against its hash) and produces the [`Principal`] that later stages read. Every failure is a
//! refusal: `401`, `400`, or `503` when something needed to decide is unavailable.

#![forbid(unsafe_code)]

pub mod apikey;
pub mod cache;
mod error;
pub mod extract;
pub mod introspection;
pub mod jwt;
pub mod keys;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use portcullis_config::{AuthMethod, Config, Invalid, IssuerConfig, RouteConfig};
use portcullis_core::{Principal, Problem};
use portcullis_jose::{HeaderPolicy, Jws, parse_object_no_duplicates};

pub use apikey::ApiKeys;
pub use error::AuthnError;
pub use introspection::Introspector;
pub use jwt::Issuer;

use cache::{Cache, Entry};
use extract::Locations;
use keys::{KeyStore, Policy, Source};

thread_local! {
    static VERIFIED: RefCell<Cache<Issuer>> = RefCell::new(Cache::default());
}

/// State that outlives any one config: key stores, so that a reload keeps the keys (and the
/// cache entries they verified) of issuers whose key source did not change.
#[derive(Debug, Default)]
pub struct Registry {
    stores: Mutex<HashMap<String, Weak<KeyStore>>>,
}

fn file_state(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    format!("{:?}{:?}", meta.as_ref().map(|m| m.len()), meta.and_then(|m| m.modified().ok()))
}

impl Registry {
    fn key_store(&self, cfg: &IssuerConfig) -> Result<Option<Arc<KeyStore>>, (&'static str, String)> {
        let k = &cfg.keys;
        let policy = Policy {
            min_cache: k.min_cache.get(),
            max_cache: k.max_cache.get(),
            refetch_interval: k.refetch_interval.get(),
            stale_for: k.stale_for.get(),
            timeout: k.timeout.get(),
            allow_http: k.allow_http,
        };
        let (source, key) = if let Some(f) = &cfg.jwks_file {
            (None, format!("file:{}:{}", f.display(), file_state(f)))
        } else if let Some(u) = &cfg.jwks_uri {
            let url = keys::check_url(u, k.allow_http).map_err(|e| ("jwks_uri", e))?;
            (Some(Source::Uri(url)), format!("uri:{u}"))
        } else if cfg.discovery {
            keys::check_url(&cfg.issuer, k.allow_http).map_err(|e| ("issuer", e))?;
            (Some(Source::Discovery(cfg.issuer.clone())), format!("discovery:{}", cfg.issuer))
        } else {
            return Ok(None);
        };
        let key = format!(
            "{key}\n{}",
            serde_json::to_string(k).unwrap_or_default() + &k.ca.as_deref().map(file_state).unwrap_or_default()
        );
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = stores.get(&key).and_then(Weak::upgrade) {
            return Ok(Some(s));
        }
        let store = match (source, &cfg.jwks_file) {
            (None, Some(f)) => KeyStore::from_file(&cfg.id, f, policy).map_err(|e| ("jwks_file", e))?,
            (Some(source), _) => {
                let client = keys::http_client(policy.timeout, k.ca.as_deref()).map_err(|e| ("keys.ca", e))?;
                KeyStore::fetching(&cfg.id, source, policy, client)
            }
            (None, None) => return Ok(None),
        };
        stores.insert(key, Arc::downgrade(&store));
        Ok(Some(store))
    }
}

/// Everything authentication needs from one config.
#[derive(Debug, Default)]
pub struct Authn {
    issuers: Vec<Arc<Issuer>>,
    introspector: Option<Arc<Introspector>>,
    api_keys: Option<Arc<ApiKeys>>,
}

impl Authn {
    /// Builds issuers, the introspector and the API keys; problems are located by key path.
    pub fn build(config: &Config, registry: &Registry) -> Result<Authn, Vec<Invalid>> {
        let mut errors = Vec::new();
        let mut issuers = Vec::new();
        for (i, ic) in config.issuers.iter().enumerate() {
            let built = registry.key_store(ic).and_then(|store| Issuer::new(ic, store));
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
        if errors.is_empty() { Ok(Authn { issuers, introspector, api_keys }) } else { Err(errors) }
    }

    /// Whether every issuer has its keys (readiness).
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.ready())
    }

    /// The authenticator of a route, or `None` for a public route. `at` is its key path.
    pub fn route(&self, rc: &RouteConfig, at: &str) -> Result<Option<Authenticator>, Vec<Invalid>> {
        let methods = rc.authenticate.as_deref().unwrap_or_default();
        if methods == [AuthMethod::None] {
            return Ok(None);
        }
        let mut errors = Vec::new();
        for (j, m) in methods.iter().enumerate() {
            if matches!(m, AuthMethod::Mtls | AuthMethod::Dpop) {
                errors.push(Invalid::new(
                    format!("{at}.authenticate[{j}]"),
                    format!("`{}` authentication is not available in this build", m.as_str()),
                ));
            }
        }
        let jwt = methods.contains(&AuthMethod::Jwt);
        let issuers: Vec<Arc<Issuer>> = match (&rc.issuers, jwt) {
            (_, false) => Vec::new(),
            (None, true) => self.issuers.clone(),
            (Some(ids), true) => self.issuers.iter().filter(|i| ids.iter().any(|id| **id == *i.id)).cloned().collect(),
        };
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
        Ok(Some(Authenticator {
            bearer: jwt || introspection.is_some(),
            issuers,
            introspection,
            api_keys,
            locations,
            max_token_bytes,
        }))
    }
}

/// How one route authenticates callers.
#[derive(Debug)]
pub struct Authenticator {
    /// Bearer tokens are accepted (JWT or introspection): 401s carry Bearer challenges.
    bearer: bool,
    issuers: Vec<Arc<Issuer>>,
    introspection: Option<Arc<Introspector>>,
    api_keys: Option<Arc<ApiKeys>>,
    locations: Locations,
    max_token_bytes: usize,
}

impl Authenticator {
    /// Authenticates a request: the principal, or the problem that refuses it.
    pub async fn authenticate(&self, parts: &http::request::Parts) -> Result<Arc<Principal>, Problem> {
        self.run(parts).await.map_err(|e| e.into_problem(self.bearer, self.api_keys.as_ref().map(|k| &k.header)))
    }

    async fn run(&self, parts: &http::request::Parts) -> Result<Arc<Principal>, AuthnError> {
        let authorization = extract::authorization(&parts.headers)?;
        if self.bearer
            && let Some(token) = extract::bearer(&parts.headers, parts.uri.query(), &authorization, &self.locations)?
        {
            return self.token(token).await;
        }
        if let Some(keys) = &self.api_keys
            && let Some(v) = parts.headers.get(&keys.header)
        {
            return keys.check(v.as_bytes());
        }
        Err(AuthnError::Missing)
    }

    /// Removes every place this route reads credentials from, so that the upstream never
    /// sees the caller's credential: the API-key header, the token header, the token cookie
    /// and the token query parameter. (`Authorization` and `DPoP` are removed by the
    /// pipeline for every route.)
    pub fn scrub(&self, parts: &mut http::request::Parts) {
        if let Some(k) = &self.api_keys {
            parts.headers.remove(&k.header);
        }
        if let Some(h) = &self.locations.header {
            parts.headers.remove(h);
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
    pub async fn token(&self, token: &str) -> Result<Arc<Principal>, AuthnError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthnError::invalid("token_too_large", "the token is larger than accepted"));
        }
        let digest = cache::digest(token.as_bytes());
        if !self.issuers.is_empty() && looks_like_jwt(token) {
            let now = jwt::unix_now();
            let cached =
                VERIFIED.with(|c| c.borrow_mut().get(&digest, now, |o| self.issuers.iter().any(|i| Arc::ptr_eq(i, o))));
            if let Some(Some(p)) = cached {
                return Ok(p);
            }
            let jws = Jws::parse(token, HeaderPolicy::default())?;
            let claims = parse_object_no_duplicates(&jws.payload).map_err(|e| match e {
                portcullis_jose::Error::Duplicate(_) => AuthnError::from(e),
                _ => AuthnError::invalid("token_malformed", "the token's claims are not a JSON object"),
            })?;
            let iss = claims.get("iss").and_then(|v| v.as_str());
            match self.issuers.iter().find(|i| Some(&*i.issuer) == iss) {
                Some(issuer) => {
                    let (principal, key) = issuer.verify(&jws, claims).await?;
                    let principal = Arc::new(principal);
                    let until = principal.expires_at.unwrap_or(0).saturating_add(60);
                    let entry =
                        Entry { principal: Some(principal.clone()), owner: issuer.clone(), key: Some(key), until };
                    VERIFIED.with(|c| c.borrow_mut().insert(digest, entry));
                    return Ok(principal);
                }
                None if self.introspection.is_none() => {
                    return Err(AuthnError::invalid("issuer_unknown", "the token's issuer is not trusted here"));
                }
                None => {}
            }
        }
        match &self.introspection {
            Some(i) => i.check(token, &digest).await,
            None => Err(AuthnError::invalid("token_malformed", "the token is not a JWT")),
        }
    }
}

/// Three segments, a JSON header: worth treating as a JWT.
fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}
