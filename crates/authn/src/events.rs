//! What the event receivers share (Back-Channel Logout tokens, Security Event Tokens): a
//! token verified by the keys of one of the issuers a receiver takes, and its times and
//! audience checked.

use std::sync::Arc;

use portcullis_jose::{HeaderPolicy, Jws};
use serde_json::Value;

use crate::{AuthnError, Verifiers, jwt};

impl Verifiers {
    /// Verifies a signed token by the keys of the configured issuer its `iss` names, with a
    /// `typ` among `types` (or none), and returns that issuer and the claims. Members named
    /// twice are refused before anything reads them.
    pub(crate) async fn verify_event_token(
        &self,
        token: &str,
        types: &[&str],
        issuers: &[String],
    ) -> Result<(Arc<jwt::Issuer>, Value), AuthnError> {
        let bad = |code: &'static str, why: &'static str| AuthnError::invalid(code, why);
        let jws = Jws::parse(token, HeaderPolicy::default()).map_err(AuthnError::from)?;
        if let Some(typ) = jws.header.typ.as_deref()
            && !types.iter().any(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(bad("typ_not_allowed", "not a token of this kind (typ)"));
        }
        portcullis_jose::claims::TokenClaims::parse(&jws.payload).map_err(jwt::claims_error)?;
        let claims: Value =
            serde_json::from_slice(&jws.payload).map_err(|_| bad("token_malformed", "the claims are not JSON"))?;
        let iss = claims.get("iss").and_then(Value::as_str).ok_or_else(|| bad("issuer_unknown", "no issuer"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| *i.issuer == *iss && issuers.iter().any(|id| **id == *i.id))
            .cloned()
            .ok_or_else(|| bad("issuer_unknown", "the issuer is not trusted here"))?;
        issuer.verify_signed(&jws).await?;
        Ok((issuer, claims))
    }
}

/// Whether the token's `aud` (a string or a list) names one of `audiences`.
pub(crate) fn audience_names(claims: &Value, audiences: &[String]) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|c| c == a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|a| audiences.iter().any(|c| c == a)),
        _ => false,
    }
}

/// An event token's times: `iat` within the last `max_age` seconds (beyond `leeway`) and not
/// in the future; `exp`, if any, not past.
pub(crate) fn fresh(claims: &Value, leeway: u64, max_age: u64) -> Result<(), AuthnError> {
    let bad = |code: &'static str, why: &'static str| AuthnError::invalid(code, why);
    let now = jwt::unix_now();
    let iat = claims.get("iat").and_then(Value::as_u64).ok_or_else(|| bad("iat_missing", "no iat"))?;
    if iat > now + leeway || iat + max_age + leeway < now {
        return Err(bad("iat_out_of_range", "the token was not issued just now (iat)"));
    }
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_u64().ok_or_else(|| bad("token_malformed", "exp is not a number"))?;
        if now > exp + leeway {
            return Err(bad("token_expired", "the token has expired"));
        }
    }
    Ok(())
}
