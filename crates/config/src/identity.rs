//! Identity propagation (what an upstream learns of the caller) and the token service (the
//! gateway's own signing keys, the JWKS it publishes, token exchange and client credentials).

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AuthorizeConfig;
use crate::values::Duration;

/// The gateway's token service: it signs the internal tokens routes hand their upstreams,
/// publishes its public keys (`/.well-known/jwks.json`, with an OpenID-style discovery
/// document at `/.well-known/openid-configuration`), and issues tokens at `/oauth2/token`
/// by token exchange (RFC 8693) and client credentials.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceConfig {
    /// `iss` of every token the gateway signs, e.g. `https://gateway.internal`. The discovery
    /// document names its endpoints under this URL.
    #[serde(serialize_with = "crate::values::serialize_url_text_redacted")]
    pub issuer: String,
    /// The signing keys.
    #[serde(default)]
    pub keys: SigningKeysConfig,
    /// Lifetime of internal tokens, unless a route says otherwise.
    #[serde(default = "default_internal_lifetime")]
    pub internal_token_lifetime: Duration,
    /// Where the JWKS, the discovery document and the token endpoint are served: the public
    /// listener (`public`, which mutual TLS for client credentials needs), the admin
    /// listener (`admin`), or both.
    #[serde(default = "default_serve_on")]
    pub serve_on: Vec<Listener>,
    /// Audiences the token endpoint issues tokens for, by name (the `aud` of the token and
    /// the `audience` parameter of a request). An audience not listed gets no token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audiences: BTreeMap<String, AudienceConfig>,
    /// Clients that authenticate to the token endpoint with a signed JWT (`private_key_jwt`,
    /// RFC 7523). Workloads with a client certificate need no entry (`tls_client_auth`,
    /// RFC 8705).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<TokenClientConfig>,
}

fn default_internal_lifetime() -> Duration {
    Duration::from_secs(60)
}

fn default_serve_on() -> Vec<Listener> {
    vec![Listener::Public]
}

/// A listener of the gateway.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    /// `server.listen`.
    Public,
    /// `admin.listen`.
    Admin,
}

/// The gateway's signing keys. Given as files, they are used as given (the first signs, the
/// others are only published, so a new key can be announced before it signs and an old one
/// kept while tokens it signed live); generated, they live in memory and rotate on a
/// schedule, each new key published one period before it signs and kept one period after.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct SigningKeysConfig {
    /// `ES256` (default), `ES384`, `EdDSA`, `PS256` or `RS256`.
    pub algorithm: String,
    /// PKCS#8 PEM private keys; the first signs. Generated at start when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathBuf>,
    /// How often generated keys rotate. Must be longer than any token's lifetime.
    pub rotate_every: Duration,
}

impl Default for SigningKeysConfig {
    fn default() -> Self {
        Self { algorithm: "ES256".into(), files: Vec::new(), rotate_every: Duration::from_secs(24 * 3600) }
    }
}

/// An audience the token endpoint issues tokens for.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    /// The most scope a token for this audience may carry (a token never carries more than
    /// its subject had, either). No limit beyond the subject's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Lifetime of the tokens issued for this audience (default 5 minutes), and never
    /// beyond the subject token's own expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Duration>,
    /// Who may exchange a subject token for a token of this audience (RFC 8693): the rules
    /// and Cedar (action `token_exchange`, resource `Audience::"<name>"`) judge the actor,
    /// or the subject when no actor is presented. Nobody may when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<AuthorizeConfig>,
    /// Which clients may obtain a token of this audience for themselves (client
    /// credentials): the rules and Cedar (action `client_credentials`) judge the client.
    /// Nobody may when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials: Option<AuthorizeConfig>,
}

/// A client that authenticates with a JWT signed by its own key (`private_key_jwt`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenClientConfig {
    /// The client's id: `iss` and `sub` of its assertions.
    pub id: String,
    /// Its public keys (a JWK Set file).
    pub jwks_file: PathBuf,
    /// Scopes the client may hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// What the upstream learns of the caller. The caller's own credential is never forwarded
/// unless `passthrough` says so.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PropagateConfig {
    /// A short-lived JWT signed by the gateway (see `token_service`), in place of the
    /// caller's credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_token: Option<InternalTokenConfig>,
    /// Identity headers: header name → what it carries (`subject`, `client_id`, `issuer`,
    /// `scopes`, `auth_method`, `spiffe_id`, `consumer`, `plan`, or `claims.<path>`). Any of
    /// these headers the client sent is removed first, so they cannot be spoofed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Forward the caller's `Authorization` (and `DPoP`) as received.
    #[serde(default)]
    pub passthrough: bool,
}

/// The internal token a route hands its upstream.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InternalTokenConfig {
    /// `aud` of the token; the upstream's name (or the route id for a URL upstream) when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The header that carries it: `Authorization` (as `Bearer <token>`, the default) or
    /// another header (the bare token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Lifetime (default `token_service.internal_token_lifetime`), and never beyond the
    /// caller's credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Duration>,
    /// The scopes the token may carry (those of them the caller holds). Default: the scopes
    /// the route's `authorize` names; none when it names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Claims copied from the caller's token: claim name in the internal token → dotted path
    /// in the caller's claims (`email: email`, `tenant: org.tenant`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// Encrypt for the upstream (JWE, ECDH-ES with A256GCM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<EncryptConfig>,
}

/// JWE encryption to an upstream's public key.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptConfig {
    /// The upstream's public key: a JWK (or a JWK Set with one encryption key) file, EC P-256,
    /// P-384 or X25519.
    pub key: PathBuf,
    /// Encrypt only these claims (of the internal token), carried in its `encrypted_claims`
    /// claim as a JWE of a JSON object; the whole signed token is encrypted (a nested JWT,
    /// `cty: JWT`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Vec<String>>,
}
