//! OAuth 2.0 token introspection (RFC 7662) for opaque tokens.
//!
//! The gateway authenticates to the endpoint (RFC 6749 §2.3.1: Basic, or client credentials
//! in the form), posts the token, and trusts `active: true` only with a valid `exp` (when
//! given), the configured `iss` and `aud` (when configured), and a `cnf` the gateway can
//! verify (when given; see [`crate::jwt`]). Active results are remembered
//! until the token's `exp` or `cache_ttl`, whichever is sooner; inactive ones for
//! `negative_ttl`. Any failure to get an answer (timeout, connection refused, an error status,
//! a malformed body) denies the request: it fails closed.

use std::cell::RefCell;
use std::sync::Arc;

use portcullis_config::values::RedactedUrl;
use portcullis_config::{ClientAuthMethod, IntrospectionConfig, Secret};
use portcullis_core::{AuthnMethod, Principal};
use serde_json::Value;
use url::Url;

use crate::AuthnError;
use crate::cache::{Cache, Digest, DigestCache, Entry};
use crate::jwt::{principal_from_claims, unix_now};

/// Largest introspection response accepted.
const MAX_RESPONSE: usize = 64 * 1024;

thread_local! {
    static CACHE: RefCell<DigestCache<Introspector>> = RefCell::new(Cache::default());
}

/// An introspection endpoint and how to use it.
pub struct Introspector {
    endpoint: Url,
    client_id: String,
    secret: Secret,
    method: ClientAuthMethod,
    cache_ttl: u64,
    negative_ttl: u64,
    audiences: Vec<String>,
    issuer: Option<Arc<str>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &RedactedUrl(self.endpoint.as_str()).to_string())
            .finish_non_exhaustive()
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

impl Introspector {
    /// Builds the introspector; problems as `(key, message)` relative to `introspection`.
    pub fn new(cfg: &IntrospectionConfig) -> Result<Introspector, (&'static str, String)> {
        let endpoint = crate::jwks::check_url(&cfg.endpoint, cfg.allow_http).map_err(|e| ("endpoint", e))?;
        let client = crate::jwks::http_client(cfg.timeout.get(), cfg.ca.as_deref()).map_err(|e| ("ca", e))?;
        Ok(Introspector {
            endpoint,
            client_id: cfg.client_id.clone(),
            secret: cfg.client_secret.clone(),
            method: cfg.auth_method,
            cache_ttl: cfg.cache_ttl.get().as_secs(),
            negative_ttl: cfg.negative_ttl.get().as_secs(),
            audiences: cfg.audiences.clone(),
            issuer: cfg.issuer.as_deref().map(Arc::from),
            client,
        })
    }

    /// The principal for an active `token`, from the cache or the endpoint.
    pub async fn check(self: &Arc<Self>, token: &str, digest: &Digest) -> Result<Arc<Principal>, AuthnError> {
        let now = unix_now();
        let cached = CACHE.with(|c| c.borrow_mut().get(digest, now, |o| Arc::ptr_eq(o, self)));
        match cached {
            Some(Some(p)) => return Ok(p),
            Some(None) => return Err(inactive()),
            None => {}
        }
        let answer = self.ask(token).await?;
        // A refused answer is remembered as an inactive token: asked again, it is refused as
        // one (the first refusal says why).
        let (outcome, until) = match self.judge(answer, now) {
            Ok((p, exp)) => {
                let until = exp.map_or(now + self.cache_ttl, |e| e.min(now + self.cache_ttl));
                (Ok(Arc::new(p)), until)
            }
            Err(e) => (Err(e), now + self.negative_ttl),
        };
        let entry = Entry { principal: outcome.as_ref().ok().cloned(), owner: self.clone(), key: None, until };
        CACHE.with(|c| c.borrow_mut().insert(*digest, entry));
        outcome
    }

    async fn ask(&self, token: &str) -> Result<serde_json::Map<String, Value>, AuthnError> {
        let unavailable = |why: String| {
            let endpoint = RedactedUrl(self.endpoint.as_str());
            tracing::warn!(%endpoint, problem = %why, "token introspection failed; denying");
            AuthnError::unavailable("introspection_unavailable", "the token could not be checked; try again later")
        };
        let mut req = self.client.post(self.endpoint.clone()).header(http::header::ACCEPT, "application/json");
        let body = match self.method {
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both parts are form-encoded before Basic encoding.
                let user = form(&[("", &self.client_id)]);
                let pass = form(&[("", self.secret.expose())]);
                req = req.basic_auth(user.trim_start_matches('='), Some(pass.trim_start_matches('=')));
                form(&[("token", token), ("token_type_hint", "access_token")])
            }
            ClientAuthMethod::ClientSecretPost => form(&[
                ("token", token),
                ("token_type_hint", "access_token"),
                ("client_id", &self.client_id),
                ("client_secret", self.secret.expose()),
            ]),
        };
        let resp = req
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let mut why =
                    if e.is_timeout() { "timed out".to_string() } else { "cannot reach the endpoint".to_string() };
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    why.push_str(": ");
                    why.push_str(&s.to_string());
                    src = s.source();
                }
                unavailable(why)
            })?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(unavailable(format!("status {}", resp.status().as_u16())));
        }
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| unavailable("the response broke off".into()))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_RESPONSE {
                return Err(unavailable("response too large".into()));
            }
        }
        // A member named twice, at any depth, is an answer two readers could read two ways
        // (`"active":false,"active":true`): refused, as a token's claims are.
        match serde_json::from_slice::<Strict>(&bytes) {
            Ok(Strict(Value::Object(m))) => Ok(m),
            Ok(_) => Err(unavailable("the response is not a JSON object".into())),
            Err(e) if e.to_string().starts_with(DUPLICATE) => {
                Err(unavailable("the response names a member twice".into()))
            }
            Err(_) => Err(unavailable("the response is not a JSON object".into())),
        }
    }

    /// The principal and `exp` of an active token, or why it is refused: inactive (or an
    /// answer that does not meet the rules, which counts as inactive), or a `cnf` the gateway
    /// cannot verify.
    fn judge(&self, answer: serde_json::Map<String, Value>, now: u64) -> Result<(Principal, Option<u64>), AuthnError> {
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(inactive());
        }
        let number =
            |k: &str| answer.get(k).and_then(Value::as_f64).filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64);
        let exp = number("exp");
        if exp.is_some_and(|e| now > e) || number("nbf").is_some_and(|n| n > now) {
            return Err(inactive());
        }
        if (answer.contains_key("exp") && exp.is_none()) || (answer.contains_key("nbf") && number("nbf").is_none()) {
            return Err(inactive());
        }
        // An `iss` that is there must be a string: one that is not is no issuer to check.
        let iss: Option<Arc<str>> = match answer.get("iss") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str().into()),
            Some(_) => return Err(inactive()),
        };
        if let Some(want) = &self.issuer
            && iss.as_ref() != Some(want)
        {
            return Err(inactive());
        }
        if !self.audiences.is_empty() {
            let ok = match answer.get("aud") {
                Some(Value::String(a)) => self.audiences.iter().any(|x| x == a),
                Some(Value::Array(l)) => {
                    l.iter().any(|a| a.as_str().is_some_and(|a| self.audiences.iter().any(|x| x == a)))
                }
                _ => false,
            };
            if !ok {
                return Err(inactive());
            }
        }
        let iat = number("iat");
        // The principal's issuer is the answer's `iss`, or none: a route that restricts its
        // issuers checks it (a configured `issuer` was required to equal it, above).
        match principal_from_claims(answer, AuthnMethod::Introspection, iss, exp, iat) {
            Ok(p) => Ok((p, exp)),
            Err(e @ AuthnError::Invalid { code: "cnf_unsupported", .. }) => Err(e),
            Err(_) => Err(inactive()),
        }
    }
}

fn inactive() -> AuthnError {
    AuthnError::invalid("token_inactive", "the token is not active")
}

const DUPLICATE: &str = "duplicate member";

/// A JSON value read as `serde_json::Value` reads it, except that an object naming a member
/// twice is an error.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((k, Strict(v))) = map.next_entry::<String, Strict>()? {
            if out.insert(k, v).is_some() {
                return Err(serde::de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::Duration as D;
    use serde_json::json;

    fn introspector(audiences: Vec<String>, issuer: Option<&str>) -> Introspector {
        Introspector::new(&IntrospectionConfig {
            endpoint: "http://127.0.0.1:1/introspect".into(),
            client_id: "gw".into(),
            client_secret: Secret::new("s"),
            auth_method: ClientAuthMethod::ClientSecretBasic,
            timeout: D::from_secs(1),
            cache_ttl: D::from_secs(300),
            negative_ttl: D::from_secs(10),
            audiences,
            issuer: issuer.map(String::from),
            allow_http: false,
            ca: None,
        })
        .unwrap()
    }

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// An answer that names a member twice, at any depth, could be read two ways.
    #[test]
    fn answers_that_name_a_member_twice_are_refused() {
        let read = |t: &str| serde_json::from_slice::<Strict>(t.as_bytes()).map(|s| s.0);
        for twice in [
            r#"{"active":false,"active":true}"#,
            r#"{"active":true,"iss":"https://evil.example","iss":"https://idp.example"}"#,
            r#"{"active":true,"cnf":{"kid":"k","x5t#S256":"y","kid":"j"}}"#,
            r#"{"active":true,"x":[{"a":1,"a":2}]}"#,
            r#"{"active":true,"\u0061ctive":false}"#,
        ] {
            let e = read(twice).unwrap_err();
            assert!(e.to_string().starts_with(DUPLICATE), "{twice}: {e}");
        }
        let v = read(r#"{"active":true,"exp":1.5e9,"n":-3,"x":[null,"s",{"a":{}}],"u":18446744073709551615}"#).unwrap();
        assert_eq!(v, serde_json::from_str::<Value>(&v.to_string()).unwrap());
        assert_eq!(v["x"][2]["a"], json!({}));
        assert_eq!(v["u"], json!(u64::MAX));
    }

    #[test]
    fn a_malformed_nbf_makes_an_answer_inactive() {
        let i = introspector(vec![], None);
        let now = 1_000;
        for nbf in [json!("999"), json!(null), json!(-1), json!([1])] {
            let r = i.judge(obj(json!({"active": true, "exp": 2_000, "nbf": nbf})), now);
            assert!(r.is_err(), "{nbf}");
        }
        assert!(i.judge(obj(json!({"active": true, "exp": 2_000, "nbf": 999})), now).is_ok());
    }

    #[test]
    fn only_active_valid_answers_count() {
        let i = introspector(vec!["orders".into()], Some("https://as"));
        let now = 1_000;
        let good = json!({"active": true, "sub": "alice", "client_id": "web", "scope": "a b", "exp": 2000, "iss": "https://as", "aud": ["orders"]});
        let (p, exp) = i.judge(obj(good.clone()), now).unwrap();
        assert_eq!(p.issuer.as_deref(), Some("https://as"));
        assert_eq!(exp, Some(2000));
        assert_eq!(p.method, AuthnMethod::Introspection);
        assert!(p.has_scope("b"));
        for (k, v) in [
            ("active", json!(false)),
            ("active", json!("true")),
            ("exp", json!(999)),
            ("exp", json!("2000")),
            ("iss", json!("https://other")),
            ("aud", json!("billing")),
            ("nbf", json!(5000)),
            ("iss", json!(["https://as"])),
        ] {
            let mut bad = good.clone();
            bad[k] = v.clone();
            assert_eq!(i.judge(obj(bad), now).unwrap_err().code(), "token_inactive", "{k}={v}");
        }
        let mut no_active = good.clone();
        no_active.as_object_mut().unwrap().remove("active");
        assert!(i.judge(obj(no_active), now).is_err());
        // Without a configured issuer, an answer without `iss` names none; a non-string one is refused.
        let open = introspector(vec![], None);
        let mut no_iss = good.clone();
        no_iss.as_object_mut().unwrap().remove("iss");
        assert_eq!(open.judge(obj(no_iss), now).unwrap().0.issuer, None);
        let mut bad_iss = good.clone();
        bad_iss["iss"] = json!(7);
        assert!(open.judge(obj(bad_iss), now).is_err());
    }

    /// An active answer whose `cnf` the gateway cannot verify is refused, never taken as a
    /// bearer token; one it can verify carries its binding.
    #[test]
    fn unverifiable_confirmations_in_answers_are_refused() {
        let i = introspector(vec![], None);
        let now = 1_000;
        let answer = |cnf: Value| obj(json!({"active": true, "sub": "alice", "exp": 2000, "cnf": cnf}));
        for cnf in
            [json!({"jkt": ["abc"]}), json!("abc"), json!({"jwk": {"kty": "EC"}}), json!({"kid": "k"}), json!({})]
        {
            assert_eq!(i.judge(answer(cnf.clone()), now).unwrap_err().code(), "cnf_unsupported", "{cnf}");
        }
        let (p, _) = i.judge(answer(json!({"x5t#S256": "X"})), now).unwrap();
        assert_eq!(p.confirmation.unwrap().x5t_s256.as_deref(), Some("X"));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_denies() {
        let i = Arc::new(introspector(vec![], None));
        let d = crate::cache::digest(b"tok");
        let err = i.check("tok", &d).await.unwrap_err();
        assert!(matches!(err, AuthnError::Unavailable { .. }), "{err:?}");
    }
}
