//! JWT access tokens (RFC 7519, RFC 9068): which issuer, which key, and the claim rules.
//!
//! Order of checks: the header rules (in `portcullis-jose`), then the issuer (the unverified
//! `iss` only chooses which keys to try), the algorithm allowlist of that issuer, the key
//! (by `kid`; its type, `alg`, `use` and `key_ops` must fit), the signature, and only then the
//! claims: `exp` (required, numeric), `nbf` and `iat` (not in the future beyond the leeway),
//! `aud` (one of the configured audiences), `typ`, and the required claims.
//!
//! Two claims are read with care because getting them wrong fails open:
//!
//! - `cnf` (RFC 7800): a token may be bound to a key by `jkt` (a DPoP key, RFC 9449) or
//!   `x5t#S256` (a client certificate, RFC 8705), the two methods the gateway verifies. A
//!   `cnf` that is anything else (not an object, an empty object, a member that is not one of
//!   those two strings: `jwk`, `kid`, `jku`, `jkt: [..]`...) claims a binding the gateway
//!   cannot check, and the token is refused (`cnf_unsupported`), never taken as a bearer
//!   token. The same rule holds for an introspection answer's `cnf`.
//! - SPIFFE IDs: a `spiffe://` `sub` names a workload only in a token of an issuer configured
//!   as a JWT-SVID issuer of that trust domain (`spiffe_trust_domain`); such an issuer's
//!   token whose `sub` is a SPIFFE ID of another trust domain (or a malformed one) is
//!   refused. Any other issuer's `spiffe://` subject is just a subject: no SPIFFE identity,
//!   so `spiffe_ids` rules and Cedar workload checks do not match it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_config::IssuerConfig;
use portcullis_core::{AuthnMethod, Claims, Confirmation, Principal, PrincipalKind};
use portcullis_jose::{Algorithm, Jws, VerifyingKey};
use serde_json::{Map, Value};

use crate::AuthnError;
use crate::jwks::{Key, KeyStore, Lookup};
use portcullis_jose::claims::{Claim, TokenClaims};

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
    /// The trust domain whose JWT-SVIDs this issuer signs: its `sub` is then a SPIFFE ID.
    spiffe_trust_domain: Option<Arc<str>>,
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
        let spiffe_trust_domain = match cfg.spiffe_trust_domain.as_deref() {
            None => None,
            Some(td) => match portcullis_core::spiffe::parse_id(&format!("spiffe://{td}")) {
                Some((domain, "")) if domain == td => Some(Arc::from(td)),
                _ => {
                    return Err((
                        "spiffe_trust_domain",
                        format!("`{td}` is not a SPIFFE trust domain name (lower-case letters, digits, `-`, `.`, `_`)"),
                    ));
                }
            },
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
            spiffe_trust_domain,
            store,
            hmac,
        })
    }

    /// Whether the issuer's keys are loaded (readiness).
    pub fn ready(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.ready())
    }

    /// Verifies a parsed token whose claims name this issuer. Returns the principal (its
    /// claims included) and the key that verified it (for the cache).
    pub async fn verify(&self, jws: Jws<'_>) -> Result<(Principal, Arc<Key>), AuthnError> {
        let claims = TokenClaims::parse(&jws.payload).map_err(claims_error)?;
        let (principal, key) = self.verify_parsed(&jws, &claims).await?;
        drop(claims);
        Ok((with_claims(principal, jws.payload), key))
    }

    /// [`Issuer::verify`] for claims already read; the principal has no `claims` yet.
    pub(crate) async fn verify_parsed(
        &self,
        jws: &Jws<'_>,
        claims: &TokenClaims<'_>,
    ) -> Result<(Principal, Arc<Key>), AuthnError> {
        let alg = jws.header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(AuthnError::invalid(
                "alg_not_allowed",
                format!("algorithm {alg} is not accepted from this issuer"),
            ));
        }
        let keys = if alg.is_symmetric() {
            Lookup::Found(
                self.hmac.clone().ok_or_else(|| AuthnError::invalid("alg_not_allowed", "no shared secret for HMAC"))?,
            )
        } else {
            self.key(jws.header.kid.as_deref(), alg).await?
        };
        let public_key_checked = !alg.is_symmetric() && matches!(keys, Lookup::Found(_) | Lookup::Several(_));
        let key = verify_signature(jws, keys);
        if public_key_checked {
            crate::after_signature_check().await;
        }
        let key = key?;
        self.check_type(jws.header.typ.as_deref())?;
        // The clock is read after the key is found: finding it may have waited for a refetch.
        let principal = self.check_claims(claims, unix_now())?;
        Ok((principal, key))
    }

    /// Checks a token's algorithm and signature by this issuer's keys, and nothing else
    /// (a logout token's claims follow other rules: see `logout`).
    pub(crate) async fn verify_signed(&self, jws: &Jws<'_>) -> Result<(), AuthnError> {
        let alg = jws.header.alg;
        if alg.is_symmetric() || !self.algorithms.contains(&alg) {
            return Err(AuthnError::invalid(
                "alg_not_allowed",
                format!("algorithm {alg} is not accepted from this issuer"),
            ));
        }
        let keys = self.key(jws.header.kid.as_deref(), alg).await?;
        let key = verify_signature(jws, keys);
        crate::after_signature_check().await;
        key.map(drop)
    }

    /// The issuer's clock leeway, in seconds.
    pub(crate) fn leeway(&self) -> u64 {
        self.leeway
    }

    /// The key (`Found`) or keys (`Several`) to verify with.
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Lookup, AuthnError> {
        let store =
            self.store.as_ref().ok_or_else(|| AuthnError::invalid("key_unknown", "this issuer has no signing keys"))?;
        match store.lookup(kid, alg) {
            found @ (Lookup::Found(_) | Lookup::Several(_)) => Ok(found),
            Lookup::Ambiguous => Err(AuthnError::invalid("key_ambiguous", "the token has no kid and several keys fit")),
            Lookup::Unavailable => {
                Err(AuthnError::unavailable("keys_unavailable", "the issuer's signing keys are not available"))
            }
            Lookup::Unknown => {
                if kid.is_some() && store.refetch_unknown_kid(REFETCH_WAIT).await {
                    match store.lookup(kid, alg) {
                        found @ (Lookup::Found(_) | Lookup::Several(_)) => return Ok(found),
                        Lookup::Unavailable => {
                            return Err(AuthnError::unavailable(
                                "keys_unavailable",
                                "the issuer's signing keys are not available",
                            ));
                        }
                        Lookup::Unknown | Lookup::Ambiguous => {}
                    }
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

    /// Until when (seconds since the epoch) a token verified now may be served from the
    /// cache: its `exp` plus the issuer's leeway, exactly as long as verification would
    /// accept it.
    pub(crate) fn cacheable_until(&self, expires_at: Option<u64>) -> u64 {
        expires_at.map_or(0, |exp| exp.saturating_add(self.leeway))
    }

    /// The claim rules, at time `now`. The principal returned has no `claims` yet.
    pub(crate) fn check_claims(&self, claims: &TokenClaims<'_>, now: u64) -> Result<Principal, AuthnError> {
        let exp =
            numeric(&claims.exp, "exp")?.ok_or_else(|| AuthnError::invalid("exp_missing", "the token has no exp"))?;
        if now > exp.saturating_add(self.leeway) {
            return Err(AuthnError::invalid("token_expired", "the token has expired"));
        }
        if let Some(nbf) = numeric(&claims.nbf, "nbf")?
            && now.saturating_add(self.leeway) < nbf
        {
            return Err(AuthnError::invalid("token_not_yet_valid", "the token is not valid yet (nbf)"));
        }
        let iat = numeric(&claims.iat, "iat")?;
        if let Some(iat) = iat
            && iat > now.saturating_add(self.leeway)
        {
            return Err(AuthnError::invalid("iat_future", "the token is issued in the future (iat)"));
        }
        let aud_ok = match &claims.aud {
            Claim::Text(a) => self.audiences.iter().any(|x| x == a),
            Claim::List(list) => list.iter().any(|a| self.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthnError::invalid("aud_mismatch", "the token is not meant for this audience (aud)"));
        }
        for c in &self.required_claims {
            if !claims.has(c) {
                return Err(AuthnError::invalid("claim_missing", format!("the token lacks the `{c}` claim")));
            }
        }
        let spiffe = match &self.spiffe_trust_domain {
            Some(td) => SpiffeTrust::Svid(td),
            None => SpiffeTrust::None,
        };
        build_principal(claims, AuthnMethod::Jwt, Some(self.issuer.clone()), Some(exp), iat, spiffe)
    }
}

/// Why a token's claims were refused before any check.
pub(crate) fn claims_error(e: portcullis_jose::Error) -> AuthnError {
    match e {
        portcullis_jose::Error::Duplicate(_) => AuthnError::from(e),
        _ => AuthnError::invalid("token_malformed", "the token's claims are not a JSON object"),
    }
}

/// `principal` with the claims it was read from (`payload`, already found to be one JSON
/// object without repeated names).
pub(crate) fn with_claims(mut principal: Principal, payload: Vec<u8>) -> Principal {
    principal.claims = Some(Claims::from_json(payload));
    principal
}

/// A NumericDate claim (RFC 7519 §2): a JSON number, possibly fractional, not negative.
fn numeric(claim: &Claim<'_>, name: &'static str) -> Result<Option<u64>, AuthnError> {
    match claim {
        Claim::Absent => Ok(None),
        Claim::Number(f) if f.is_finite() && *f >= 0.0 => Ok(Some(*f as u64)),
        Claim::Number(_) => Err(AuthnError::invalid("claim_malformed", format!("`{name}` is not a valid date"))),
        _ => Err(AuthnError::invalid("claim_malformed", format!("`{name}` is not a number"))),
    }
}

/// Where a principal's fields are read from: a token's claims, or claims already in a map
/// (an introspection answer, the gateway's own tokens).
trait Source {
    /// A string claim; `null` is no claim, anything else but a string is malformed.
    fn text(&self, name: &'static str) -> Result<Option<Arc<str>>, AuthnError>;
    /// Scopes: the words of a string, or the strings of an array.
    fn scopes(&self, name: &'static str, out: &mut Vec<Arc<str>>);
    /// The key the token is bound to (`cnf`); `Err` when it claims a binding by a method the
    /// gateway does not verify.
    fn confirmation(&self) -> Result<Option<Confirmation>, AuthnError>;
}

/// A `cnf` the gateway cannot verify.
fn cnf_unsupported() -> AuthnError {
    AuthnError::invalid(
        "cnf_unsupported",
        "the token is bound to a key by a confirmation method (cnf) this gateway cannot verify",
    )
}

/// Whose word a principal's SPIFFE ID is taken on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SpiffeTrust<'a> {
    /// Nobody's: a `spiffe://` subject is only a subject.
    None,
    /// A JWT-SVID issuer of this trust domain: a `sub` that is a SPIFFE ID of it is one; a
    /// `spiffe://` `sub` outside it refuses the token.
    Svid(&'a str),
    /// The gateway's own tokens: the `spiffe_id` claim, which it writes only from a SPIFFE ID
    /// it authenticated.
    Own,
}

fn malformed_text(name: &str) -> AuthnError {
    AuthnError::invalid("claim_malformed", format!("`{name}` is not a string"))
}

impl Source for TokenClaims<'_> {
    fn text(&self, name: &'static str) -> Result<Option<Arc<str>>, AuthnError> {
        let claim = match name {
            "sub" => &self.sub,
            "client_id" => &self.client_id,
            "azp" => &self.azp,
            "jti" => &self.jti,
            _ => &Claim::Absent,
        };
        match claim {
            Claim::Absent | Claim::Null => Ok(None),
            Claim::Text(s) => Ok(Some(Arc::from(&**s))),
            _ => Err(malformed_text(name)),
        }
    }

    fn scopes(&self, name: &'static str, out: &mut Vec<Arc<str>>) {
        match if name == "scope" { &self.scope } else { &self.scp } {
            Claim::Text(s) => out.extend(s.split(' ').filter(|s| !s.is_empty()).map(Arc::from)),
            Claim::List(l) => out.extend(l.iter().map(|s| Arc::from(&**s))),
            _ => {}
        }
    }

    fn confirmation(&self) -> Result<Option<Confirmation>, AuthnError> {
        match &self.cnf {
            Claim::Absent => Ok(None),
            Claim::Object { jkt, x5t_s256, other: false } if jkt.is_some() || x5t_s256.is_some() => {
                Ok(Some(Confirmation {
                    jkt: jkt.as_deref().map(Arc::from),
                    x5t_s256: x5t_s256.as_deref().map(Arc::from),
                }))
            }
            _ => Err(cnf_unsupported()),
        }
    }
}

impl Source for Map<String, Value> {
    fn text(&self, name: &'static str) -> Result<Option<Arc<str>>, AuthnError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str().into())),
            Some(_) => Err(malformed_text(name)),
        }
    }

    fn scopes(&self, name: &'static str, out: &mut Vec<Arc<str>>) {
        match self.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty()).map(Arc::from)),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str).map(Arc::from)),
            _ => {}
        }
    }

    fn confirmation(&self) -> Result<Option<Confirmation>, AuthnError> {
        let cnf = match self.get("cnf") {
            None => return Ok(None),
            Some(Value::Object(cnf)) if !cnf.is_empty() => cnf,
            Some(_) => return Err(cnf_unsupported()),
        };
        let mut c = Confirmation::default();
        for (name, value) in cnf {
            let slot = match name.as_str() {
                "jkt" => &mut c.jkt,
                "x5t#S256" => &mut c.x5t_s256,
                _ => return Err(cnf_unsupported()),
            };
            *slot = Some(value.as_str().ok_or_else(cnf_unsupported)?.into());
        }
        Ok(Some(c))
    }
}

/// A principal from claims in a map (an introspection response). A `spiffe://` subject gives
/// it no SPIFFE ID: no introspection endpoint is a JWT-SVID issuer.
pub fn principal_from_claims(
    claims: Map<String, Value>,
    method: AuthnMethod,
    issuer: Option<Arc<str>>,
    exp: Option<u64>,
    iat: Option<u64>,
) -> Result<Principal, AuthnError> {
    let mut p = build_principal(&claims, method, issuer, exp, iat, SpiffeTrust::None)?;
    p.claims = Some(Claims::from_map(claims));
    Ok(p)
}

/// A principal from the claims of a token this gateway issued (and whose signature it
/// checked): its SPIFFE ID is the `spiffe_id` claim, which the gateway writes only for a
/// SPIFFE ID it authenticated; never the `sub`.
pub fn principal_from_own_claims(
    claims: Map<String, Value>,
    method: AuthnMethod,
    issuer: Option<Arc<str>>,
    exp: Option<u64>,
    iat: Option<u64>,
) -> Result<Principal, AuthnError> {
    let mut p = build_principal(&claims, method, issuer, exp, iat, SpiffeTrust::Own)?;
    p.claims = Some(Claims::from_map(claims));
    Ok(p)
}

/// A principal's fields from its claims (which it does not hold yet).
fn build_principal(
    claims: &impl Source,
    method: AuthnMethod,
    issuer: Option<Arc<str>>,
    exp: Option<u64>,
    iat: Option<u64>,
    spiffe: SpiffeTrust<'_>,
) -> Result<Principal, AuthnError> {
    let subject = claims.text("sub")?;
    let client_id = match claims.text("client_id")? {
        Some(c) => Some(c),
        None => claims.text("azp")?,
    };
    let mut scopes: Vec<Arc<str>> = Vec::new();
    claims.scopes("scope", &mut scopes);
    claims.scopes("scp", &mut scopes);
    // Usually in order already.
    if !scopes.is_sorted() {
        scopes.sort_unstable();
    }
    scopes.dedup();
    let spiffe_id = match spiffe {
        SpiffeTrust::None => None,
        // A JWT-SVID names a workload by its SPIFFE ID in `sub`, in its issuer's trust domain.
        SpiffeTrust::Svid(td) => match subject.as_deref() {
            Some(sub) if sub.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("spiffe://")) => {
                match portcullis_core::spiffe::parse_id(sub) {
                    Some((domain, _)) if domain == td => subject.clone(),
                    _ => {
                        return Err(AuthnError::invalid(
                            "spiffe_id_foreign",
                            "the token's subject is not a SPIFFE ID of its issuer's trust domain",
                        ));
                    }
                }
            }
            _ => None,
        },
        SpiffeTrust::Own => claims.text("spiffe_id")?.filter(|id| portcullis_core::spiffe::parse_id(id).is_some()),
    };
    let kind = match (&subject, &client_id) {
        _ if spiffe_id.is_some() => PrincipalKind::Workload,
        (Some(s), Some(c)) if s == c => PrincipalKind::Client,
        (Some(_), _) => PrincipalKind::User,
        (None, _) => PrincipalKind::Client,
    };
    let mut p = Principal::new(kind, method);
    p.token_id = claims.text("jti")?;
    p.subject = subject;
    p.client_id = client_id;
    p.issuer = issuer;
    p.scopes = scopes.into();
    p.expires_at = exp;
    p.issued_at = iat;
    p.confirmation = claims.confirmation()?;
    p.spiffe_id = spiffe_id;
    Ok(p)
}

/// The key of `keys` that verified the token's signature.
fn verify_signature(jws: &Jws<'_>, keys: Lookup) -> Result<Arc<Key>, AuthnError> {
    let alg = jws.header.alg;
    let verify = |k: &Key| k.verifier.verify(alg, jws.signing_input(), &jws.signature);
    match keys {
        Lookup::Several(keys) => {
            let mut last = None;
            let found = keys.into_iter().find(|k| match verify(k) {
                Ok(()) => true,
                Err(e) => {
                    last = Some(e);
                    false
                }
            });
            match (found, last) {
                (Some(k), _) => Ok(k),
                (None, Some(e)) => Err(e.into()),
                (None, None) => Err(AuthnError::invalid("key_unknown", "no signing key fits the token")),
            }
        }
        Lookup::Found(k) => {
            verify(&k)?;
            Ok(k)
        }
        _ => Err(AuthnError::invalid("key_unknown", "no signing key fits the token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::{ByteSize, Duration as D, KeyFetchConfig};
    use serde_json::json;

    fn issuer() -> Issuer {
        Issuer::new(&issuer_config(), None).unwrap()
    }

    fn issuer_config() -> IssuerConfig {
        IssuerConfig {
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
            spiffe_trust_domain: None,
        }
    }

    /// The claim rules on `v`, read as a token's claims are.
    fn check(i: &Issuer, v: Value, now: u64) -> Result<Principal, AuthnError> {
        let text = v.to_string();
        i.check_claims(&TokenClaims::parse(text.as_bytes()).unwrap(), now)
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn time_claims() {
        let i = issuer();
        let ok = |v| check(&i, v, NOW);
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
        let code = |v| check(&i, v, NOW).unwrap_err().code();
        assert!(check(&i, json!({"exp": NOW + 9, "aud": ["x", "orders"], "sub": "a"}), NOW).is_ok());
        assert_eq!(code(json!({"exp": NOW + 9, "aud": ["x", "y"], "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "aud": "Orders", "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "aud": 7, "sub": "a"})), "aud_mismatch");
        assert_eq!(code(json!({"exp": NOW + 9, "aud": "orders"})), "claim_missing");
    }

    #[test]
    fn principals_from_claims() {
        let p = check(
            &issuer(),
            json!({"exp": NOW + 9, "iat": NOW, "aud": "orders", "sub": "alice", "azp": "web", "scope": "b a  a", "scp": ["c"], "jti": "j1", "cnf": {"jkt": "T"}}),
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

    /// A `cnf` the gateway cannot verify refuses the token, from a JWT and from a map (an
    /// introspection answer) alike; it is never dropped to leave a bearer token.
    #[test]
    fn unverifiable_confirmations_refuse_the_token() {
        let i = issuer();
        let base = json!({"exp": NOW + 9, "aud": "orders", "sub": "a"});
        let with = |cnf: Value| {
            let mut v = base.clone();
            v["cnf"] = cnf;
            v
        };
        let from_map = |v: Value| {
            principal_from_claims(v.as_object().unwrap().clone(), AuthnMethod::Introspection, None, None, None)
        };
        for cnf in [
            json!({"jkt": ["abc"]}),
            json!("abc"),
            json!(null),
            json!(["abc"]),
            json!(7),
            json!(true),
            json!({}),
            json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}),
            json!({"kid": "k1"}),
            json!({"jku": "https://idp.example/jwks"}),
            json!({"jkt": "T", "kid": "k1"}),
            json!({"x5t#S256": {"v": "X"}}),
            json!({"x5t#S256": null}),
        ] {
            assert_eq!(check(&i, with(cnf.clone()), NOW).unwrap_err().code(), "cnf_unsupported", "JWT cnf {cnf}");
            assert_eq!(from_map(with(cnf.clone())).unwrap_err().code(), "cnf_unsupported", "map cnf {cnf}");
        }
        for (cnf, jkt, x5t) in [
            (json!({"jkt": "T"}), Some("T"), None),
            (json!({"x5t#S256": "X"}), None, Some("X")),
            (json!({"jkt": "T", "x5t#S256": "X"}), Some("T"), Some("X")),
        ] {
            for p in [check(&i, with(cnf.clone()), NOW).unwrap(), from_map(with(cnf.clone())).unwrap()] {
                let c = p.confirmation.unwrap();
                assert_eq!((c.jkt.as_deref(), c.x5t_s256.as_deref()), (jkt, x5t), "{cnf}");
            }
        }
        assert!(check(&i, base.clone(), NOW).unwrap().confirmation.is_none());
    }

    /// A `spiffe://` subject is a SPIFFE ID only from a JWT-SVID issuer of its trust domain.
    #[test]
    fn spiffe_ids_only_from_jwt_svid_issuers() {
        let claims = |sub: &str| json!({"exp": NOW + 9, "aud": "orders", "sub": sub});
        let plain = issuer();
        let p = check(&plain, claims("spiffe://example.org/ns/prod/sa/api"), NOW).unwrap();
        assert_eq!(p.spiffe_id, None, "an issuer that is not a JWT-SVID issuer names no workload");
        assert_eq!(p.kind, PrincipalKind::User);
        assert_eq!(p.trust_domain(), None);

        let mut cfg = IssuerConfig {
            id: "spire".into(),
            issuer: "https://spire.example".into(),
            required_claims: vec![],
            spiffe_trust_domain: Some("example.org".into()),
            ..issuer_config()
        };
        let svid = Issuer::new(&cfg, None).unwrap();
        let p = check(&svid, claims("spiffe://example.org/ns/prod/sa/api"), NOW).unwrap();
        assert_eq!(p.spiffe_id.as_deref(), Some("spiffe://example.org/ns/prod/sa/api"));
        assert_eq!(p.kind, PrincipalKind::Workload);
        assert_eq!(p.trust_domain(), Some("example.org"));
        for foreign in [
            "spiffe://evil.org/ns/prod/sa/api",
            "spiffe://example.org.evil.org/x",
            "spiffe://example.org/a/../b",
            "SPIFFE://example.org/x",
        ] {
            assert_eq!(check(&svid, claims(foreign), NOW).unwrap_err().code(), "spiffe_id_foreign", "{foreign}");
        }
        let p = check(&svid, claims("alice"), NOW).unwrap();
        assert_eq!((p.spiffe_id, p.kind), (None, PrincipalKind::User), "a plain subject stays one");

        // Introspection answers name no workload; the gateway's own tokens, by `spiffe_id` only.
        let map = claims("spiffe://example.org/x").as_object().unwrap().clone();
        let p = principal_from_claims(map.clone(), AuthnMethod::Introspection, None, None, None).unwrap();
        assert_eq!(p.spiffe_id, None);
        let p = principal_from_own_claims(map.clone(), AuthnMethod::Jwt, None, None, None).unwrap();
        assert_eq!(p.spiffe_id, None, "the gateway's own token: not from `sub`");
        let mut own = map;
        own.insert("spiffe_id".into(), json!("spiffe://example.org/x"));
        let p = principal_from_own_claims(own, AuthnMethod::Jwt, None, None, None).unwrap();
        assert_eq!(p.spiffe_id.as_deref(), Some("spiffe://example.org/x"));

        for bad in ["Example.org", "example.org/x", "", "spiffe://example.org"] {
            cfg.spiffe_trust_domain = Some(bad.into());
            assert_eq!(Issuer::new(&cfg, None).unwrap_err().0, "spiffe_trust_domain", "{bad}");
        }
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
            spiffe_trust_domain: None,
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
