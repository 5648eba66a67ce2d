//! Proof of possession through the real binary: DPoP (RFC 9449) with proofs made by an
//! independent implementation (Python `cryptography`, in `tests/helpers/idp.py`), and
//! certificate-bound tokens (RFC 8705) over mutual TLS. Every rejection class has its own
//! assertion, and none of them lets a request reach the upstream.

use serde_json::{Value, json};

use crate::authn::{Idp, issuer_yaml, now};
use crate::harness::{Gateway, TempDir, client, problem};
use crate::pki::Ca;
use crate::upstream::Upstream;

struct Dpop {
    idp: Idp,
    up: Upstream,
    gw: Gateway,
    /// The holder's key thumbprint (RFC 7638, computed by the Python side).
    jkt: String,
}

const ROUTES: &str = r#"
routes:
  - id: dpop-only
    match: { path_prefix: /dpop }
    upstream: UP
    authenticate: [dpop]
  - id: both
    match: { path_prefix: /both }
    upstream: UP
    authenticate: [jwt, dpop]
  - id: bearer-only
    match: { path_prefix: /bearer }
    upstream: UP
    authenticate: [jwt]
"#;

impl Dpop {
    async fn new(extra: &str) -> Dpop {
        let idp = Idp::start();
        idp.key("ec", "ES256").await;
        let holder: Value =
            serde_json::from_str(&idp.post_text("/dpop/holder", json!({"holder": "h1"})).await).unwrap();
        idp.post_text("/dpop/holder", json!({"holder": "h2", "alg": "EdDSA"})).await;
        let up = Upstream::start();
        let gw = Gateway::start(&format!("{}{extra}{}", issuer_yaml(&idp, ""), ROUTES.replace("UP", &up.url())));
        Dpop { idp, up, gw, jkt: holder["jkt"].as_str().unwrap().to_string() }
    }

    /// An access token bound to the holder's key.
    async fn bound_token(&self) -> String {
        self.idp.token("ec", json!({"cnf": {"jkt": self.jkt}})).await
    }

    async fn proof(&self, req: Value) -> String {
        let mut req = req;
        req["holder"] = req.get("holder").cloned().unwrap_or(json!("h1"));
        self.idp.post_text("/dpop/proof", req).await
    }

    /// A correct proof for `GET path` carrying `token`.
    async fn proof_for(&self, path: &str, token: &str) -> String {
        self.proof(json!({"htm": "GET", "htu": self.gw.url(path), "token": token})).await
    }

    async fn send(&self, path: &str, token: &str, proof: &str) -> reqwest::Response {
        client()
            .get(self.gw.url(path))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .send()
            .await
            .unwrap()
    }

    /// Asserts a 401 with a `DPoP` challenge (realm, `error`, the accepted algorithms) and the
    /// problem `reason`.
    async fn refused(&self, resp: reqwest::Response, error: &str, reason: &str) {
        let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        let challenge = challenge.unwrap_or_default();
        let p = problem(resp, 401).await;
        assert_eq!(p["type"], format!("urn:portcullis:problem:{}", reason.replace('_', "-")), "{p}");
        assert!(challenge.starts_with(&format!("DPoP error=\"{error}\", realm=\"portcullis\"")), "{challenge}");
        assert!(challenge.contains("algs=\"ES256 ES384 EdDSA PS256 RS256\""), "{challenge}");
    }
}

impl Dpop {
    /// A fixture with a bound token, for one rejection class.
    async fn with_token() -> (Dpop, String) {
        let f = Dpop::new("").await;
        let token = f.bound_token().await;
        (f, token)
    }

    /// A proof for `GET /dpop/a` with `token` and the changes in `req`.
    async fn proof_with(&self, token: &str, req: Value) -> String {
        let mut base = json!({"htm": "GET", "htu": self.gw.url("/dpop/a"), "token": token});
        for (k, v) in req.as_object().unwrap() {
            base[k] = v.clone();
        }
        self.proof(base).await
    }
}

#[tokio::test]
async fn a_valid_dpop_request_passes_without_its_credentials() {
    let (f, token) = Dpop::with_token().await;
    let proof = f.proof_for("/dpop/a", &token).await;
    let r = f.send("/dpop/a", &token, &proof).await;
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none() && seen["headers"].get("dpop").is_none(), "{seen}");
    assert_eq!(f.up.count(), 1);
    // The proof and token appear in no log; the access log names the method.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = format!("{}{}", f.gw.stderr(), f.gw.access_log());
    assert!(!logs.contains(&token[token.len() - 20..]) && !logs.contains(&proof[proof.len() - 20..]));
    let ok: Value = serde_json::from_str(f.gw.access_log().lines().last().unwrap()).unwrap();
    assert_eq!(ok["auth_method"], "dpop");
}

#[tokio::test]
async fn a_replayed_dpop_proof_is_refused() {
    let (f, token) = Dpop::with_token().await;
    let proof = f.proof_for("/dpop/a", &token).await;
    assert_eq!(f.send("/dpop/a", &token, &proof).await.status(), 200);
    f.refused(f.send("/dpop/a", &token, &proof).await, "invalid_dpop_proof", "dpop_replay").await;
    assert_eq!(f.up.count(), 1);
}

#[tokio::test]
async fn dpop_htm_and_htu_must_be_this_request() {
    let (f, token) = Dpop::with_token().await;
    let p = f.proof_with(&token, json!({"htm": "POST"})).await;
    f.refused(f.send("/dpop/a", &token, &p).await, "invalid_dpop_proof", "dpop_htm").await;
    // Another path, another port, another scheme.
    let other_port = f.gw.url("/dpop/a").replace(&f.gw.addr.port().to_string(), "1");
    for htu in [f.gw.url("/dpop/b"), other_port, f.gw.url("/dpop/a").replace("http://", "https://")] {
        let p = f.proof_with(&token, json!({"htu": htu})).await;
        f.refused(f.send("/dpop/a", &token, &p).await, "invalid_dpop_proof", "dpop_htu").await;
    }
    assert_eq!(f.up.count(), 0);
    // htu is compared normalised and without its query: these are the same URI.
    let upper = f.gw.url("/dpop/%7euser?page=2#frag").replace("http://", "HTTP://");
    let p = f.proof_with(&token, json!({"htu": upper})).await;
    assert_eq!(f.send("/dpop/~user?page=3", &token, &p).await.status(), 200);
}

#[tokio::test]
async fn a_stale_or_future_dpop_proof_is_refused() {
    let (f, token) = Dpop::with_token().await;
    for iat in [now() - 120, now() + 120] {
        let p = f.proof_with(&token, json!({"iat": iat})).await;
        f.refused(f.send("/dpop/a", &token, &p).await, "invalid_dpop_proof", "dpop_iat").await;
    }
    // Within the window (60 s back, 5 s ahead) is fine.
    let p = f.proof_with(&token, json!({"iat": now() - 30})).await;
    assert_eq!(f.send("/dpop/a", &token, &p).await.status(), 200);
    assert_eq!(f.up.count(), 1);
}

#[tokio::test]
async fn dpop_ath_must_be_the_hash_of_this_token() {
    let (f, token) = Dpop::with_token().await;
    let other = f.bound_token().await;
    let p = f.proof_for("/dpop/a", &other).await;
    f.refused(f.send("/dpop/a", &token, &p).await, "invalid_dpop_proof", "dpop_ath").await;
    let p = f.proof(json!({"htm": "GET", "htu": f.gw.url("/dpop/a")})).await; // no ath
    f.refused(f.send("/dpop/a", &token, &p).await, "invalid_dpop_proof", "dpop_ath").await;
    assert_eq!(f.up.count(), 0);
}

#[tokio::test]
async fn the_dpop_key_must_be_the_one_the_token_is_bound_to() {
    let (f, token) = Dpop::with_token().await;
    // A valid proof by another key (h2, EdDSA) than the token's cnf.jkt.
    let p = f.proof_with(&token, json!({"holder": "h2"})).await;
    f.refused(f.send("/dpop/a", &token, &p).await, "invalid_dpop_proof", "dpop_jkt").await;
    // A token not bound at all, with a valid proof.
    let unbound = f.idp.token("ec", json!({})).await;
    let p = f.proof_for("/dpop/a", &unbound).await;
    f.refused(f.send("/dpop/a", &unbound, &p).await, "invalid_token", "token_not_dpop_bound").await;
    assert_eq!(f.up.count(), 0);
}

#[tokio::test]
async fn dpop_proof_headers_are_checked() {
    let (f, token) = Dpop::with_token().await;
    // A private key in the header, a symmetric algorithm, the wrong typ, no key, a bad signature.
    for (attack, reason) in [
        ("private_jwk", "dpop_proof_malformed"),
        ("hs256", "dpop_alg"),
        ("typ", "dpop_typ"),
        ("no_jwk", "dpop_proof_malformed"),
        ("bad_sig", "dpop_signature"),
    ] {
        let p = f.proof_with(&token, json!({"attack": attack})).await;
        let r = f.send("/dpop/a", &token, &p).await;
        assert_eq!(r.status(), 401, "{attack}");
        f.refused(r, "invalid_dpop_proof", reason).await;
    }
    assert_eq!(f.up.count(), 0);
}

/// A token bound to a DPoP key in a form the gateway cannot check (`jkt` not a string, or
/// another confirmation method beside it) is refused with a valid proof by the holder, and as
/// a bearer token: it is never taken as unbound.
#[tokio::test]
async fn malformed_dpop_bindings_are_refused() {
    let f = Dpop::new("").await;
    for cnf in [json!({"jkt": [f.jkt]}), json!({"jkt": f.jkt, "jwk": {"kty": "EC"}}), json!(f.jkt)] {
        let token = f.idp.token("ec", json!({"cnf": cnf})).await;
        let p = f.proof_for("/dpop/a", &token).await;
        f.refused(f.send("/dpop/a", &token, &p).await, "invalid_token", "cnf_unsupported").await;
        for path in ["/bearer/x", "/both/x"] {
            let r = client().get(f.gw.url(path)).bearer_auth(&token).send().await.unwrap();
            assert_eq!(problem(r, 401).await["type"], "urn:portcullis:problem:cnf-unsupported", "{path} {cnf}");
        }
    }
    assert_eq!(f.up.count(), 0);
}

/// RSA proof keys outside the configured sizes are refused as invalid proofs, keys within
/// them pass; the proofs are made by Python `cryptography`.
#[tokio::test]
async fn dpop_rsa_key_sizes_are_bounded() {
    let f = Dpop::new("dpop:\n  rsa_max_bits: 3072\n").await;
    for (holder, bits, ok) in [("r1024", 1024, false), ("r2048", 2048, true), ("r4096", 4096, false)] {
        let holder_key: Value = serde_json::from_str(
            &f.idp.post_text("/dpop/holder", json!({"holder": holder, "alg": "RS256", "bits": bits})).await,
        )
        .unwrap();
        let token = f.idp.token("ec", json!({"cnf": {"jkt": holder_key["jkt"]}})).await;
        let p = f.proof(json!({"holder": holder, "htm": "GET", "htu": f.gw.url("/dpop/a"), "token": token})).await;
        let r = f.send("/dpop/a", &token, &p).await;
        if ok {
            assert_eq!(r.status(), 200, "{bits} bits");
        } else {
            f.refused(r, "invalid_dpop_proof", "dpop_key_size").await;
        }
    }
    assert_eq!(f.up.count(), 1);
}

#[tokio::test]
async fn a_missing_or_doubled_dpop_proof_is_refused() {
    let (f, token) = Dpop::with_token().await;
    let r = client().get(f.gw.url("/dpop/a")).header("authorization", format!("DPoP {token}")).send().await.unwrap();
    f.refused(r, "invalid_dpop_proof", "dpop_proof_missing").await;
    let p1 = f.proof_for("/dpop/a", &token).await;
    let p2 = f.proof_for("/dpop/a", &token).await;
    let r = client()
        .get(f.gw.url("/dpop/a"))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", p1)
        .header("dpop", p2)
        .send()
        .await
        .unwrap();
    f.refused(r, "invalid_dpop_proof", "dpop_proof_ambiguous").await;
    assert_eq!(f.up.count(), 0);
}

#[tokio::test]
async fn bound_tokens_cannot_be_downgraded_to_bearer() {
    let f = Dpop::new("").await;
    let token = f.bound_token().await;
    let unbound = f.idp.token("ec", json!({})).await;

    // A DPoP-bound token as a bearer token is refused everywhere.
    for path in ["/bearer/x", "/both/x"] {
        let r = client().get(f.gw.url(path)).bearer_auth(&token).send().await.unwrap();
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        let p = problem(r, 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:token-dpop-bound", "{path}");
        assert!(challenge.starts_with(r#"Bearer error="invalid_token", realm="portcullis""#), "{challenge}");
    }
    // A DPoP-only route refuses bearer tokens, bound or not, with a DPoP challenge.
    for t in [&token, &unbound] {
        let r = client().get(f.gw.url("/dpop/x")).bearer_auth(t).send().await.unwrap();
        f.refused(r, "invalid_token", "dpop_required").await;
    }
    // No credential: a DPoP route announces DPoP; a route taking both announces both; neither
    // with an error code (RFC 6750 §3.1, RFC 9449 §7.1).
    let r = client().get(f.gw.url("/dpop/x")).send().await.unwrap();
    let challenges: Vec<_> =
        r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(challenges, [r#"DPoP realm="portcullis", algs="ES256 ES384 EdDSA PS256 RS256""#]);
    assert_eq!(problem(r, 401).await["type"], "urn:portcullis:problem:credential-missing");
    let r = client().get(f.gw.url("/both/x")).send().await.unwrap();
    let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(challenges.contains(&r#"Bearer realm="portcullis""#), "{challenges:?}");
    assert!(challenges.iter().any(|c| c.starts_with(r#"DPoP realm="portcullis", algs=""#)), "{challenges:?}");
    assert!(challenges.iter().all(|c| !c.contains("error=")), "{challenges:?}");
    assert_eq!(f.up.count(), 0);

    // The route taking both: an unbound bearer token, and a bound token with its proof.
    let r = client().get(f.gw.url("/both/x")).bearer_auth(&unbound).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let p = f.proof_for("/both/x", &token).await;
    assert_eq!(f.send("/both/x", &token, &p).await.status(), 200);
    // DPoP on a bearer-only route is no credential there.
    let p = f.proof_for("/bearer/x", &token).await;
    let r = f.send("/bearer/x", &token, &p).await;
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer "));
    problem(r, 401).await;
}

#[tokio::test]
async fn concurrent_replays_of_one_proof_admit_exactly_one() {
    let f = Dpop::new("").await;
    let token = f.bound_token().await;
    let proof = f.proof_for("/dpop/race", &token).await;
    let sends = (0..24).map(|_| f.send("/dpop/race", &token, &proof));
    let statuses: Vec<u16> = futures_util::future::join_all(sends).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 23, "{statuses:?}");
    assert_eq!(f.up.count(), 1);
}

#[tokio::test]
async fn server_nonces_when_required() {
    let f = Dpop::new("dpop:\n  require_nonce: true\n  nonce_secret: 0123456789abcdef0123\n").await;
    let token = f.bound_token().await;
    let p = f.proof_for("/dpop/n", &token).await;
    let r = f.send("/dpop/n", &token, &p).await;
    let nonce = r.headers().get("dpop-nonce").expect("a DPoP-Nonce to retry with").to_str().unwrap().to_string();
    f.refused(r, "use_dpop_nonce", "dpop_nonce_required").await;
    // A made-up nonce is no better.
    let p = f.proof(json!({"htm": "GET", "htu": f.gw.url("/dpop/n"), "token": token, "nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})).await;
    f.refused(f.send("/dpop/n", &token, &p).await, "use_dpop_nonce", "dpop_nonce_required").await;
    // The server's nonce works.
    let p = f.proof(json!({"htm": "GET", "htu": f.gw.url("/dpop/n"), "token": token, "nonce": nonce})).await;
    assert_eq!(f.send("/dpop/n", &token, &p).await.status(), 200);
    assert_eq!(f.up.count(), 1);
}

/// A TLS gateway asking for client certificates of `ca`, with the routes in `routes`.
fn mtls_gateway(dir: TempDir, server_ca: &Ca, clients: &Ca, body: &str) -> Gateway {
    let server = server_ca.server();
    dir.write("server.pem", &server.cert);
    dir.write("server-key.pem", &server.key);
    dir.write("clients.pem", clients.pem());
    Gateway::start_in(
        dir,
        &format!(
            "server:\n  listen: {{listen}}\n  tls:\n    cert: server.pem\n    key: server-key.pem\n    client_ca: clients.pem\n{body}"
        ),
    )
}

#[tokio::test]
async fn certificate_bound_tokens_and_mtls_principals() {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let server_ca = Ca::new("server ca");
    let clients = Ca::new("clients ca");
    let up = Upstream::start();
    let alice = clients.client("alice");
    let bob = clients.client("bob");
    let gw = mtls_gateway(
        TempDir::new("bound"),
        &server_ca,
        &clients,
        &format!(
            "{}\nroutes:\n  - id: api\n    match: {{ path_prefix: /api }}\n    upstream: {u}\n    authenticate: [jwt]\n  - id: strict\n    match: {{ path_prefix: /strict }}\n    upstream: {u}\n    authenticate: [jwt]\n    certificate_bound: true\n  - id: certs\n    match: {{ path_prefix: /certs }}\n    upstream: {u}\n    authenticate: [mtls]\n    authorize: {{ subjects: [alice] }}\n",
            issuer_yaml(&idp, ""),
            u = up.url()
        ),
    );
    let url = |p: &str| format!("https://localhost:{}{p}", gw.addr.port());
    let x5t: Value = serde_json::from_str(&idp.post_text("/x5t", json!({"pem": alice.cert})).await).unwrap();
    let bound = idp.token("ec", json!({"cnf": {"x5t#S256": x5t["x5t#S256"]}})).await;
    let unbound = idp.token("ec", json!({})).await;
    let as_alice = server_ca.https_client(Some(&alice));
    let as_bob = server_ca.https_client(Some(&bob));
    let anonymous = server_ca.https_client(None);

    // Bound to alice's certificate: good with it, refused without it or with another.
    for path in ["/api/1", "/strict/1"] {
        assert_eq!(as_alice.get(url(path)).bearer_auth(&bound).send().await.unwrap().status(), 200, "{path}");
    }
    let p = problem(anonymous.get(url("/api/1")).bearer_auth(&bound).send().await.unwrap(), 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:token-certificate-missing");
    let p = problem(as_bob.get(url("/api/1")).bearer_auth(&bound).send().await.unwrap(), 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:token-certificate-mismatch");
    // A route that requires binding refuses unbound tokens; others take them.
    let p = problem(as_alice.get(url("/strict/1")).bearer_auth(&unbound).send().await.unwrap(), 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:token-not-certificate-bound");
    assert_eq!(anonymous.get(url("/api/1")).bearer_auth(&unbound).send().await.unwrap().status(), 200);
    assert_eq!(up.count(), 3);

    // The certificate itself as the credential.
    assert_eq!(as_alice.get(url("/certs/1")).send().await.unwrap().status(), 200);
    problem(as_bob.get(url("/certs/1")).send().await.unwrap(), 403).await;
    // Without a certificate where only certificates are taken: no HTTP scheme to announce (a
    // Bearer challenge would send the client for a token the route does not take).
    let r = anonymous.get(url("/certs/1")).send().await.unwrap();
    assert!(r.headers().get("www-authenticate").is_none(), "{:?}", r.headers());
    let p = problem(r, 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:client-certificate-required", "{p}");
    // Nor with a bearer token there.
    let r = anonymous.get(url("/certs/1")).bearer_auth(&unbound).send().await.unwrap();
    assert!(r.headers().get("www-authenticate").is_none(), "{:?}", r.headers());
    problem(r, 401).await;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = gw.access_log();
    let line: Value = serde_json::from_str(log.lines().find(|l| l.contains("\"route\":\"certs\"")).unwrap()).unwrap();
    assert_eq!(line["principal"], "alice");
    assert_eq!(line["auth_method"], "mtls");
}

#[tokio::test]
async fn dpop_bound_tokens_from_a_real_authorization_server() {
    // node-oidc-provider binds the token to the key of the proof on its token request; the
    // gateway learns the binding (`cnf.jkt`) by introspection.
    let asrv = crate::opaque::AuthServer::start();
    let f = Dpop::new("").await; // the Python DPoP client (its holder key h1)
    let token_url = format!("{}/token", asrv.url);
    let proof = f.proof(json!({"htm": "POST", "htu": token_url})).await;
    let r = reqwest::Client::new()
        .post(&token_url)
        .basic_auth("svc", Some("svc-secret"))
        .header("dpop", proof)
        .form(&[("grant_type", "client_credentials"), ("scope", "orders.read")])
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "DPoP", "{v}");
    let token = v["access_token"].as_str().unwrap().to_string();

    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
introspection:
  endpoint: {url}/token/introspection
  client_id: gateway
  client_secret: gateway-secret
  issuer: {url}
routes:
  - id: api
    upstream: {up}
    authenticate: [dpop, introspection]
    authorize: {{ scopes: [orders.read] }}
"#,
        url = asrv.url,
        up = up.url()
    ));
    let send = |proof: String| {
        client().get(gw.url("/api")).header("authorization", format!("DPoP {token}")).header("dpop", proof).send()
    };
    let good = f.proof(json!({"htm": "GET", "htu": gw.url("/api"), "token": token})).await;
    assert_eq!(send(good).await.unwrap().status(), 200);
    // The same token with a proof by another key, and as a bearer token: refused.
    let other = f.proof(json!({"holder": "h2", "htm": "GET", "htu": gw.url("/api"), "token": token})).await;
    let r = send(other).await.unwrap();
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with(r#"DPoP error="invalid_dpop_proof", realm="portcullis""#)
    );
    problem(r, 401).await;
    let r = client().get(gw.url("/api")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(problem(r, 401).await["type"], "urn:portcullis:problem:token-dpop-bound");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn dpop_htu_behind_a_trusted_tls_terminating_proxy() {
    // The load balancer terminates TLS for https://api.example.com and forwards plain HTTP:
    // proofs name the URI the client used, which the gateway learns from a trusted proxy only.
    let trusted = Dpop::new("server:\n  listen: {listen}\n  trusted_proxies: [127.0.0.1/32]\n").await;
    let untrusted = Dpop::new("").await;
    for (f, expected) in [(&trusted, 200), (&untrusted, 401)] {
        let token = f.bound_token().await;
        let p = f.proof(json!({"htm": "GET", "htu": "https://api.example.com/dpop/a", "token": token})).await;
        let r = client()
            .get(f.gw.url("/dpop/a"))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", p)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
    }
}
