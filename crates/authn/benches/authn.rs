//! The authenticate stage, measured through the same public API the proxy uses: a config is
//! loaded (`portcullis_config::load_str`), compiled (`Verifiers::build`, `Verifiers::route`)
//! and every request goes through `RouteAuthenticator::authenticate`.
//!
//! - `jwt/cached_rs256`: one RS256 token repeated; after the first request it is served from
//!   the per-worker verified-token cache (a seeded fast hash of the token, one map lookup and
//!   a full comparison).
//! - `jwt/uncached_*`: a different valid token on every request. The pool holds more tokens
//!   than the cache (FIFO, `cache::CAPACITY` entries), and is walked in order, so every token
//!   was evicted long before it comes round again: each request parses, verifies the
//!   signature, checks the claims, builds the principal and inserts it into the cache.
//! - `jwt/fresh_*`: the same, each token copied into the request head just before it is
//!   checked (the copy is timed): a proxied request's head was read and parsed just before,
//!   so its token is in the CPU's cache, where the pool's tokens, walked in order, never are.
//! - `verify_bare/*`: one aws-lc-rs signature verification of the same signing input with a
//!   pre-parsed public key (as the key store holds them), for "uncached ≈ N × one verify".
//! - `verify_gateway/rs256`: the same signature through the gateway's own verifier
//!   (`portcullis_jose::VerifyingKey`), which checks RS256/384/512 on AVX-512 IFMA where the
//!   CPU has it and on aws-lc otherwise: beside `verify_bare/rs256`, what that saves.
//!   HS256 is there because its verification is almost free: `uncached_hs256` minus
//!   `verify_bare/hs256` is the work of an uncached validation besides the signature.
//! - `api_key/valid`, `api_key/unknown`: a key in `x-api-key` (hash, bucket lookup,
//!   constant-time compare), found and not found.
//! - `dpop/*`: a DPoP-bound ES256 token (cached after its first use, as a client reuses it)
//!   with a fresh proof on every request, ES256 or EdDSA: the proof's parse, key import,
//!   signature, claims, `ath`, and the `jti` insert into the in-memory replay cache.
//!   `dpop/bearer_es256_cached` is the same token's work without DPoP (an unbound token as a
//!   bearer token), so the difference is what DPoP adds per request.
//! - `dpop_cost/*`: what an unauthenticated client can make one request cost with a proof
//!   whose key it chose. Each proof passes every check but its signature (a forged one costs
//!   the gateway exactly what a real one does) and is refused (`dpop_signature`):
//!   `es256_fresh_key` and `rsa4096_fresh_key` with a key never seen before on every request
//!   (so no per-key work is cached), `rsa4096_same_key` with one key again and again (its
//!   per-key work cached by thumbprint), and `rsa4096_fresh_key_wrong_htu`, a proof refused
//!   by a cheap check before any work on its key. `es384_fresh_key`, `eddsa_fresh_key` and
//!   `ps256_rsa*_fresh_key` are the other default proof algorithms, for comparison.
//! - `extract/*`: reading the bearer token out of the request head; and the SHA-256 of the
//!   token, which keyed the cache before (and still keys the introspection cache).
//!
//!     cargo bench -p portcullis-authn --bench authn -- --warm-up-time 1 --measurement-time 3

#![allow(missing_docs)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::request::Parts;
use portcullis_authn::extract::{self, Locations};
use portcullis_authn::{Retained, RouteAuthenticator, Verifiers, apikey, cache};
use portcullis_jose::{Algorithm, HeaderPolicy, Jws, SigningKey, b64};
use serde_json::{Map, Value, json};

// The allocator of the portcullis binary: allocation is a good part of an uncached validation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tokens in an uncached pool: more than the cache holds, so that none is ever found there.
const POOL: usize = cache::CAPACITY + 256;

/// Runs a future that never waits. With keys from a file nothing on the JWT or API-key path
/// waits on anything, so polling measures the work itself, without an executor's overhead. The
/// stage pauses once after each public-key signature check (to let a worker check all the
/// requests that are ready before it forwards any), which takes a second poll.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..3 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the authenticate stage waited although its keys come from a file");
}

struct Setup {
    _dir: TempDir,
    keys: Vec<Arc<Signer>>,
    jwt: RouteAuthenticator,
    api_key: RouteAuthenticator,
    dpop: RouteAuthenticator,
    api_key_value: String,
}

/// A folder removed on drop (no extra dev-dependency for one folder).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ISSUERS: [(Algorithm, &str); 4] = [
    (Algorithm::RS256, "https://rs256.bench"),
    (Algorithm::ES256, "https://es256.bench"),
    (Algorithm::EdDSA, "https://eddsa.bench"),
    (Algorithm::HS256, "https://hs256.bench"),
];

const HMAC_SECRET: &str = "bench-only-hmac-secret-0123456789abcdef";

/// Signs tokens: with the gateway's own JOSE code for public-key algorithms, by hand for
/// HMAC (which `SigningKey` does not do).
enum Signer {
    Key(SigningKey),
    Hmac(Box<hmac::Key>),
}

impl Signer {
    fn new(alg: Algorithm) -> Signer {
        match alg {
            Algorithm::HS256 => Signer::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, HMAC_SECRET.as_bytes()))),
            _ => Signer::Key(SigningKey::generate(alg, format!("{alg}-key")).expect("keygen")),
        }
    }

    fn sign(&self, payload: &[u8]) -> String {
        let mut header = Map::new();
        header.insert("typ".into(), Value::String("at+jwt".into()));
        match self {
            Signer::Key(k) => k.sign(header, payload).expect("sign"),
            Signer::Hmac(k) => {
                header.insert("alg".into(), Value::String("HS256".into()));
                let mut t = b64::encode(Value::Object(header).to_string().as_bytes());
                t.push('.');
                t.push_str(&b64::encode(payload));
                let tag = hmac::sign(k, t.as_bytes());
                t.push('.');
                t.push_str(&b64::encode(tag.as_ref()));
                t
            }
        }
    }
}

/// Keys, a JWKS file and a config with one issuer per algorithm, a JWT route and an
/// API-key route, compiled as the proxy compiles them.
fn setup() -> Setup {
    let dir = TempDir(std::env::temp_dir().join(format!("portcullis-authn-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let keys: Vec<Arc<Signer>> = ISSUERS.iter().map(|(alg, _)| Arc::new(Signer::new(*alg))).collect();
    let public: Vec<Value> = keys
        .iter()
        .filter_map(|k| match &**k {
            Signer::Key(k) => Some(k.public_jwk()),
            Signer::Hmac(_) => None,
        })
        .collect();
    let jwks = json!({ "keys": public });
    let jwks_file = dir.0.join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).expect("write jwks");
    let api_key_value = apikey::new_key();
    let mut yaml = String::from("server:\n  listen: 127.0.0.1:0\nissuers:\n");
    for (alg, iss) in ISSUERS {
        let keys = match alg {
            Algorithm::HS256 => format!("hmac_secret: {HMAC_SECRET}"),
            _ => format!("jwks_file: {}", jwks_file.display()),
        };
        yaml += &format!(
            "  - id: {alg}\n    issuer: {iss}\n    {keys}\n    audiences: [bench-api]\n    algorithms: [{alg}]\n"
        );
    }
    yaml += &format!(
        "api_keys:\n  consumers:\n    - name: acme\n      scopes: [read]\n      keys: [\"{}\"]\n",
        apikey::hash_key(&api_key_value)
    );
    yaml += "routes:\n  - id: jwt\n    match: { path_prefix: /jwt }\n    upstream: echo\n    authenticate: [jwt]\n";
    yaml += "  - id: key\n    match: { path_prefix: /key }\n    upstream: echo\n    authenticate: [api_key]\n";
    yaml += "  - id: dpop\n    match: { path_prefix: /dpop }\n    upstream: echo\n    authenticate: [dpop]\n";
    let loaded = portcullis_config::load_str(yaml, &dir.0.join("portcullis.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let config = &loaded.config;
    let authn = Verifiers::build(config, &Retained::default()).unwrap_or_else(|e| panic!("{e:?}"));
    let route = |i: usize| {
        authn.route(&config.routes[i], &format!("routes[{i}]")).unwrap_or_else(|e| panic!("{e:?}")).expect("not public")
    };
    Setup { jwt: route(0), api_key: route(1), dpop: route(2), _dir: dir, keys, api_key_value }
}

/// A typical access token of `issuer`, made distinct by `n` (its `jti`).
fn token(key: &Signer, issuer: &str, n: usize) -> String {
    token_with(key, issuer, n, json!({}))
}

/// [`token`] with extra claims.
fn token_with(key: &Signer, issuer: &str, n: usize, extra: Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = json!({
        "iss": issuer,
        "sub": format!("user-{n}"),
        "aud": "bench-api",
        "client_id": "web-app",
        "scope": "orders:read orders:write profile",
        "iat": now,
        "exp": now + 3600,
        "jti": format!("token-{n}"),
    });
    let mut claims = claims;
    for (k, v) in extra.as_object().expect("object") {
        claims[k] = v.clone();
    }
    key.sign(claims.to_string().as_bytes())
}

/// `count` distinct tokens, signed on every core (RSA signing is the slow part of the setup).
fn tokens(key: &Arc<Signer>, issuer: &'static str, count: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = count.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let key = key.clone();
                s.spawn(move || {
                    (t * per..((t + 1) * per).min(count)).map(|n| token(&key, issuer, n)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("minting thread")).collect()
    })
}

fn request(path: &str, header: (&str, &str)) -> Parts {
    http::Request::builder()
        .method("GET")
        .uri(path)
        .header("host", "api.example")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .header(header.0, header.1)
        .body(())
        .expect("request")
        .into_parts()
        .0
}

fn bearer(token: &str) -> Parts {
    request("/jwt/orders", ("authorization", &format!("Bearer {token}")))
}

/// The connection facts of a plain-HTTP request to `api.example`.
const CX: portcullis_authn::Context<'static> =
    portcullis_authn::Context { https: false, authority: "api.example", client_cert: None };

/// A DPoP proof by `holder` for `GET http://api.example{path}` with `token`, unique by `n`.
fn proof(holder: &SigningKey, path: &str, token: &str, n: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let mut header = Map::new();
    header.insert("typ".into(), json!("dpop+jwt"));
    let mut jwk = holder.public_jwk();
    jwk.as_object_mut().expect("jwk").retain(|k, _| !matches!(k.as_str(), "kid" | "alg" | "use"));
    header.insert("jwk".into(), jwk);
    let ath = b64::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref());
    let claims = json!({"htm": "GET", "htu": format!("http://api.example{path}"), "iat": now, "jti": format!("proof-{n}"), "ath": ath});
    holder.sign(header, claims.to_string().as_bytes()).expect("sign")
}

/// Authenticates `parts`, insisting that it succeeds (a benchmark of refusals would be
/// meaningless here).
fn accept(auth: &RouteAuthenticator, parts: &Parts) {
    match ready(auth.authenticate(black_box(parts), &CX)) {
        Ok(p) => {
            black_box(p);
        }
        Err(problem) => panic!("refused: {problem:?}"),
    }
}

/// A bare verifier: aws-lc-rs alone.
enum Bare {
    Public(ParsedPublicKey),
    Hmac(Box<hmac::Key>),
}

impl Bare {
    fn verify(&self, message: &[u8], signature: &[u8]) {
        match self {
            Bare::Public(k) => k.verify_sig(message, signature).expect("verifies"),
            Bare::Hmac(k) => hmac::verify(k, message, signature).expect("verifies"),
        }
    }
}

/// A bare verifier for a signer's key, parsed once as the key store does.
fn bare_verifier(alg: Algorithm, signer: &Signer) -> Bare {
    let jwk = match signer {
        Signer::Key(k) => k.public_jwk(),
        Signer::Hmac(_) => return Bare::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, HMAC_SECRET.as_bytes()))),
    };
    Bare::Public(public_key(alg, &jwk))
}

fn public_key(alg: Algorithm, jwk: &Value) -> ParsedPublicKey {
    let b = |k: &str| b64::decode(jwk[k].as_str().expect("member")).expect("b64");
    match alg {
        Algorithm::RS256 => RsaPublicKeyComponents { n: b("n"), e: b("e") }
            .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
            .expect("rsa key"),
        Algorithm::ES256 => {
            let mut point = vec![4];
            point.extend(b("x"));
            point.extend(b("y"));
            ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).expect("ec key")
        }
        Algorithm::EdDSA => ParsedPublicKey::new(&signature::ED25519, b("x")).expect("ed key"),
        _ => unreachable!("not benchmarked"),
    }
}

/// Refuses `parts` with the reason `code`, insisting on it.
fn refuse(auth: &RouteAuthenticator, parts: &Parts, code: &str) {
    match ready(auth.authenticate(black_box(parts), &CX)) {
        Ok(_) => panic!("accepted"),
        Err(problem) => assert_eq!(problem.code, code, "{problem:?}"),
    }
}

/// A DPoP request whose proof carries `jwk` and `alg` and a signature of `sig_len` bytes of
/// garbage, and is right in every other way (for `http://api.example{path}`, unless `htu`).
/// The garbage is in range for the algorithm (an Ed25519 `S` below the group order), so that
/// the verifier does all its work before it refuses, as it would for a real signature.
fn forged_proof_request(jwk: &Value, alg: &str, sig_len: usize, auth: &str, token: &str, htu: &str, n: u64) -> Parts {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let header = json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk});
    let ath = b64::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref());
    let claims = json!({"htm": "GET", "htu": htu, "iat": now, "jti": format!("forged-{n}"), "ath": ath});
    let proof = format!(
        "{}.{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes()),
        b64::encode(&{
            let mut sig = vec![0x5a; sig_len];
            sig[sig_len - 1] = 0;
            sig
        })
    );
    let mut parts = request("/dpop/orders", ("authorization", auth));
    parts.headers.insert("dpop", proof.parse().expect("header"));
    parts
}

/// The public JWK of an RSA key of exactly `bits` bits, never seen before: a random odd
/// modulus (the public operation costs the same for any modulus of a size).
fn random_rsa_jwk(bits: usize) -> Value {
    let mut n = vec![0u8; bits / 8];
    aws_lc_rs::rand::fill(&mut n).expect("random");
    n[0] |= 0x80;
    let last = n.len() - 1;
    n[last] |= 1;
    json!({"kty": "RSA", "n": b64::encode(&n), "e": "AQAB"})
}

fn benches(c: &mut Criterion) {
    let s = setup();

    let mut g = c.benchmark_group("jwt");
    g.throughput(Throughput::Elements(1));
    let repeated = bearer(&token(&s.keys[0], ISSUERS[0].1, 0));
    accept(&s.jwt, &repeated);
    g.bench_function("cached_rs256", |b| b.iter(|| accept(&s.jwt, &repeated)));
    for (i, (alg, issuer)) in ISSUERS.iter().enumerate() {
        // Minted on first use, so that a filtered run (`-- jwt/cached`) does not wait for it.
        let pool = std::cell::OnceCell::new();
        let mut next = 0;
        g.bench_function(format!("uncached_{}", alg.name().to_ascii_lowercase()), |b| {
            let pool: &Vec<Parts> = pool.get_or_init(|| {
                let started = std::time::Instant::now();
                let pool = tokens(&s.keys[i], issuer, POOL).iter().map(|t| bearer(t)).collect();
                eprintln!("minted {POOL} {alg} tokens in {:.1?}", started.elapsed());
                pool
            });
            b.iter(|| {
                accept(&s.jwt, &pool[next]);
                next = (next + 1) % pool.len();
            })
        });
    }
    // The same, with each token written into the request head just before it is checked, as
    // a proxied request's head is read and parsed just before: the token and the head are in
    // the CPU's cache, as they are in the proxy. The copy is timed too.
    for (i, (alg, issuer)) in
        ISSUERS.iter().enumerate().filter(|(_, (a, _))| matches!(a, Algorithm::RS256 | Algorithm::HS256))
    {
        let values: Vec<Vec<u8>> =
            tokens(&s.keys[i], issuer, POOL).iter().map(|t| format!("Bearer {t}").into_bytes()).collect();
        let mut parts = bearer("x");
        let mut next = 0;
        g.bench_function(format!("fresh_{}", alg.name().to_ascii_lowercase()), |b| {
            b.iter(|| {
                let value = http::HeaderValue::from_bytes(&values[next]);
                parts.headers.insert(http::header::AUTHORIZATION, value.expect("header value"));
                accept(&s.jwt, &parts);
                next = (next + 1) % values.len();
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("verify_bare");
    g.throughput(Throughput::Elements(1));
    for (i, (alg, issuer)) in ISSUERS.iter().enumerate() {
        let t = token(&s.keys[i], issuer, 0);
        let jws = Jws::parse(&t, HeaderPolicy::default()).expect("parse");
        let verifier = bare_verifier(*alg, &s.keys[i]);
        let (input, sig) = (jws.signing_input().to_vec(), jws.signature.clone());
        verifier.verify(&input, &sig);
        g.bench_function(alg.name().to_ascii_lowercase(), |b| {
            b.iter(|| verifier.verify(black_box(&input), black_box(&sig)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("verify_gateway");
    g.throughput(Throughput::Elements(1));
    let t = token(&s.keys[0], ISSUERS[0].1, 0);
    let jws = Jws::parse(&t, HeaderPolicy::default()).expect("parse");
    let Signer::Key(k) = &*s.keys[0] else { unreachable!("RS256 is a key pair") };
    let verifier =
        portcullis_jose::Jwk::from_value(k.public_jwk()).expect("jwk").verifying_key(&[Algorithm::RS256]).expect("key");
    let (input, sig) = (jws.signing_input().to_vec(), jws.signature.clone());
    verifier.verify(Algorithm::RS256, &input, &sig).expect("a good signature");
    g.bench_function("rs256", |b| {
        b.iter(|| verifier.verify(Algorithm::RS256, black_box(&input), black_box(&sig)).is_ok())
    });
    g.finish();

    let mut g = c.benchmark_group("api_key");
    g.throughput(Throughput::Elements(1));
    let valid = request("/key/orders", ("x-api-key", &s.api_key_value));
    g.bench_function("valid", |b| b.iter(|| accept(&s.api_key, &valid)));
    let unknown = request("/key/orders", ("x-api-key", &apikey::new_key()));
    assert!(ready(s.api_key.authenticate(&unknown, &CX)).is_err());
    g.bench_function("unknown", |b| b.iter(|| ready(s.api_key.authenticate(black_box(&unknown), &CX)).is_err()));
    g.finish();

    let mut g = c.benchmark_group("dpop");
    g.throughput(Throughput::Elements(1));
    let es256 = (&s.keys[1], ISSUERS[1].1);
    let unbound = bearer(&token(es256.0, es256.1, 7));
    accept(&s.jwt, &unbound);
    g.bench_function("bearer_es256_cached", |b| b.iter(|| accept(&s.jwt, &unbound)));
    let mut n = 0u64;
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let holder = SigningKey::generate(alg, "holder").expect("keygen");
        let jkt = portcullis_jose::Jwk::from_value(holder.public_jwk()).expect("jwk").thumbprint;
        let bound = token_with(es256.0, es256.1, 8, json!({"cnf": {"jkt": jkt}}));
        let auth = format!("DPoP {bound}");
        g.bench_function(format!("{}_proof", alg.name().to_ascii_lowercase()), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let p = proof(&holder, "/dpop/orders", &bound, n);
                    let mut parts = request("/dpop/orders", ("authorization", &auth));
                    parts.headers.insert("dpop", p.parse().expect("header"));
                    parts
                },
                |parts| accept(&s.dpop, &parts),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();

    let mut g = c.benchmark_group("dpop_cost");
    g.throughput(Throughput::Elements(1));
    let holder = SigningKey::generate(Algorithm::ES256, "holder").expect("keygen");
    let jkt = portcullis_jose::Jwk::from_value(holder.public_jwk()).expect("jwk").thumbprint;
    let bound = token_with(es256.0, es256.1, 9, json!({"cnf": {"jkt": jkt}}));
    let auth = format!("DPoP {bound}");
    let htu = "http://api.example/dpop/orders";
    let es256_jwk = || {
        let mut jwk = SigningKey::generate(Algorithm::ES256, "fresh").expect("keygen").public_jwk();
        jwk.as_object_mut().expect("jwk").retain(|k, _| !matches!(k.as_str(), "kid" | "alg" | "use"));
        jwk
    };
    for (alg, sig_len) in [(Algorithm::ES384, 96), (Algorithm::EdDSA, 64)] {
        let fresh = move || {
            let mut jwk = SigningKey::generate(alg, "fresh").expect("keygen").public_jwk();
            jwk.as_object_mut().expect("jwk").retain(|k, _| !matches!(k.as_str(), "kid" | "alg" | "use"));
            jwk
        };
        g.bench_function(format!("{}_fresh_key", alg.name().to_ascii_lowercase()), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    forged_proof_request(&fresh(), alg.name(), sig_len, &auth, &bound, htu, n)
                },
                |parts| refuse(&s.dpop, &parts, "dpop_signature"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("es256_fresh_key", |b| {
        b.iter_batched(
            || {
                n += 1;
                forged_proof_request(&es256_jwk(), "ES256", 64, &auth, &bound, htu, n)
            },
            |parts| refuse(&s.dpop, &parts, "dpop_signature"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("rsa4096_fresh_key", |b| {
        b.iter_batched(
            || {
                n += 1;
                forged_proof_request(&random_rsa_jwk(4096), "RS256", 512, &auth, &bound, htu, n)
            },
            |parts| refuse(&s.dpop, &parts, "dpop_signature"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("ps256_rsa4096_fresh_key", |b| {
        b.iter_batched(
            || {
                n += 1;
                forged_proof_request(&random_rsa_jwk(4096), "PS256", 512, &auth, &bound, htu, n)
            },
            |parts| refuse(&s.dpop, &parts, "dpop_signature"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("ps256_rsa2048_fresh_key", |b| {
        b.iter_batched(
            || {
                n += 1;
                forged_proof_request(&random_rsa_jwk(2048), "PS256", 256, &auth, &bound, htu, n)
            },
            |parts| refuse(&s.dpop, &parts, "dpop_signature"),
            criterion::BatchSize::SmallInput,
        )
    });
    let same = random_rsa_jwk(4096);
    g.bench_function("rsa4096_same_key", |b| {
        b.iter_batched(
            || {
                n += 1;
                forged_proof_request(&same, "RS256", 512, &auth, &bound, htu, n)
            },
            |parts| refuse(&s.dpop, &parts, "dpop_signature"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("rsa4096_fresh_key_wrong_htu", |b| {
        b.iter_batched(
            || {
                n += 1;
                let jwk = random_rsa_jwk(4096);
                forged_proof_request(&jwk, "RS256", 512, &auth, &bound, "http://api.example/elsewhere", n)
            },
            |parts| refuse(&s.dpop, &parts, "dpop_htu"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(1));
    let headers = &repeated.headers;
    let none = Locations::default();
    g.bench_function("authorization_bearer", |b| {
        b.iter(|| {
            let a = extract::authorization(black_box(headers)).expect("authorization");
            extract::bearer(headers, None, &a, &none).expect("bearer").expect("a token").len()
        })
    });
    // What keying the cache by the SHA-256 of the whole token cost (the introspection cache).
    let rs256_token = extract::bearer(headers, None, &extract::authorization(headers).expect("authorization"), &none)
        .expect("bearer")
        .expect("a token")
        .to_string();
    g.bench_function("sha256_rs256_token", |b| b.iter(|| cache::digest(black_box(rs256_token.as_bytes()))));
    // What keys the verified-JWT cache now: foldhash (randomly seeded) of the token.
    let state = foldhash::quality::RandomState::default();
    g.bench_function("foldhash_rs256_token", |b| {
        b.iter(|| std::hash::BuildHasher::hash_one(&state, black_box(rs256_token.as_str())))
    });
    let cookie = Locations { cookie: Some("session".into()), ..Default::default() };
    let cookie_parts = request(
        "/jwt/orders",
        ("cookie", &format!("theme=dark; session={}; lang=en", token(&s.keys[1], ISSUERS[1].1, 0))),
    );
    g.bench_function("cookie", |b| {
        b.iter(|| {
            let a = extract::authorization(black_box(&cookie_parts.headers)).expect("authorization");
            extract::bearer(&cookie_parts.headers, None, &a, &cookie).expect("bearer").expect("a token").len()
        })
    });
    g.finish();
}

criterion_group!(authn, benches);
criterion_main!(authn);
