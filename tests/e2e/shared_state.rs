//! Shared state on a real Redis (`redis-server`, one per test on a free loopback port):
//! replicas that share it refuse a DPoP proof or a client assertion replayed to another
//! replica; a Redis outage refuses what needs a replay check (`503`, quickly) and takes the
//! replica out of readiness until Redis is back, without a restart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::authn::{Idp, issuer_yaml};
use crate::harness::{Gateway, TempDir, admin_get, client, free_port, problem, run_cli};
use crate::upstream::Upstream;

/// A `redis-server` on a loopback port, without persistence. Killed when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    _dir: TempDir,
}

impl Redis {
    /// A server on a free port, with extra arguments (`--requirepass x`; `{port}` in them is
    /// the port).
    pub fn start(args: &[&str]) -> Redis {
        for _ in 0..3 {
            let mut r = Redis {
                child: None,
                port: free_port(),
                args: args.iter().map(|a| a.to_string()).collect(),
                _dir: TempDir::new("redis"),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start (is it installed? test.sh installs it)");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self._dir.path().to_str().unwrap()])
            .args(self.args.iter().map(|a| a.replace("{port}", &self.port.to_string())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self._dir.path().join("redis.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // The port was taken: the caller tries another.
                eprintln!(
                    "redis-server exited with {status}: {}",
                    std::fs::read_to_string(self._dir.path().join("redis.log")).unwrap_or_default()
                );
                self.child = None;
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on {} within 10s", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(self.spawn(), "redis-server could not listen on {} again", self.port);
    }

    /// One command over RESP, its reply as text (for assertions on what the gateway wrote).
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

const ROUTES: &str = r#"
routes:
  - id: dpop-only
    match: { path_prefix: /dpop }
    upstream: UP
    authenticate: [dpop]
"#;

/// An identity provider with a DPoP holder, an upstream, and the config of a gateway that
/// keeps its state in `redis`.
pub(crate) struct Fixture {
    pub idp: Idp,
    pub up: Upstream,
    jkt: String,
    pub config: String,
}

impl Fixture {
    pub(crate) async fn new(redis: &Redis) -> Fixture {
        let idp = Idp::start();
        idp.key("ec", "ES256").await;
        let holder: Value =
            serde_json::from_str(&idp.post_text("/dpop/holder", json!({"holder": "h1"})).await).unwrap();
        let up = Upstream::start();
        let config = format!(
            "state:\n  backend: redis\n  redis_url: {}\n{}{}",
            redis.url(),
            issuer_yaml(&idp, ""),
            ROUTES.replace("UP", &up.url())
        );
        Fixture { idp, up, jkt: holder["jkt"].as_str().unwrap().to_string(), config }
    }

    pub(crate) async fn token(&self) -> String {
        self.idp.token("ec", json!({"cnf": {"jkt": self.jkt}})).await
    }

    /// A proof for `GET url`.
    pub(crate) async fn proof(&self, url: &str, token: &str) -> String {
        self.idp.post_text("/dpop/proof", json!({"holder": "h1", "htm": "GET", "htu": url, "token": token})).await
    }
}

/// Sends `GET path` to `gw`, as if to `authority` (the `Host` the proof's `htu` names).
pub(crate) async fn send(gw: &Gateway, authority: &str, path: &str, token: &str, proof: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .header("host", authority)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dpop_proof_replayed_to_another_replica_is_refused() {
    let redis = Redis::start(&[]);
    let f = Fixture::new(&redis).await;
    let a = Gateway::start(&f.config);
    let b = Gateway::start(&f.config);
    // One public name for both replicas: the proof's htu is valid at either.
    let authority = a.addr.to_string();
    let token = f.token().await;
    let proof = f.proof(&a.url("/dpop/x"), &token).await;
    assert_eq!(send(&a, &authority, "/dpop/x", &token, &proof).await.status(), 200);
    let r = send(&b, &authority, "/dpop/x", &token, &proof).await;
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    let p = problem(r, 401).await;
    assert_eq!(p["type"], "urn:portcullis:problem:dpop-replay", "{p}");
    assert!(challenge.starts_with("DPoP error=\"invalid_dpop_proof\""), "{challenge}");
    // And the other way round, with a fresh proof first accepted by B.
    let proof = f.proof(&a.url("/dpop/y"), &token).await;
    assert_eq!(send(&b, &authority, "/dpop/y", &token, &proof).await.status(), 200);
    problem(send(&a, &authority, "/dpop/y", &token, &proof).await, 401).await;
    assert_eq!(f.up.count(), 2);
    // Two entries, under the default prefix, with a time to live.
    let keys = redis.command(&["KEYS", "*"]);
    assert!(keys.starts_with("*2\r\n") && keys.matches("portcullis:dpop-jti:#").count() == 2, "{keys:?}");
    let key = keys.lines().nth(2).unwrap();
    let ttl: i64 = redis.command(&["PTTL", key]).trim_start_matches(':').trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 400_000, "{ttl}");
}

/// Server nonces are stateless (a time and its HMAC under `nonce_secret`): a nonce one
/// replica gave is good at another that shares the secret, and not at one that does not.
#[tokio::test]
async fn a_dpop_nonce_from_one_replica_is_good_at_another() {
    let redis = Redis::start(&[]);
    let f = Fixture::new(&redis).await;
    let nonces = |secret: &str| format!("dpop:\n  require_nonce: true\n  nonce_secret: {secret}\n{}", f.config);
    let a = Gateway::start(&nonces("0123456789abcdef0123"));
    let b = Gateway::start(&nonces("0123456789abcdef0123"));
    let other = Gateway::start(&nonces("another-secret-of-20-chars"));
    let authority = a.addr.to_string();
    let token = f.token().await;
    let proof = |nonce: Option<String>| {
        let mut body = json!({"holder": "h1", "htm": "GET", "htu": a.url("/dpop/n"), "token": token});
        if let Some(n) = nonce {
            body["nonce"] = json!(n);
        }
        f.idp.post_text("/dpop/proof", body)
    };
    let r = send(&a, &authority, "/dpop/n", &token, &proof(None).await).await;
    assert_eq!(r.status(), 401);
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_string();
    assert_eq!(send(&b, &authority, "/dpop/n", &token, &proof(Some(nonce.clone())).await).await.status(), 200);
    let r = send(&other, &authority, "/dpop/n", &token, &proof(Some(nonce)).await).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("dpop-nonce"));
    assert_eq!(f.up.count(), 1);
}

#[tokio::test]
async fn a_redis_outage_fails_closed_quickly_and_recovers_without_a_restart() {
    let mut redis = Redis::start(&[]);
    let f = Fixture::new(&redis).await;
    let gw = Gateway::start(&f.config);
    let authority = gw.addr.to_string();
    let token = f.token().await;
    let proof = f.proof(&gw.url("/dpop/a"), &token).await;
    assert_eq!(send(&gw, &authority, "/dpop/a", &token, &proof).await.status(), 200);
    assert_eq!(admin_get(gw.admin, "/readyz").unwrap(), (200, "ready\n".to_string()));

    redis.stop();
    for i in 0..3 {
        let proof = f.proof(&gw.url("/dpop/b"), &token).await;
        let started = Instant::now();
        let r = send(&gw, &authority, "/dpop/b", &token, &proof).await;
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(500), "attempt {i} took {elapsed:?}");
        assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
        let p = problem(r, 503).await;
        assert_eq!(p["type"], "urn:portcullis:problem:replay-cache-unavailable", "{p}");
        // The detail says what failed, not how the gateway reaches Redis.
        assert!(!p["detail"].as_str().unwrap().contains("127.0.0.1"), "{p}");
    }
    let (status, body) = admin_get(gw.admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shared state (redis) unavailable"), "{body}");
    assert_eq!(gw.metric("portcullis_state_up"), 0.0, "the outage shows in the metrics");
    assert_eq!(f.up.count(), 1, "nothing passed unchecked");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let proof = f.proof(&gw.url("/dpop/c"), &token).await;
        let status = send(&gw, &authority, "/dpop/c", &token, &proof).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "still refused 10s after Redis came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(admin_get(gw.admin, "/readyz").unwrap(), (200, "ready\n".to_string()));
    assert_eq!(gw.metric("portcullis_state_up"), 1.0);
    // The outage was logged once as it started and once as it ended, not per request.
    let log = gw.stderr();
    assert_eq!(log.matches("Redis unavailable").count(), 1, "{log}");
    assert_eq!(log.matches("Redis answers again").count(), 1, "{log}");
    // Its metrics: command latencies and errors by kind.
    let m = gw.metrics();
    assert!(m.contains("portcullis_state_command_duration_seconds_count"), "{m}");
    let errors: f64 = ["timeout", "connection", "protocol"]
        .iter()
        .map(|k| gw.metric(&format!("portcullis_state_errors_total{{kind=\"{k}\"}}")))
        .sum();
    assert!(errors >= 3.0, "{m}");
}

/// A Redis ACL user whose password comes from a file: the replica is ready only when Redis
/// accepts it, and a wrong one keeps it out of readiness.
#[tokio::test]
async fn redis_credentials_from_config_secrets() {
    let redis = Redis::start(&[
        "--user",
        "gw",
        "on",
        ">s3cret-pass",
        "~portcullis:*",
        "&portcullis:*",
        // What the README says the gateway's user needs, and nothing more.
        "+ping",
        "+client",
        "+select",
        "+get",
        "+set",
        "+hgetall",
        "+evalsha",
        "+eval",
        "+script|load",
        "+hset",
        "+hdel",
        "+incr",
        "+pexpireat",
        "+time",
        "+hincrby",
        "+expire",
        "+publish",
        "+subscribe",
        "+del",
        "+renamenx",
        "--user",
        "default",
        "off",
        // For the test's own look at the server.
        "--user",
        "admin",
        "on",
        ">admin-pass",
        "~*",
        "&*",
        "+@all",
    ]);
    let body = |pass: &str| {
        let dir = TempDir::new("redis-acl");
        dir.write("redis.pass", format!("{pass}\n"));
        let config = format!(
            "state:\n  backend: redis\n  redis_url: {}\n  redis:\n    username: gw\n    password: {{ file: redis.pass }}\n    timeout: 200ms\nroutes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n",
            redis.url()
        );
        (dir, config)
    };
    let (dir, config) = body("s3cret-pass");
    let gw = Gateway::start_in(dir, &config);
    assert_eq!(admin_get(gw.admin, "/readyz").unwrap().0, 200);
    // Usage counts reach Redis under the same user (a query flushes them first).
    assert_eq!(client().get(gw.url("/")).send().await.unwrap().status(), 200);
    let (status, usage) = admin_get(gw.admin, "/usage?group_by=route").unwrap();
    assert_eq!(status, 200, "{usage}");
    assert!(usage.contains(r#"{"route":"r","requests":1,"#), "{usage}");
    // And it listens for revocation changes, on the channel the user may use.
    let as_admin = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "--user", "admin", "--pass", "admin-pass", "--no-auth-warning"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while as_admin(&["PUBSUB", "NUMSUB", "portcullis:{revocations}:changes"]).trim_end()
        != "portcullis:{revocations}:changes\n1"
    {
        assert!(std::time::Instant::now() < deadline, "the gateway did not subscribe: {}", as_admin(&["ACL", "LOG"]));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (dir, config) = body("wrong-pass");
    let mut bad = Gateway::start_alive_in(dir, &config);
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = admin_get(bad.admin, "/readyz").unwrap();
    assert_eq!(status, 503, "{text}");
    let log = bad.stderr();
    assert!(!log.contains("s3cret-pass") && !log.contains("wrong-pass"), "{log}");
    bad.terminate(Duration::from_secs(5));
}

/// `rediss://` with the server verified against a CA and a client certificate (Redis asks
/// for one): the replica is ready once the TLS connection answers, and serves DPoP.
#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let ca = crate::pki::Ca::new("redis-ca");
    let (server, client_pair) = (ca.server(), ca.client("gateway"));
    let files = TempDir::new("redis-tls");
    let path = |name: &str, text: &str| files.write(name, text).to_str().unwrap().to_string();
    let (ca_pem, cert, key) = (path("ca.pem", &ca.pem()), path("s.pem", &server.cert), path("s-key.pem", &server.key));
    let redis = Redis::start(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_pem,
        "--tls-auth-clients",
        "yes",
    ]);
    let dir = TempDir::new("gw-redis-tls");
    dir.write("ca.pem", ca.pem());
    dir.write("c.pem", &client_pair.cert);
    dir.write("c-key.pem", &client_pair.key);
    let f = Fixture::new(&redis).await;
    let config = f.config.replace(
        &format!("redis_url: {}\n", redis.url()),
        &format!(
            "redis_url: rediss://127.0.0.1:{}\n  redis:\n    timeout: 500ms\n    tls: {{ ca: ca.pem, cert: c.pem, key: c-key.pem }}\n",
            redis.port
        ),
    );
    let gw = Gateway::start_in(dir, &config);
    let authority = gw.addr.to_string();
    let token = f.token().await;
    let proof = f.proof(&gw.url("/dpop/t"), &token).await;
    assert_eq!(send(&gw, &authority, "/dpop/t", &token, &proof).await.status(), 200);
    problem(send(&gw, &authority, "/dpop/t", &token, &proof).await, 401).await;
}

#[test]
fn check_refuses_bad_redis_settings_by_key() {
    let dir = TempDir::new("check-redis");
    let cases = [
        ("  redis_url: \"redis://127.0.0.1:notaport\"\n", "state.redis_url", 5),
        ("  redis_url: redis://127.0.0.1:6379\n  redis:\n    timout: 10ms\n", "state.redis.timout", 7),
        ("  redis_url: http://127.0.0.1:6379\n", "state.redis_url", 5),
        (
            "  redis_url: redis://127.0.0.1:6379\n  redis: { password: { env: PORTCULLIS_NO_SUCH_VAR } }\n",
            "state.redis.password",
            6,
        ),
        // One way to reach Redis, not two.
        (
            "  redis_url: redis://127.0.0.1:6379\n  redis:\n    sentinel: { master: m, nodes: [\"127.0.0.1:26379\"] }\n",
            "state.redis.sentinel",
            7,
        ),
        ("  redis:\n    sentinel: { master: m, nodes: [\"127.0.0.1\"] }\n", "state.redis.sentinel.nodes[0]", 6),
        ("  redis:\n    cluster: { nodes: [] }\n", "state.redis.cluster.nodes", 6),
        ("  redis:\n    db: 2\n    cluster: { nodes: [\"127.0.0.1:7000\"] }\n", "state.redis.db", 6),
    ];
    for (state, key, line) in cases {
        let body = format!(
            "server:\n  listen: 127.0.0.1:8080\nstate:\n  backend: redis\n{state}routes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n"
        );
        let file = dir.write("gw.yaml", &body);
        let (code, out, err) = run_cli(&["check", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{body}\n{out}{err}");
        let at = format!("gw.yaml:{line}:");
        assert!(err.lines().any(|l| l.contains(&at) && l.contains(&format!(" {key}: "))), "{key} at {line}: {err}");
    }
    // A right one passes without Redis being there.
    let body = "server:\n  listen: 127.0.0.1:8080\nstate: { backend: redis, redis_url: \"redis://127.0.0.1:1\" }\nroutes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n";
    let file = dir.write("gw.yaml", body);
    let (code, out, err) = run_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // So do Sentinel and Cluster settings.
    for state in [
        "state: { backend: redis, redis: { sentinel: { master: m, nodes: [\"127.0.0.1:1\", \"[::1]:2\"] }, db: 3 } }",
        "state: { backend: redis, redis: { cluster: { nodes: [\"redis-0.redis:6379\"] } } }",
    ] {
        let body = format!(
            "server:\n  listen: 127.0.0.1:8080\n{state}\nroutes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n"
        );
        let file = dir.write("gw.yaml", &body);
        let (code, out, err) = run_cli(&["check", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{body}{out}{err}");
    }
}
