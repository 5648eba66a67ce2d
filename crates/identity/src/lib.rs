//! Identity propagation and the token service.
//!
//! Services behind the gateway never see the caller's credential. A route's [`Propagation`]
//! hands the upstream a short-lived internal token signed by the gateway (and/or identity
//! headers that the client cannot spoof); the [`TokenService`] publishes the gateway's keys
//! and issues tokens by token exchange (RFC 8693) and client credentials.

#![forbid(unsafe_code)]

pub mod propagate;
pub mod service;
pub mod signing_keys;

pub use propagate::Propagation;
pub use service::{Caller, Endpoint, OAuthError, TokenService};
pub use signing_keys::{KeyRing, KeyRings};

/// A random, unguessable identifier (128 bits, base64url): token ids.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // The system's random source cannot fail on supported platforms; if it ever did, an id
    // made of the time and a counter is still unique, which is all `jti` needs.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        bytes[..8].copy_from_slice(&signing_keys::unix_now().to_be_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    }
    portcullis_jose::b64::encode(&bytes)
}
