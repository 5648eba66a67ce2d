//! A Shared Signals Framework receiver: Security Event Tokens (RFC 8417) pushed to the
//! gateway (RFC 8935) by a transmitter among the configured issuers. CAEP
//! `session-revoked` revokes the session (or the user), CAEP `credential-change` and
//! `token-claims-change` and RISC `account-disabled`, `account-purged` and
//! `credential-compromise` revoke the user's credentials issued until then. Other events are
//! ignored (and logged by the caller).

use std::sync::Arc;

use serde_json::Value;

use crate::events::{audience_names, fresh};
use crate::{AuthnError, Verifiers};

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// How old a SET may be: transmitters deliver again after failures, for a while.
const MAX_AGE_SECS: u64 = 86_400;

/// What a SET asks the gateway to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Refuse the user's credentials issued until now.
    RevokeSub(String),
    /// Refuse the session's credentials issued until now.
    RevokeSid(String),
}

/// A valid SET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// The transmitter.
    pub issuer: Arc<str>,
    /// The SET's id (for its replay check).
    pub jti: String,
    /// What its events ask.
    pub actions: Vec<Action>,
    /// The event types it carries that the gateway does not act on.
    pub ignored: Vec<String>,
}

impl Verifiers {
    /// Verifies a SET meant for one of `audiences`: signed by one of `issuers` (ids), typed
    /// `secevent+jwt` (or untyped), with `iat` (within a day), `jti` and an `events` object.
    pub async fn verify_set(
        &self,
        token: &str,
        audiences: &[String],
        issuers: &[String],
    ) -> Result<Signal, AuthnError> {
        let bad = |code: &'static str, why: &'static str| AuthnError::invalid(code, why);
        let (issuer, claims) =
            self.verify_event_token(token, &["secevent+jwt", "application/secevent+jwt", "JWT"], issuers).await?;
        if !audience_names(&claims, audiences) {
            return Err(bad("aud_mismatch", "the SET is not meant for this receiver (aud)"));
        }
        fresh(&claims, issuer.leeway(), MAX_AGE_SECS)?;
        let jti = claims.get("jti").and_then(Value::as_str).filter(|j| !j.is_empty());
        let jti = jti.ok_or_else(|| bad("jti_missing", "no jti"))?.to_string();
        let Some(Value::Object(events)) = claims.get("events") else {
            return Err(bad("events_invalid", "the SET has no events object"));
        };
        let top = claims.get("sub_id");
        let mut actions = Vec::new();
        let mut ignored = Vec::new();
        for (kind, event) in events {
            let subject = event.get("subject").or(top).map(subject).unwrap_or_default();
            let name =
                kind.strip_prefix(CAEP).map(|n| ("caep", n)).or_else(|| kind.strip_prefix(RISC).map(|n| ("risc", n)));
            let action = match (name, subject) {
                (Some(("caep", "session-revoked")), (_, Some(sid))) => Some(Action::RevokeSid(sid)),
                (
                    Some(
                        ("caep", "session-revoked" | "credential-change" | "token-claims-change")
                        | ("risc", "account-disabled" | "account-purged" | "credential-compromise"),
                    ),
                    (Some(sub), _),
                ) => Some(Action::RevokeSub(sub)),
                _ => None,
            };
            match action {
                Some(a) => actions.push(a),
                None => ignored.push(kind.clone()),
            }
        }
        Ok(Signal { issuer: issuer.issuer.clone(), jti, actions, ignored })
    }
}

/// The user and session a subject identifier (SSF `sub_id`, or an event's `subject`) names:
/// formats `iss_sub`, `opaque` and `complex` (with `user` and `session`); the older
/// `subject_type` spelling too.
fn subject(v: &Value) -> (Option<String>, Option<String>) {
    let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    let format = text(v, "format").or_else(|| text(v, "subject_type")).map(|f| f.replace('-', "_"));
    match format.as_deref() {
        Some("iss_sub") => (text(v, "sub"), None),
        Some("opaque") => (text(v, "id"), None),
        Some("complex") | None => {
            let user = v.get("user").map(subject).and_then(|(sub, _)| sub);
            let session = v.get("session").and_then(|s| subject(s).0);
            (user, session)
        }
        _ => (None, None),
    }
}
