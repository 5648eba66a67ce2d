//! Revocations through the admin API: a token by its `jti`, a subject's tokens issued up to
//! the revocation, listed and undone; shared by replicas on Redis within a second; and a
//! replica that cannot read the shared list refuses rather than guesses.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::authn::{Idp, issuer_yaml};
use crate::harness::{Gateway, client, problem};
use crate::shared_state::Redis;
use crate::upstream::Upstream;

const ROUTES: &str = "routes:\n  - id: orders\n    match: { path_prefix: /orders }\n    upstream: UP\n    authenticate: [jwt]\n  - id: open\n    match: { path_prefix: /open }\n    upstream: UP\n    authenticate: [none]\n";

pub(crate) async fn setup(state: &str) -> (Idp, Upstream, String) {
    let idp = Idp::start();
    idp.key("ec", "ES256").await;
    let up = Upstream::start();
    let config = format!("{state}{}{}", issuer_yaml(&idp, ""), ROUTES.replace("UP", &up.url()));
    (idp, up, config)
}

pub(crate) async fn get(gw: &Gateway, token: &str) -> reqwest::Response {
    client().get(gw.url("/orders/1")).bearer_auth(token).send().await.unwrap()
}

pub(crate) async fn admin(gw: &Gateway, method: reqwest::Method, query: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = client().request(method, format!("http://{}/revocations{query}", gw.admin));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn revoked_tokens_and_subjects_are_refused_on_every_request() {
    let (idp, up, config) = setup("").await;
    let gw = Gateway::start(&config);
    let t1 = idp.token("ec", json!({"jti": "t-1", "sub": "bob"})).await;
    let t2 = idp.token("ec", json!({"jti": "t-2", "sub": "bob"})).await;
    let alice = idp.token("ec", json!({"jti": "a-1", "sub": "alice"})).await;
    for t in [&t1, &t2, &alice] {
        assert_eq!(get(&gw, t).await.status(), 200);
    }
    // A token by its jti: refused at once, though it sits in the verified-token cache.
    let (status, body) = admin(&gw, reqwest::Method::POST, "", Some(json!({"jti": "t-1", "expires_in": 600}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jti"], "t-1");
    let r = get(&gw, &t1).await;
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    let p = problem(r, 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:credential-revoked", "{p}");
    assert!(challenge.starts_with("Bearer error=\"invalid_token\""), "{challenge}");
    assert_eq!(get(&gw, &t2).await.status(), 200, "another token of the same subject");
    // A subject: its tokens issued up to now are refused; one issued later passes.
    assert_eq!(admin(&gw, reqwest::Method::POST, "", Some(json!({"sub": "alice"}))).await.0, 201);
    problem(get(&gw, &alice).await, 401).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = idp.token("ec", json!({"jti": "a-2", "sub": "alice"})).await;
    assert_eq!(get(&gw, &fresh).await.status(), 200, "a new login after the revocation");
    // Listed; undone.
    let (status, list) = admin(&gw, reqwest::Method::GET, "", None).await;
    assert_eq!(status, 200);
    let list = list["revocations"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().any(|r| r["sub"] == "alice") && list.iter().any(|r| r["jti"] == "t-1"), "{list:?}");
    assert_eq!(admin(&gw, reqwest::Method::DELETE, "?jti=t-1", None).await.0, 200);
    assert_eq!(admin(&gw, reqwest::Method::DELETE, "?jti=t-1", None).await.0, 404);
    assert_eq!(get(&gw, &t1).await.status(), 200);
    // Bad requests name the problem.
    for bad in [json!({}), json!({"jti": "x", "sub": "y"}), json!({"sub": "y", "expires_in": 0})] {
        let (status, p) = admin(&gw, reqwest::Method::POST, "", Some(bad)).await;
        assert_eq!(status, 400, "{p}");
        assert_eq!(p["type"], "urn:portcullis:problem:invalid-revocation");
    }
    assert_eq!(up.count(), 6);
}

#[tokio::test]
async fn the_admin_api_guards_revocations() {
    let (idp, _up, config) = setup("").await;
    let gw = Gateway::start(&format!(
        "admin:\n  listen: {{admin}}\n  auth: {{ bearer_token: s3cret-admin-token-0123456789 }}\n{config}"
    ));
    let (status, _) = admin(&gw, reqwest::Method::POST, "", Some(json!({"sub": "alice"}))).await;
    assert_eq!(status, 401);
    let r = client()
        .post(format!("http://{}/revocations", gw.admin))
        .bearer_auth("s3cret-admin-token-0123456789")
        .json(&json!({"sub": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    problem(get(&gw, &idp.token("ec", json!({})).await).await, 401).await;
}

#[tokio::test]
async fn a_revocation_posted_to_one_replica_is_enforced_by_another_within_a_second() {
    let mut redis = Redis::start(&[]);
    let (idp, up, config) = setup(&format!("state:\n  backend: redis\n  redis_url: {}\n", Redis::url(&redis))).await;
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let token = idp.token("ec", json!({"jti": "shared-1", "sub": "carol"})).await;
    assert_eq!(get(&b, &token).await.status(), 200);
    assert_eq!(admin(&a, reqwest::Method::POST, "", Some(json!({"jti": "shared-1"}))).await.0, 201);
    let posted = Instant::now();
    loop {
        let status = get(&b, &token).await.status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(posted.elapsed() < Duration::from_secs(1), "B still accepts the token after {:?}", posted.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both replicas listen for changes (pushed, not only polled).
    let subscribers = redis.command(&["PUBSUB", "NUMSUB", "portcullis:{revocations}:changes"]);
    assert!(subscribers.ends_with(":2\r\n"), "{subscribers:?}");
    // Readable by key in Redis, under the prefix, without the token itself.
    let fields = redis.command(&["HKEYS", "portcullis:{revocations}"]);
    assert!(fields.contains("jti\nshared-1"), "{fields:?}");
    // B lists it too.
    let (_, list) = admin(&b, reqwest::Method::GET, "", None).await;
    assert_eq!(list["revocations"][0]["jti"], "shared-1", "{list}");

    // Redis goes away: once B's copy is older than 3 s, what it would judge is refused.
    redis.stop();
    let other = idp.token("ec", json!({"jti": "other", "sub": "dave"})).await;
    let stopped = Instant::now();
    loop {
        let r = get(&b, &other).await;
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            let p = problem(r, 503).await;
            assert_eq!(p["type"], "urn:portcullis:problem:revocations-unavailable", "{p}");
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(stopped.elapsed() < Duration::from_secs(6), "still served on a stale list");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped.elapsed() >= Duration::from_secs(2), "refused before the copy was stale");
    // Public routes do not need the list.
    assert_eq!(client().get(b.url("/open")).send().await.unwrap().status(), 200);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&b, &other).await.status() != 200 {
        assert!(Instant::now() < deadline, "not back 10 s after Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The list was in Redis's memory only (no persistence in the test): it is gone with it.
    let _ = up.count();
}

/// `portcullis revoke` is the admin API's twin: it revokes through the running gateway
/// (with the admin token from the config), lists, and undoes.
#[tokio::test]
async fn the_revoke_command_revokes_lists_and_undoes_through_the_gateway() {
    let (idp, _up, config) =
        setup("admin:\n  listen: {admin}\n  auth: { bearer_token: { env: PORTCULLIS_TEST_ADMIN_TOKEN_UNSET } }\n")
            .await;
    // The token comes from a file beside the config, as a deployment would keep it.
    let config = config.replace("{ env: PORTCULLIS_TEST_ADMIN_TOKEN_UNSET }", "{ file: admin.token }");
    let dir = crate::harness::TempDir::new("gw-revoke-cli");
    dir.write("admin.token", "a-long-admin-token-for-tests\n");
    let gw = Gateway::start_in(dir, &config);
    let token = idp.token("ec", json!({"jti": "cli-1", "sub": "frank"})).await;
    assert_eq!(get(&gw, &token).await.status(), 200);
    let cfg = gw.config.to_str().unwrap();
    let (code, out, err) =
        crate::harness::run_cli(&["revoke", "--config", cfg, "--jti", "cli-1", "--expires-in", "600"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["jti"], "cli-1", "{out}");
    assert_eq!(get(&gw, &token).await.status(), 401);
    let (code, out, _) = crate::harness::run_cli(&["revoke", "--config", cfg, "--list"]);
    assert_eq!(code, 0);
    assert!(out.contains("cli-1"), "{out}");
    let (code, _, err) = crate::harness::run_cli(&["revoke", "--config", cfg, "--jti", "cli-1", "--undo"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(get(&gw, &token).await.status(), 200);
    // Undoing what is not revoked, and naming two things, are errors.
    let (code, _, err) = crate::harness::run_cli(&["revoke", "--config", cfg, "--jti", "cli-1", "--undo"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = crate::harness::run_cli(&["revoke", "--config", cfg, "--jti", "a", "--sub", "b"]);
    assert_eq!(code, 2, "{err}");
}

/// A revocation reaches open connections: a WebSocket tunnel of the revoked subject is
/// closed within a second; another subject's stays open.
#[tokio::test]
async fn a_revocation_closes_the_subjects_open_tunnels() {
    use std::io::{Read, Write};
    let (idp, _up, config) = setup("").await;
    let gw = Gateway::start(&config);
    let open = |token: String| {
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /orders/upgrade HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        s
    };
    let echo = |s: &mut std::net::TcpStream| {
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    };
    let mut gina = open(idp.token("ec", json!({"sub": "gina"})).await);
    let mut hal = open(idp.token("ec", json!({"sub": "hal"})).await);
    echo(&mut gina);
    echo(&mut hal);
    assert_eq!(admin(&gw, reqwest::Method::POST, "", Some(json!({"sub": "gina"}))).await.0, 201);
    let revoked = Instant::now();
    let mut rest = Vec::new();
    let n = gina.read_to_end(&mut rest).expect("closed, not timed out");
    assert_eq!(n, 0);
    assert!(revoked.elapsed() < Duration::from_millis(1000), "closed after {:?}", revoked.elapsed());
    echo(&mut hal);
}

/// A token without a `jti` is revoked by its hash (base64url SHA-256 of the token as sent,
/// computed here by Python's hashlib); other tokens of the subject pass.
#[tokio::test]
async fn a_token_is_revoked_by_its_hash() {
    let (idp, _up, config) = setup("").await;
    let gw = Gateway::start(&config);
    let token = idp.token("ec", json!({"sub": "ivy"})).await;
    let other = idp.token("ec", json!({"sub": "ivy", "jti": "another"})).await;
    assert_eq!(get(&gw, &token).await.status(), 200);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64, hashlib, sys; print(base64.urlsafe_b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).rstrip(b'=').decode())",
            &token,
        ])
        .output()
        .unwrap();
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(hash.len(), 43);
    assert_eq!(admin(&gw, reqwest::Method::POST, "", Some(json!({"token_sha256": hash}))).await.0, 201);
    let r = get(&gw, &token).await;
    let p = problem(r, 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:credential-revoked", "{p}");
    assert_eq!(get(&gw, &other).await.status(), 200);
    // Not a SHA-256: refused.
    assert_eq!(admin(&gw, reqwest::Method::POST, "", Some(json!({"token_sha256": "abc"}))).await.0, 400);
}

/// Revocations kept under the keys of earlier versions (`<prefix>revocations`) are moved to
/// the current ones on start: an upgrade keeps them in force.
#[tokio::test]
async fn revocations_under_the_earlier_keys_are_kept() {
    let redis = Redis::start(&[]);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let times = format!("{} {}", now_ms, now_ms + 3_600_000);
    redis.command(&["HSET", "portcullis:revocations", "sub\nzed", &times]);
    redis.command(&["SET", "portcullis:revocations:version", "1"]);
    let (idp, _up, config) = setup(&format!("state:\n  backend: redis\n  redis_url: {}\n", redis.url())).await;
    let gw = Gateway::start(&config);
    let token = idp.token("ec", json!({"sub": "zed", "iat": now_ms / 1000 - 60})).await;
    assert_eq!(get(&gw, &token).await.status(), 401);
    let fields = redis.command(&["HKEYS", "portcullis:{revocations}"]);
    assert!(fields.contains("sub\nzed"), "{fields:?}");
}
