//! The per-request cost of identity propagation:
//! * `internal-token/cached`: a caller's repeated request, the token from the worker's cache
//!   (the common case: clients reuse their access token);
//! * `internal-token/minted`: a new caller each time, so a token is signed (ES256, EdDSA);
//! * `internal-token/jwe-claims`: minted, with one claim encrypted (ECDH-ES + A256GCM);
//! * `headers`: three identity headers, no token.
//!
//! `cargo bench -p portcullis-identity --bench propagate`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use portcullis_config::{RouteConfig, SigningKeysConfig, TokenServiceConfig};
use portcullis_core::{AuthnMethod, Principal, PrincipalKind};
use portcullis_identity::{KeyRing, Propagation};
use serde_json::json;

fn principal(sub: &str) -> Arc<Principal> {
    let mut p = Principal::new(PrincipalKind::User, AuthnMethod::Jwt);
    p.subject = Some(sub.into());
    p.client_id = Some("web".into());
    p.issuer = Some("https://idp.example".into());
    p.scopes = ["orders.read", "orders.write", "profile"].iter().map(|s| Arc::from(*s)).collect();
    p.expires_at = Some(4_000_000_000);
    let claims = json!({"sub": sub, "email": format!("{sub}@example.com"), "org": {"tenant": "acme"}});
    p.claims = Some(portcullis_core::Claims::from_map(claims.as_object().unwrap().clone()));
    Arc::new(p)
}

fn route(propagate: serde_json::Value) -> RouteConfig {
    serde_json::from_value(json!({
        "id": "orders", "upstream": "orders", "authenticate": ["jwt"],
        "authorize": {"scopes": ["orders.read"]}, "propagate": propagate,
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portcullis-identity-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ts: TokenServiceConfig = serde_json::from_value(json!({"issuer": "https://gateway.internal"})).unwrap();
    let token = json!({"internal_token": {"claims": {"email": "email", "tenant": "org.tenant"}}});
    let mut group = c.benchmark_group("propagate");

    for alg in ["ES256", "EdDSA"] {
        let ring = Arc::new(KeyRing::new(&SigningKeysConfig { algorithm: alg.into(), ..Default::default() }).unwrap());
        let p = Propagation::build(&route(token.clone()), Some((&ts, &ring)), "routes[0]").unwrap().unwrap();
        let alice = principal("alice");
        let mut headers = HeaderMap::new();
        group.bench_function(format!("internal-token/cached/{alg}"), |b| {
            b.iter(|| p.apply(&alice, &mut headers).unwrap());
        });
        // A new principal each time: nothing cached.
        let callers: Vec<_> = (0..64).map(|i| principal(&format!("user-{i}"))).collect();
        let mut i = 0;
        group.bench_function(format!("internal-token/minted/{alg}"), |b| {
            b.iter(|| {
                i += 1;
                let fresh = Arc::new((*callers[i % callers.len()]).clone());
                p.apply(&fresh, &mut headers).unwrap()
            });
        });
    }

    let ring = Arc::new(KeyRing::new(&SigningKeysConfig::default()).unwrap());
    let enc = dir.join("enc.jwk");
    // A fixed P-256 public key (RFC 7518 Appendix C, Bob's).
    std::fs::write(
        &enc,
        json!({"kty": "EC", "crv": "P-256", "x": "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ", "y": "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck"}).to_string(),
    )
    .unwrap();
    let sealed =
        json!({"internal_token": {"claims": {"email": "email"}, "encrypt": {"key": enc, "claims": ["email"]}}});
    let p = Propagation::build(&route(sealed), Some((&ts, &ring)), "routes[0]").unwrap().unwrap();
    let callers: Vec<_> = (0..64).map(|i| principal(&format!("user-{i}"))).collect();
    let mut headers = HeaderMap::new();
    let mut i = 0;
    group.bench_function("internal-token/jwe-claims/ES256", |b| {
        b.iter(|| {
            i += 1;
            let fresh = Arc::new((*callers[i % callers.len()]).clone());
            p.apply(&fresh, &mut headers).unwrap()
        });
    });

    let hdrs = json!({"headers": {"X-User": "subject", "X-Tenant": "claims.org.tenant", "X-Scopes": "scopes"}});
    let p = Propagation::build(&route(hdrs), None, "routes[0]").unwrap().unwrap();
    let alice = principal("alice");
    group.bench_function("headers", |b| b.iter(|| p.apply(&alice, &mut headers).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
