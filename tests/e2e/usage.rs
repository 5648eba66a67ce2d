//! Usage metering, end to end: the counts the admin API, the CLI and Prometheus report
//! equal the requests sent, by consumer, plan, route and status class, with the bytes of
//! bodies of known and unknown length; they survive SIGTERM and a restart, `kill -9` loses
//! at most the last second, and replicas on one Redis count into one total.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Gateway, admin_get, client, new_api_key as new_key, run_cli};
use crate::shared_state::Redis;
use crate::upstream::Upstream;

fn config(up: &str, gold: &str, free: &str, extra: &str) -> String {
    format!(
        r#"
{extra}
plans:
  gold: {{}}
  free: {{}}
api_keys:
  consumers:
    - {{ name: acme, plan: gold, keys: ["{gold}"] }}
    - {{ name: solo, plan: free, keys: ["{free}"] }}
routes:
  - id: a
    match: {{ path_prefix: /a }}
    upstream: {up}
    authenticate: [api_key]
  - id: b
    match: {{ path_prefix: /b }}
    upstream: {up}
    authenticate: [api_key]
"#
    )
}

/// `GET /usage` as JSON rows keyed by the group's values joined with `/`.
fn usage(gw: &Gateway, query: &str) -> BTreeMap<String, (u64, u64, u64)> {
    let (status, body) = admin_get(gw.admin, &format!("/usage?{query}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let groups: Vec<String> = v["group_by"].as_array().unwrap().iter().map(|g| g.as_str().unwrap().into()).collect();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let key = groups.iter().map(|g| r[g].as_str().unwrap()).collect::<Vec<_>>().join("/");
            let n = |f: &str| r[f].as_u64().unwrap();
            (key, (n("requests"), n("request_bytes"), n("response_bytes")))
        })
        .collect()
}

fn requests(rows: &BTreeMap<String, (u64, u64, u64)>) -> BTreeMap<String, u64> {
    rows.iter().map(|(k, v)| (k.clone(), v.0)).collect()
}

#[tokio::test]
async fn metered_counts_equal_the_requests_sent() {
    let (gold_key, gold) = new_key();
    let (free_key, free) = new_key();
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up.url(), &gold, &free, ""));
    let c = client();
    let get = |path: &str, key: &str| c.get(gw.url(path)).header("x-api-key", key.to_string()).send();
    for _ in 0..7 {
        assert_eq!(get("/a/x", &gold_key).await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(get("/b/status/404", &gold_key).await.unwrap().status(), 404);
    }
    for _ in 0..5 {
        assert_eq!(get("/b/x", &free_key).await.unwrap().status(), 200);
    }
    // No credential: the caller is anonymous, the route known.
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/a/x")).send().await.unwrap().status(), 401);
    }
    // No route: not an API's usage.
    assert_eq!(c.get(gw.url("/nowhere")).send().await.unwrap().status(), 404);

    let rows = usage(&gw, "group_by=consumer,plan,route,status");
    assert_eq!(
        requests(&rows),
        BTreeMap::from([
            ("-//a/4xx".to_string(), 2),
            ("acme/gold/a/2xx".to_string(), 7),
            ("acme/gold/b/4xx".to_string(), 3),
            ("solo/free/b/2xx".to_string(), 5),
        ])
    );
    assert_eq!(requests(&usage(&gw, "group_by=consumer&consumer=acme")), BTreeMap::from([("acme".to_string(), 10)]));
    assert_eq!(requests(&usage(&gw, "group_by=route&route=b&plan=free")), BTreeMap::from([("b".to_string(), 5)]));

    // The CSV has the same figures, ready for a billing system.
    let (status, csv) = admin_get(gw.admin, "/usage?format=csv&group_by=consumer,route").unwrap();
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "consumer,route,requests,request_bytes,response_bytes");
    let row = |who: &str, route: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{who},{route},")))
            .map(|l| l.split(',').nth(2).unwrap().to_string())
    };
    assert_eq!(row("acme", "a").as_deref(), Some("7"));
    assert_eq!(row("acme", "b").as_deref(), Some("3"));
    assert_eq!(row("solo", "b").as_deref(), Some("5"));
    assert_eq!(row("-", "a").as_deref(), Some("2"));

    // Prometheus has usage per plan and route, not per consumer.
    gw.wait_metric("usage in Prometheus", |g| {
        g.metric("portcullis_usage_requests_total{route=\"a\",plan=\"gold\",class=\"2xx\"}") == 7.0
    });
    let m = gw.metrics();
    assert_eq!(gw.metric("portcullis_usage_requests_total{route=\"b\",plan=\"free\",class=\"2xx\"}"), 5.0, "{m}");
    assert!(!m.contains("acme") && !m.contains("solo"), "no consumer label: {m}");

    // Bad queries get a clear 400.
    let (status, body) = admin_get(gw.admin, "/usage?group_by=colour").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("colour"), "{body}");
}

#[tokio::test]
async fn body_bytes_are_metered_whether_their_length_is_known_or_not() {
    let (key, hash) = new_key();
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up.url(), &hash, &new_key().1, ""));
    let c = client();
    // Known lengths both ways: a 1,000-byte body to /count, which answers `{"bytes":1000}`.
    let r = c.post(gw.url("/a/count")).header("x-api-key", &key).body(vec![b'z'; 1000]).send().await.unwrap();
    let answer = r.bytes().await.unwrap();
    // A request body of unknown length (chunked), and a response of unknown length (10 parts
    // of 10 bytes, chunked).
    let stream =
        futures_util::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'q'; 100]))));
    let r = c
        .post(gw.url("/b/trickle?parts=10&ms=5&chunked=1"))
        .header("x-api-key", &key)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-length").is_none(), "the test needs a response of unknown length");
    assert_eq!(r.bytes().await.unwrap().len(), 100);
    // HEAD: no body.
    let r = c.head(gw.url("/a/bytes/5000")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let rows = usage(&gw, "group_by=route");
    assert_eq!(rows["a"], (2, 1000, answer.len() as u64), "{rows:?}");
    // The streamed request body was read by the time the upstream answered.
    assert_eq!(rows["b"], (1, 500, 100), "{rows:?}");
}

#[tokio::test]
async fn counts_survive_sigterm_and_kill_9_loses_at_most_the_last_second() {
    let (key, hash) = new_key();
    let up = Upstream::start();
    let mut gw = Gateway::start(&config(&up.url(), &hash, &new_key().1, ""));
    let c = client();
    for _ in 0..40 {
        assert_eq!(c.get(gw.url("/a/x")).header("x-api-key", &key).send().await.unwrap().status(), 200);
    }
    assert!(gw.terminate(Duration::from_secs(10)).success());
    gw.restart();
    let total = |gw: &Gateway| usage(gw, "group_by=consumer").get("acme").map_or(0, |r| r.0);
    assert_eq!(total(&gw), 40, "SIGTERM flushes every count");
    // A new client: the old one's connections went with the old process.
    let c = client();

    // The CLI reads what the stopped gateway stored, the same as the admin API.
    for _ in 0..10 {
        c.get(gw.url("/b/x")).header("x-api-key", &key).send().await.unwrap();
    }
    assert!(gw.terminate(Duration::from_secs(10)).success());
    let (code, csv, err) =
        run_cli(&["usage", "export", "--config", gw.config.to_str().unwrap(), "--group-by", "consumer,route"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        csv.starts_with("consumer,route,requests,request_bytes,response_bytes\r\n") && csv.ends_with("\r\n"),
        "{csv}"
    );
    assert!(csv.contains("\r\nacme,a,40,") && csv.contains("\r\nacme,b,10,"), "{csv}");
    gw.restart();
    assert_eq!(total(&gw), 50);
    let c = client();

    // Under steady load, then `kill -9`: every request answered more than a second before
    // the kill was stored (the journal is written every second).
    let started = Instant::now();
    let mut answered: Vec<Duration> = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let r = c.get(gw.url("/a/x")).header("x-api-key", &key).send().await.unwrap();
        assert_eq!(r.status(), 200);
        answered.push(started.elapsed());
    }
    gw.signal("KILL");
    let killed = started.elapsed();
    gw.wait_exit(Duration::from_secs(5));
    gw.restart();
    let kept = total(&gw) - 50;
    let sent = answered.len() as u64;
    let older = answered.iter().filter(|t| killed.saturating_sub(**t) > Duration::from_millis(1100)).count() as u64;
    assert!(kept <= sent, "{kept} counted of {sent} sent");
    assert!(kept >= older, "{kept} counted, but {older} were answered more than a second before the kill");
}

#[tokio::test]
async fn a_journal_another_gateway_holds_is_refused_with_its_key() {
    let up = Upstream::start();
    let gw = Gateway::start(&config(&up.url(), &new_key().1, &new_key().1, "state: { path: shared.state }"));
    // A second gateway with the same journal would count everything twice on restart.
    let dir = crate::harness::TempDir::new("gw-second");
    let body = config(&up.url(), &new_key().1, &new_key().1, "")
        + &format!("\nstate:\n  path: {}\n", gw.dir.path().join("shared.state").display());
    let config = dir.write(
        "second.yaml",
        crate::harness::config_with("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), &body),
    );
    let (code, _, err) = run_cli(&["serve", "--config", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("state.path") && err.contains("in use by another gateway"), "{err}");
}

#[tokio::test]
async fn replicas_on_one_redis_count_into_one_total() {
    let redis = Redis::start(&[]);
    let (key, hash) = new_key();
    let free = new_key().1;
    let up = Upstream::start();
    let state = format!("state: {{ backend: redis, redis_url: {} }}", redis.url());
    let a = Gateway::start(&config(&up.url(), &hash, &free, &state));
    let b = Gateway::start(&config(&up.url(), &hash, &free, &state));
    let c = client();
    for i in 0..30 {
        let gw = if i % 3 == 0 { &a } else { &b };
        assert_eq!(c.get(gw.url("/a/x")).header("x-api-key", &key).send().await.unwrap().status(), 200);
    }
    // Each replica flushes its counts every second; a query flushes the asking one's first.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = usage(&a, "group_by=consumer").get("acme").map_or(0, |r| r.0);
        if n == 30 {
            break;
        }
        assert!(n < 30, "{n} counted of 30");
        assert!(Instant::now() < deadline, "{n} counted of 30 after 5s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(usage(&b, "group_by=consumer,route")["acme/a"].0, 30);
    // Nothing of a Redis deployment is journaled locally.
    assert!(!a.dir.path().join("portcullis.state").exists());
}
