//! Why authentication failed, and the response that says so: `401` with RFC 6750
//! challenges for bad or missing credentials, `400` for ambiguous ones, `503` (fail closed)
//! when a dependency needed to decide is unavailable. Descriptions never contain the
//! credential or anything secret.

use std::borrow::Cow;

use http::StatusCode;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use portcullis_core::{Challenge, ChallengeScheme, Problem, Side};

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
        let dpop = |error: &'static str, description: Option<Cow<'static, str>>| Challenge {
            description,
            algs: schemes.dpop_algs.map(str::to_string),
            ..Challenge::new(ChallengeScheme::DPoP, error)
        };
        // Which scheme a refused token is answered in: the one the request used, if accepted.
        let token_challenge = |error: &'static str, description: Cow<'static, str>| {
            if schemes.dpop_algs.is_some() && (schemes.dpop_request || !schemes.bearer) {
                Some(dpop(error, Some(description)))
            } else {
                // Also on routes that take only API keys or certificates: a 401 carries at least
                // one challenge (RFC 9110 §11.6.1), and clients look for the Bearer one.
                Some(Challenge { description: Some(description), ..Challenge::new(ChallengeScheme::Bearer, error) })
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
                let mut p = Problem::new(StatusCode::UNAUTHORIZED, code, "this route needs a credential");
                if schemes.bearer || schemes.dpop_algs.is_none() {
                    p = p.challenge(Challenge {
                        description: Some("missing credential".into()),
                        ..Challenge::new(ChallengeScheme::Bearer, "invalid_token")
                    });
                }
                if schemes.dpop_algs.is_some() {
                    p = p.challenge(dpop("invalid_token", Some("missing credential".into())));
                }
                api_key_challenge(p)
            }
            AuthnError::Invalid { description, .. } => {
                let p = Problem::new(StatusCode::UNAUTHORIZED, code, description.clone());
                api_key_challenge(with(p, token_challenge("invalid_token", description)))
            }
            AuthnError::Proof { description, .. } => Problem::new(StatusCode::UNAUTHORIZED, code, description.clone())
                .challenge(dpop("invalid_dpop_proof", Some(description))),
            AuthnError::UseNonce { nonce } => {
                let p = Problem::new(StatusCode::UNAUTHORIZED, code, "the DPoP proof needs the server's nonce")
                    .challenge(dpop("use_dpop_nonce", Some("use the nonce in the DPoP-Nonce header".into())));
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
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                    .side(Side::Internal)
                    .header(RETRY_AFTER, HeaderValue::from_static("5"))
            }
        }
    }
}

/// The schemes a route accepts, for the challenges of its refusals.
#[derive(Clone, Copy, Debug, Default)]
pub struct Schemes<'a> {
    /// Bearer tokens (JWT or introspection).
    pub bearer: bool,
    /// DPoP, with the proof algorithms accepted.
    pub dpop_algs: Option<&'a str>,
    /// The API-key header.
    pub api_key_header: Option<&'a HeaderName>,
    /// The refused request used the `DPoP` scheme.
    pub dpop_request: bool,
}

impl From<portcullis_jose::Error> for AuthnError {
    fn from(e: portcullis_jose::Error) -> Self {
        AuthnError::invalid(e.code(), e.to_string())
    }
}
