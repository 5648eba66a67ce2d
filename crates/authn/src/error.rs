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
            AuthnError::Invalid { code, .. }
            | AuthnError::BadRequest { code, .. }
            | AuthnError::Unavailable { code, .. } => code,
        }
    }

    /// The response. `bearer` adds RFC 6750 challenges (token routes); `api_key_header`
    /// names the API-key header in an `ApiKey` challenge (key routes).
    pub fn into_problem(self, bearer: bool, api_key_header: Option<&HeaderName>) -> Problem {
        let code = self.code();
        let bearer_challenge = |error: &'static str, description: Cow<'static, str>| Challenge {
            description: Some(description),
            ..Challenge::new(ChallengeScheme::Bearer, error)
        };
        let api_key_challenge = |p: Problem| match api_key_header {
            Some(h) => p.header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&format!("ApiKey header=\"{}\"", h.as_str()))
                    .unwrap_or_else(|_| HeaderValue::from_static("ApiKey")),
            ),
            None => p,
        };
        match self {
            AuthnError::Missing => {
                let mut p = Problem::new(StatusCode::UNAUTHORIZED, code, "this route needs a credential");
                if bearer {
                    p = p.challenge(bearer_challenge("invalid_token", "missing credential".into()));
                }
                api_key_challenge(p)
            }
            AuthnError::Invalid { description, .. } => {
                let mut p = Problem::new(StatusCode::UNAUTHORIZED, code, description.clone());
                if bearer {
                    p = p.challenge(bearer_challenge("invalid_token", description));
                }
                api_key_challenge(p)
            }
            AuthnError::BadRequest { description, .. } => {
                let mut p = Problem::new(StatusCode::BAD_REQUEST, code, description.clone());
                if bearer {
                    p = p.challenge(bearer_challenge("invalid_request", description));
                }
                p
            }
            AuthnError::Unavailable { description, .. } => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, description)
                    .side(Side::Internal)
                    .header(RETRY_AFTER, HeaderValue::from_static("5"))
            }
        }
    }
}

impl From<portcullis_jose::Error> for AuthnError {
    fn from(e: portcullis_jose::Error) -> Self {
        AuthnError::invalid(e.code(), e.to_string())
    }
}
