//! The principal: who sent a request, as established by the authentication stage and read
//! by authorization, risk scoring, identity propagation and the access log.

use std::sync::Arc;

/// What kind of caller a principal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// No authentication took place (a public route).
    Anonymous,
    /// An end user, acting through a client application.
    User,
    /// A client application acting on its own behalf (client credentials, API key).
    Client,
    /// A workload identified by its certificate (mTLS, SPIFFE).
    Workload,
}

/// How a principal was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthnMethod {
    /// Not authenticated.
    None,
    /// A JWT access token.
    Jwt,
    /// An opaque token, by introspection.
    Introspection,
    /// An API key.
    ApiKey,
    /// A client certificate.
    Mtls,
    /// A DPoP-bound token and its proof.
    Dpop,
}

impl AuthnMethod {
    /// Lower-case name for logs, policies and internal tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthnMethod::None => "none",
            AuthnMethod::Jwt => "jwt",
            AuthnMethod::Introspection => "introspection",
            AuthnMethod::ApiKey => "api_key",
            AuthnMethod::Mtls => "mtls",
            AuthnMethod::Dpop => "dpop",
        }
    }
}

/// Who sent a request. Built once per credential and shared (`Arc`) by every request that
/// presents the same credential while it is cached.
#[derive(Clone, Debug)]
pub struct Principal {
    /// What kind of caller this is.
    pub kind: PrincipalKind,
    /// How it was authenticated.
    pub method: AuthnMethod,
    /// The subject (`sub`), certificate identity or consumer name.
    pub subject: Option<Arc<str>>,
    /// The issuer that vouched for the subject.
    pub issuer: Option<Arc<str>>,
    /// The client application (`client_id` / `azp`).
    pub client_id: Option<Arc<str>>,
    /// Granted scopes.
    pub scopes: Arc<[Arc<str>]>,
}

impl Principal {
    /// The principal of a request on a public route.
    pub fn anonymous() -> Arc<Principal> {
        Arc::new(Principal {
            kind: PrincipalKind::Anonymous,
            method: AuthnMethod::None,
            subject: None,
            issuer: None,
            client_id: None,
            scopes: Arc::from([]),
        })
    }

    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}
