//! The token endpoint and JWE from the network: a token request body (form parsing, grant
//! dispatch, the gateway's own tokens as subject and actor, client assertions) never panics
//! and always answers either a token or an RFC 6749 error; JWE parsing and decryption, and
//! reading an encryption key, never panic either.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use portcullis_identity::{Caller, KeyRing, TokenService};
use portcullis_jose::{DecryptionKey, EncryptionKey};

fn service() -> &'static TokenService {
    static S: OnceLock<TokenService> = OnceLock::new();
    S.get_or_init(|| {
        let cfg: portcullis_config::TokenServiceConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://gateway.internal",
            "audiences": {"billing": {"scopes": ["a", "b"], "exchange": {}, "client_credentials": {}}},
        }))
        .expect("token service config");
        let ring = Arc::new(KeyRing::new(&cfg.keys).expect("keys"));
        TokenService::new(&cfg, ring, &Default::default(), None, None, Some(portcullis_state::State::memory(4096)))
            .expect("token service")
    })
}

fn key() -> &'static DecryptionKey {
    static K: OnceLock<DecryptionKey> = OnceLock::new();
    K.get_or_init(|| {
        // RFC 7518 Appendix C, Bob's key.
        DecryptionKey::from_jwk(&serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
            "y": "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
            "d": "VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw",
        }))
        .expect("decryption key")
    })
}

fuzz_target!(|data: &[u8]| {
    let caller =
        Caller { client_cert: None, client_ip: std::net::Ipv4Addr::LOCALHOST.into(), tls: false, host: "gateway" };
    // Nothing on this path waits (no issuers, memory state): one poll finishes it.
    let mut fut = std::pin::pin!(service().token(data, &caller));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(body)) => assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok()),
        Poll::Ready(Err(e)) => assert!(!e.error.is_empty() && e.status.as_u16() >= 400),
        Poll::Pending => {}
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = key().decrypt(text);
    }
    let _ = EncryptionKey::from_json(data);
});
