//! OpenID Connect Back-Channel Logout 1.0: the logout tokens an identity provider posts
//! when a user's session ends there, verified as §2.6 says (signature by a configured
//! issuer's keys, `aud` naming the gateway's client, `iat`, `jti`, the logout `events`
//! member, `sub` or `sid`, and no `nonce`). What they name is then revoked by the caller.

use std::sync::Arc;

use serde_json::Value;

use crate::events::{audience_names, fresh};
use crate::{AuthnError, Verifiers};

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
