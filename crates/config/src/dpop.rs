//! DPoP (RFC 9449): how proofs of possession are checked.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Duration, Secret};

/// How DPoP proofs are checked on routes with `authenticate: [dpop]`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpopConfig {
    /// Proof signature algorithms accepted (asymmetric only), announced in `algs` of the
    /// `DPoP` challenge.
    pub algorithms: Vec<String>,
    /// How old a proof (`iat`) may be. Its `jti` is remembered this long (plus `leeway`), so a
    /// proof cannot be replayed.
    pub max_age: Duration,
    /// How far in the future a proof's `iat` may be (clock skew).
    pub leeway: Duration,
    /// Require a server-provided nonce in every proof (RFC 9449 §8): proofs without a fresh
    /// nonce get `401` with `error="use_dpop_nonce"` and a `DPoP-Nonce` header to retry with.
    pub require_nonce: bool,
    /// How long a nonce stays valid.
    pub nonce_lifetime: Duration,
    /// The key nonces are made with. Replicas behind one load balancer need the same one;
    /// generated at start when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce_secret: Option<Secret>,
    /// The smallest RSA key (modulus bits) accepted in a proof (at least 2048).
    pub rsa_min_bits: u32,
    /// The largest RSA key (modulus bits) accepted in a proof (at most 8192). The cost of
    /// checking a proof grows with its key, which the client chooses: a proof with a key
    /// outside these bounds is refused (`invalid_dpop_proof`) before any signature work.
    pub rsa_max_bits: u32,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self {
            algorithms: ["ES256", "ES384", "EdDSA", "PS256", "RS256"].map(String::from).to_vec(),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            require_nonce: false,
            nonce_lifetime: Duration::from_secs(300),
            nonce_secret: None,
            rsa_min_bits: 2048,
            rsa_max_bits: 4096,
        }
    }
}
