//! Who vouches for callers: token issuers (JWT), the introspection endpoint (opaque tokens)
//! and API-key consumers.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{ByteSize, Duration, Secret};

/// An identity provider whose JWT access tokens are accepted on `jwt` routes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Unique name, used in logs, metrics and `routes[].issuers`.
    pub id: String,
    /// The issuer identifier; a token's `iss` must equal it exactly.
    #[serde(serialize_with = "crate::values::serialize_url_text_redacted")]
    pub issuer: String,
    /// Signing keys from a local JWKS file (reloaded when it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Signing keys from a JWKS URL (HTTPS; plain HTTP only to loopback or with `allow_http`).
    /// Credentials in the URL are hidden wherever it is shown (logs, errors, config dumps).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::values::serialize_opt_url_text_redacted"
    )]
    pub jwks_uri: Option<String>,
    /// Find `jwks_uri` in the issuer's OpenID Connect discovery document
    /// (`{issuer}/.well-known/openid-configuration`), whose `issuer` must match.
    #[serde(default)]
    pub discovery: bool,
    /// A token's `aud` (string or list) must contain at least one of these.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer (`RS256`…`RS512`, `PS256`…`PS512`,
    /// `ES256`, `ES384`, `EdDSA`; `HS256`…`HS512` only with `hmac_secret`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Claims every token must carry, e.g. `[sub, jti]`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Accepted `typ` header values (case-insensitive). Default: absent, `JWT`, `at+jwt`,
    /// `application/at+jwt` (RFC 9068).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_types: Option<Vec<String>>,
    /// Shared secret for HMAC-signed tokens (at least 32 bytes). HMAC is never accepted with
    /// a key from a JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<Secret>,
    /// Tokens longer than this are refused before parsing.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: ByteSize,
    /// How keys are fetched and cached.
    #[serde(default)]
    pub keys: KeyFetchConfig,
    /// The SPIFFE trust domain whose JWT-SVIDs this issuer signs (e.g. `example.org`). Only
    /// then is a token's `spiffe://` `sub` its SPIFFE ID (matched by `spiffe_ids` rules and
    /// Cedar workload checks); a `sub` that is a SPIFFE ID of another trust domain refuses the
    /// token. Without it, a `spiffe://` `sub` is an ordinary subject with no SPIFFE identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_trust_domain: Option<String>,
}

/// How an issuer's keys are fetched, cached and refreshed.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct KeyFetchConfig {
    /// Keys are kept at least this long, whatever `Cache-Control` says.
    pub min_cache: Duration,
    /// ...and at most this long.
    pub max_cache: Duration,
    /// A token with an unknown `kid` triggers at most one refetch per this interval (so a
    /// flood of made-up `kid`s cannot hammer the identity provider through the gateway).
    pub refetch_interval: Duration,
    /// When the identity provider is unreachable, the last good keys keep serving this long
    /// after they expired; then requests fail closed (`503`).
    pub stale_for: Duration,
    /// Timeout of each fetch.
    pub timeout: Duration,
    /// Allow plain HTTP to a non-loopback host (never do this in production).
    pub allow_http: bool,
    /// PEM CAs trusted for the identity provider's certificate (system roots otherwise).
    pub ca: Option<PathBuf>,
}

impl Default for KeyFetchConfig {
    fn default() -> Self {
        Self {
            min_cache: Duration::from_secs(300),
            max_cache: Duration::from_secs(86_400),
            refetch_interval: Duration::from_secs(30),
            stale_for: Duration::from_secs(3_600),
            timeout: Duration::from_secs(5),
            allow_http: false,
            ca: None,
        }
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_max_token() -> ByteSize {
    ByteSize::kib(16)
}

/// OAuth 2.0 token introspection (RFC 7662) for opaque tokens.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (HTTPS; plain HTTP only to loopback or with `allow_http`).
    /// Credentials in the URL are hidden wherever it is shown (logs, errors, config dumps).
    #[serde(serialize_with = "crate::values::serialize_url_text_redacted")]
    pub endpoint: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// The gateway's client secret.
    pub client_secret: Secret,
    /// How the gateway authenticates to the endpoint.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// Timeout of each call; expiry denies the request (`503`).
    #[serde(default = "default_introspection_timeout")]
    pub timeout: Duration,
    /// Active tokens are remembered for at most this long (and never past their `exp`).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: Duration,
    /// Inactive tokens are remembered this long.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Duration,
    /// If set, an active token's `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// If set, an active token's `iss` must equal this.
    #[serde(default, serialize_with = "crate::values::serialize_opt_url_text_redacted")]
    pub issuer: Option<String>,
    /// Allow plain HTTP to a non-loopback host.
    #[serde(default)]
    pub allow_http: bool,
    /// PEM CAs trusted for the endpoint's certificate (system roots otherwise).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// How the gateway authenticates to an authorization server (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}

/// API keys and the consumers they belong to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Request header carrying the key.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// The consumers.
    pub consumers: Vec<ConsumerConfig>,
}

/// A consumer of the API: who holds some keys, on which plan, with which scopes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name; the principal's subject.
    pub name: String,
    /// The consumer's plan (for quotas and metering).
    #[serde(default)]
    pub plan: Option<String>,
    /// Scopes granted to the consumer's keys.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The consumer's keys, stored only as hashes: `sha256:<hex>` (see
    /// `portcullis apikey new`).
    pub keys: Vec<String>,
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

/// OpenID Connect Back-Channel Logout 1.0: where identity providers post logout tokens, and
/// the client ids the gateway has at them.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackchannelLogoutConfig {
    /// The path on the public listener (the client's `backchannel_logout_uri`), taken before
    /// any route (default `/oidc/backchannel-logout`).
    #[serde(default = "default_logout_path")]
    pub path: String,
    /// The gateway's client ids at the identity providers: a logout token's `aud` must name
    /// one.
    pub client_ids: Vec<String>,
    /// The ids (in `issuers`) of the identity providers whose logout tokens are taken. A
    /// logout revokes a session or a user whatever issued its credentials: name only
    /// providers whose users are the ones the gateway knows by those names.
    pub issuers: Vec<String>,
}

fn default_logout_path() -> String {
    "/oidc/backchannel-logout".into()
}

/// A Shared Signals Framework receiver: where transmitters push Security Event Tokens
/// (RFC 8935), and the audiences they address the gateway by.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SharedSignalsConfig {
    /// The path on the public listener SETs are pushed to, taken before any route (default
    /// `/ssf/events`).
    #[serde(default = "default_signals_path")]
    pub path: String,
    /// The audiences (the receiver's ids at the transmitters): a SET's `aud` must name one.
    pub audiences: Vec<String>,
    /// The ids (in `issuers`) of the transmitters whose events are taken (see
    /// `backchannel_logout.issuers`).
    pub issuers: Vec<String>,
}

fn default_signals_path() -> String {
    "/ssf/events".into()
}
