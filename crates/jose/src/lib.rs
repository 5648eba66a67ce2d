//! JOSE for Portcullis: compact JWS (RFC 7515) parsing with strict header rules, JWKs
//! (RFC 7517) with RFC 7638 thumbprints, signature verification and signing, and compact JWE
//! (RFC 7516) with ECDH-ES and A256GCM, all on aws-lc-rs.
//!
//! Why not a JWT library: the gateway must enforce its own rules on every header (algorithm
//! allowlist, `crit`, keys named by the token, key type against algorithm) *before* any key is
//! chosen, whatever a library would accept; and the primitives are already in the build
//! through rustls (aws-lc-rs). Compact serialisation is three base64url segments, so parsing
//! it here is small, and every rule has a test. Tests elsewhere mint tokens with an
//! independent implementation (Python PyJWT), so the two sides cannot share a bug.
//!
//! Not supported, on purpose: unencoded payloads (`b64`), any `crit` extension, JWS JSON
//! serialisation, compressed payloads, and `none`.

// One `unsafe` block, in `rsa`: calling its AVX-512 code once the CPU is known to have it.
#![deny(unsafe_code)]

mod alg;
pub mod b64;
pub mod claims;
mod error;
pub mod json;
mod jwe;
mod jwk;
mod jws;
mod rsa;
mod sign;

pub use alg::Algorithm;
pub use error::Error;
pub use jwe::{DecryptionKey, EncryptionKey};
pub use jwk::{Jwk, KeyKind, VerifyingKey, thumbprint_sha256};
pub use jws::{Header, HeaderPolicy, Jws, parse_object_no_duplicates};
pub use sign::SigningKey;
