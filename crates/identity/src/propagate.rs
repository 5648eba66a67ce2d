//! The propagate stage: what an upstream learns of the caller.
//!
//! * An **internal token**: a short-lived JWT signed by the gateway, for one audience, with
//!   only the scopes the route needs and the claims it maps, optionally encrypted (JWE) to the
//!   upstream's key. Tokens are cached per worker for each (principal, route) until a third of
//!   their life is left, so a caller's repeated requests cost no signature.
//! * **Identity headers**: chosen facts as headers. Whatever the client sent under those
//!   names is removed first, so they cannot be spoofed.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use portcullis_config::{Invalid, RouteConfig, TokenServiceConfig};
use portcullis_core::ClaimPath;
use portcullis_core::{ByPrincipal, Principal, Problem};
use portcullis_jose::EncryptionKey;
use serde_json::{Map, Value, json};

use crate::signing_keys::{KeyRing, unix_now};

/// Minted tokens a worker keeps (the oldest is dropped first).
const CACHE_CAPACITY: usize = 4096;

thread_local! {
    /// By principal and route (its [`InternalToken::id`]).
    static MINTED: RefCell<ByPrincipal<Minted, u64>> = RefCell::new(ByPrincipal::new(CACHE_CAPACITY));
}

struct Minted {
    value: HeaderValue,
    refresh_at: u64,
    key_generation: u64,
}

/// What identity headers carry.
#[derive(Debug)]
enum Source {
    Subject,
    ClientId,
    Issuer,
    Scopes,
    AuthMethod,
    SpiffeId,
    Consumer,
    Plan,
    Claim(ClaimPath),
}

/// One route's propagation.
#[derive(Debug)]
pub struct Propagation {
    internal: Option<InternalToken>,
    headers: Vec<(HeaderName, Source)>,
    /// Forward the caller's own credential.
    pub passthrough: bool,
}

#[derive(Debug)]
struct InternalToken {
    /// Tells this route's tokens from any other's in the cache.
    id: u64,
    ring: Arc<KeyRing>,
    issuer: String,
    audience: String,
    header: HeaderName,
    bearer: bool,
    lifetime: u64,
    /// The scopes the token may carry.
    scopes: Vec<String>,
    claims: Vec<(String, ClaimPath)>,
    encrypt: Option<(EncryptionKey, Option<Vec<String>>)>,
}

impl Propagation {
    /// Compiles a route's `propagate` block; `None` when the route has none.
    pub fn build(
        rc: &RouteConfig,
        token_service: Option<(&TokenServiceConfig, &Arc<KeyRing>)>,
        at: &str,
    ) -> Result<Option<Propagation>, Vec<Invalid>> {
        let Some(cfg) = &rc.propagate else { return Ok(None) };
        let headers = cfg
            .headers
            .iter()
            .filter_map(|(name, source)| {
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                Some((name, Source::parse(source)?))
            })
            .collect();
        let internal = match (&cfg.internal_token, token_service) {
            (Some(t), Some((ts, ring))) => Some(internal_token(rc, t, ts, ring, at).map_err(|e| vec![e])?),
            // Reported by validation.
            _ => None,
        };
        Ok(Some(Propagation { internal, headers, passthrough: cfg.passthrough }))
    }

    /// Sets the gateway's identity headers and token. (The client's own identity headers are
    /// removed before, on every route: `headers::strip_identity` in the proxy.) Fails
    /// (closed) only when a token cannot be minted.
    pub fn apply(&self, principal: &Arc<Principal>, headers: &mut HeaderMap) -> Result<(), Problem> {
        for (name, source) in &self.headers {
            if let Some(v) = source.value(principal) {
                headers.insert(name.clone(), v);
            }
        }
        if let Some(t) = &self.internal {
            let value = t.header_value(principal).map_err(|e| {
                tracing::error!(error = %e, "an internal token could not be made");
                Problem::new(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_token_failed",
                    "the gateway could not issue the internal identity token",
                )
            })?;
            headers.insert(t.header.clone(), value);
        }
        Ok(())
    }
}

fn internal_token(
    rc: &RouteConfig,
    t: &portcullis_config::InternalTokenConfig,
    ts: &TokenServiceConfig,
    ring: &Arc<KeyRing>,
    at: &str,
) -> Result<InternalToken, Invalid> {
    static IDS: AtomicU64 = AtomicU64::new(1);
    let header_name = t.header.as_deref().unwrap_or("authorization");
    let header = HeaderName::from_bytes(header_name.as_bytes())
        .map_err(|_| Invalid::new(format!("{at}.propagate.internal_token.header"), "not a valid header name"))?;
    let encrypt = match &t.encrypt {
        None => None,
        Some(e) => {
            let bad = |err: &dyn std::fmt::Display| {
                Invalid::new(
                    format!("{at}.propagate.internal_token.encrypt.key"),
                    format!("{}: {err}", e.key.display()),
                )
            };
            let text = std::fs::read(&e.key).map_err(|err| bad(&err))?;
            Some((EncryptionKey::from_json(&text).map_err(|err| bad(&err))?, e.claims.clone()))
        }
    };
    let route_scopes = rc.authorize.as_ref().map(|a| a.scopes.iter().chain(&a.any_scopes).cloned().collect());
    Ok(InternalToken {
        id: IDS.fetch_add(1, Ordering::Relaxed),
        ring: ring.clone(),
        issuer: ts.issuer.clone(),
        audience: t.audience.clone().unwrap_or_else(|| default_audience(rc)),
        bearer: header == header::AUTHORIZATION,
        header,
        lifetime: t.lifetime.unwrap_or(ts.internal_token_lifetime).get().as_secs().max(1),
        scopes: t.scopes.clone().or(route_scopes).unwrap_or_default(),
        claims: t.claims.iter().map(|(k, v)| (k.clone(), ClaimPath::new(v))).collect(),
        encrypt,
    })
}

/// The upstream's name, or the route's id when the upstream is a URL or `echo`.
fn default_audience(rc: &RouteConfig) -> String {
    if rc.upstream.contains("://") || rc.upstream == portcullis_config::ECHO_UPSTREAM {
        rc.id.clone()
    } else {
        rc.upstream.clone()
    }
}

impl InternalToken {
    /// The header value for `principal`: from the worker's cache, or freshly minted.
    fn header_value(&self, principal: &Arc<Principal>) -> Result<HeaderValue, String> {
        let now = unix_now();
        let keys = self.ring.keys_at(now);
        let cached = MINTED.with_borrow(|m| {
            m.get(principal, self.id)
                .filter(|e| e.refresh_at > now && e.key_generation == keys.generation)
                .map(|e| e.value.clone())
        });
        if let Some(v) = cached {
            return Ok(v);
        }
        let (token, exp) = self.mint(principal, now, &keys)?;
        let mut value =
            if self.bearer { HeaderValue::try_from(format!("Bearer {token}")) } else { HeaderValue::try_from(token) }
                .map_err(|e| e.to_string())?;
        // Never indexed by HTTP/2 header compression (RFC 7541 §7.1.3).
        value.set_sensitive(true);
        let refresh_at = now + (exp.saturating_sub(now)) * 2 / 3;
        MINTED.with_borrow_mut(|m| {
            m.insert(principal, self.id, Minted { value: value.clone(), refresh_at, key_generation: keys.generation });
        });
        Ok(value)
    }

    /// Signs (and, if configured, encrypts) a token; returns it with its expiry.
    fn mint(&self, p: &Principal, now: u64, keys: &crate::signing_keys::Keys) -> Result<(String, u64), String> {
        let exp = expiry(p, now, self.lifetime);
        let mut claims = identity_claims(p, &self.issuer, &self.audience, now, exp);
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).filter(|s| p.has_scope(s)).collect();
        if !scopes.is_empty() {
            claims.insert("scope".into(), json!(scopes.join(" ")));
        }
        for (name, path) in &self.claims {
            if let Some(v) = path.value(p) {
                claims.insert(name.clone(), v.clone());
            }
        }
        if let Some((key, Some(selected))) = &self.encrypt {
            let mut hidden = Map::new();
            for name in selected {
                if let Some(v) = claims.remove(name) {
                    hidden.insert(name.clone(), v);
                }
            }
            let jwe =
                key.encrypt(Value::Object(hidden).to_string().as_bytes(), Some("json")).map_err(|e| e.to_string())?;
            claims.insert("encrypted_claims".into(), json!(jwe));
        }
        let signed = sign(keys, claims)?;
        match &self.encrypt {
            Some((key, None)) => Ok((key.encrypt(signed.as_bytes(), Some("JWT")).map_err(|e| e.to_string())?, exp)),
            _ => Ok((signed, exp)),
        }
    }
}

/// When a token for `p` issued at `now` expires: after `lifetime`, and never after the
/// credential it was made from.
pub(crate) fn expiry(p: &Principal, now: u64, lifetime: u64) -> u64 {
    match p.expires_at {
        Some(e) => (now + lifetime).min(e.max(now + 1)),
        None => now + lifetime,
    }
}

/// Signs claims as an access token (RFC 9068 `typ`).
pub(crate) fn sign(keys: &crate::signing_keys::Keys, claims: Map<String, Value>) -> Result<String, String> {
    let mut header = Map::new();
    header.insert("typ".into(), json!("at+jwt"));
    keys.current.sign(header, Value::Object(claims).to_string().as_bytes()).map_err(|e| e.to_string())
}

/// The claims that say who the principal is, for audience `aud`, valid from `now` to `exp`.
pub(crate) fn identity_claims(p: &Principal, issuer: &str, aud: &str, now: u64, exp: u64) -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(issuer));
    if let Some(sub) = p.subject.as_deref().or(p.client_id.as_deref()) {
        claims.insert("sub".into(), json!(sub));
    }
    claims.insert("aud".into(), json!(aud));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(exp));
    claims.insert("jti".into(), json!(crate::random_id()));
    if let Some(c) = &p.client_id {
        claims.insert("client_id".into(), json!(c));
    }
    claims.insert("auth_method".into(), json!(auth_method(p, issuer)));
    if let Some(id) = &p.spiffe_id {
        claims.insert("spiffe_id".into(), json!(id));
    }
    // A principal that came by token exchange keeps its delegation chain.
    if let Some(act) = p.claims.as_ref().and_then(|c| c.get("act")).filter(|a| a.is_object()) {
        claims.insert("act".into(), act.clone());
    }
    claims
}

/// How the principal authenticated; for a token this gateway issued (`issuer`), how its
/// subject first did, as that token says.
fn auth_method<'p>(p: &'p Principal, issuer: &str) -> &'p str {
    let ours = p.issuer.as_deref() == Some(issuer);
    let original = p.claims.as_ref().filter(|_| ours).and_then(|c| c.get("auth_method")).and_then(Value::as_str);
    original.unwrap_or(p.method.as_str())
}

impl Source {
    fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "subject" => Source::Subject,
            "client_id" => Source::ClientId,
            "issuer" => Source::Issuer,
            "scopes" => Source::Scopes,
            "auth_method" => Source::AuthMethod,
            "spiffe_id" => Source::SpiffeId,
            "consumer" => Source::Consumer,
            "plan" => Source::Plan,
            other => Source::Claim(ClaimPath::new(other.strip_prefix("claims.")?)),
        })
    }

    /// The header value, when the principal has one that can be sent as a header.
    fn value(&self, p: &Principal) -> Option<HeaderValue> {
        let text: String = match self {
            Source::Subject => p.subject.as_deref()?.to_string(),
            Source::ClientId => p.client_id.as_deref()?.to_string(),
            Source::Issuer => p.issuer.as_deref()?.to_string(),
            Source::Scopes if p.scopes.is_empty() => return None,
            Source::Scopes => p.scopes.iter().map(|s| &**s).collect::<Vec<_>>().join(" "),
            Source::AuthMethod => p.method.as_str().to_string(),
            Source::SpiffeId => p.spiffe_id.as_deref()?.to_string(),
            Source::Consumer => p.consumer.as_ref()?.name.to_string(),
            Source::Plan => p.consumer.as_ref()?.plan.as_deref()?.to_string(),
            Source::Claim(path) => match path.value(p)? {
                Value::String(s) => s.clone(),
                Value::Null => return None,
                Value::Array(a) if a.iter().all(Value::is_string) => {
                    a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
                }
                other => other.to_string(),
            },
        };
        // A value that cannot be a header (a line break, a control character) is left out.
        HeaderValue::try_from(text).ok()
    }
}
