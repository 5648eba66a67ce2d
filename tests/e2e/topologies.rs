//! Shared state on Redis behind Sentinel and on a Redis Cluster, with real servers on
//! loopback: one primary, one replica and three sentinels (the primary killed under traffic:
//! service resumes once the sentinels promote the replica, without a gateway restart); a
//! cluster of three primaries made by `redis-cli --cluster create` (the replay cache, shared
//! limits counted exactly across slots, revocations and usage, as on one server).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Gateway, TempDir, admin_get, client, free_port, problem};
use crate::shared_state::{Fixture, Redis, send};
use crate::upstream::Upstream;

/// A `redis-server --sentinel` on a free loopback port, watching `mymaster`. Killed when
/// dropped.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Sentinel {
    fn start(primary: u16) -> Sentinel {
        let dir = TempDir::new("sentinel");
        let port = free_port();
        // Sentinel rewrites its config file: it must be its own and writable.
        let conf = dir.write(
            "sentinel.conf",
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        );
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("sentinel.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sentinel did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sentinel { child, port, _dir: dir }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The role a server reports (`master`, `slave`).
fn role(redis: &Redis) -> String {
    let info = redis.command(&["ROLE"]);
    info.lines().nth(2).unwrap_or_default().to_string()
}

const LIMITED: &str = r#"
routes:
  - id: limited
    match: { path_prefix: /limited }
    upstream: echo
    authenticate: [none]
    rate_limits: [{key: route, limit: 100000, per: 1s, on_error: closed}]
"#;

#[tokio::test]
async fn a_sentinel_failover_is_followed_without_a_restart() {
    let mut primary = Redis::start(&[]);
    let replica = Redis::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port)).collect();
    let nodes: Vec<String> = sentinels.iter().map(|s| format!("\"127.0.0.1:{}\"", s.port)).collect();
    let config = format!(
        "state:\n  backend: redis\n  redis:\n    timeout: 200ms\n    sentinel: {{ master: mymaster, nodes: [{}] }}\n{LIMITED}",
        nodes.join(", ")
    );
    let gw = Gateway::start(&config);
    let c = client();
    let status = |c: &reqwest::Client| {
        let url = gw.url("/limited");
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(status(&c).await, 200);
    // The count went to the primary the sentinels named.
    let keys: u64 = primary.command(&["DBSIZE"]).trim().trim_start_matches(':').parse().unwrap();
    assert!(keys > 0, "nothing written to the primary");

    primary.stop();
    let stopped = Instant::now();
    // While no primary answers, limits that fail closed refuse, each within the timeout.
    let mut refused = 0;
    loop {
        let sent = Instant::now();
        match status(&c).await {
            200 => break,
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
        assert!(sent.elapsed() < Duration::from_secs(2), "a request waited {:?}", sent.elapsed());
        assert!(stopped.elapsed() < Duration::from_secs(30), "no service 30s after the primary died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused > 0, "the outage was not seen at all");
    assert_eq!(role(&replica), "master", "the replica was promoted");
    // The promoted replica takes the counts now, and the replica is ready again.
    for _ in 0..5 {
        assert_eq!(status(&c).await, 200, "{}", gw.stderr());
    }
    // Ready again once the revocation list (stale after the outage) was read: within a poll.
    let recovered = Instant::now();
    loop {
        let (ready, why) = admin_get(gw.admin, "/readyz?verbose").unwrap();
        if ready == 200 {
            break;
        }
        assert!(recovered.elapsed() < Duration::from_secs(2), "{why}\n{}", gw.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = gw.stderr();
    assert!(log.contains("new Redis primary"), "{log}");
}

/// Three cluster-enabled servers joined into one cluster, each a primary for a third of the
/// slots.
struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                Redis::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (installed with redis-server)");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster did not come up");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Cluster { nodes }
    }

    /// The config's `state` for this cluster.
    fn state(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("\"127.0.0.1:{}\"", n.port)).collect();
        format!(
            "state:\n  backend: redis\n  redis:\n    timeout: 500ms\n    cluster: {{ nodes: [{}] }}\n",
            nodes.join(", ")
        )
    }

    /// Keys held by each node.
    fn sizes(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.command(&["DBSIZE"]).trim().trim_start_matches(':').parse().unwrap_or(0)).collect()
    }
}

#[tokio::test]
async fn a_redis_cluster_shares_replay_caches_limits_revocations_and_usage() {
    let cluster = Cluster::start();

    // A DPoP proof accepted by one replica is refused by the other.
    let f = Fixture::new(&cluster.nodes[0]).await;
    let url_line = format!("  redis_url: {}\n", cluster.nodes[0].url());
    assert!(f.config.contains(&url_line));
    let state = cluster.state();
    let config = f.config.replace(&format!("state:\n  backend: redis\n{url_line}"), &state);
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let authority = a.addr.to_string();
    let token = f.token().await;
    for i in 0..6 {
        let path = format!("/dpop/{i}");
        let proof = f.proof(&a.url(&path), &token).await;
        assert_eq!(send(&a, &authority, &path, &token, &proof).await.status(), 200);
        let p = problem(send(&b, &authority, &path, &token, &proof).await, 401).await;
        assert_eq!(p["type"], "urn:portcullis:problem:dpop-replay", "{p}");
    }
    // The proofs' keys are spread over the cluster's nodes.
    assert!(cluster.sizes().iter().filter(|n| **n > 0).count() >= 2, "{:?}", cluster.sizes());
    drop((a, b));

    // Limits counted exactly across replicas, also when a request's limits live on different
    // slots: a route limit of 30 (one key) and a plan limit of 20 per consumer (another).
    let new_key = crate::harness::new_api_key;
    let ((k1, h1), (k2, h2)) = (new_key(), new_key());
    let up = Upstream::start();
    let config = format!(
        r#"{state}
plans:
  basic: {{ rate_limits: [{{name: plan, limit: 20, per: 1h}}] }}
api_keys:
  consumers:
    - {{ name: one, plan: basic, keys: ["{h1}"] }}
    - {{ name: two, plan: basic, keys: ["{h2}"] }}
routes:
  - id: shared
    match: {{ path_prefix: /shared }}
    upstream: {up}
    authenticate: [api_key]
    rate_limits: [{{name: route, key: route, limit: 30, per: 1h}}]
"#,
        up = up.url()
    );
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let c = client();
    let mut sends = Vec::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let req = c.get(gw.url("/shared")).header("x-api-key", &k1).send();
        sends.push(req);
    }
    let statuses: Vec<u16> =
        futures_util::future::join_all(sends).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    // The plan refused 20 requests the route limit had counted first (or not): those were
    // given back, so the route has 10 left, for the other consumer.
    let mut second = Vec::new();
    for i in 0..15 {
        let gw = if i % 2 == 0 { &a } else { &b };
        second.push(c.get(gw.url("/shared")).header("x-api-key", &k2).send().await.unwrap().status().as_u16());
    }
    assert_eq!(second.iter().filter(|s| **s == 200).count(), 10, "{second:?}");
    // The buckets were on different slots (else the test would not have shown the counts
    // given back).
    let mut slots = std::collections::BTreeSet::new();
    for n in &cluster.nodes {
        for key in n.command(&["KEYS", "portcullis:rl:*"]).lines().filter(|l| l.starts_with("portcullis:")) {
            slots.insert(n.command(&["CLUSTER", "KEYSLOT", key]));
        }
    }
    assert!(slots.len() >= 2, "{slots:?}");

    // Usage from both replicas, in one total.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = admin_get(a.admin, "/usage?group_by=consumer").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let n = |who: &str| {
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["consumer"] == who)
                .map_or(0, |r| r["requests"].as_u64().unwrap())
        };
        if n("one") == 40 && n("two") == 15 {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((a, b));

    // A revocation posted to one replica is enforced by the other within a second.
    let (idp, _up, config) = crate::revocation::setup(&state).await;
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let token = idp.token("ec", json!({"jti": "cluster-1", "sub": "erin"})).await;
    assert_eq!(crate::revocation::get(&b, &token).await.status(), 200);
    let (status, _) = crate::revocation::admin(&a, reqwest::Method::POST, "", Some(json!({"jti": "cluster-1"}))).await;
    assert_eq!(status, 201);
    let posted = Instant::now();
    while crate::revocation::get(&b, &token).await.status() != 401 {
        assert!(posted.elapsed() < Duration::from_secs(1), "B still accepts the token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lone sentinel (the other two configured ones out of reach) is not trusted to name the
/// primary: it may be the one cut off from a failover. Nothing that needs Redis is served.
#[tokio::test]
async fn one_sentinel_of_three_is_not_a_majority() {
    let primary = Redis::start(&[]);
    let sentinel = Sentinel::start(primary.port);
    let (gone1, gone2) = (free_port(), free_port());
    let config = format!(
        "state:\n  backend: redis\n  redis:\n    timeout: 200ms\n    sentinel: {{ master: mymaster, nodes: [\"127.0.0.1:{}\", \"127.0.0.1:{gone1}\", \"127.0.0.1:{gone2}\"] }}\n{LIMITED}",
        sentinel.port
    );
    let gw = Gateway::start_alive(&config);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(client().get(gw.url("/limited")).send().await.unwrap().status(), 503);
    assert_eq!(admin_get(gw.admin, "/readyz").unwrap().0, 503);
    let log = gw.stderr();
    assert!(log.contains("no majority of the sentinels"), "{log}");
}
