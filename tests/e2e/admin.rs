//! The admin listener through the real binary: its credential (a bearer token, or a client
//! certificate over admin TLS), what stays open for probes, the refusal of an unauthenticated
//! non-loopback listener, `405` + `Allow` and `HEAD`, the redacted `/config`, and per-route
//! readiness.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::authn::{Idp, issuer_yaml};
use crate::harness::{Gateway, TempDir, admin_get, binary, client, free_port, problem, run_cli};
use crate::pki::Ca;
use crate::upstream::Upstream;

const TOKEN: &str = "adm-0123456789abcdef-secret";

fn admin_url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.admin)
}

#[tokio::test]
async fn a_bearer_token_guards_everything_but_the_probes() {
    let dir = TempDir::new("admin");
    dir.write("admin.token", format!("{TOKEN}\n"));
    let (_, out, _) = run_cli(&["apikey", "hash", "pk_live_acme"]);
    let hash = out.trim().to_string();
    assert!(hash.starts_with("sha256:"), "{out}");
    let gw = Gateway::start_in(
        dir,
        &format!(
            "admin:\n  listen: {{admin}}\n  auth:\n    bearer_token: {{ file: admin.token }}\n\
             api_keys:\n  consumers:\n    - name: acme\n      keys: [\"{hash}\"]\n\
             routes:\n  - id: r\n    upstream: echo\n    authenticate: [api_key]\n"
        ),
    );
    // Probes need no credential (the harness already waited on /readyz without one).
    assert_eq!(admin_get(gw.admin, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(admin_get(gw.admin, "/readyz").unwrap(), (200, "ready\n".into()));

    // Everything else does: no token is a bare challenge, a wrong one is `invalid_token`.
    for path in ["/metrics", "/config", "/readyz?verbose"] {
        let r = client().get(admin_url(&gw, path)).send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"portcullis-admin\"", "{path}");
        let p = problem(r, 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:missing-credential", "{path}");
        let r = client().get(admin_url(&gw, path)).bearer_auth("not-the-token-at-all").send().await.unwrap();
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\", realm=\"portcullis-admin\"",
            "{path}"
        );
        problem(r, 401).await;
        let r = client().get(admin_url(&gw, path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let metrics = client().get(admin_url(&gw, "/metrics")).bearer_auth(TOKEN).send().await.unwrap();
    assert!(metrics.text().await.unwrap().contains("portcullis_config_generation"));

    // /config: the token shows only where it comes from; the API-key hash is redacted.
    let config = client().get(admin_url(&gw, "/config")).bearer_auth(TOKEN).send().await.unwrap();
    let text = config.text().await.unwrap();
    assert!(!text.contains(TOKEN), "the admin token leaked: {text}");
    assert!(!text.contains(&hash[7..]), "an API-key hash leaked: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["config"]["admin"]["auth"]["bearer_token"]["file"].as_str().map(|f| f.ends_with("admin.token")),
        Some(true)
    );
    assert_eq!(v["config"]["api_keys"]["consumers"][0]["keys"], json!(["sha256:<redacted>"]));
    // Neither log holds the token.
    assert!(!gw.stderr().contains(TOKEN));
    assert!(!gw.access_log().contains(TOKEN));
}

#[tokio::test]
async fn a_new_token_takes_effect_on_reload() {
    let dir = TempDir::new("admin-reload");
    dir.write("admin.token", "first-token-0123456789");
    let gw = Gateway::start_in(
        dir,
        "admin:\n  listen: {admin}\n  auth:\n    bearer_token: { file: admin.token }\nroutes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n",
    );
    let get = |t: &'static str| client().get(admin_url(&gw, "/config")).bearer_auth(t).send();
    assert_eq!(get("first-token-0123456789").await.unwrap().status(), 200);
    std::fs::write(gw.dir.path().join("admin.token"), "second-token-0123456789").unwrap();
    // The harness's reload helper reads /metrics, which now needs the token: poll instead.
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("second-token-0123456789").await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the new token never took effect: {}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get("first-token-0123456789").await.unwrap().status(), 401, "the old token still works");
}

#[tokio::test]
async fn known_paths_answer_405_with_allow_and_serve_head() {
    let gw = Gateway::start("routes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n");
    for (method, path) in [("POST", "/metrics"), ("DELETE", "/healthz"), ("PUT", "/config"), ("POST", "/readyz")] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = client().request(m, admin_url(&gw, path)).send().await.unwrap();
        assert_eq!(r.headers()["allow"], "GET, HEAD", "{method} {path}");
        let p = problem(r, 405).await;
        assert_eq!(p["type"], "urn:portcullis:problem:method-not-allowed");
    }
    // Unknown paths stay 404, whatever the method.
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        problem(client().request(method, admin_url(&gw, "/nope")).send().await.unwrap(), 404).await;
    }
    // HEAD: GET's status and headers, no body.
    for path in ["/healthz", "/readyz", "/metrics", "/config"] {
        let get = client().get(admin_url(&gw, path)).send().await.unwrap();
        let head = client().head(admin_url(&gw, path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "{path}");
        assert_eq!(head.headers()["content-type"], get.headers()["content-type"], "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
}

#[test]
fn an_open_admin_listener_off_loopback_is_refused() {
    let dir = TempDir::new("admin-check");
    let write = |admin: &str| {
        dir.write(
            "c.yaml",
            format!(
                "server:\n  listen: 127.0.0.1:{}\n{admin}routes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n",
                free_port()
            ),
        )
    };
    let open = write("admin:\n  listen: 0.0.0.0:9901\n");
    let (code, out, err) = run_cli(&["check", "--config", open.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    let msg = format!("{out}{err}");
    assert!(msg.contains("c.yaml:4") && msg.contains("admin.listen"), "names the key and line: {msg}");
    assert!(msg.contains("admin.auth.bearer_token"), "says how to fix it: {msg}");
    // `serve` refuses it too, before binding anything.
    let (code, _, err) = run_cli(&["serve", "--config", open.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("admin.listen"), "{err}");

    let guarded = write("admin:\n  listen: 0.0.0.0:9901\n  auth:\n    bearer_token: { env: PORTCULLIS_E2E_ADMIN }\n");
    let out = Command::new(binary())
        .args(["check", "--config", guarded.to_str().unwrap()])
        .env("PORTCULLIS_E2E_ADMIN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A token too short to be a secret is refused, without being echoed.
    let short = write("admin:\n  listen: 127.0.0.1:9901\n  auth:\n    bearer_token: hunter2\n");
    let (code, out, err) = run_cli(&["check", "--config", short.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("admin.auth.bearer_token") || out.contains("admin.auth.bearer_token"));
    assert!(!err.contains("hunter2") && !out.contains("hunter2"));
}

/// A gateway process the test starts itself (the harness probes the admin API over plain
/// HTTP). Killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn admin_mtls_authenticates_by_client_certificate() {
    let ca = Ca::new("admin-ca");
    let (server, alice) = (ca.server(), ca.client("ops"));
    let other = Ca::new("other-ca");
    let stranger = other.client("stranger");
    let dir = TempDir::new("admin-mtls");
    dir.write("ca.pem", ca.pem());
    dir.write("server.pem", &server.cert);
    dir.write("server-key.pem", &server.key);
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.write(
        "c.yaml",
        format!(
            "server:\n  listen: 127.0.0.1:{}\nadmin:\n  listen: {admin}\n  tls: {{ cert: server.pem, key: server-key.pem, client_ca: ca.pem }}\n\
             access_log: {{ path: access.log }}\nroutes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n",
            free_port()
        ),
    );
    let (code, out, err) = run_cli(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let _gw = Process(
        Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = |p: &str| format!("https://localhost:{}{p}", admin.rsplit(':').next().unwrap());
    let anonymous = ca.https_client(None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while anonymous.get(url("/healthz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the admin listener never answered over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Probes need no certificate; the rest does.
    assert_eq!(anonymous.get(url("/readyz")).send().await.unwrap().status(), 200);
    let p = problem(anonymous.get(url("/metrics")).send().await.unwrap(), 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:client-certificate-required");
    let with_cert = ca.https_client(Some(&alice));
    assert_eq!(with_cert.get(url("/metrics")).send().await.unwrap().status(), 200);
    assert_eq!(with_cert.get(url("/config")).send().await.unwrap().status(), 200);
    // A certificate from another CA fails the handshake.
    assert!(ca.https_client(Some(&stranger)).get(url("/metrics")).send().await.is_err());
    // Plain HTTP gets nothing.
    assert_ne!(admin_get(admin.parse().unwrap(), "/metrics").map(|(s, _)| s).unwrap_or(0), 200);
}

#[tokio::test]
async fn readiness_is_per_route() {
    let idp = Idp::start();
    idp.key("rsa", "RS256").await;
    let up = Upstream::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start_alive(&format!(
        "{}    keys: {{ timeout: 1s }}\n  - id: down\n    issuer: {dead}\n    jwks_uri: {dead}/jwks.json\n    audiences: [orders-api]\n    algorithms: [RS256]\n    keys: {{ timeout: 1s }}\n\
         routes:\n  - id: good\n    match: {{ path_prefix: /good }}\n    upstream: {up}\n    authenticate: [jwt]\n    issuers: [idp]\n\
         \x20 - id: bad\n    match: {{ path_prefix: /bad }}\n    upstream: {up}\n    authenticate: [jwt]\n    issuers: [down]\n\
         \x20 - id: open\n    match: {{ path_prefix: /open }}\n    upstream: {up}\n    authenticate: [none]\n",
        issuer_yaml(&idp, ""),
        up = up.url()
    ));
    // One unreachable identity provider does not hold the whole gateway not-ready.
    let deadline = Instant::now() + Duration::from_secs(15);
    while admin_get(gw.admin, "/readyz").unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = admin_get(gw.admin, "/readyz?verbose").unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    let route = |id: &str| v["routes"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(route("good")["ready"], true, "{v}");
    assert_eq!(route("open")["ready"], true, "{v}");
    let bad = route("bad");
    assert_eq!(bad["ready"], false, "{v}");
    assert_eq!(bad["issuers_without_keys"], json!(["down"]), "{v}");
    assert!(bad["reason"].as_str().unwrap().contains("`down`"), "{v}");

    // The ready route serves; the one without keys still fails closed.
    let token = idp.token("rsa", json!({})).await;
    assert_eq!(client().get(gw.url("/good")).bearer_auth(&token).send().await.unwrap().status(), 200);
    let mut claims = idp.claims();
    claims["iss"] = json!(dead);
    let foreign = idp.mint(json!({"kid": "rsa", "claims": claims})).await;
    let s = client().get(gw.url("/bad")).bearer_auth(&foreign).send().await.unwrap().status().as_u16();
    assert!(s == 503 || s == 401, "a route without keys must not serve: {s}");
}

#[tokio::test]
async fn not_ready_when_no_route_can_serve() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start_alive(&format!(
        "issuers:\n  - id: down\n    issuer: {dead}\n    jwks_uri: {dead}/jwks.json\n    audiences: [a]\n    algorithms: [RS256]\n    keys: {{ timeout: 1s }}\n\
         routes:\n  - id: only\n    upstream: echo\n    authenticate: [jwt]\n"
    ));
    // Past the start-up grace, still not ready: the only route cannot serve.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = admin_get(gw.admin, "/readyz?verbose").unwrap();
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["routes"][0]["ready"], false);
    assert!(v["reason"].as_str().unwrap().contains("no route can serve"), "{v}");
    assert_eq!(admin_get(gw.admin, "/readyz").unwrap(), (503, "not ready\n".into()));
}

/// The admin listener stays where it was bound until a restart: a reload may not take away
/// the credential an off-loopback listener needs, by moving `admin.listen` to loopback or by
/// dropping the `admin` block.
#[tokio::test]
async fn a_reload_cannot_open_an_admin_listener_bound_off_loopback() {
    let dir = TempDir::new("admin-reload-open");
    let (port, admin) = (free_port(), free_port());
    let write = |admin_block: &str| {
        dir.write(
            "c.yaml",
            format!(
                "server:\n  listen: 127.0.0.1:{port}\n{admin_block}routes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n"
            ),
        )
    };
    let config = write(&format!("admin:\n  listen: 0.0.0.0:{admin}\n  auth:\n    bearer_token: \"{TOKEN}\"\n"));
    let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let gw = Process(
        Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{admin}/config");
    let deadline = Instant::now() + Duration::from_secs(20);
    while client().get(&url).bearer_auth(TOKEN).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejected =
        || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap().matches("reload rejected").count();
    for (n, attempt) in [format!("admin:\n  listen: 127.0.0.1:{admin}\n"), String::new()].into_iter().enumerate() {
        write(&attempt);
        let _ = Command::new("kill").args(["-HUP", &gw.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while rejected() < n + 1 {
            assert!(Instant::now() < deadline, "the reload was not rejected: {attempt}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        problem(client().get(&url).send().await.unwrap(), 401).await;
    }
    // A reload that keeps a credential is taken.
    write(&format!("admin:\n  listen: 0.0.0.0:{admin}\n  auth:\n    bearer_token: \"{TOKEN}-2\"\n"));
    let _ = Command::new("kill").args(["-HUP", &gw.0.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client().get(&url).bearer_auth(format!("{TOKEN}-2")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the new token never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!log.contains(TOKEN), "the token leaked into the log");
}
