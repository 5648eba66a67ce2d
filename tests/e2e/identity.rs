//! Identity propagation and the token service through the real binary. The tokens the
//! gateway hands out are checked the way a service behind it would check them, by
//! independent libraries (PyJWT against the published JWKS, jwcrypto for JWE, in
//! `tests/helpers/rp.py`); the tokens presented to it are minted by the Python IdP.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::authn::{Idp, issuer_yaml, now};
use crate::harness::{Gateway, TempDir, client, helper};
use crate::pki::Ca;
use crate::upstream::Upstream;

const ISSUER: &str = "https://gateway.internal";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Runs an operation of the relying-party helper.
fn rp(op: &str, req: Value) -> Value {
    let mut child = Command::new("python3")
        .arg(helper("rp.py"))
        .arg(op)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "rp.py {op}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Verifies `token` as a service would: PyJWT, the gateway's JWKS, `iss` and `aud`.
fn verify(gw: &Gateway, token: &str, audience: &str) -> Value {
    rp(
        "verify",
        json!({"jwks_url": gw.url("/.well-known/jwks.json"), "token": token, "audience": audience, "issuer": ISSUER}),
    )
}

fn verified_claims(gw: &Gateway, token: &str, audience: &str) -> Value {
    let v = verify(gw, token, audience);
    assert_eq!(v["ok"], true, "{v}");
    v["claims"].clone()
}

/// The headers the upstream received (the test upstream answers with them).
async fn upstream_headers(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    seen["headers"].clone()
}

fn bearer(headers: &Value) -> String {
    headers["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap().to_string()
}

struct Fixture {
    idp: Idp,
    _up: Upstream,
    gw: Gateway,
}

impl Fixture {
    /// A gateway trusting the IdP, with a token service and `body` (routes...). `UP` in the
    /// body is the test upstream.
    async fn new(token_service_extra: &str, body: &str) -> Fixture {
        Self::new_in(TempDir::new("identity"), token_service_extra, body).await
    }

    async fn new_in(dir: TempDir, token_service_extra: &str, body: &str) -> Fixture {
        let idp = Idp::start();
        idp.key("ec", "ES256").await;
        let up = Upstream::start();
        let config = format!(
            "{}\ntoken_service:\n  issuer: {ISSUER}\n{token_service_extra}\n{}",
            issuer_yaml(&idp, ""),
            body.replace("UP", &up.url())
        );
        let gw = Gateway::start_in(dir, &config);
        Fixture { idp, _up: up, gw }
    }

    async fn token(&self, extra: Value) -> String {
        self.idp.token("ec", extra).await
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        client().get(self.gw.url(path)).bearer_auth(token).send().await.unwrap()
    }

    /// A token request; returns the status and the JSON body.
    async fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let r = client().post(self.gw.url("/oauth2/token")).form(form).send().await.unwrap();
        token_response(r).await
    }
}

async fn token_response(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    (status, r.json().await.unwrap())
}

const PROPAGATE: &str = r#"
routes:
  - id: orders
    match: { path_prefix: /orders }
    upstream: UP
    authenticate: [jwt]
    authorize: { scopes: [orders.read] }
    propagate:
      internal_token:
        audience: orders-api
        claims: { email: email, tenant: org.tenant }
  - id: plain
    match: { path_prefix: /plain }
    upstream: UP
    authenticate: [jwt]
  - id: passthrough
    match: { path_prefix: /passthrough }
    upstream: UP
    authenticate: [jwt]
    propagate: { passthrough: true }
  - id: headers
    match: { path_prefix: /headers }
    upstream: UP
    authenticate: [jwt]
    propagate:
      headers: { X-User: subject, X-Tenant: claims.org.tenant, X-Scopes: scopes }
"#;

#[tokio::test]
async fn the_upstream_gets_an_internal_token_that_an_independent_library_verifies() {
    let f = Fixture::new("  serve_on: [public, admin]", PROPAGATE).await;
    let external = f
        .token(json!({"scope": "orders.read orders.write profile", "email": "alice@example.com", "org": {"tenant": "acme"}}))
        .await;
    // One connection, so one worker: each worker keeps its own minted tokens.
    let http = client();
    let get = |path: &str, token: &str| http.get(f.gw.url(path)).bearer_auth(token).send();
    let headers = upstream_headers(get("/orders/1", &external).await.unwrap()).await;
    let internal = bearer(&headers);
    assert_ne!(internal, external);
    assert!(!headers.to_string().contains(&external), "the caller's token reached the upstream");

    let claims = verified_claims(&f.gw, &internal, "orders-api");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "web");
    assert_eq!(claims["auth_method"], "jwt");
    // Narrowed to what the route needs.
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["tenant"], "acme");
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert!(exp > now() && exp - iat <= 60, "lifetime {}", exp - iat);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    // Another audience is refused by the verifier.
    assert_eq!(verify(&f.gw, &internal, "billing-api")["ok"], false);

    // The same caller again: the cached token, no new signature.
    let again = bearer(&upstream_headers(get("/orders/2", &external).await.unwrap()).await);
    assert_eq!(again, internal);
    // Another caller: its own token.
    let bob = f.token(json!({"sub": "bob"})).await;
    let other = bearer(&upstream_headers(f.get("/orders/1", &bob).await).await);
    assert_eq!(verified_claims(&f.gw, &other, "orders-api")["sub"], "bob");

    // The key set is the same on the admin listener, with a discovery document.
    let (status, jwks) = crate::harness::admin_get(f.gw.admin, "/.well-known/jwks.json").unwrap();
    assert_eq!(status, 200);
    let public: Value = client().get(f.gw.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&jwks).unwrap(), public);
    for key in public["keys"].as_array().unwrap() {
        assert!(key.get("d").is_none(), "a private key is published: {key}");
        assert_eq!(key["alg"], "ES256");
    }
    let discovery: Value =
        client().get(f.gw.url("/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["issuer"], ISSUER);
    assert_eq!(discovery["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(discovery["token_endpoint"], format!("{ISSUER}/oauth2/token"));
}

#[tokio::test]
async fn the_internal_token_never_outlives_the_callers_credential() {
    let f = Fixture::new("", PROPAGATE).await;
    let external = f.token(json!({"exp": now() + 20})).await;
    let internal = bearer(&upstream_headers(f.get("/orders/1", &external).await).await);
    let claims = verified_claims(&f.gw, &internal, "orders-api");
    assert!(claims["exp"].as_u64().unwrap() <= now() + 20, "{claims}");
}

#[tokio::test]
async fn credentials_are_forwarded_only_when_a_route_passes_them_through() {
    let f = Fixture::new("", PROPAGATE).await;
    let token = f.token(json!({})).await;
    let plain = upstream_headers(f.get("/plain", &token).await).await;
    assert!(plain.get("authorization").is_none(), "{plain}");
    let passed = upstream_headers(f.get("/passthrough", &token).await).await;
    assert_eq!(passed["authorization"], format!("Bearer {token}"));
}

#[tokio::test]
async fn identity_headers_cannot_be_spoofed() {
    let f = Fixture::new("", PROPAGATE).await;
    let token = f.token(json!({"org": {"tenant": "acme"}})).await;
    let spoof = |req: reqwest::RequestBuilder| {
        req.header("x-user", "admin").header("X-Tenant", "evil").header("x-scopes", "everything")
    };
    let r = spoof(client().get(f.gw.url("/headers"))).bearer_auth(&token).send().await.unwrap();
    let seen = upstream_headers(r).await;
    assert_eq!(seen["x-user"], "alice");
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["x-scopes"], "orders.read orders.write");

    // A caller without the claim: the client's value is still removed.
    let token = f.token(json!({})).await;
    let r = spoof(client().get(f.gw.url("/headers"))).bearer_auth(&token).send().await.unwrap();
    let seen = upstream_headers(r).await;
    assert!(seen.get("x-tenant").is_none(), "{seen}");
    assert_eq!(seen["x-user"], "alice");
    // Spelled with underscores (CGI-style servers read `X_User` as `X-User`): removed too.
    let r = client().get(f.gw.url("/headers")).bearer_auth(&token).header("x_tenant", "evil").send().await.unwrap();
    let seen = upstream_headers(r).await;
    assert!(seen.get("x_tenant").is_none() && seen.get("x-tenant").is_none(), "{seen}");
    // On a route that sets no identity headers, the client's are removed all the same.
    let r = client().get(f.gw.url("/plain")).bearer_auth(&token).header("x-user", "admin").send().await.unwrap();
    assert!(upstream_headers(r).await.get("x-user").is_none());
    // Naming the header as hop-by-hop does not remove the gateway's value either.
    let r = client()
        .get(f.gw.url("/headers"))
        .bearer_auth(&token)
        .header("connection", "x-user")
        .header("x-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(upstream_headers(r).await["x-user"], "alice");
}

#[tokio::test]
async fn jwe_protected_claims_are_unreadable_without_the_upstreams_key() {
    let keys = rp("enc_keygen", json!({"crv": "P-256", "kid": "orders-enc"}));
    let other = rp("enc_keygen", json!({"crv": "P-256", "kid": "orders-enc"}));
    let x25519 = rp("enc_keygen", json!({"crv": "X25519", "kid": "x"}));
    let dir = TempDir::new("jwe");
    dir.write("orders-enc.jwk", keys["public"].to_string());
    dir.write("x25519.jwk", x25519["public"].to_string());
    let f = Fixture::new_in(
        dir,
        "",
        r#"
routes:
  - id: claims
    match: { path_prefix: /claims }
    upstream: UP
    authenticate: [jwt]
    propagate:
      internal_token:
        audience: orders-api
        claims: { email: email, ssn: ssn }
        encrypt: { key: orders-enc.jwk, claims: [ssn] }
  - id: whole
    match: { path_prefix: /whole }
    upstream: UP
    authenticate: [jwt]
    propagate:
      internal_token:
        audience: orders-api
        claims: { ssn: ssn }
        encrypt: { key: x25519.jwk }
"#,
    )
    .await;
    let external = f.token(json!({"email": "alice@example.com", "ssn": "078-05-1120"})).await;

    // Selected claims: the token verifies, shows the email, hides the SSN.
    let internal = bearer(&upstream_headers(f.get("/claims", &external).await).await);
    assert!(!internal.contains("078-05-1120"));
    let claims = verified_claims(&f.gw, &internal, "orders-api");
    assert_eq!(claims["email"], "alice@example.com");
    assert!(claims.get("ssn").is_none(), "{claims}");
    let sealed = claims["encrypted_claims"].as_str().unwrap();
    assert!(!sealed.contains("078-05-1120"));
    let opened = rp("decrypt", json!({"private": keys["private"], "token": sealed}));
    assert_eq!(opened["ok"], true, "{opened}");
    assert_eq!(
        serde_json::from_str::<Value>(opened["plaintext"].as_str().unwrap()).unwrap(),
        json!({"ssn": "078-05-1120"})
    );
    assert_eq!(opened["header"]["alg"], "ECDH-ES");
    assert_eq!(opened["header"]["enc"], "A256GCM");
    // Another key cannot open it.
    assert_eq!(rp("decrypt", json!({"private": other["private"], "token": sealed}))["ok"], false);

    // The whole token: a nested JWT, opened with the upstream's key, then verified.
    let internal = bearer(&upstream_headers(f.get("/whole", &external).await).await);
    assert_eq!(internal.split('.').count(), 5, "a compact JWE");
    assert_eq!(verify(&f.gw, &internal, "orders-api")["ok"], false);
    let opened = rp("decrypt", json!({"private": x25519["private"], "token": internal}));
    assert_eq!(opened["ok"], true, "{opened}");
    assert_eq!(opened["header"]["cty"], "JWT");
    let claims = verified_claims(&f.gw, opened["plaintext"].as_str().unwrap(), "orders-api");
    assert_eq!(claims["ssn"], "078-05-1120");
    assert_eq!(rp("decrypt", json!({"private": keys["private"], "token": internal}))["ok"], false);
}

const EXCHANGE_SERVICE: &str = r#"
  audiences:
    billing-api:
      scopes: [billing.read, billing.write]
      exchange: {}
    reports-api:
      exchange: { subjects: [orders-service, billing-service] }
    locked-api:
      exchange: { subjects: [nobody] }
    no-exchange-api: {}
"#;

const NO_ROUTES: &str = "routes: []\n";

fn exchange_form<'a>(subject: &'a str, audience: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN),
        ("audience", audience),
    ]
}

#[tokio::test]
async fn token_exchange_changes_audience_and_never_widens_scope() {
    let f = Fixture::new(EXCHANGE_SERVICE, NO_ROUTES).await;
    let subject = f.token(json!({"scope": "billing.read orders.read"})).await;

    // Nothing asked: what the subject holds that the audience allows.
    let (status, body) = f.token_request(&exchange_form(&subject, "billing-api")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "billing.read");
    let claims = verified_claims(&f.gw, body["access_token"].as_str().unwrap(), "billing-api");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "billing.read");
    assert!(claims.get("act").is_none());
    assert!(body["expires_in"].as_u64().unwrap() <= 300);

    // Down-scoping to what is held is fine; up-scoping is refused.
    let mut form = exchange_form(&subject, "billing-api");
    form.push(("scope", "billing.read"));
    assert_eq!(f.token_request(&form).await.0, 200);
    let mut form = exchange_form(&subject, "billing-api");
    form.push(("scope", "billing.read billing.write"));
    let (status, body) = f.token_request(&form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");
    // Held, but not granted for this audience.
    let mut form = exchange_form(&subject, "billing-api");
    form.push(("scope", "orders.read"));
    assert_eq!(f.token_request(&form).await.1["error"], "invalid_scope");
}

#[tokio::test]
async fn token_exchange_records_the_delegation_chain_in_act() {
    let f = Fixture::new(EXCHANGE_SERVICE, NO_ROUTES).await;
    let subject = f.token(json!({"scope": "billing.read orders.read"})).await;
    let orders = f.token(json!({"sub": "orders-service", "client_id": "orders"})).await;
    let mut form = exchange_form(&subject, "billing-api");
    form.extend([("actor_token", orders.as_str()), ("actor_token_type", ACCESS_TOKEN)]);
    let (status, body) = f.token_request(&form).await;
    assert_eq!(status, 200, "{body}");
    let first = body["access_token"].as_str().unwrap().to_string();
    let claims = verified_claims(&f.gw, &first, "billing-api");
    assert_eq!(claims["act"], json!({"sub": "orders-service"}));
    // The client that asked is the actor's.
    assert_eq!(claims["client_id"], "orders");

    // The billing service exchanges that token again, for the reports service.
    let billing = f.token(json!({"sub": "billing-service"})).await;
    let mut form = exchange_form(&first, "reports-api");
    form.extend([("actor_token", billing.as_str()), ("actor_token_type", ACCESS_TOKEN)]);
    let (status, body) = f.token_request(&form).await;
    assert_eq!(status, 200, "{body}");
    let claims = verified_claims(&f.gw, body["access_token"].as_str().unwrap(), "reports-api");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"], json!({"sub": "billing-service", "act": {"sub": "orders-service"}}));
    // Never more than the first exchange granted.
    assert_eq!(claims["scope"], "billing.read");
    let mut form = exchange_form(&first, "reports-api");
    form.extend([("actor_token", billing.as_str()), ("actor_token_type", ACCESS_TOKEN), ("scope", "orders.read")]);
    assert_eq!(f.token_request(&form).await.1["error"], "invalid_scope");

    // An actor the audience does not allow.
    let stranger = f.token(json!({"sub": "stranger"})).await;
    let mut form = exchange_form(&first, "reports-api");
    form.extend([("actor_token", stranger.as_str()), ("actor_token_type", ACCESS_TOKEN)]);
    let (status, body) = f.token_request(&form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")), "{body}");
}

#[tokio::test]
async fn token_exchange_refuses_what_it_must() {
    let f = Fixture::new(EXCHANGE_SERVICE, NO_ROUTES).await;
    let subject = f.token(json!({})).await;
    let error = |(status, body): (u16, Value)| (status, body["error"].as_str().unwrap_or_default().to_string());
    // Audiences the subject may not reach, or that the gateway does not serve.
    for (aud, want) in [
        ("locked-api", "unauthorized_client"),
        ("no-exchange-api", "unauthorized_client"),
        ("nowhere", "invalid_target"),
    ] {
        assert_eq!(error(f.token_request(&exchange_form(&subject, aud)).await), (400, want.to_string()), "{aud}");
    }
    // A subject token that is not valid: tampered, expired, of an unknown issuer.
    let mut tampered = subject.clone();
    tampered.replace_range(tampered.len() - 3.., "AAA");
    let expired = f.token(json!({"exp": now() - 600})).await;
    for bad in [tampered.as_str(), expired.as_str(), "not-a-token"] {
        assert_eq!(error(f.token_request(&exchange_form(bad, "billing-api")).await), (400, "invalid_grant".into()));
    }
    // Malformed requests.
    let mut no_type = exchange_form(&subject, "billing-api");
    no_type.retain(|(k, _)| *k != "subject_token_type");
    assert_eq!(error(f.token_request(&no_type).await), (400, "invalid_request".into()));
    let mut twice = exchange_form(&subject, "billing-api");
    twice.push(("audience", "reports-api"));
    assert_eq!(error(f.token_request(&twice).await), (400, "invalid_request".into()));
    assert_eq!(error(f.token_request(&[("grant_type", "password")]).await), (400, "unsupported_grant_type".into()));
    let r = client().post(f.gw.url("/oauth2/token")).json(&json!({"grant_type": EXCHANGE})).send().await.unwrap();
    assert_eq!(error(token_response(r).await), (400, "invalid_request".into()));
    let r = client().get(f.gw.url("/oauth2/token")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn token_exchange_fails_closed_when_the_subject_cannot_be_checked() {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let subject = idp.token("ec", json!({})).await;
    // The IdP's keys cannot be had: the gateway has none to check the subject token with.
    idp.mode("error").await;
    let config =
        format!("{}\ntoken_service:\n  issuer: {ISSUER}\n{EXCHANGE_SERVICE}\n{NO_ROUTES}", issuer_yaml(&idp, ""));
    let gw = Gateway::start_alive(&config);
    let r = client().post(gw.url("/oauth2/token")).form(&exchange_form(&subject, "billing-api")).send().await.unwrap();
    let (status, body) = token_response(r).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{body}");
    assert!(body.get("access_token").is_none());
}

#[tokio::test]
async fn workloads_get_tokens_with_client_credentials_over_mtls() {
    let server_ca = Ca::new("server ca");
    let example = Ca::new("example.org ca");
    let dir = TempDir::new("cc");
    let server = server_ca.server();
    dir.write("server.pem", &server.cert);
    dir.write("server-key.pem", &server.key);
    dir.write("example.org.pem", example.pem());
    let gw = Gateway::start_in(
        dir,
        &format!(
            r#"
server:
  listen: {{listen}}
  tls: {{ cert: server.pem, key: server-key.pem, client_auth: optional }}
spiffe:
  trust_domains: {{ example.org: example.org.pem }}
token_service:
  issuer: {ISSUER}
  audiences:
    billing-api:
      scopes: [billing.read, billing.write]
      client_credentials: {{ spiffe_ids: ["spiffe://example.org/ns/prod/sa/orders"] }}
routes: []
"#
        ),
    );
    let url = format!("https://localhost:{}/oauth2/token", gw.addr.port());
    let orders = example.svid("spiffe://example.org/ns/prod/sa/orders");
    let cc = [("grant_type", "client_credentials"), ("audience", "billing-api")];
    let c = server_ca.https_client(Some(&orders));
    let (status, body) = token_response(c.post(&url).form(&cc).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "billing.read billing.write");
    let token = body["access_token"].as_str().unwrap();
    let jwks_url = format!("https://localhost:{}/.well-known/jwks.json", gw.addr.port());
    let jwks: Value = c.get(&jwks_url).send().await.unwrap().json().await.unwrap();
    // Verified with the published keys by PyJWT (the key set is handed over as a file URL
    // would need TLS trust; a data round trip through the plain verifier is enough here).
    let claims = verify_with_jwks(&jwks, token, "billing-api");
    assert_eq!(claims["sub"], "spiffe://example.org/ns/prod/sa/orders");
    assert_eq!(claims["auth_method"], "mtls");
    // Bound to the certificate it was obtained with (RFC 8705).
    let x5t: Value = serde_json::from_str(&Idp::start().post_text("/x5t", json!({"pem": orders.cert})).await).unwrap();
    assert_eq!(claims["cnf"]["x5t#S256"], x5t["x5t#S256"]);

    // Asking for less is fine; for a scope the audience does not grant is not.
    let (status, body) =
        token_response(c.post(&url).form(&[cc[0], cc[1], ("scope", "billing.read")]).send().await.unwrap()).await;
    assert_eq!((status, body["scope"].as_str()), (200, Some("billing.read")));
    let (status, body) =
        token_response(c.post(&url).form(&[cc[0], cc[1], ("scope", "admin")]).send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")));
    // A client_id that is not the certificate's identity.
    let (status, body) =
        token_response(c.post(&url).form(&[cc[0], cc[1], ("client_id", "someone-else")]).send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));

    // Another workload is not allowed; no certificate is no client.
    let other = server_ca.https_client(Some(&example.svid("spiffe://example.org/ns/prod/sa/other")));
    let (status, body) = token_response(other.post(&url).form(&cc).send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unauthorized_client")));
    let anonymous = server_ca.https_client(None);
    let (status, body) = token_response(anonymous.post(&url).form(&cc).send().await.unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
}

/// Verifies against a key set fetched already (served over TLS with a test CA).
fn verify_with_jwks(jwks: &Value, token: &str, audience: &str) -> Value {
    // A one-shot plain HTTP server on loopback hands PyJWKClient the same document.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let doc = jwks.to_string();
    let server = std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
            doc.len()
        );
        s.write_all(resp.as_bytes()).unwrap();
    });
    let v = rp(
        "verify",
        json!({"jwks_url": format!("http://{addr}/jwks.json"), "token": token, "audience": audience, "issuer": ISSUER}),
    );
    server.join().unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v["claims"].clone()
}

#[tokio::test]
async fn clients_authenticate_with_private_key_jwt() {
    let client_keys = rp("sig_keygen", json!({"alg": "ES256", "kid": "reporting-1"}));
    let dir = TempDir::new("pkjwt");
    dir.write("reporting.jwks.json", client_keys["jwks"].to_string());
    let f = Fixture::new_in(
        dir,
        r#"
  clients:
    - id: reporting
      jwks_file: reporting.jwks.json
      scopes: [reports.read]
  audiences:
    reports-api:
      scopes: [reports.read, reports.write]
      client_credentials: { clients: [reporting] }
"#,
        NO_ROUTES,
    )
    .await;
    let assertion = |claims: Value| {
        rp(
            "sign",
            json!({"private_pem": client_keys["private_pem"], "alg": "ES256", "kid": "reporting-1", "claims": claims}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let claims = |jti: &str, aud: &str| json!({"iss": "reporting", "sub": "reporting", "aud": aud, "jti": jti, "iat": now(), "exp": now() + 60});
    let endpoint = format!("{ISSUER}/oauth2/token");
    let request = |a: String| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("audience", "reports-api".to_string()),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string()),
            ("client_assertion", a),
        ]
    };
    let send = |form: Vec<(&'static str, String)>| {
        let url = f.gw.url("/oauth2/token");
        async move { token_response(client().post(url).form(&form).send().await.unwrap()).await }
    };

    let good = assertion(claims("a1", &endpoint));
    let (status, body) = send(request(good.clone())).await;
    assert_eq!(status, 200, "{body}");
    // The client's own scopes bound what it gets.
    assert_eq!(body["scope"], "reports.read");
    let c = verified_claims(&f.gw, body["access_token"].as_str().unwrap(), "reports-api");
    assert_eq!((c["sub"].as_str(), c["client_id"].as_str()), (Some("reporting"), Some("reporting")));

    // Each assertion is good once.
    assert_eq!(
        send(request(good)).await,
        (
            401,
            json!({"error": "invalid_client", "error_description": "the client assertion is not valid: it was used before"})
        )
    );
    // Meant for another endpoint, expired, or signed by another key.
    let (status, body) = send(request(assertion(claims("a2", "https://elsewhere/token")))).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let mut old = claims("a3", &endpoint);
    old["exp"] = json!(now() - 600);
    assert_eq!(send(request(assertion(old))).await.0, 401);
    let stranger = rp("sig_keygen", json!({"alg": "ES256", "kid": "reporting-1"}));
    let forged = rp(
        "sign",
        json!({"private_pem": stranger["private_pem"], "alg": "ES256", "kid": "reporting-1", "claims": claims("a4", &endpoint)}),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(send(request(forged)).await.0, 401);
    // Asking for more than the client holds.
    let mut more = request(assertion(claims("a5", &endpoint)));
    more.push(("scope", "reports.write".into()));
    assert_eq!(send(more).await.1["error"], "invalid_scope");
}

#[tokio::test]
async fn cedar_policies_decide_who_may_exchange_for_an_audience() {
    let dir = TempDir::new("exchange-cedar");
    dir.write(
        "exchange.cedar",
        r#"@id("orders-may-call-billing")
permit(principal is User, action == Action::"token_exchange", resource == Audience::"billing-api")
  when { principal.sub == "orders-service" && resource.hasTag("subject") && resource.getTag("subject") != "root" };
"#,
    );
    let f = Fixture::new_in(
        dir,
        "  audiences:\n    billing-api:\n      exchange: {}\n",
        "authorization:\n  cedar:\n    policies: [exchange.cedar]\nroutes: []\n",
    )
    .await;
    let subject = f.token(json!({"scope": "billing.read"})).await;
    let with_actor = |actor: &str| {
        let mut form = exchange_form(&subject, "billing-api");
        form.extend([("actor_token", actor), ("actor_token_type", ACCESS_TOKEN)]);
        form.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>()
    };
    let send = |form: Vec<(String, String)>| {
        let url = f.gw.url("/oauth2/token");
        async move { token_response(client().post(url).form(&form).send().await.unwrap()).await }
    };
    // The policy permits the orders service acting for alice.
    let orders = f.token(json!({"sub": "orders-service"})).await;
    let (status, body) = send(with_actor(&orders)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        verified_claims(&f.gw, body["access_token"].as_str().unwrap(), "billing-api")["act"]["sub"],
        "orders-service"
    );
    // No permit: another actor, or the subject on its own (default deny).
    let other = f.token(json!({"sub": "reports-service"})).await;
    assert_eq!(send(with_actor(&other)).await.1["error"], "unauthorized_client");
    let alone =
        exchange_form(&subject, "billing-api").into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(send(alone).await.1["error"], "unauthorized_client");
    // The policy sees the subject: not for root.
    let root = f.token(json!({"sub": "root", "scope": "billing.read"})).await;
    let mut form = exchange_form(&root, "billing-api");
    form.extend([("actor_token", orders.as_str()), ("actor_token_type", ACCESS_TOKEN)]);
    assert_eq!(f.token_request(&form).await.1["error"], "unauthorized_client");
}

#[tokio::test]
async fn identity_and_credentials_cannot_ride_in_request_trailers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::new("", PROPAGATE).await;
    let token = f.token(json!({})).await;
    let mut s = tokio::net::TcpStream::connect(f.gw.addr).await.unwrap();
    let req = format!(
        "POST /headers HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: X-User, Authorization, X-Checksum\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nX-User: admin\r\nX_User: admin\r\nAuthorization: Bearer forged\r\nX-Checksum: abc\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body: Value = serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1.trim()).unwrap_or_else(|_| {
        // A chunked response: the JSON is the first chunk.
        let chunked = out.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(chunked.split_once("\r\n").unwrap().1.rsplit_once("\r\n0\r\n").unwrap().0.trim()).unwrap()
    });
    assert_eq!(body["headers"]["x-user"], "alice");
    let trailers = body.get("trailers").cloned().unwrap_or(json!({}));
    assert!(trailers.get("x-user").is_none() && trailers.get("x_user").is_none(), "{trailers}");
    assert!(trailers.get("authorization").is_none(), "{trailers}");
    // Other trailers pass.
    assert_eq!(trailers["x-checksum"], "abc", "{body}");
}

#[tokio::test]
async fn tokens_the_gateway_issued_are_exchanged_only_by_a_proven_actor() {
    let f = Fixture::new(EXCHANGE_SERVICE, PROPAGATE).await;
    let external = f.token(json!({"scope": "billing.read orders.read"})).await;
    // An internal token, as the orders service received it.
    let internal = bearer(&upstream_headers(f.get("/orders/1", &external).await).await);
    // Whoever holds it cannot exchange it alone...
    let (status, body) = f.token_request(&exchange_form(&internal, "billing-api")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    // ...nor use one as its own credential.
    let mut form = exchange_form(&external, "billing-api");
    form.extend([("actor_token", internal.as_str()), ("actor_token_type", ACCESS_TOKEN)]);
    let (status, body) = f.token_request(&form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    // With the service proving who it is, it can.
    let orders = f.token(json!({"sub": "orders-service"})).await;
    let mut form = exchange_form(&internal, "billing-api");
    form.extend([("actor_token", orders.as_str()), ("actor_token_type", ACCESS_TOKEN)]);
    let (status, body) = f.token_request(&form).await;
    assert_eq!(status, 200, "{body}");
    // The internal token carried only orders.read (the route's scope): nothing for billing.
    assert!(body.get("scope").is_none(), "{body}");
    // Unknown audiences are named only after the subject token passed.
    let (_, body) = f.token_request(&exchange_form("not-a-token", "nowhere")).await;
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn a_route_accepts_the_tokens_the_gateway_issued() {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let up = Upstream::start();
    // The gateway trusts its own issuer through its published key set, like any other.
    let config = format!(
        r#"
issuers:
  - id: idp
    issuer: {idp}
    jwks_uri: {idp}/jwks.json
    audiences: [orders-api]
    algorithms: [ES256]
  - id: gateway
    issuer: {ISSUER}
    jwks_uri: http://{{listen}}/.well-known/jwks.json
    audiences: [billing-api]
    algorithms: [ES256]
token_service:
  issuer: {ISSUER}
{EXCHANGE_SERVICE}
routes:
  - id: billing
    match: {{ path_prefix: /billing }}
    upstream: {up}
    authenticate: [jwt]
    issuers: [gateway]
    authorize: {{ scopes: [billing.read] }}
"#,
        idp = idp.url,
        up = up.url()
    );
    let gw = Gateway::start(&config);
    let subject = idp.token("ec", json!({"scope": "billing.read"})).await;
    let r = client().post(gw.url("/oauth2/token")).form(&exchange_form(&subject, "billing-api")).send().await.unwrap();
    let (status, body) = token_response(r).await;
    assert_eq!(status, 200, "{body}");
    let exchanged = body["access_token"].as_str().unwrap();
    let r = client().get(gw.url("/billing/invoices")).bearer_auth(exchanged).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The IdP's token itself is not for this route.
    let r = client().get(gw.url("/billing/invoices")).bearer_auth(&subject).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// Replicas sharing a Redis: a client assertion accepted by one is refused by the other; with
/// Redis down, the assertion cannot be checked and the token endpoint fails closed.
#[tokio::test]
async fn a_client_assertion_replayed_to_another_replica_is_refused() {
    let mut redis = crate::shared_state::Redis::start(&[]);
    let client_keys = rp("sig_keygen", json!({"alg": "ES256", "kid": "reporting-1"}));
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let config = format!(
        "state:\n  backend: redis\n  redis_url: {}\n{}\ntoken_service:\n  issuer: {ISSUER}\n  clients:\n    - id: reporting\n      jwks_file: reporting.jwks.json\n      scopes: [reports.read]\n  audiences:\n    reports-api:\n      scopes: [reports.read]\n      client_credentials: {{ clients: [reporting] }}\n{NO_ROUTES}",
        redis.url(),
        issuer_yaml(&idp, ""),
    );
    let replica = || {
        let dir = TempDir::new("pkjwt-replica");
        dir.write("reporting.jwks.json", client_keys["jwks"].to_string());
        Gateway::start_in(dir, &config)
    };
    let (a, b) = (replica(), replica());
    let assertion = |jti: &str| {
        let claims = json!({"iss": "reporting", "sub": "reporting", "aud": format!("{ISSUER}/oauth2/token"), "jti": jti, "iat": now(), "exp": now() + 60});
        rp(
            "sign",
            json!({"private_pem": client_keys["private_pem"], "alg": "ES256", "kid": "reporting-1", "claims": claims}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let send = |gw: &Gateway, a: String| {
        let url = gw.url("/oauth2/token");
        async move {
            let form = [
                ("grant_type", "client_credentials".to_string()),
                ("audience", "reports-api".to_string()),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string()),
                ("client_assertion", a),
            ];
            client().post(url).form(&form).send().await.unwrap()
        }
    };
    let good = assertion("r1");
    let (status, body) = token_response(send(&a, good.clone()).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        token_response(send(&b, good).await).await,
        (
            401,
            json!({"error": "invalid_client", "error_description": "the client assertion is not valid: it was used before"})
        )
    );
    // Redis down: refused, never issued unchecked.
    redis.stop();
    let r = send(&b, assertion("r2")).await;
    assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let (status, body) = token_response(r).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{body}");
}
