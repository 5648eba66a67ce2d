//! DPoP (RFC 9449): proof that the caller holds the private key its access token is bound to.
//!
//! A proof is a JWT the client signs for each request with its own key pair, whose public
//! key rides in the header. [`Dpop::check`] runs the checks of §4.3 that need nothing but the
//! proof and the request: `typ`, an asymmetric algorithm of the allowlist, a public `jwk`,
//! `htm`, `htu` (normalised, without query and fragment), `iat` within the window, a `jti`,
//! `ath` (the hash of the access token), where configured a server nonce, and last the
//! signature.
//!
//! Cost: the key is the client's choice, so an unauthenticated request decides how much work
//! its signature check is. Every check that costs next to nothing runs before it, so a proof
//! that fails one costs no public-key work at all; an RSA key must be within the configured
//! sizes (`rsa_min_bits`..`rsa_max_bits`, 2048–4096 by default); and the work that depends
//! only on the key (parsing it, RSA's Montgomery constants) is kept per worker for the keys
//! seen last, by RFC 7638 thumbprint, so a client that reuses its key (as DPoP clients do)
//! pays it once. `bench/RESULTS.md` has the figures: a proof with a fresh RSA-4096 key now
//! costs less than one with an ES256 key.
//! The authenticator then checks the token itself and its `cnf.jkt` against the proof's key,
//! and only then [`Dpop::remember`]s the `jti` in the shared replay cache, so that invalid
//! requests cannot fill the cache.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::{digest, hmac, rand};
use portcullis_config::DpopConfig;
use portcullis_jose::{Algorithm, HeaderPolicy, Jwk, Jws, VerifyingKey, b64, parse_object_no_duplicates};
use portcullis_state::State;
use serde_json::Value;

use crate::AuthnError;

/// Longest proof accepted.
const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted.
const MAX_JTI: usize = 256;
/// How many proof keys each worker keeps ready.
pub const KEY_CACHE: usize = 256;

thread_local! {
    /// Proof keys ready to verify, by thumbprint (with their algorithm): first in, first out.
    static KEYS: RefCell<KeyCache> = RefCell::new(KeyCache::default());
}

/// Keys of recent proofs, at most [`KEY_CACHE`]. A thumbprint (RFC 7638, SHA-256) names the
/// key material exactly, and the algorithm is part of the name, so an entry serves only the
/// proofs it was made for; whether a proof's `jwk` may be used with its `alg` (its own `alg`,
/// `use`, `key_ops` members) is checked on every proof, before the cache is asked.
#[derive(Default)]
struct KeyCache {
    /// By thumbprint: the algorithm the key was prepared for, and the prepared key.
    keys: HashMap<String, (Algorithm, Arc<VerifyingKey>)>,
    /// Thumbprints, oldest first.
    order: VecDeque<String>,
}

impl KeyCache {
    fn get_or_make(&mut self, jwk: &Jwk, alg: Algorithm) -> Result<Arc<VerifyingKey>, portcullis_jose::Error> {
        // Looked up by the borrowed thumbprint: a repeated key costs no allocation.
        if let Some((a, k)) = self.keys.get(jwk.thumbprint.as_str())
            && *a == alg
        {
            return Ok(k.clone());
        }
        let key = Arc::new(jwk.verifying_key(&[alg])?);
        // A key seen before with another algorithm (RS256, then PS256) takes its place.
        if self.keys.insert(jwk.thumbprint.clone(), (alg, key.clone())).is_none() {
            self.order.push_back(jwk.thumbprint.clone());
            if self.order.len() > KEY_CACHE
                && let Some(oldest) = self.order.pop_front()
            {
                self.keys.remove(&oldest);
            }
        }
        Ok(key)
    }
}

/// How a deployment checks DPoP proofs.
#[derive(Debug)]
pub struct Dpop {
    algs: Vec<Algorithm>,
    /// Accepted RSA key sizes, in bits.
    rsa_bits: std::ops::RangeInclusive<usize>,
    /// The `algs` of the `DPoP` challenge.
    pub algs_header: String,
    max_age: u64,
    leeway: u64,
    nonces: Option<Nonces>,
    state: State,
}

/// A proof that passed every check that needs only itself and the request.
#[derive(Debug)]
pub struct Checked {
    /// RFC 7638 thumbprint of the proof's key: the token's `cnf.jkt` must equal it.
    pub jkt: String,
    jti: String,
}

/// Server nonces (§8): a timestamp and its HMAC, so that any replica holding the secret can
/// check a nonce without remembering it.
#[derive(Debug)]
struct Nonces {
    key: hmac::Key,
    lifetime: u64,
}

fn proof_error(code: &'static str, description: impl Into<Cow<'static, str>>) -> AuthnError {
    AuthnError::Proof { code, description: description.into() }
}

impl Dpop {
    /// Builds the checker; `Err` names the key at fault.
    pub fn new(cfg: &DpopConfig, state: State) -> Result<Dpop, (&'static str, String)> {
        let mut algs = Vec::new();
        for a in &cfg.algorithms {
            match Algorithm::parse(a) {
                Some(alg) if !alg.is_symmetric() => algs.push(alg),
                _ => return Err(("algorithms", format!("`{a}` is not an asymmetric algorithm"))),
            }
        }
        if cfg.rsa_min_bits < 2048 {
            return Err(("rsa_min_bits", "RSA keys of fewer than 2048 bits are never accepted".into()));
        }
        if cfg.rsa_max_bits > 8192 {
            return Err(("rsa_max_bits", "RSA keys of more than 8192 bits are never accepted".into()));
        }
        if cfg.rsa_min_bits > cfg.rsa_max_bits {
            return Err(("rsa_max_bits", "smaller than `rsa_min_bits`".into()));
        }
        let nonces = if cfg.require_nonce {
            let key = match &cfg.nonce_secret {
                Some(s) => hmac::Key::new(hmac::HMAC_SHA256, s.expose().as_bytes()),
                None => hmac::Key::generate(hmac::HMAC_SHA256, &rand::SystemRandom::new())
                    .map_err(|_| ("nonce_secret", "cannot generate a nonce key".to_string()))?,
            };
            Some(Nonces { key, lifetime: cfg.nonce_lifetime.get().as_secs().max(1) })
        } else {
            None
        };
        Ok(Dpop {
            algs_header: algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(" "),
            algs,
            rsa_bits: cfg.rsa_min_bits as usize..=cfg.rsa_max_bits as usize,
            max_age: cfg.max_age.get().as_secs(),
            leeway: cfg.leeway.get().as_secs(),
            nonces,
            state,
        })
    }

    /// A fresh nonce, when nonces are required.
    pub fn nonce(&self, now: u64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.issue(now))
    }

    /// Checks `proof` for a request with `method` to `url` (scheme, authority and path as the
    /// gateway received it) carrying `token`, at `now` (seconds since the epoch). The
    /// signature is checked last, once everything that costs less has passed.
    pub fn check(&self, proof: &str, method: &str, url: &str, token: &str, now: u64) -> Result<Checked, AuthnError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(proof_error("dpop_proof_too_large", "the DPoP proof is larger than accepted"));
        }
        let jws = Jws::parse(proof, HeaderPolicy { embedded_jwk: true })
            .map_err(|e| proof_error("dpop_proof_malformed", format!("DPoP proof: {e}")))?;
        if jws.header.typ.as_deref() != Some("dpop+jwt") {
            return Err(proof_error("dpop_typ", "the DPoP proof's typ must be dpop+jwt"));
        }
        let alg = jws.header.alg;
        if !self.algs.contains(&alg) {
            return Err(proof_error("dpop_alg", format!("the DPoP proof algorithm {} is not accepted", alg.name())));
        }
        let Some(jwk) = &jws.header.jwk else {
            return Err(proof_error("dpop_proof_malformed", "the DPoP proof has no jwk"));
        };
        if !jwk.fits(alg) {
            return Err(proof_error("dpop_key", "the DPoP proof's key does not fit its algorithm"));
        }
        if let Some(bits) = jwk.rsa_bits()
            && !self.rsa_bits.contains(&bits)
        {
            return Err(proof_error(
                "dpop_key_size",
                format!(
                    "the DPoP proof's RSA key has {bits} bits; {} to {} are accepted",
                    self.rsa_bits.start(),
                    self.rsa_bits.end()
                ),
            ));
        }
        let claims = parse_object_no_duplicates(&jws.payload)
            .map_err(|_| proof_error("dpop_proof_malformed", "the DPoP proof's claims are not a JSON object"))?;
        let text = |name: &'static str| match claims.get(name) {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(proof_error("dpop_proof_malformed", format!("the DPoP proof has no `{name}` string"))),
        };
        if text("htm")? != method {
            return Err(proof_error("dpop_htm", "the DPoP proof's htm is not this request's method"));
        }
        match (normalize_htu(text("htu")?), normalize_htu(url)) {
            (Some(a), Some(b)) if a == b => {}
            _ => return Err(proof_error("dpop_htu", "the DPoP proof's htu is not this request's URI")),
        }
        let iat = match claims.get("iat") {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
            _ => None,
        }
        .ok_or_else(|| proof_error("dpop_proof_malformed", "the DPoP proof has no numeric iat"))?;
        if iat > now.saturating_add(self.leeway) || iat.saturating_add(self.max_age) < now {
            return Err(proof_error("dpop_iat", "the DPoP proof is too old or from the future"));
        }
        let jti = text("jti")?;
        if jti.is_empty() || jti.len() > MAX_JTI {
            return Err(proof_error("dpop_proof_malformed", "the DPoP proof's jti is empty or too long"));
        }
        let ath = b64::encode(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        if text("ath").map_err(|_| proof_error("dpop_ath", "the DPoP proof has no ath"))? != ath {
            return Err(proof_error("dpop_ath", "the DPoP proof's ath is not the hash of this access token"));
        }
        if let Some(nonces) = &self.nonces {
            let fresh = matches!(claims.get("nonce"), Some(Value::String(n)) if nonces.valid(n, now));
            if !fresh {
                return Err(AuthnError::UseNonce { nonce: nonces.issue(now) });
            }
        }
        // Last, the public-key work.
        let key = KEYS
            .with_borrow_mut(|keys| keys.get_or_make(jwk, alg))
            .map_err(|e| proof_error("dpop_key", format!("the DPoP proof's key does not fit its algorithm: {e}")))?;
        key.verify(alg, jws.signing_input(), &jws.signature)
            .map_err(|_| proof_error("dpop_signature", "the DPoP proof's signature is invalid"))?;
        Ok(Checked { jkt: jwk.thumbprint.clone(), jti: jti.to_string() })
    }

    /// Records the proof's `jti` for its replay window: a proof is accepted once. The key is
    /// scoped by the proof's key, so one client cannot burn another's `jti`s.
    pub async fn remember(&self, checked: &Checked) -> Result<(), AuthnError> {
        let key = format!("{}\n{}", checked.jkt, checked.jti);
        let ttl = Duration::from_secs(self.max_age + self.leeway + 1);
        match self.state.insert_once("dpop-jti", key.as_bytes(), ttl).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(proof_error("dpop_replay", "this DPoP proof has been used before")),
            Err(e) => Err(AuthnError::unavailable(
                crate::error::REPLAY_CACHE_UNAVAILABLE,
                format!("cannot check DPoP replay: {e}"),
            )),
        }
    }
}

impl Nonces {
    fn issue(&self, now: u64) -> String {
        let ts = now.to_be_bytes();
        let tag = hmac::sign(&self.key, &ts);
        let mut raw = ts.to_vec();
        raw.extend_from_slice(&tag.as_ref()[..16]);
        b64::encode(&raw)
    }

    fn valid(&self, nonce: &str, now: u64) -> bool {
        let Some(raw) = b64::decode(nonce).filter(|r| r.len() == 24) else { return false };
        let Ok(ts) = <[u8; 8]>::try_from(&raw[..8]) else { return false };
        let tag = hmac::sign(&self.key, &ts);
        // Constant-time comparison of the truncated tag.
        let same = raw[8..].iter().zip(&tag.as_ref()[..16]).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        let issued = u64::from_be_bytes(ts);
        same && issued <= now + 1 && now - issued.min(now) <= self.lifetime
    }
}

/// The form of an `htu` that two equivalent URIs share (RFC 9449 §4.3 with RFC 3986 §6.2.2
/// and §6.2.3): lower-case scheme and host, no default port, dot segments removed,
/// percent-encodings of unreserved characters decoded and other hex digits upper-cased, an
/// empty path as `/`, and no query or fragment. `None` when it is not an absolute http(s) URI.
pub fn normalize_htu(s: &str) -> Option<String> {
    let mut url = url::Url::parse(s).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let path = url.path();
    let mut out = String::with_capacity(s.len());
    out.push_str(url.scheme());
    out.push_str("://");
    out.push_str(url.host_str()?);
    if let Some(port) = url.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // A `%` must start an escape (RFC 3986 §2.1); a stray one is no URI to compare.
            let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
            else {
                return None;
            };
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                out.push(c as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    if path.is_empty() {
        out.push('/');
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::{Checked, Dpop, KEY_CACHE, KEYS, normalize_htu};
    use crate::AuthnError;
    use portcullis_jose::{Algorithm, SigningKey, b64};
    use serde_json::{Value, json};

    /// Fail closed: when the replay cache cannot record a proof, the request is refused as
    /// unavailable (`503`), never let through unrecorded.
    #[test]
    fn a_replay_cache_that_cannot_record_refuses() {
        let dpop = Dpop::new(&Default::default(), portcullis_state::State::memory(16)).unwrap();
        let mut unavailable = 0;
        for i in 0..200 {
            let checked = Checked { jkt: "key".into(), jti: format!("jti-{i}") };
            let result = block_on(dpop.remember(&checked));
            match result {
                Ok(()) => {}
                Err(AuthnError::Unavailable { code: "replay_cache_unavailable", .. }) => unavailable += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(unavailable >= 200 - 16, "{unavailable}");
    }

    fn now() -> u64 {
        crate::jwt::unix_now()
    }

    /// A proof with `header` members and `claims` over the defaults, signed by `key`, or with
    /// a signature of garbage when `key` is `None` (and `jwk` given in `header`).
    fn proof(key: Option<&SigningKey>, header: Value, claims: Value) -> String {
        let mut h = serde_json::Map::new();
        h.insert("typ".into(), json!("dpop+jwt"));
        if let Some(k) = key {
            let mut jwk = k.public_jwk();
            jwk.as_object_mut().unwrap().retain(|k, _| !matches!(k.as_str(), "kid" | "alg" | "use"));
            h.insert("jwk".into(), jwk);
        }
        for (k, v) in header.as_object().unwrap() {
            h.insert(k.clone(), v.clone());
        }
        let ath = b64::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, TOKEN.as_bytes()).as_ref());
        let mut c = json!({"htm": "GET", "htu": URL, "iat": now(), "jti": "j1", "ath": ath});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        match key {
            Some(k) => k.sign(h, c.to_string().as_bytes()).unwrap(),
            None => format!(
                "{}.{}.{}",
                b64::encode(serde_json::to_string(&h).unwrap().as_bytes()),
                b64::encode(c.to_string().as_bytes()),
                b64::encode(&[7u8; 512])
            ),
        }
    }

    const TOKEN: &str = "the-access-token";
    const URL: &str = "https://api.example/orders";

    fn dpop() -> Dpop {
        Dpop::new(&Default::default(), portcullis_state::State::memory(1024)).unwrap()
    }

    fn code(r: Result<Checked, AuthnError>) -> &'static str {
        r.unwrap_err().code()
    }

    /// The cheap checks come before the signature: a proof whose signature is garbage is
    /// refused for its claims when they are wrong, and only for its signature when they are
    /// right.
    #[test]
    fn every_cheap_check_runs_before_the_signature() {
        let d = dpop();
        let holder = SigningKey::generate(Algorithm::ES256, "h").unwrap();
        let jwk = {
            let mut j = holder.public_jwk();
            j.as_object_mut().unwrap().retain(|k, _| !matches!(k.as_str(), "kid" | "alg" | "use"));
            j
        };
        let forged = |claims: Value| proof(None, json!({"alg": "ES256", "jwk": jwk}), claims);
        let check = |p: &str| d.check(p, "GET", URL, TOKEN, now());
        assert_eq!(code(check(&forged(json!({"htm": "POST"})))), "dpop_htm");
        assert_eq!(code(check(&forged(json!({"htu": "https://evil.example/orders"})))), "dpop_htu");
        assert_eq!(code(check(&forged(json!({"iat": now() - 3600})))), "dpop_iat");
        assert_eq!(code(check(&forged(json!({"jti": ""})))), "dpop_proof_malformed");
        assert_eq!(code(check(&forged(json!({"jti": "j".repeat(300)})))), "dpop_proof_malformed");
        assert_eq!(code(check(&forged(json!({"ath": "AAAA"})))), "dpop_ath");
        assert_eq!(code(check(&proof(None, json!({"alg": "ES256", "jwk": jwk, "typ": "JWT"}), json!({})))), "dpop_typ");
        assert_eq!(code(check(&proof(None, json!({"alg": "HS256", "jwk": jwk}), json!({})))), "dpop_alg");
        assert_eq!(code(check(&proof(None, json!({"alg": "ES384", "jwk": jwk}), json!({})))), "dpop_key");
        // Everything else right: now the signature decides.
        assert_eq!(code(check(&forged(json!({})))), "dpop_signature");
        assert!(check(&proof(Some(&holder), json!({}), json!({}))).is_ok());
    }

    /// RSA keys outside the configured sizes are refused before any work on the key, with
    /// `invalid_dpop_proof`; the bounds are configurable and checked at load.
    #[test]
    fn rsa_key_sizes_are_bounded() {
        let d = dpop();
        // An 8200-bit "modulus" that is no key at all: its size alone refuses it.
        let mut n = vec![0xffu8; 1025];
        n[0] = 0x01;
        let big = json!({"kty": "RSA", "n": b64::encode(&n), "e": "AQAB"});
        let p = proof(None, json!({"alg": "RS256", "jwk": big}), json!({}));
        let e = d.check(&p, "GET", URL, TOKEN, now()).unwrap_err();
        assert_eq!(e.code(), "dpop_key_size");
        let problem = e.into_problem(&crate::Schemes { dpop_algs: Some("RS256"), ..Default::default() });
        let challenge = problem.to_response(None).headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(challenge.contains(r#"error="invalid_dpop_proof""#), "{challenge}");
        let small = json!({"kty": "RSA", "n": b64::encode(&[0xc5u8; 128]), "e": "AQAB"});
        let p = proof(None, json!({"alg": "RS256", "jwk": small}), json!({}));
        assert_eq!(code(d.check(&p, "GET", URL, TOKEN, now())), "dpop_key_size");

        // A real 2048-bit key passes the default bounds, and not bounds above it.
        let rsa = SigningKey::generate(Algorithm::RS256, "r").unwrap();
        let p = proof(Some(&rsa), json!({}), json!({}));
        assert!(d.check(&p, "GET", URL, TOKEN, now()).is_ok());
        let cfg = portcullis_config::DpopConfig { rsa_min_bits: 3072, ..Default::default() };
        let strict = Dpop::new(&cfg, portcullis_state::State::memory(16)).unwrap();
        assert_eq!(code(strict.check(&p, "GET", URL, TOKEN, now())), "dpop_key_size");

        for (min, max, key) in
            [(1024, 4096, "rsa_min_bits"), (2048, 16384, "rsa_max_bits"), (4096, 2048, "rsa_max_bits")]
        {
            let cfg = portcullis_config::DpopConfig { rsa_min_bits: min, rsa_max_bits: max, ..Default::default() };
            assert_eq!(Dpop::new(&cfg, portcullis_state::State::memory(16)).unwrap_err().0, key);
        }
    }

    /// A proof key is prepared once per worker and reused by its thumbprint; the cache is
    /// bounded, and an entry serves only its own algorithm.
    #[test]
    fn proof_keys_are_kept_by_thumbprint() {
        let d = dpop();
        let holder = SigningKey::generate(Algorithm::ES256, "h").unwrap();
        let size = || KEYS.with_borrow(|k| (k.keys.len(), k.order.len()));
        let before = size();
        for jti in ["a", "b", "c"] {
            let p = proof(Some(&holder), json!({}), json!({"jti": jti}));
            assert!(d.check(&p, "GET", URL, TOKEN, now()).is_ok());
        }
        assert_eq!(size().0, before.0 + 1, "one entry for one key");
        // A forged proof with a cached key still fails its signature.
        let mut jwk = holder.public_jwk();
        jwk.as_object_mut().unwrap().retain(|k, _| !matches!(k.as_str(), "kid" | "alg" | "use"));
        let forged = proof(None, json!({"alg": "ES256", "jwk": jwk}), json!({}));
        assert_eq!(code(d.check(&forged, "GET", URL, TOKEN, now())), "dpop_signature");
        for _ in 0..KEY_CACHE + 10 {
            let k = SigningKey::generate(Algorithm::EdDSA, "e").unwrap();
            assert!(d.check(&proof(Some(&k), json!({}), json!({})), "GET", URL, TOKEN, now()).is_ok());
        }
        let (entries, order) = size();
        assert_eq!((entries, order), (KEY_CACHE, KEY_CACHE), "bounded");
    }

    /// Polls a future that never waits (the memory backend does not).
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the memory backend waited"),
        }
    }

    #[test]
    fn htu_normalisation() {
        let n = |s| normalize_htu(s);
        let same = [
            ("https://api.example.com/orders", "HTTPS://API.example.COM:443/orders"),
            ("https://api.example.com/orders", "https://api.example.com/orders?x=1#frag"),
            ("https://api.example.com/a/b", "https://api.example.com/a/./c/../b"),
            ("https://api.example.com/%7Euser", "https://api.example.com/~user"),
            ("https://api.example.com/a%2fb", "https://api.example.com/a%2Fb"),
            ("http://h:8080/", "http://h:8080"),
        ];
        for (a, b) in same {
            assert_eq!(n(a), n(b), "{a} vs {b}");
            assert!(n(a).is_some());
        }
        let differ = [
            ("https://api.example.com/orders", "http://api.example.com/orders"),
            ("https://api.example.com/orders", "https://api.example.com:8443/orders"),
            ("https://api.example.com/orders", "https://api.example.com/orders/"),
            ("https://api.example.com/a%2Fb", "https://api.example.com/a/b"),
            ("https://api.example.com/orders", "https://evil.example.com/orders"),
        ];
        for (a, b) in differ {
            assert_ne!(n(a), n(b), "{a} vs {b}");
        }
        // A stray `%` (found by fuzzing: decoding `%41` after it made a new escape, so
        // normalising twice differed).
        for bad in ["/orders", "ftp://h/x", "https://user:pw@h/x", "not a url", "", "http://h/%f%41x", "http://h/%4"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }
}
