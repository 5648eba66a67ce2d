//! Why a token, key or proof was refused. Each variant has a stable code for logs and a
//! short description that reveals nothing secret.

/// A JOSE failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not three base64url segments of valid encoding.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg` is `none`, in any spelling.
    #[error("unsigned tokens (alg none) are never accepted")]
    AlgNone,
    /// `alg` is not one this verifier accepts.
    #[error("algorithm {0} is not accepted")]
    AlgNotAllowed(String),
    /// The header names a key (`jku`, `x5u`, `jwk`, `x5c`) that must not be trusted.
    #[error("the token names its own key ({0}); such keys are never used")]
    KeyInHeader(&'static str),
    /// `crit` (or `b64`, `zip`) asks for something not supported.
    #[error("unsupported critical header")]
    Crit,
    /// A header or claim member appears twice.
    #[error("duplicate member `{0}`")]
    Duplicate(String),
    /// No key fits the token (unknown `kid`, or none of the right type).
    #[error("no key fits the token")]
    NoKey,
    /// The key does not fit the algorithm (type, curve, `alg`, `use`, `key_ops`, size).
    #[error("the key does not fit the algorithm")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A key could not be parsed.
    #[error("unusable key: {0}")]
    BadKey(&'static str),
    /// An encrypted token does not decrypt: another recipient's key, or altered on the way.
    #[error("the token does not decrypt with this key")]
    Decrypt,
    /// A cryptographic primitive failed for a reason not tied to the input (randomness, key
    /// generation).
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

impl Error {
    /// A stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "token_malformed",
            Error::AlgNone => "alg_none",
            Error::AlgNotAllowed(_) => "alg_not_allowed",
            Error::KeyInHeader(_) => "key_in_header",
            Error::Crit => "crit_unsupported",
            Error::Duplicate(_) => "duplicate_member",
            Error::NoKey => "key_unknown",
            Error::KeyMismatch => "key_mismatch",
            Error::BadSignature => "signature_invalid",
            Error::BadKey(_) => "key_unusable",
            Error::Decrypt => "decrypt_failed",
            Error::Crypto(_) => "crypto_failed",
        }
    }
}
