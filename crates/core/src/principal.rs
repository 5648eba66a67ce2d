//! The principal: who sent a request, as established by the authentication stage and read
//! by authorization, risk scoring, identity propagation and the access log.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

/// What kind of caller a principal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// No authentication took place (a public route).
    Anonymous,
    /// An end user, acting through a client application.
    User,
    /// A client application acting on its own behalf (client credentials, API key).
    Client,
    /// A workload identified by its certificate (mTLS, SPIFFE).
    Workload,
}

/// How a principal was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthnMethod {
    /// Not authenticated.
    None,
    /// A JWT access token.
    Jwt,
    /// An opaque token, by introspection.
    Introspection,
    /// An API key.
    ApiKey,
    /// A client certificate.
    Mtls,
    /// A DPoP-bound token and its proof.
    Dpop,
}

impl AuthnMethod {
    /// Lower-case name for logs, policies and internal tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthnMethod::None => "none",
            AuthnMethod::Jwt => "jwt",
            AuthnMethod::Introspection => "introspection",
            AuthnMethod::ApiKey => "api_key",
            AuthnMethod::Mtls => "mtls",
            AuthnMethod::Dpop => "dpop",
        }
    }
}

/// Who sent a request. Built once per credential and shared (`Arc`) by every request that
/// presents the same credential while it is cached.
#[derive(Clone, Debug)]
pub struct Principal {
    /// What kind of caller this is.
    pub kind: PrincipalKind,
    /// How it was authenticated.
    pub method: AuthnMethod,
    /// The subject (`sub`), certificate identity or consumer name.
    pub subject: Option<Arc<str>>,
    /// The issuer that vouched for the subject.
    pub issuer: Option<Arc<str>>,
    /// The client application (`client_id` / `azp`).
    pub client_id: Option<Arc<str>>,
    /// Granted scopes.
    pub scopes: Arc<[Arc<str>]>,
    /// All claims of the token (or introspection response), for policies and propagation.
    pub claims: Option<Claims>,
    /// When the credential expires (seconds since the epoch).
    pub expires_at: Option<u64>,
    /// When the credential was issued (seconds since the epoch).
    pub issued_at: Option<u64>,
    /// The token's id (`jti`).
    pub token_id: Option<Arc<str>>,
    /// The key the token is bound to (`cnf`, RFC 7800), for proof of possession.
    pub confirmation: Option<Confirmation>,
    /// The API consumer and its plan, for API keys.
    pub consumer: Option<Consumer>,
    /// The workload's SPIFFE ID (from an X.509-SVID, or the `sub` of a JWT-SVID).
    pub spiffe_id: Option<Arc<str>>,
}

/// All claims of a credential.
///
/// A verified token keeps its claims as the JSON text it carried, and they are read into a
/// map only when a stage asks for more than the principal's own fields (a claim path in a
/// route rule, Cedar tags, claims passed on to the upstream). Most requests never do, so
/// verifying a token builds no map and evicting it from the cache frees one buffer, not a
/// tree of small allocations.
#[derive(Clone)]
pub struct Claims(Arc<ClaimsInner>);

struct ClaimsInner {
    // A `Vec` as decoded, not shrunk into a box (a reallocation and copy per token).
    json: Vec<u8>,
    map: OnceLock<Map<String, Value>>,
}

impl Claims {
    /// Claims as JSON text, read when first asked for. The text must already have been found
    /// to be one JSON object with no repeated member (as a token's claims are, before its
    /// signature is checked); text that is not reads as no claims at all, never as some.
    pub fn from_json(json: Vec<u8>) -> Claims {
        Claims(Arc::new(ClaimsInner { json, map: OnceLock::new() }))
    }

    /// Claims already read into a map.
    pub fn from_map(map: Map<String, Value>) -> Claims {
        Claims(Arc::new(ClaimsInner { json: Vec::new(), map: OnceLock::from(map) }))
    }

    /// The claims as a map (read from their JSON text on the first call).
    pub fn map(&self) -> &Map<String, Value> {
        self.0.map.get_or_init(|| serde_json::from_slice(&self.0.json).unwrap_or_default())
    }

    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map().get(name)
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Claim values are personal data: names only.
        f.debug_list().entries(self.map().keys()).finish()
    }
}

/// The key a token is bound to (`cnf`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// RFC 9449: the SHA-256 thumbprint of the DPoP key (`jkt`).
    pub jkt: Option<Arc<str>>,
    /// RFC 8705: the SHA-256 thumbprint of the client certificate (`x5t#S256`).
    pub x5t_s256: Option<Arc<str>>,
}

/// An API consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's name.
    pub name: Arc<str>,
    /// Its plan, if any.
    pub plan: Option<Arc<str>>,
}

impl Principal {
    /// A principal with nothing but its kind and method.
    pub fn new(kind: PrincipalKind, method: AuthnMethod) -> Principal {
        Principal {
            kind,
            method,
            subject: None,
            issuer: None,
            client_id: None,
            scopes: Arc::from([]),
            claims: None,
            expires_at: None,
            issued_at: None,
            token_id: None,
            confirmation: None,
            consumer: None,
            spiffe_id: None,
        }
    }

    /// The principal of a request on a public route.
    pub fn anonymous() -> Arc<Principal> {
        Arc::new(Principal::new(PrincipalKind::Anonymous, AuthnMethod::None))
    }

    /// The trust domain of the principal's SPIFFE ID.
    pub fn trust_domain(&self) -> Option<&str> {
        self.spiffe_id.as_deref().and_then(|id| crate::spiffe::parse_id(id)).map(|(td, _)| td)
    }

    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}

/// A claim path (`realm_access.roles`): where roles or groups are found in the claims.
#[derive(Clone, Debug)]
pub struct ClaimPath(Vec<String>);

impl ClaimPath {
    /// Parses a dotted path (validated by the config).
    pub fn new(path: &str) -> ClaimPath {
        ClaimPath(path.split('.').map(str::to_string).collect())
    }

    /// The claim at this path in `principal`'s claims.
    pub fn value<'a>(&self, principal: &'a Principal) -> Option<&'a Value> {
        let mut at = principal.claims.as_ref()?.get(&self.0[0]);
        for key in &self.0[1..] {
            at = at?.get(key);
        }
        at
    }

    /// The strings at this path in `principal`'s claims: an array of strings, or a string of
    /// space-separated values (as `scope` is).
    pub fn values<'a>(&self, principal: &'a Principal) -> impl Iterator<Item = &'a str> + 'a {
        let (list, words) = match self.value(principal) {
            Some(Value::Array(a)) => (Some(a.iter().filter_map(Value::as_str)), None),
            Some(Value::String(s)) => (None, Some(s.split(' ').filter(|s| !s.is_empty()))),
            _ => (None, None),
        };
        list.into_iter().flatten().chain(words.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_read_from_their_text_when_asked() {
        let c = Claims::from_json(br#"{"sub":"a","roles":["x"],"n":{"m":1}}"#.to_vec());
        assert_eq!(c.get("sub"), Some(&Value::from("a")));
        assert_eq!(c.map().len(), 3);
        assert_eq!(c.clone().get("n").and_then(|n| n.get("m")), Some(&Value::from(1)));
        // Text that is not one object reads as no claims, never as some.
        assert!(Claims::from_json(b"{\"a\":1} trailing".to_vec()).map().is_empty());
        assert!(Claims::from_json(b"[1]".to_vec()).map().is_empty());
        let mut m = Map::new();
        m.insert("k".into(), Value::Bool(true));
        assert_eq!(Claims::from_map(m.clone()).map(), &m);
    }
}
