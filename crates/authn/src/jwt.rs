//! JWT access tokens (RFC 7519, RFC 9068): which issuer, which key, and the claim rules.
//!
//! Order of checks: the header rules (in `portcullis-jose`), then the issuer (the unverified
//! `iss` only chooses which keys to try), the algorithm allowlist of that issuer, the key
//! (by `kid`; its type, `alg`, `use` and `key_ops` must fit), the signature, and only then the
//! claims: `exp` (required, numeric), `nbf` and `iat` (not in the future beyond the leeway),
//! `aud` (one of the configured audiences), `typ`, and the required claims.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_config::IssuerConfig;
use portcullis_core::{AuthnMethod, Confirmation, Principal, PrincipalKind};
use portcullis_jose::{Algorithm, Jws, VerifyingKey};
use serde_json::{Map, Value};

use crate::AuthnError;
use crate::keys::{Key, KeyStore, Lookup};

/// How long a request may wait for a refetch triggered by an unknown `kid`.
const REFETCH_WAIT: Duration = Duration::from_secs(3);

/// An issuer: the rules its tokens must satisfy and where its keys are.
#[derive(Debug)]
pub struct Issuer {
    /// The id in the config.
    pub id: Arc<str>,
    /// The exact `iss`.
    pub issuer: Arc<str>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    required_claims: Vec<String>,
    /// Accepted `typ` values, lower-case; `None` means the RFC 9068 defaults.
    token_types: Option<Vec<String>>,
    /// Longest token accepted.
    pub max_token_bytes: usize,
    store: Option<Arc<KeyStore>>,
    hmac: Option<Arc<Key>>,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Issuer {
    /// Builds an issuer from its config and key store. Problems are returned as
    /// `(key, message)`, the key relative to the issuer.
    pub fn new(cfg: &IssuerConfig, store: Option<Arc<KeyStore>>) -> Result<Issuer, (&'static str, String)> {
        let mut algorithms = Vec::new();
        for name in &cfg.algorithms {
            let alg = Algorithm::parse(name).ok_or_else(|| {
                let all: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
                ("algorithms", format!("`{name}` is not a supported algorithm ({})", all.join(", ")))
            })?;
            algorithms.push(alg);
        }
        let symmetric: Vec<Algorithm> = algorithms.iter().copied().filter(|a| a.is_symmetric()).collect();
        let hmac = match (&cfg.hmac_secret, symmetric.is_empty()) {
            (Some(secret), false) => {
                let verifier = VerifyingKey::hmac(secret.expose().as_bytes(), &symmetric)
                    .map_err(|e| ("hmac_secret", e.to_string()))?;
                let jwk = portcullis_jose::Jwk::from_value(serde_json::json!({"kty": "oct", "k": "AA"}))
                    .map_err(|e| ("hmac_secret", e.to_string()))?;
                Some(Key::new(jwk, verifier))
            }
            (None, false) => {
                return Err((
                    "algorithms",
                    "HS256/HS384/HS512 need `hmac_secret` (they are never verified with JWKS keys)".into(),
                ));
            }
            (Some(_), true) => {
                return Err(("hmac_secret", "set, but no HS algorithm is listed in `algorithms`".into()));
            }
            (None, true) => None,
        };
        Ok(Issuer {
            id: cfg.id.as_str().into(),
            issuer: cfg.issuer.as_str().into(),
            audiences: cfg.audiences.clone(),
            algorithms,
            leeway: cfg.leeway.get().as_secs(),
            required_claims: cfg.required_claims.clone(),
            token_types: cfg.token_types.as_ref().map(|t| t.iter().map(|s| s.to_ascii_lowercase()).collect()),
            max_token_bytes: usize::try_from(cfg.max_token_bytes.bytes()).unwrap_or(usize::MAX),
            store,
            hmac,
        })
    }

    /// Whether the issuer's keys are loaded (readiness).
    pub fn ready(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.ready())
    }

    /// Verifies a parsed token whose claims name this issuer. Returns the principal and the
    /// key that verified it (for the cache).
    pub async fn verify(&self, jws: &Jws<'_>, claims: Map<String, Value>) -> Result<(Principal, Arc<Key>), AuthnError> {
        let alg = jws.header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(AuthnError::invalid(
                "alg_not_allowed",
                format!("algorithm {alg} is not accepted from this issuer"),
            ));
        }
        let key = if alg.is_symmetric() {
            self.hmac.clone().ok_or_else(|| AuthnError::invalid("alg_not_allowed", "no shared secret for HMAC"))?
        } else {
            self.key(jws.header.kid.as_deref(), alg).await?
        };
        key.verifier.verify(alg, jws.signing_input(), &jws.signature)?;
        self.check_type(jws.header.typ.as_deref())?;
        let principal = self.check_claims(claims, unix_now())?;
        Ok((principal, key))
    }

    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, AuthnError> {
        let store =
            self.store.as_ref().ok_or_else(|| AuthnError::invalid("key_unknown", "this issuer has no signing keys"))?;
        match store.lookup(kid, alg) {
            Lookup::Found(k) => Ok(k),
            Lookup::Ambiguous => Err(AuthnError::invalid("key_ambiguous", "the token has no kid and several keys fit")),
            Lookup::Unavailable => {
                Err(AuthnError::unavailable("keys_unavailable", "the issuer's signing keys are not available"))
            }
            Lookup::Unknown => {
                if kid.is_some()
                    && store.refetch_unknown_kid(REFETCH_WAIT).await
                    && let Lookup::Found(k) = store.lookup(kid, alg)
                {
                    return Ok(k);
                }
                Err(AuthnError::invalid("key_unknown", "no signing key of this issuer fits the token"))
            }
        }
    }

    fn check_type(&self, typ: Option<&str>) -> Result<(), AuthnError> {
        let ok = match (&self.token_types, typ) {
            (None, None) => true,
            (None, Some(t)) => ["jwt", "at+jwt", "application/at+jwt"].iter().any(|d| t.eq_ignore_ascii_case(d)),
            (Some(allowed), Some(t)) => allowed.iter().any(|a| t.eq_ignore_ascii_case(a)),
            (Some(allowed), None) => allowed.is_empty(),
        };
        if ok { Ok(()) } else { Err(AuthnError::invalid("typ_not_allowed", "the token type (typ) is not accepted")) }
    }

    /// The claim rules, at time `now`.
    pub fn check_claims(&self, claims: Map<String, Value>, now: u64) -> Result<Principal, AuthnError> {
        let exp = numeric(&claims, "exp")?.ok_or_else(|| AuthnError::invalid("exp_missing", "the token has no exp"))?;
        if now > exp.saturating_add(self.leeway) {
            return Err(AuthnError::invalid("token_expired", "the token has expired"));
        }
        if let Some(nbf) = numeric(&claims, "nbf")?
            && now.saturating_add(self.leeway) < nbf
        {
            return Err(AuthnError::invalid("token_not_yet_valid", "the token is not valid yet (nbf)"));
        }
        let iat = numeric(&claims, "iat")?;
        if let Some(iat) = iat
            && iat > now.saturating_add(self.leeway)
        {
            return Err(AuthnError::invalid("iat_future", "the token is issued in the future (iat)"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => {
                list.iter().any(|a| a.as_str().is_some_and(|a| self.audiences.iter().any(|x| x == a)))
            }
            _ => false,
        };
        if !aud_ok {
            return Err(AuthnError::invalid("aud_mismatch", "the token is not meant for this audience (aud)"));
        }
        for c in &self.required_claims {
            if !claims.contains_key(c) {
                return Err(AuthnError::invalid("claim_missing", format!("the token lacks the `{c}` claim")));
            }
        }
        principal_from_claims(claims, AuthnMethod::Jwt, Some(self.issuer.clone()), Some(exp), iat)
    }
}

/// A NumericDate claim (RFC 7519 §2): a JSON number, possibly fractional, not negative.
fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, AuthnError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(AuthnError::invalid("claim_malformed", format!("`{name}` is not a valid date"))),
        },
        Some(_) => Err(AuthnError::invalid("claim_malformed", format!("`{name}` is not a number"))),
    }
}

fn string_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<Arc<str>>, AuthnError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str().into())),
        Some(_) => Err(AuthnError::invalid("claim_malformed", format!("`{name}` is not a string"))),
    }
}

/// A principal from token claims or an introspection response.
pub fn principal_from_claims(
    claims: Map<String, Value>,
    method: AuthnMethod,
    issuer: Option<Arc<str>>,
    exp: Option<u64>,
    iat: Option<u64>,
) -> Result<Principal, AuthnError> {
    let subject = string_claim(&claims, "sub")?;
    let client_id = match string_claim(&claims, "client_id")? {
        Some(c) => Some(c),
        None => string_claim(&claims, "azp")?,
    };
    let mut scopes: Vec<Arc<str>> = Vec::new();
    match claims.get("scope") {
        Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(Arc::from)),
        Some(Value::Array(a)) => scopes.extend(a.iter().filter_map(Value::as_str).map(Arc::from)),
        _ => {}
    }
    match claims.get("scp") {
        Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(Arc::from)),
        Some(Value::Array(a)) => scopes.extend(a.iter().filter_map(Value::as_str).map(Arc::from)),
        _ => {}
    }
    scopes.sort();
    scopes.dedup();
    let confirmation = match claims.get("cnf") {
        Some(Value::Object(cnf)) => Some(Confirmation {
            jkt: cnf.get("jkt").and_then(Value::as_str).map(Arc::from),
            x5t_s256: cnf.get("x5t#S256").and_then(Value::as_str).map(Arc::from),
        }),
        _ => None,
    };
    // A JWT-SVID names a workload by its SPIFFE ID in `sub`.
    let spiffe_id = subject.as_deref().filter(|s| portcullis_core::spiffe::parse_id(s).is_some()).map(Arc::from);
    let kind = match (&subject, &client_id) {
        _ if spiffe_id.is_some() => PrincipalKind::Workload,
        (Some(s), Some(c)) if s == c => PrincipalKind::Client,
        (Some(_), _) => PrincipalKind::User,
        (None, _) => PrincipalKind::Client,
    };
    let mut p = Principal::new(kind, method);
    p.token_id = string_claim(&claims, "jti")?;
    p.subject = subject;
    p.client_id = client_id;
    p.issuer = issuer;
    p.scopes = scopes.into();
    p.expires_at = exp;
    p.issued_at = iat;
    p.confirmation = confirmation;
    p.spiffe_id = spiffe_id;
    p.claims = Some(Arc::new(claims));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::{ByteSize, Duration as D, KeyFetchConfig};
    use serde_json::json;

    fn issuer() -> Issuer {
        let cfg = IssuerConfig {
            id: "idp".into(),
            issuer: "https://idp.example".into(),
            jwks_file: None,
            jwks_uri: None,
            discovery: false,
            audiences: vec!["orders".into()],
            algorithms: vec!["ES256".into()],
            leeway: D::from_secs(60),
            required_claims: vec!["sub".into()],
            token_types: None,
            hmac_secret: None,
            max_token_bytes: ByteSize::kib(16),
            keys: KeyFetchConfig::default(),
        };
        Issuer::new(&cfg, None).unwrap()
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn time_claims() {
        let i = issuer();
        let ok = |v| i.check_claims(claims(v), NOW);
        assert!(ok(json!({"exp": NOW + 10, "aud": "orders", "sub": "a"})).is_ok());
        assert!(ok(json!({"exp": NOW - 30, "aud": "orders", "sub": "a"})).is_ok(), "within leeway");
        let code = |v| ok(v).unwrap_err().code();
        assert_eq!(code(json!({"exp": NOW - 61, "aud": "orders", "sub": "a"})), "token_expired");
        assert_eq!(code(json!({"aud": "orders", "sub": "a"})), "exp_missing");
        assert_eq!(code(json!({"exp": "1900000000", "aud": "orders", "sub": "a"})), "claim_malformed");
        assert_eq!(code(json!({"exp": -1, "aud": "orders", "sub": "a"})), "claim_malformed");
        assert_eq!(
            code(json!({"exp": NOW + 10, "nbf": NOW + 120, "aud": "orders", "sub": "a"})),
            "token_not_yet_valid"
        );
        assert_eq!(code(json!({"exp": NOW + 10, "iat": NOW + 120, "aud": "orders", "sub": "a"})), "iat_future");
        assert!(ok(json!({"exp": NOW as f64 + 10.5, "aud": "orders", "sub": "a"})).is_ok(), "fractional dates");
    }

    #[test]
    fn audiences_and_required_claims() {
        let i = issuer();
        let code = |v| i.check_claims(claims(v), NOW).unwrap_err().code();
        assert!(i.check_claims(claims(json!({"exp": NOW + 9, "aud": ["x", "orders"], "sub": "a"})), NOW).is_ok());
        assert_eq!(code(json!({"exp": NOW + 9, "aud": ["x", "y"], "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "aud": "Orders", "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "aud": 7, "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "aud": "orders"})), "claim_missing");
    }

    #[test]
    fn principals_from_claims() {
        let p = issuer()
            .check_claims(
                claims(json!({"exp": NOW + 9, "iat": NOW, "aud": "orders", "sub": "alice", "azp": "web", "scope": "b a  a", "scp": ["c"], "jti": "j1", "cnf": {"jkt": "T"}})),
                NOW,
            )
            .unwrap();
        assert_eq!(p.kind, PrincipalKind::User);
        assert_eq!(p.subject.as_deref(), Some("alice"));
        assert_eq!(p.client_id.as_deref(), Some("web"));
        let scopes: Vec<&str> = p.scopes.iter().map(|s| &**s).collect();
        assert_eq!(scopes, ["a", "b", "c"]);
        assert_eq!(p.token_id.as_deref(), Some("j1"));
        assert_eq!(p.confirmation.unwrap().jkt.as_deref(), Some("T"));
        assert_eq!(p.issuer.as_deref(), Some("https://idp.example"));
    }

    #[test]
    fn types() {
        let i = issuer();
        for t in [None, Some("JWT"), Some("at+jwt"), Some("application/AT+JWT")] {
            assert!(i.check_type(t).is_ok(), "{t:?}");
        }
        assert!(i.check_type(Some("dpop+jwt")).is_err());
        assert!(i.check_type(Some("id_token")).is_err());
    }

    #[test]
    fn hmac_needs_its_secret() {
        let mut cfg = IssuerConfig {
            id: "h".into(),
            issuer: "h".into(),
            jwks_file: None,
            jwks_uri: None,
            discovery: false,
            audiences: vec!["a".into()],
            algorithms: vec!["HS256".into()],
            leeway: D::from_secs(0),
            required_claims: vec![],
            token_types: None,
            hmac_secret: None,
            max_token_bytes: ByteSize::kib(1),
            keys: KeyFetchConfig::default(),
        };
        assert_eq!(Issuer::new(&cfg, None).unwrap_err().0, "algorithms");
        cfg.hmac_secret = Some(portcullis_config::Secret::new("x".repeat(32)));
        assert!(Issuer::new(&cfg, None).is_ok());
        cfg.algorithms = vec!["RS256".into()];
        assert_eq!(Issuer::new(&cfg, None).unwrap_err().0, "hmac_secret");
        cfg.algorithms = vec!["none".into()];
        assert_eq!(Issuer::new(&cfg, None).unwrap_err().0, "algorithms");
    }
}
