//! OpenID Connect Back-Channel Logout 1.0: the logout tokens an identity provider posts
//! when a user's session ends there, verified as §2.6 says (signature by a configured
//! issuer's keys, `aud` naming the gateway's client, `iat`, `jti`, the logout `events`
//! member, `sub` or `sid`, and no `nonce`). What they name is then revoked by the caller.

use std::sync::Arc;

use portcullis_jose::{HeaderPolicy, Jws};
use serde_json::Value;

use crate::{AuthnError, Verifiers, jwt};

/// The `events` member of a logout token.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How old a logout token may be (its `iat`), beyond the issuer's leeway: it is meant to
/// be delivered at once.
const MAX_AGE_SECS: u64 = 300;

/// What a valid logout token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logout {
    /// The issuer that signed it.
    pub issuer: Arc<str>,
    /// The user whose sessions end (with no `sid`: all of them).
    pub sub: Option<String>,
    /// The session that ends.
    pub sid: Option<String>,
    /// The token's id (for its replay check).
    pub jti: String,
    /// How long its `jti` must be remembered: as long as its `iat` would be taken.
    pub remember_secs: u64,
}

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

    /// Verifies a logout token meant for one of `client_ids`, from one of `issuers` (ids).
    /// `Err` says why it is refused.
    pub async fn verify_logout(
        &self,
        token: &str,
        client_ids: &[String],
        issuers: &[String],
    ) -> Result<Logout, AuthnError> {
        let bad = |code: &'static str, why: &'static str| AuthnError::invalid(code, why);
        // Explicitly typed (`logout+jwt`) or untyped; never an access or ID token's type.
        let (issuer, claims) =
            self.verify_event_token(token, &["logout+jwt", "application/logout+jwt", "JWT"], issuers).await?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        if !audience_names(&claims, client_ids) {
            return Err(bad("aud_mismatch", "the logout token is not meant for this client (aud)"));
        }
        fresh(&claims, issuer.leeway(), MAX_AGE_SECS)?;
        // Required by the final text of the spec (§2.4).
        if claims.get("exp").is_none() {
            return Err(bad("exp_missing", "the logout token has no exp"));
        }
        let jti = text("jti").filter(|j| !j.is_empty()).ok_or_else(|| bad("jti_missing", "no jti"))?;
        match claims.get("events").and_then(|e| e.get(LOGOUT_EVENT)) {
            Some(Value::Object(_)) => {}
            _ => return Err(bad("events_invalid", "the events claim names no back-channel logout")),
        }
        if claims.get("nonce").is_some() {
            return Err(bad("nonce_present", "a logout token carries no nonce"));
        }
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err(bad("subject_missing", "the logout token names neither a sub nor a sid"));
        }
        let remember_secs = MAX_AGE_SECS + 2 * issuer.leeway() + 60;
        Ok(Logout { issuer: issuer.issuer.clone(), sub, sid, jti, remember_secs })
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
