//! Rate limits, end to end: exact at the boundary, exact under 64 racing clients, refilled
//! as GCRA says, shared by replicas on one Redis, and failing open or closed as configured
//! when Redis is gone. The `RateLimit` fields are read with a structured-field parser written
//! here from RFC 8941 and the draft, not with the gateway's code.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{Gateway, client, problem, run_cli};
use crate::shared_state::Redis;
use crate::upstream::Upstream;

/// A structured-field item as the draft uses them: a string or token, and integer,
/// string, token or boolean parameters.
#[derive(Debug, PartialEq)]
struct Item {
    value: String,
    params: BTreeMap<String, Param>,
}

#[derive(Debug, PartialEq)]
enum Param {
    Int(i64),
    Str(String),
    Bool(bool),
}

/// RFC 8941 §4.2.1 (lists), restricted to what the RateLimit fields can hold; `Err` for
/// anything that does not parse, as a client would reject the field.
fn parse_list(input: &str) -> Result<Vec<Item>, String> {
    let s = input.as_bytes();
    let mut i = 0;
    let skip_sp = |i: &mut usize| {
        while *i < s.len() && s[*i] == b' ' {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    skip_sp(&mut i);
    while i < s.len() {
        let value = if s[i] == b'"' {
            i += 1;
            let mut v = String::new();
            loop {
                match s.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => return Err("escapes not expected".into()),
                    Some(&c) if (0x20..0x7f).contains(&c) => v.push(c as char),
                    Some(_) => return Err("not a printable character".into()),
                }
                i += 1;
            }
            v
        } else if s[i].is_ascii_alphabetic() || s[i] == b'*' {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(&s[i])) {
                i += 1;
            }
            input[start..i].to_string()
        } else {
            return Err(format!("an item cannot start with {:?}", s[i] as char));
        };
        let mut params = BTreeMap::new();
        while i < s.len() && s[i] == b';' {
            i += 1;
            skip_sp(&mut i);
            let start = i;
            if !s.get(i).is_some_and(|c| c.is_ascii_lowercase() || *c == b'*') {
                return Err("a parameter key starts with lcalpha or *".into());
            }
            while i < s.len() && (s[i].is_ascii_lowercase() || s[i].is_ascii_digit() || b"_-.*".contains(&s[i])) {
                i += 1;
            }
            let key = input[start..i].to_string();
            let value = if s.get(i) == Some(&b'=') {
                i += 1;
                let start = i;
                if s.get(i) == Some(&b'-') {
                    i += 1;
                }
                if s.get(i).is_some_and(u8::is_ascii_digit) {
                    while i < s.len() && s[i].is_ascii_digit() {
                        i += 1;
                    }
                    if i - start > 15 {
                        return Err("integer too long".into());
                    }
                    Param::Int(input[start..i].parse().map_err(|e| format!("{e}"))?)
                } else if s.get(i) == Some(&b'"') {
                    let end = input[i + 1..].find('"').ok_or("unterminated string")?;
                    let v = input[i + 1..i + 1 + end].to_string();
                    i += end + 2;
                    Param::Str(v)
                } else {
                    return Err(format!("unexpected parameter value in {input:?}"));
                }
            } else {
                Param::Bool(true)
            };
            params.insert(key, value);
        }
        out.push(Item { value, params });
        skip_sp(&mut i);
        if i == s.len() {
            break;
        }
        if s[i] != b',' {
            return Err(format!("expected `,` at {i} in {input:?}"));
        }
        i += 1;
        skip_sp(&mut i);
        if i == s.len() {
            return Err("trailing comma".into());
        }
    }
    Ok(out)
}

fn int(item: &Item, key: &str) -> i64 {
    match item.params.get(key) {
        Some(Param::Int(n)) => *n,
        other => panic!("{key} is {other:?} in {item:?}"),
    }
}

/// The single item of the `RateLimit` and `RateLimit-Policy` fields of `r`.
fn fields(r: &reqwest::Response) -> (Item, Item) {
    let one = |name: &str| {
        let v = r.headers().get(name).unwrap_or_else(|| panic!("no {name} in {:?}", r.headers()));
        let mut list = parse_list(v.to_str().unwrap()).unwrap();
        assert_eq!(list.len(), 1, "{v:?}");
        list.remove(0)
    };
    (one("ratelimit-policy"), one("ratelimit"))
}

#[test]
fn the_test_parser_reads_the_drafts_examples_and_rejects_bad_fields() {
    let l = parse_list(r#""default";q=100;w=10, "daily";q=1000;w=86400"#).unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(int(&l[1], "w"), 86400);
    assert_eq!(parse_list(r#""default";r=50;t=30"#).unwrap()[0].value, "default");
    for bad in [r#""a";q="#, r#""a";Q=1"#, r#""a"  x"#, "\"a,", r#""a";q=1,"#, "1;q=2"] {
        assert!(parse_list(bad).is_err(), "{bad}");
    }
}

fn route(up: &Upstream, limits: &str) -> String {
    format!(
        "routes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [none]\n    rate_limits: {limits}\n",
        up.url()
    )
}

#[tokio::test]
async fn exactly_the_limit_passes_and_the_fields_count_down() {
    let up = Upstream::start();
    let gw = Gateway::start(&route(&up, "[{key: client_ip, limit: 20, per: 1m}]"));
    let c = client();
    for i in 0..20 {
        let r = c.get(gw.url("/orders/1")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let (policy, current) = fields(&r);
        assert_eq!((policy.value.as_str(), int(&policy, "q"), int(&policy, "w")), ("client_ip", 20, 60));
        assert_eq!(current.value, "client_ip");
        assert_eq!(int(&current, "r"), 19 - i, "{current:?}");
        // Full again once every request counted so far has drained: 3 s each.
        let t = int(&current, "t");
        assert!((3 * (i + 1) - 1..=3 * (i + 1)).contains(&t), "t={t} after {}", i + 1);
    }
    let r = c.get(gw.url("/orders/1")).send().await.unwrap();
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    let (_, current) = fields(&r);
    assert_eq!(int(&current, "r"), 0);
    let p = problem(r, 429).await;
    assert_eq!(p["type"], "urn:portcullis:problem:rate-limited", "{p}");
    assert_eq!(up.count(), 20);
    // The refusal is counted by route and limit.
    assert_eq!(gw.metric("portcullis_rate_limited_total{owner=\"route:orders\",limit=\"client_ip\"}"), 1.0);
}

#[tokio::test]
async fn a_burst_then_one_per_interval() {
    let up = Upstream::start();
    // One a second, three at once.
    let gw = Gateway::start(&route(&up, "[{name: smooth, key: route, limit: 60, per: 1m, burst: 3}]"));
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.get(gw.url("/orders")).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c.get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (policy, current) = fields(&r);
    assert_eq!((int(&policy, "q"), int(&policy, "w")), (3, 3));
    assert_eq!(int(&current, "r"), 0);
    assert_eq!(c.get(gw.url("/orders")).send().await.unwrap().status(), 429);
    assert_eq!(up.count(), 4);
}

/// 64 clients, each on its own connection, race for a limit of 100: exactly 100 pass.
async fn race(gateways: &[&Gateway], path: &str) -> usize {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let url = gateways[i % gateways.len()].url(path);
            tokio::spawn(async move {
                let c = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
                let mut ok = 0;
                for _ in 0..4 {
                    match c.get(&url).send().await.unwrap().status().as_u16() {
                        200 => ok += 1,
                        429 => {}
                        s => panic!("status {s}"),
                    }
                }
                ok
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_racing_clients_get_exactly_the_limit() {
    let up = Upstream::start();
    let gw = Gateway::start(&route(&up, "[{key: route, limit: 100, per: 1h}]"));
    assert_eq!(race(&[&gw], "/orders").await, 100);
    assert_eq!(up.count(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_one_redis_share_a_limit_exactly() {
    let redis = Redis::start(&[]);
    let up = Upstream::start();
    let config = format!(
        "state:\n  backend: redis\n  redis_url: {}\n{}",
        redis.url(),
        route(&up, "[{key: route, limit: 100, per: 1h}, {name: per-ip, key: client_ip, limit: 10, per: 1h}]")
    );
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    // Alternating replicas, one client: the per-address limit of 10 holds across both.
    let c = client();
    let mut ok = 0;
    for i in 0..14 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = c.get(gw.url("/orders")).header("x-forwarded-for", "192.0.2.1").send().await.unwrap();
        if r.status() == 200 {
            ok += 1;
        }
    }
    // `x-forwarded-for` is not trusted: both replicas count the loopback address.
    assert_eq!(ok, 10);
    // The keys live in Redis, under the prefix, as digests (no caller's value in clear),
    // and expire when their buckets are full again: within the hour.
    let keys = redis.command(&["KEYS", "portcullis:rl:*"]);
    assert!(keys.starts_with("*2\r\n") && keys.matches("portcullis:rl:#").count() == 2, "{keys:?}");
    assert!(!keys.contains("127.0.0.1") && !keys.contains("orders"), "{keys:?}");
    for key in keys.lines().filter(|l| l.starts_with("portcullis:")) {
        let ttl: i64 = redis.command(&["PTTL", key]).trim_start_matches(':').trim().parse().unwrap();
        assert!(ttl > 0 && ttl <= 3_600_001, "{key}: {ttl}");
    }
    redis.command(&["FLUSHALL"]);
    // The script is loaded again when Redis has lost it.
    redis.command(&["SCRIPT", "FLUSH"]);
    // 64 racing clients spread over both replicas: exactly the shared limit of 100.
    let route_only = config.replace(", {name: per-ip, key: client_ip, limit: 10, per: 1h}", "");
    a.write_config(&route_only);
    b.write_config(&route_only);
    a.reload();
    b.reload();
    redis.command(&["CONFIG", "RESETSTAT"]);
    assert_eq!(race(&[&a, &b], "/orders").await, 100);
    assert_eq!(up.count(), 110);
    // Racing requests share script calls (group commit): fewer calls than requests.
    let stats = redis.command(&["INFO", "commandstats"]);
    let calls: usize = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| l.split("calls=").nth(1).unwrap().split(',').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert!((1..256).contains(&calls), "{calls} script calls for 256 requests: {stats}");
}

/// `mode: approximate`: each replica decides locally and syncs every `sync_interval`.
/// Requests further apart than that are counted exactly across replicas; a burst on both at
/// once overshoots by at most (replicas − 1) × the burst, and the debt it leaves is paid back
/// (later requests refused); with Redis gone, each replica still limits with its own counts.
#[tokio::test]
async fn approximate_limits_sync_between_replicas_within_their_bound() {
    let mut redis = Redis::start(&[]);
    let up = Upstream::start();
    let config = format!(
        "state:\n  backend: redis\n  redis_url: {}\n  redis: {{ sync_interval: 50ms }}\n{}",
        redis.url(),
        route(&up, "[{key: \"header:x-tenant\", limit: 20, per: 1h, mode: approximate}]")
    );
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let c = client();
    let get = |gw: &Gateway, tenant: &str| c.get(gw.url("/orders")).header("x-tenant", tenant.to_string()).send();

    // Spaced past the sync interval: exact.
    let mut ok = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if get(gw, "spaced").await.unwrap().status() == 200 {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert_eq!(ok, 20);

    // A burst on both replicas at once: within the limit plus one replica's burst.
    let burst: Vec<_> = (0..80).map(|i| get(if i % 2 == 0 { &a } else { &b }, "burst")).collect();
    let statuses: Vec<u16> =
        futures_util::future::join_all(burst).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!((20..=40).contains(&admitted), "{admitted} admitted: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    // Once synced, the debt holds both replicas back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for gw in [&a, &b] {
        assert_eq!(get(gw, "burst").await.unwrap().status(), 429);
    }
    // The shared bucket counts every admitted request: its TAT is that many intervals ahead.
    let keys = redis.command(&["KEYS", "portcullis:rl:*"]);
    assert!(keys.starts_with("*2\r\n"), "{keys:?}");

    // Redis gone: not unlimited, not refused: each replica limits with its own counts.
    redis.stop();
    for gw in [&a, &b] {
        let mut ok = 0;
        for _ in 0..25 {
            match get(gw, "outage").await.unwrap().status().as_u16() {
                200 => ok += 1,
                429 => {}
                s => panic!("status {s}"),
            }
        }
        assert_eq!(ok, 20);
    }
}

#[tokio::test]
async fn a_redis_outage_fails_open_or_closed_per_limit() {
    let mut redis = Redis::start(&[]);
    let up = Upstream::start();
    let config = format!(
        "state:\n  backend: redis\n  redis_url: {url}\n  redis: {{ timeout: 100ms }}\n\
         routes:\n  - id: open\n    match: {{ path_prefix: /open }}\n    upstream: {up}\n    authenticate: [none]\n    rate_limits: [{{key: route, limit: 1000, per: 1m}}]\n\
         \x20 - id: closed\n    match: {{ path_prefix: /closed }}\n    upstream: {up}\n    authenticate: [none]\n    rate_limits: [{{key: route, limit: 1000, per: 1m, on_error: closed}}]\n",
        url = redis.url(),
        up = up.url()
    );
    let gw = Gateway::start(&config);
    let c = client();
    assert_eq!(c.get(gw.url("/open")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/closed")).send().await.unwrap().status(), 200);
    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let r = c.get(gw.url("/open")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // Let through without a count, so without the fields that would claim one.
        assert!(r.headers().get("ratelimit").is_none());
        let r = c.get(gw.url("/closed")).send().await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(800), "{:?}", started.elapsed());
        assert_eq!(r.headers()["retry-after"], "1");
        let p = problem(r, 503).await;
        assert_eq!(p["type"], "urn:portcullis:problem:state-unavailable", "{p}");
    }
    assert_eq!(gw.metric("portcullis_rate_limit_failed_open_total"), 3.0);
    assert_eq!(gw.metric("portcullis_rate_limit_failed_closed_total"), 3.0);
    assert_eq!(up.count(), 5);
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get(gw.url("/closed")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "still refused 10s after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn plans_limit_each_consumer_across_routes() {
    let new_key = crate::harness::new_api_key;
    let (gold_key, gold_hash) = new_key();
    let (free_key, free_hash) = new_key();
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
plans:
  gold: {{ rate_limits: [{{name: gold, limit: 4, per: 1h}}] }}
  free: {{ rate_limits: [{{name: free, limit: 2, per: 1h}}] }}
api_keys:
  consumers:
    - {{ name: acme, plan: gold, keys: ["{gold_hash}"] }}
    - {{ name: solo, plan: free, keys: ["{free_hash}"] }}
routes:
  - id: a
    match: {{ path_prefix: /a }}
    upstream: {up}
    authenticate: [api_key]
  - id: b
    match: {{ path_prefix: /b }}
    upstream: {up}
    authenticate: [api_key]
"#,
        up = up.url()
    ));
    let c = client();
    let send = |path: &'static str, key: String| {
        let c = c.clone();
        let url = gw.url(path);
        async move { c.get(url).header("x-api-key", key).send().await.unwrap() }
    };
    let mut gold = Vec::new();
    for path in ["/a", "/b", "/a", "/b", "/a"] {
        gold.push(send(path, gold_key.clone()).await.status().as_u16());
    }
    assert_eq!(gold, [200, 200, 200, 200, 429]);
    let r = send("/a", free_key.clone()).await;
    let (policy, _) = fields(&r);
    assert_eq!((policy.value.as_str(), int(&policy, "q")), ("free", 2));
    assert_eq!(send("/b", free_key.clone()).await.status(), 200);
    assert_eq!(send("/a", free_key.clone()).await.status(), 429);
    assert_eq!(gw.metric("portcullis_rate_limited_total{owner=\"plan:gold\",limit=\"gold\"}"), 1.0);
}

#[test]
fn limit_mistakes_are_named_with_their_key() {
    let dir = crate::harness::TempDir::new("limits-check");
    let path = dir.write(
        "bad.yaml",
        "server: { listen: 127.0.0.1:0 }\n\
         plans:\n  gold: { rate_limits: [{limit: 0, per: 1m}] }\n\
         api_keys:\n  consumers:\n    - { name: a, plan: silver, keys: [\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"] }\n\
         routes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n    rate_limits:\n      - {key: 'client_ip+nope', limit: 1, per: 1s}\n",
    );
    let (code, _, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("routes[0].rate_limits[0].key"), "{err}");
    assert!(err.contains("`nope` is not a key part"), "{err}");
    assert!(err.contains("plans.gold.rate_limits[0].limit"), "{err}");
    assert!(err.contains("api_keys.consumers[0].plan"), "{err}");

    // An approximate limit limits with local counts while Redis is down: `closed` would
    // never apply, and is refused.
    let path = dir.write(
        "approx.yaml",
        "server: { listen: 127.0.0.1:0 }\nroutes:\n  - id: r\n    upstream: echo\n    authenticate: [none]\n    rate_limits:\n      - {limit: 1, per: 1s, mode: approximate, on_error: closed}\n",
    );
    let (code, _, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("routes[0].rate_limits[0].on_error"), "{err}");
}

/// Allow and deny lists, one of them a file that is read again when it changes; the address
/// is the client's as `trusted_proxies` says, so a forwarded address counts only from a
/// trusted proxy.
#[tokio::test]
async fn client_ip_lists_refuse_before_authentication_and_follow_their_file() {
    let up = Upstream::start();
    let dir = crate::harness::TempDir::new("ip-lists");
    dir.write("allow.txt", "# partners\n198.51.100.0/24\n");
    let gw = Gateway::start_in(
        dir,
        &format!(
            "server:\n  listen: {{listen}}\n  trusted_proxies: [127.0.0.1/32]\n\
             routes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [api_key]\n    \
             client_ips:\n      allow: [203.0.113.0/24, {{file: allow.txt}}]\n      deny: [203.0.113.66]\n\
             api_keys:\n  consumers: []\n",
            up.url()
        ),
    );
    let c = client();
    let from = |ip: &'static str| {
        let c = c.clone();
        let url = gw.url("/orders/1");
        async move { c.get(url).header("x-forwarded-for", ip).send().await.unwrap() }
    };
    // Allowed addresses get as far as authentication (no key: 401).
    assert_eq!(from("203.0.113.5").await.status(), 401);
    assert_eq!(from("198.51.100.9").await.status(), 401);
    // Others are refused before it, whatever they carry.
    let p = problem(from("192.0.2.1").await, 403).await;
    assert_eq!(p["type"], "urn:portcullis:problem:address-denied", "{p}");
    problem(from("203.0.113.66").await, 403).await;
    // The file changes: the reload follows.
    let generation = gw.metric("portcullis_config_generation");
    std::fs::write(gw.dir.path().join("allow.txt"), "192.0.2.0/24\n").unwrap();
    gw.wait_metric("a reload after the list changed", |g| g.metric("portcullis_config_generation") > generation);
    assert_eq!(from("192.0.2.1").await.status(), 401);
    problem(from("198.51.100.9").await, 403).await;
    // A bad line is rejected with its file and line, and the last good list keeps serving.
    std::fs::write(gw.dir.path().join("allow.txt"), "192.0.2.0/24\nnot-an-ip\n").unwrap();
    gw.wait_metric("a failed reload", |g| g.metric("portcullis_config_reloads_total{result=\"failure\"}") >= 1.0);
    assert!(gw.stderr().contains("allow.txt, line 2"), "{}", gw.stderr());
    assert_eq!(from("192.0.2.1").await.status(), 401);
    assert_eq!(up.count(), 0);
}

/// From a peer that is not a trusted proxy, `X-Forwarded-For` is not believed: the peer's
/// own address is judged.
#[tokio::test]
async fn a_forwarded_address_from_an_untrusted_peer_is_not_believed() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [none]\n    \
         client_ips:\n      allow: [203.0.113.0/24]\n",
        up.url()
    ));
    let r = client().get(gw.url("/orders")).header("x-forwarded-for", "203.0.113.5").send().await.unwrap();
    problem(r, 403).await;
    assert_eq!(up.count(), 0);
}

/// A slow service behind a route and an upstream with concurrency limits: past `max`, the
/// queue holds what it may for as long as it may, and the rest are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limits_protect_a_slow_upstream() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "upstreams:\n  slow: {{ endpoints: [\"{}\"], concurrency: {{max: 3}} }}\n\
         routes:\n  - id: queued\n    match: {{ path_prefix: /queued }}\n    upstream: slow\n    authenticate: [none]\n    \
         concurrency: {{max: 2, queue: 1, wait: 2s}}\n\
         \x20 - id: other\n    match: {{ path_prefix: /other }}\n    upstream: slow\n    authenticate: [none]\n",
        up.url()
    ));
    let send = |path: &str| {
        let url = gw.url(path);
        tokio::spawn(async move {
            let started = Instant::now();
            let r = reqwest::Client::new().get(url).send().await.unwrap();
            (r.status().as_u16(), started.elapsed(), r.headers().get("retry-after").cloned())
        })
    };
    // Four at once on a route of 2 slots and a queue of 1: two served, one waits and is
    // served after them, one refused at once.
    let tasks: Vec<_> = (0..4).map(|_| send("/queued/slow?ms=400")).collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results.sort_by_key(|r| r.1);
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [503, 200, 200, 200], "{results:?}");
    assert!(results[0].1 < Duration::from_millis(300), "{results:?}");
    assert_eq!(results[0].2.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    assert!(results[3].1 >= Duration::from_millis(750), "the queued one waited: {results:?}");
    // The upstream's limit of 3 holds across routes.
    let tasks: Vec<_> =
        (0..2).map(|_| send("/queued/slow?ms=400")).chain((0..2).map(|_| send("/other/slow?ms=400"))).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = send("/other/slow?ms=10").await.unwrap();
    assert_eq!(late.0, 503, "{late:?}");
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);
    // Slots are given back: all is quiet again.
    assert_eq!(send("/other/slow?ms=10").await.unwrap().0, 200);
}

fn json_route(up: &Upstream) -> String {
    format!(
        "routes:\n  - id: api\n    match: {{ path_prefix: /api }}\n    upstream: {}\n    authenticate: [none]\n    \
         limits: {{ max_body_bytes: 200MiB }}\n    json_limits: {{ max_depth: 32, max_keys: 1000, max_string_length: 65536, max_array_length: 10000, max_members: 100000 }}\n\
         \x20 - id: forms\n    match: {{ path_prefix: /forms }}\n    upstream: echo\n    authenticate: [none]\n    \
         content_types: [application/x-www-form-urlencoded, text/*]\n",
        up.url()
    )
}

/// JSON bodies within the limits reach the service byte for byte; others are refused with
/// 400 naming what is wrong, and bodies of other types with 415, before the service sees
/// anything.
#[tokio::test]
async fn json_bodies_are_checked_and_other_types_refused() {
    let up = Upstream::start();
    let gw = Gateway::start(&json_route(&up));
    let c = client();
    let post = |path: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut r = c.post(gw.url(path)).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    let good = br#"{"order": {"items": [1, 2.5e3, "x\u00e9"], "note": null}}"#.to_vec();
    let r = post("/api/count", Some("application/json; charset=utf-8"), good.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["bytes"], good.len());
    // Streamed in odd pieces (chunked), the same.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = good.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let r = c
        .post(gw.url("/api/count"))
        .header("content-type", "application/merge-patch+json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (body, why) in [
        (&b"{\"a\": 1,}"[..], "not valid JSON"),
        (b"{\"a\": tru}", "not valid JSON"),
        (b"[1] [2]", "not valid JSON"),
        (b"{\"a\": \"\xff\"}", "not UTF-8"),
    ] {
        let p = problem(post("/api/x", Some("application/json"), body.to_vec()).await.unwrap(), 400).await;
        assert_eq!(p["type"], "urn:portcullis:problem:invalid-json", "{p}");
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
    }
    let mut wide = String::from("[");
    for i in 0..10_001 {
        wide.push_str(if i == 0 { "0" } else { ",0" });
    }
    wide.push(']');
    let p = problem(post("/api/x", Some("application/json"), wide.into_bytes()).await.unwrap(), 400).await;
    assert!(p["detail"].as_str().unwrap().contains("too many items (the limit is 10000)"), "{p}");
    // Not JSON at all, or no type: 415 on a JSON route.
    for ct in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let p = problem(post("/api/x", ct, b"{}".to_vec()).await.unwrap(), 415).await;
        assert_eq!(p["type"], "urn:portcullis:problem:unsupported-media-type", "{p}");
    }
    // Two Content-Type fields: which one would the service believe?
    let r = c
        .post(gw.url("/api/x"))
        .header("content-type", "application/json")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    assert_eq!(up.count(), 2, "only the good bodies reached the service");
    // The allow list of another route: its types pass unchecked, others are refused; a
    // request without a body is not asked for a type.
    assert_eq!(post("/forms/a", Some("text/csv"), b"a,b".to_vec()).await.unwrap().status(), 200);
    assert_eq!(
        post("/forms/a", Some("application/x-www-form-urlencoded"), b"a=1".to_vec()).await.unwrap().status(),
        200
    );
    problem(post("/forms/a", Some("application/json"), b"{}".to_vec()).await.unwrap(), 415).await;
    assert_eq!(c.get(gw.url("/forms/a")).send().await.unwrap().status(), 200);
}

/// Sends `POST /api/x` with a chunked JSON body of `head` then `fill` repeated, `total`
/// bytes in all, over raw TCP: one thread writes (until the gateway stops reading), the
/// caller reads the answer as it comes, as a browser or curl would. Returns the status, the
/// body and how many body bytes were written.
fn stream_body(addr: std::net::SocketAddr, head: &[u8], fill: &[u8], total: usize) -> (u16, String, usize) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut first: Vec<u8> = head.to_vec();
    let chunk: Vec<u8> = fill.iter().copied().cycle().take(64 * 1024).collect();
    first.extend_from_slice(&chunk[..chunk.len() - head.len()]);
    let writing = std::thread::spawn(move || {
        let mut sent = 0;
        if writer
            .write_all(b"POST /api/x HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .is_err()
        {
            return sent;
        }
        while sent < total {
            let data = if sent == 0 { &first } else { &chunk };
            let framed = [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat();
            if writer.write_all(&framed).is_err() {
                break;
            }
            sent += data.len();
        }
        let _ = writer.write_all(b"0\r\n\r\n");
        sent
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let (status, body) = loop {
        let n = conn.read(&mut buf).expect("the gateway answers before it stops reading");
        assert!(n > 0, "closed without an answer: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if body.len() >= len {
                break (head[9..12].parse().unwrap(), body[..len].to_string());
            }
        }
    };
    let _ = conn.shutdown(std::net::Shutdown::Both);
    (status, body, writing.join().unwrap())
}

/// JSON bombs are refused at the limit they cross, long before their end, and the
/// gateway's memory stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bombs_are_refused_early_with_flat_memory() {
    let up = Upstream::start();
    let gw = Gateway::start(&json_route(&up));
    let c = client();
    // Warm up, then take the high-water mark.
    for _ in 0..3 {
        c.post(gw.url("/api/count")).header("content-type", "application/json").body("[1]").send().await.unwrap();
    }
    let before = gw.peak_rss_kib();
    for (head, fill, total, why) in [
        // 10^5 levels of nesting.
        (&b"["[..], &b"["[..], 100_000, "nesting too deep"),
        // 10^6 members in one object.
        (b"{", b"\"k\":0,", 6_000_000, "an object with too many members"),
        // A 100 MB string.
        (b"[\"", b"a", 100 << 20, "a string too long"),
    ] {
        let started = Instant::now();
        let (status, body, sent) = stream_body(gw.addr, head, fill, total);
        assert_eq!(status, 400, "{why}: {body}");
        let p: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
        assert!(sent <= 16 << 20, "{why}: the client sent {sent} bytes before the refusal");
        assert!(started.elapsed() < Duration::from_secs(5), "{why}: {:?}", started.elapsed());
    }
    let after = gw.peak_rss_kib();
    assert!(after < before + 16 * 1024, "peak RSS went from {before} to {after} KiB");
    assert_eq!(up.count(), 3);
}

/// A quota of short windows rolls over at the window's boundary, on one replica's memory
/// and on Redis shared by two.
#[tokio::test]
async fn quotas_roll_over_at_the_window_boundary() {
    let redis = Redis::start(&[]);
    let up = Upstream::start();
    let routes = format!(
        "routes:\n  - id: metered\n    match: {{ path_prefix: /metered }}\n    upstream: {}\n    authenticate: [none]\n    \
         quotas: [{{name: burst-window, key: route, limit: 3, per: 2s}}]\n",
        up.url()
    );
    let memory = Gateway::start(&routes);
    let shared = format!("state:\n  backend: redis\n  redis_url: {}\n{routes}", redis.url());
    let (a, b) = (Gateway::start(&shared), Gateway::start(&shared));
    let c = client();
    for gateways in [vec![&memory], vec![&a, &b]] {
        // Start at the beginning of a window, so that the three fit in it.
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        tokio::time::sleep(Duration::from_millis((2000 - ms % 2000) as u64 + 20)).await;
        let mut statuses = Vec::new();
        for i in 0..4 {
            statuses.push(c.get(gateways[i % gateways.len()].url("/metered")).send().await.unwrap());
        }
        let last = statuses.pop().unwrap();
        assert!(statuses.iter().all(|r| r.status() == 200), "{statuses:?}");
        let (policy, current) = fields(&statuses[2]);
        assert_eq!((policy.value.as_str(), int(&policy, "q"), int(&policy, "w")), ("burst-window", 3, 2));
        assert_eq!(int(&current, "r"), 0);
        let retry: u64 = last.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        let p = problem(last, 429).await;
        assert_eq!(p["type"], "urn:portcullis:problem:quota-exceeded", "{p}");
        // The next window starts a new count.
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        tokio::time::sleep(Duration::from_millis((2000 - ms % 2000) as u64 + 20)).await;
        assert_eq!(c.get(gateways[0].url("/metered")).send().await.unwrap().status(), 200);
    }
    assert_eq!(up.count(), 8);
}

/// Brute-force blocking: an address whose credentials are refused more than `max_failures`
/// times is refused (`429`, `Retry-After`) whatever it sends, good credentials included;
/// other addresses are not; a missing credential is not a failure; replicas on one Redis add
/// up their counts.
#[tokio::test]
async fn an_address_that_keeps_failing_authentication_is_blocked() {
    let redis = Redis::start(&[]);
    let idp = crate::authn::Idp::start();
    idp.key("ec", "ES256").await;
    let up = Upstream::start();
    let config = format!(
        "server:\n  listen: {{listen}}\n  trusted_proxies: [127.0.0.1/32]\nstate: {{ backend: redis, redis_url: {} }}\n\
         brute_force: {{ max_failures: 5, window: 1m, block_for: 1m }}\n{}\
         routes:\n  - id: orders\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [jwt]\n",
        redis.url(),
        crate::authn::issuer_yaml(&idp, ""),
        up.url()
    );
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let good = idp.token("ec", serde_json::json!({"sub": "alice"})).await;
    let c = client();
    let send = |gw: &Gateway, from: &str, token: Option<&str>| {
        let mut r = c.get(gw.url("/orders")).header("x-forwarded-for", from);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // 20 bad tokens from one address: 5 refused as invalid, then blocked.
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = send(&a, "203.0.113.9", Some(&format!("not.a.token{i}"))).await.unwrap();
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            let p = problem(r, 429).await;
            assert_eq!(p["type"], "urn:portcullis:problem:too-many-failures", "{p}");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(statuses, [[401; 5].as_slice(), [429; 15].as_slice()].concat());
    // A good token from the blocked address is refused too; from another, it passes.
    assert_eq!(send(&a, "203.0.113.9", Some(&good)).await.unwrap().status(), 429);
    assert_eq!(send(&a, "198.51.100.20", Some(&good)).await.unwrap().status(), 200);
    // No credential at all is not a failure.
    for _ in 0..10 {
        assert_eq!(send(&a, "198.51.100.21", None).await.unwrap().status(), 401);
    }
    assert_eq!(send(&a, "198.51.100.21", Some(&good)).await.unwrap().status(), 200);
    // Failures on two replicas add up.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        statuses.push(send(gw, "192.0.2.50", Some("bad.token.x")).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    assert_eq!(send(&a, "192.0.2.50", Some("bad.token.y")).await.unwrap().status(), 429);
    assert_eq!(send(&a, "192.0.2.50", Some(&good)).await.unwrap().status(), 429);
    assert_eq!(up.count(), 2);
}
