//! Opaque tokens checked by introspection against a real authorization server
//! (node-oidc-provider, `tests/helpers/as.mjs`), and API keys.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::authn::{Idp, now};
use crate::harness::{Gateway, TempDir, client, helper, problem, run_cli, spawn_peer};
use crate::upstream::Upstream;

/// node-oidc-provider with client-credentials, introspection, revocation.
pub struct AuthServer {
    child: Child,
    pub url: String,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl AuthServer {
    pub fn start() -> AuthServer {
        let mut cmd = Command::new("node");
        cmd.arg(helper("as.mjs")).current_dir(helper(""));
        let (child, url) = spawn_peer(cmd);
        assert!(url.starts_with("http://"), "authorization server said {url:?} (npm install in tests/helpers?)");
        AuthServer { child, url }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An opaque access token for client `svc` (client credentials).
    pub async fn token(&self, scope: &str) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/token", self.url))
            .basic_auth("svc", Some("svc-secret"))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)])
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_string()
    }

    pub async fn revoke(&self, token: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/token/revocation", self.url))
            .basic_auth("svc", Some("svc-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

fn introspection_gateway(asrv: &AuthServer, up: &Upstream, secret: &str) -> Gateway {
    let dir = TempDir::new("intro");
    dir.write("client-secret.txt", format!("{secret}\n"));
    Gateway::start_in(
        dir,
        &format!(
            r#"
server:
  listen: {{listen}}
  workers: 1   # caches are per worker: one worker makes "already cached" deterministic
introspection:
  endpoint: {url}/token/introspection
  client_id: gateway
  client_secret: {{ file: client-secret.txt }}
  issuer: {url}
  cache_ttl: 2s
  negative_ttl: 1s
routes:
  - id: orders
    upstream: {up}
    authenticate: [introspection]
    authorize: {{ scopes: [orders.read] }}
"#,
            url = asrv.url,
            up = up.url()
        ),
    )
}

#[tokio::test]
async fn active_tokens_pass_and_revoked_ones_stop() {
    let asrv = AuthServer::start();
    let up = Upstream::start();
    let gw = introspection_gateway(&asrv, &up, "gateway-secret");
    let token = asrv.token("orders.read").await;
    let r = client().get(gw.url("/o")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none());

    // Revoked: refused once the positive cache entry (2 s) is gone.
    asrv.revoke(&token).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let p = loop {
        let r = client().get(gw.url("/o")).bearer_auth(&token).send().await.unwrap();
        if r.status() == 401 {
            break problem(r, 401).await;
        }
        assert!(Instant::now() < deadline, "a revoked token kept working: last status {}; {}", r.status(), gw.stderr());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(p["type"], "urn:portcullis:problem:token-inactive");

    // Unknown tokens are inactive; too few scopes is 403.
    let r = client().get(gw.url("/o")).bearer_auth("not-a-real-token").send().await.unwrap();
    problem(r, 401).await;
    let narrow = asrv.token("orders.write").await;
    let r = client().get(gw.url("/o")).bearer_auth(&narrow).send().await.unwrap();
    problem(r, 403).await;

    std::thread::sleep(Duration::from_millis(200));
    let line: Value = serde_json::from_str(gw.access_log().lines().next().unwrap()).unwrap();
    assert_eq!(line["principal"], "svc");
    assert_eq!(line["auth_method"], "introspection");
}

#[tokio::test]
async fn introspection_fails_closed() {
    let mut asrv = AuthServer::start();
    let up = Upstream::start();
    let gw = introspection_gateway(&asrv, &up, "gateway-secret");
    let cached = asrv.token("orders.read").await;
    let uncached = asrv.token("orders.read").await;
    assert_eq!(client().get(gw.url("/o")).bearer_auth(&cached).send().await.unwrap().status(), 200);
    asrv.stop();
    // An answer already cached still counts until it expires ...
    assert_eq!(client().get(gw.url("/o")).bearer_auth(&cached).send().await.unwrap().status(), 200);
    // ... but nothing new is let through.
    let r = client().get(gw.url("/o")).bearer_auth(&uncached).send().await.unwrap();
    let p = problem(r, 503).await;
    assert_eq!(p["type"], "urn:portcullis:problem:introspection-unavailable");
    // Past the cache TTL (2 s, kept in whole seconds).
    tokio::time::sleep(Duration::from_millis(3200)).await;
    problem(client().get(gw.url("/o")).bearer_auth(&cached).send().await.unwrap(), 503).await;
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_gateway_the_server_refuses_denies() {
    let asrv = AuthServer::start();
    let up = Upstream::start();
    let gw = introspection_gateway(&asrv, &up, "wrong-secret");
    let token = asrv.token("orders.read").await;
    problem(client().get(gw.url("/o")).bearer_auth(&token).send().await.unwrap(), 503).await;
    assert!(!gw.stderr().contains("wrong-secret"), "the secret was logged");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn api_keys() {
    let (_, out, _) = run_cli(&["apikey", "new"]);
    let key = out.lines().find_map(|l| l.strip_prefix("key:  ")).unwrap().to_string();
    let hash = out.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap().to_string();
    let (_, other_hash, _) = run_cli(&["apikey", "hash", "pk_someone_else"]);
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
api_keys:
  header: X-API-Key
  consumers:
    - name: acme
      plan: gold
      scopes: [orders.read]
      keys: ["{hash}"]
    - name: beta
      keys: ["{other}"]
routes:
  - id: orders
    match: {{ path_prefix: /orders }}
    upstream: {up}
    authenticate: [api_key]
    authorize: {{ scopes: [orders.read] }}
"#,
        other = other_hash.trim(),
        up = up.url()
    ));
    let c = client();
    let r = c
        .get(gw.url("/orders/1"))
        .header("x-api-key", &key)
        .header("x_api_key", &key)
        .header("x-api_key", &key)
        .header("x_api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    for spelling in ["x-api-key", "x_api_key", "x-api_key", "x_api-key"] {
        assert!(seen["headers"].get(spelling).is_none(), "the key reached the upstream as {spelling}: {seen}");
    }
    // Two keys at once are ambiguous, as two `Authorization` headers are.
    let r = c.get(gw.url("/orders/1")).header("x-api-key", &key).header("x-api-key", "pk_other").send().await.unwrap();
    assert_eq!(problem(r, 400).await["type"], "urn:portcullis:problem:credential-ambiguous");

    // A route that takes only API keys challenges with the key's header alone: no Bearer
    // challenge for a token it would not take.
    let r = c.get(gw.url("/orders/1")).send().await.unwrap();
    let challenges: Vec<_> =
        r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(challenges, ["ApiKey header=\"x-api-key\""]);
    problem(r, 401).await;
    let p = problem(c.get(gw.url("/orders/1")).header("x-api-key", "pk_wrong").send().await.unwrap(), 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:api-key-unknown");
    // A valid key without the scope.
    problem(c.get(gw.url("/orders/1")).header("x-api-key", "pk_someone_else").send().await.unwrap(), 403).await;
    // A route that takes no bearer token still refuses one outside the RFC 6750 grammar.
    let r = c.get(gw.url("/orders/1")).header("x-api-key", &key).header("authorization", "Bearer a\"b,c").send();
    assert_eq!(problem(r.await.unwrap(), 401).await["type"], "urn:portcullis:problem:token-malformed");

    let config = std::fs::read_to_string(&gw.config).unwrap();
    assert!(!config.contains(&key), "only hashes are stored");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!gw.access_log().contains(&key) && !gw.stderr().contains(&key), "a key was logged");
}

#[tokio::test]
async fn routes_with_several_methods() {
    let asrv = AuthServer::start();
    let (_, out, _) = run_cli(&["apikey", "new"]);
    let key = out.lines().find_map(|l| l.strip_prefix("key:  ")).unwrap().to_string();
    let hash = out.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap().to_string();
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
introspection:
  endpoint: {url}/token/introspection
  client_id: gateway
  client_secret: gateway-secret
api_keys:
  consumers:
    - {{ name: acme, keys: ["{hash}"] }}
routes:
  - id: r
    upstream: {up}
    authenticate: [introspection, api_key]
"#,
        url = asrv.url,
        up = up.url()
    ));
    let c = client();
    let token = asrv.token("orders.read").await;
    assert_eq!(c.get(gw.url("/")).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/")).header("x-api-key", &key).send().await.unwrap().status(), 200);
    let r = c.get(gw.url("/")).send().await.unwrap();
    let challenges: Vec<String> =
        r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(
        challenges.iter().any(|c| c == r#"Bearer realm="portcullis""#)
            && challenges.iter().any(|c| c.starts_with("ApiKey")),
        "{challenges:?}"
    );
    problem(r, 401).await;
}

/// Two IdPs (Python, PyJWT) and a gateway whose introspection endpoint is the first one's:
/// routes that restrict issuers to it, and one that does not.
async fn two_issuers() -> (Idp, Idp, Upstream, Gateway) {
    let (a, b) = (Idp::start(), Idp::start());
    a.key("ec", "ES256").await;
    b.key("ec", "ES256").await;
    let up = Upstream::start();
    let issuer = |id: &str, idp: &Idp| {
        format!(
            "  - id: {id}\n    issuer: {url}\n    jwks_uri: {url}/jwks.json\n    audiences: [orders-api]\n    algorithms: [ES256]\n",
            url = idp.url
        )
    };
    let route = |id: &str, methods: &str, issuers: &str| {
        format!(
            "  - id: {id}\n    match: {{ path_prefix: /{id} }}\n    upstream: {}\n    authenticate: [{methods}]\n{issuers}",
            up.url()
        )
    };
    let gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  workers: 1\nissuers:\n{}{}introspection:\n  endpoint: {}/introspect\n  client_id: gateway\n  client_secret: s3cret\nroutes:\n{}{}{}",
        issuer("a", &a),
        issuer("b", &b),
        a.url,
        route("restricted", "jwt, introspection", "    issuers: [a]\n"),
        route("opaque", "introspection", "    issuers: [a]\n"),
        route("open", "jwt, introspection", ""),
    ));
    (a, b, up, gw)
}

/// A route's `issuers` hold on every path: a JWT of another issuer is refused, not sent to
/// introspection (which would call it active here), and an introspection answer that names an
/// issuer must name one of the route's. An answer without `iss` is the endpoint's own word.
#[tokio::test]
async fn route_issuers_bind_introspection_too() {
    let (a, b, up, gw) = two_issuers().await;
    let get = |path: &str, token: &str| client().get(gw.url(path)).bearer_auth(token).send();
    let active = |token: &str, claims: Value| a.post("/admin/opaque", json!({"token": token, "claims": claims}));
    let exp = now() + 600;

    // B's JWT, which A's introspection endpoint calls active.
    let from_b = b.token("ec", json!({})).await;
    active(&from_b, json!({"sub": "mallory", "exp": exp})).await;
    for path in ["/restricted/x", "/opaque/x"] {
        let p = problem(get(path, &from_b).await.unwrap(), 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:issuer-unknown", "{path}: {p}");
    }
    assert_eq!(get("/open/x", &from_b).await.unwrap().status(), 200, "B is trusted where issuers are not restricted");
    // A's JWT: verified on the route that takes JWTs, introspected on the one that does not.
    let from_a = a.token("ec", json!({})).await;
    active(&from_a, json!({"sub": "alice", "exp": exp, "iss": a.url})).await;
    assert_eq!(get("/restricted/x", &from_a).await.unwrap().status(), 200);
    assert_eq!(get("/opaque/x", &from_a).await.unwrap().status(), 200);

    // Opaque tokens: the answer's `iss` must be A's where the route restricts issuers.
    active("opaque-b", json!({"sub": "svc", "exp": exp, "iss": b.url})).await;
    active("opaque-a", json!({"sub": "svc", "exp": exp, "iss": a.url})).await;
    active("opaque-none", json!({"sub": "svc", "exp": exp})).await;
    for path in ["/restricted/x", "/opaque/x"] {
        let p = problem(get(path, "opaque-b").await.unwrap(), 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:issuer-not-allowed", "{path}: {p}");
        assert_eq!(get(path, "opaque-a").await.unwrap().status(), 200, "{path}");
        assert_eq!(get(path, "opaque-none").await.unwrap().status(), 200, "{path}");
    }
    // The answer cached by the open route does not let it through a restricted one.
    assert_eq!(get("/open/x", "opaque-b").await.unwrap().status(), 200);
    let p = problem(get("/restricted/x", "opaque-b").await.unwrap(), 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:issuer-not-allowed");
    // Only what was admitted reached the upstream: 1 + 2 + 2 × 2 + 1.
    assert_eq!(up.count(), 8);
}

/// An introspection answer's `cnf` follows the JWT rule: a binding the gateway cannot verify
/// refuses the token, first asked and from the cache alike.
#[tokio::test]
async fn introspected_tokens_with_unverifiable_bindings_are_refused() {
    let (a, _b, up, gw) = two_issuers().await;
    let exp = now() + 600;
    for (token, cnf) in [
        ("cnf-list", json!({"jkt": ["abc"]})),
        ("cnf-text", json!("abc")),
        ("cnf-kid", json!({"kid": "k1"})),
        ("cnf-jwk", json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}})),
    ] {
        a.post("/admin/opaque", json!({"token": token, "claims": {"sub": "svc", "exp": exp, "cnf": cnf}})).await;
        let r = client().get(gw.url("/open/x")).bearer_auth(token).send().await.unwrap();
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(challenge.starts_with(r#"Bearer error="invalid_token", realm="portcullis""#), "{challenge}");
        assert_eq!(problem(r, 401).await["type"], "urn:portcullis:problem:cnf-unsupported", "{token}");
        let again = client().get(gw.url("/open/x")).bearer_auth(token).send().await.unwrap();
        problem(again, 401).await;
    }
    assert_eq!(up.count(), 0);
}
