//! Token issuers (identity providers) whose JWT access tokens the gateway accepts.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An identity provider whose JWT access tokens are accepted on `jwt` routes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Unique name, used in logs and metrics.
    pub id: String,
    /// The issuer identifier; a token's `iss` must equal it exactly.
    pub issuer: String,
    /// Signing keys from a local JWKS file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Signing keys from a JWKS URL (HTTPS; plain HTTP only to loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Find `jwks_uri` in the issuer's OpenID Connect discovery document
    /// (`{issuer}/.well-known/openid-configuration`).
    #[serde(default)]
    pub discovery: bool,
    /// A token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
