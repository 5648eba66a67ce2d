//! Why authentication failed, and the response that says so: `401` with RFC 6750
//! challenges for bad or missing credentials, `400` for ambiguous ones, `503` (fail closed)
//! when a dependency needed to decide is unavailable. Descriptions never contain the
//! credential or anything secret.
//!
//! Challenges name the schemes the route accepts, in the realm [`REALM`]:
//!
//! - no credential: `Bearer realm="portcullis"` (and/or `DPoP realm="portcullis", algs=".."`,
//!   `ApiKey header=".."`), without an error code (RFC 6750 §3.1);
//! - a refused credential: `Bearer error="invalid_token", realm="portcullis",
//!   error_description=".."`, or the `DPoP` form on DPoP routes (RFC 9449 §7.1);
//! - a route whose only method is `mtls` has no HTTP authentication scheme to name: its `401`
//!   carries no `WWW-Authenticate` (a `Bearer` challenge would send clients for a token the
//!   route does not take), and the problem says a client certificate is required
//!   (`client_certificate_required`). Routes that take API keys but no tokens challenge only
//!   with `ApiKey`.

use std::borrow::Cow;

use http::StatusCode;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use portcullis_core::{Challenge, ChallengeScheme, Problem, Side};

/// The protection space of the gateway's token challenges (RFC 9110 §11.5, RFC 6750 §3).
pub const REALM: &str = "portcullis";

/// An authentication failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthnError {
    /// No credential where the route looks for one.
    Missing,
    /// The credential was checked and refused.
    Invalid {
        /// Stable reason code (access log, metrics).
        code: &'static str,
        /// A short, secret-free description.
        description: Cow<'static, str>,
    },
    /// The request is ambiguous (several credentials, malformed header).
    BadRequest {
        /// Stable reason code.
        code: &'static str,
        /// A short description.
        description: Cow<'static, str>,
    },
    /// The DPoP proof was checked and refused (`invalid_dpop_proof`).
    Proof {
        /// Stable reason code.
        code: &'static str,
        /// A short description.
        description: Cow<'static, str>,
    },
    /// The DPoP proof lacks a fresh server nonce: retry with this one (`use_dpop_nonce`).
    UseNonce {
        /// The nonce to use.
        nonce: String,
    },
    /// Something needed to decide is unavailable (keys, introspection endpoint): deny.
    Unavailable {
        /// Stable reason code.
        code: &'static str,
        /// A short description.
        description: Cow<'static, str>,
    },
}

impl AuthnError {
    /// A refused credential.
    pub fn invalid(code: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        AuthnError::Invalid { code, description: description.into() }
    }

    /// A dependency failure.
    pub fn unavailable(code: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        AuthnError::Unavailable { code, description: description.into() }
    }

    /// An ambiguous request.
    pub fn bad_request(code: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        AuthnError::BadRequest { code, description: description.into() }
    }

    /// The stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthnError::Missing => "credential_missing",
            AuthnError::UseNonce { .. } => "dpop_nonce_required",
            AuthnError::Invalid { code, .. }
            | AuthnError::Proof { code, .. }
            | AuthnError::BadRequest { code, .. }
            | AuthnError::Unavailable { code, .. } => code,
        }
    }

    /// The response, with the challenges of the schemes the route accepts.
    pub fn into_problem(self, schemes: &Schemes<'_>) -> Problem {
        let code = self.code();
        let realm = || Cow::Owned(schemes.realm.to_string());
        let dpop = |error: Option<&'static str>, description: Option<Cow<'static, str>>| Challenge {
            realm: Some(realm()),
            error,
            description,
            algs: schemes.dpop_algs.map(str::to_string),
            ..Challenge::new(ChallengeScheme::DPoP, "")
        };
        let bearer = |error: Option<&'static str>, description: Option<Cow<'static, str>>| Challenge {
            realm: Some(realm()),
            error,
            description,
            ..Challenge::new(ChallengeScheme::Bearer, "")
        };
        // Which scheme a refused token is answered in: the one the request used, if accepted;
        // none on routes that take no tokens (API keys, certificates).
        let token_challenge = |error: &'static str, description: Cow<'static, str>| {
            if schemes.dpop_algs.is_some() && (schemes.dpop_request || !schemes.bearer) {
                Some(dpop(Some(error), Some(description)))
            } else if schemes.bearer {
                Some(bearer(Some(error), Some(description)))
            } else {
                None
            }
        };
        let api_key_challenge = |p: Problem| match schemes.api_key_header {
            Some(h) => p.header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&format!("ApiKey header=\"{}\"", h.as_str()))
                    .unwrap_or_else(|_| HeaderValue::from_static("ApiKey")),
            ),
            None => p,
        };
        let with = |p: Problem, c: Option<Challenge>| match c {
            Some(c) => p.challenge(c),
            None => p,
        };
        match self {
            AuthnError::Missing => {
                // RFC 6750 §3.1: a request without a credential gets no error code.
                let only_certificates =
                    schemes.mtls && !schemes.bearer && schemes.dpop_algs.is_none() && schemes.api_key_header.is_none();
                let mut p = if only_certificates {
                    Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "client_certificate_required",
                        "this route needs a TLS client certificate",
                    )
                } else {
                    Problem::new(StatusCode::UNAUTHORIZED, code, "this route needs a credential")
                };
                if schemes.bearer {
                    p = p.challenge(bearer(None, None));
                }
                if schemes.dpop_algs.is_some() {
                    p = p.challenge(dpop(None, None));
                }
                api_key_challenge(p)
            }
            AuthnError::Invalid { description, .. } => {
                let p = Problem::new(StatusCode::UNAUTHORIZED, code, description.clone());
                api_key_challenge(with(p, token_challenge("invalid_token", description)))
            }
            AuthnError::Proof { description, .. } => Problem::new(StatusCode::UNAUTHORIZED, code, description.clone())
                .challenge(dpop(Some("invalid_dpop_proof"), Some(description))),
            AuthnError::UseNonce { nonce } => {
                let p = Problem::new(StatusCode::UNAUTHORIZED, code, "the DPoP proof needs the server's nonce")
                    .challenge(dpop(Some("use_dpop_nonce"), Some("use the nonce in the DPoP-Nonce header".into())));
                match HeaderValue::from_str(&nonce) {
                    Ok(v) => p.header(HeaderName::from_static("dpop-nonce"), v),
                    Err(_) => p,
                }
            }
            AuthnError::BadRequest { description, .. } => {
                let p = Problem::new(StatusCode::BAD_REQUEST, code, description.clone());
                with(p, token_challenge("invalid_request", description))
            }
            AuthnError::Unavailable { description, .. } => {
                // A replay check waits on shared state that is usually back within a second;
                // keys and introspection take longer.
                let retry =
                    if code == REPLAY_CACHE_UNAVAILABLE || code == crate::REVOCATIONS_UNAVAILABLE { "1" } else { "5" };
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                    .side(Side::Internal)
                    .header(RETRY_AFTER, HeaderValue::from_static(retry))
            }
        }
    }
}

/// The code of a request refused because its replay check could not be made.
pub const REPLAY_CACHE_UNAVAILABLE: &str = "replay_cache_unavailable";

/// The schemes a route accepts, for the challenges of its refusals.
#[derive(Clone, Copy, Debug)]
pub struct Schemes<'a> {
    /// The realm of the challenges.
    pub realm: &'a str,
    /// Bearer tokens (JWT or introspection).
    pub bearer: bool,
    /// TLS client certificates.
    pub mtls: bool,
    /// DPoP, with the proof algorithms accepted.
    pub dpop_algs: Option<&'a str>,
    /// The API-key header.
    pub api_key_header: Option<&'a HeaderName>,
    /// The refused request used the `DPoP` scheme.
    pub dpop_request: bool,
}

impl Default for Schemes<'_> {
    fn default() -> Self {
        Schemes { realm: REALM, bearer: false, mtls: false, dpop_algs: None, api_key_header: None, dpop_request: false }
    }
}

impl From<portcullis_jose::Error> for AuthnError {
    fn from(e: portcullis_jose::Error) -> Self {
        AuthnError::invalid(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenges(e: AuthnError, schemes: Schemes<'_>) -> (u16, &'static str, Vec<String>) {
        let p = e.into_problem(&schemes);
        let r = p.to_response(None);
        let all = r.headers().get_all(http::header::WWW_AUTHENTICATE).iter().map(|v| v.to_str().unwrap().to_string());
        (p.status.as_u16(), p.code, all.collect())
    }

    /// RFC 6750 §3.1: a missing credential is challenged with a realm and no error code.
    #[test]
    fn a_missing_credential_is_challenged_without_an_error() {
        let bearer = Schemes { bearer: true, ..Default::default() };
        assert_eq!(
            challenges(AuthnError::Missing, bearer),
            (401, "credential_missing", vec![r#"Bearer realm="portcullis""#.to_string()])
        );
        let dpop = Schemes { dpop_algs: Some("ES256 EdDSA"), ..Default::default() };
        assert_eq!(challenges(AuthnError::Missing, dpop).2, [r#"DPoP realm="portcullis", algs="ES256 EdDSA""#]);
        let both = Schemes { bearer: true, ..dpop };
        assert_eq!(challenges(AuthnError::Missing, both).2.len(), 2);
        for c in challenges(AuthnError::Missing, both).2 {
            assert!(!c.contains("error"), "{c}");
        }
    }

    /// A refused credential: the realm and `invalid_token`, in the scheme the request used.
    #[test]
    fn a_refused_credential_is_invalid_token() {
        let e = || AuthnError::invalid("token_expired", "the token has expired");
        let bearer = Schemes { bearer: true, ..Default::default() };
        assert_eq!(
            challenges(e(), bearer).2,
            [r#"Bearer error="invalid_token", realm="portcullis", error_description="the token has expired""#]
        );
        let dpop = Schemes { dpop_algs: Some("ES256"), dpop_request: true, ..bearer };
        assert!(challenges(e(), dpop).2[0].starts_with(r#"DPoP error="invalid_token", realm="portcullis""#));
    }

    /// A route that takes only client certificates names no HTTP scheme: no `Bearer`
    /// challenge, whatever went wrong; the problem says a certificate is needed.
    #[test]
    fn certificate_only_routes_never_challenge_with_bearer() {
        let mtls = Schemes { mtls: true, ..Default::default() };
        assert_eq!(challenges(AuthnError::Missing, mtls), (401, "client_certificate_required", vec![]));
        let (status, _, c) = challenges(AuthnError::invalid("token_malformed", "x"), mtls);
        assert_eq!((status, c), (401, vec![]));
        let (status, _, c) = challenges(AuthnError::bad_request("credential_ambiguous", "x"), mtls);
        assert_eq!((status, c), (400, vec![]));
        // With API keys too, only the ApiKey challenge.
        let header = HeaderName::from_static("x-api-key");
        let keys = Schemes { api_key_header: Some(&header), ..mtls };
        assert_eq!(
            challenges(AuthnError::Missing, keys),
            (401, "credential_missing", vec![r#"ApiKey header="x-api-key""#.to_string()])
        );
    }
}
