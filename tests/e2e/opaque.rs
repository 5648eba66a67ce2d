//! Opaque tokens checked by introspection against a real authorization server
//! (node-oidc-provider, `tests/helpers/as.mjs`), and API keys.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

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

    // Refusals carry the Bearer challenge the contract promises, and the key's.
    let r = c.get(gw.url("/orders/1")).send().await.unwrap();
    let challenges: Vec<_> =
        r.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(challenges[0].starts_with("Bearer error=\"invalid_token\""), "{challenges:?}");
    assert_eq!(challenges[1], "ApiKey header=\"x-api-key\"");
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
        challenges.iter().any(|c| c.starts_with("Bearer")) && challenges.iter().any(|c| c.starts_with("ApiKey")),
        "{challenges:?}"
    );
    problem(r, 401).await;
}
