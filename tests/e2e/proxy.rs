//! Routing, forwarding, headers and limits through the real binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Gateway, client, free_port, problem};
use crate::upstream::Upstream;

fn two_upstreams() -> (Upstream, Upstream) {
    (Upstream::start(), Upstream::start())
}

#[tokio::test]
async fn most_specific_route_wins_and_unmatched_is_404() {
    let (a, b) = two_upstreams();
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: everything
    upstream: {a}
    authenticate: [none]
  - id: order
    match: {{ path_template: "/orders/{{id}}", methods: [GET] }}
    upstream: {b}
    authenticate: [none]
  - id: api-host
    match: {{ host: api.example.com, path_prefix: /orders }}
    upstream: echo
    authenticate: [none]
  - id: only-post
    match: {{ path: /submit, methods: [POST] }}
    upstream: {b}
    authenticate: [none]
"#,
        a = a.url(),
        b = b.url()
    ));
    let c = client();
    let get = |p: &str| c.get(gw.url(p)).send();
    let r = get("/orders/42").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.count(), 1, "the template route goes to b");
    get("/orders/42/items").await.unwrap();
    assert_eq!(a.count(), 1, "deeper paths fall back to the catch-all");
    let r = c.get(gw.url("/orders/1")).header("host", "API.example.com:8443").send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["method"], "GET", "host-specific route is the echo upstream: {v}");
    assert_eq!(b.count(), 1);

    // A path a route claims is never served by a broader route with another method.
    let r = c.get(gw.url("/submit")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    problem(r, 405).await;
    assert_eq!(a.count(), 1);
    c.post(gw.url("/submit")).send().await.unwrap();
    assert_eq!(b.count(), 2);

    // Without a catch-all, nothing matches: 404 problem.
    let gw2 = Gateway::start(&format!(
        "routes:\n  - id: o\n    match: {{ path_prefix: /orders }}\n    upstream: {}\n    authenticate: [none]\n",
        a.url()
    ));
    let p = problem(c.get(gw2.url("/ordersX")).send().await.unwrap(), 404).await;
    assert_eq!(p["type"], "urn:portcullis:problem:no-route");
    assert!(p["request_id"].is_string());
    assert_eq!(a.count(), 1, "a 404 never reaches an upstream");
}

#[tokio::test]
async fn dot_segments_cannot_sneak_past_a_route() {
    let (public, admin) = two_upstreams();
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: public
    match: {{ path_prefix: /public }}
    upstream: {p}
    authenticate: [none]
  - id: admin
    match: {{ path_prefix: /admin }}
    upstream: {a}
    authenticate: [none]
"#,
        p = public.url(),
        a = admin.url()
    ));
    // Raw requests: HTTP clients would normalise these themselves.
    for raw in ["/public/../admin/users", "/public/%2e%2e/admin/users", "/public/.%2E/admin/users", "//admin/users"] {
        let (status, body) = raw_request(&gw, &format!("GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 200, "{raw}: {body}");
        let v: Value = serde_json::from_str(body.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(v["path"], "/admin/users", "{raw}: the upstream sees the path the route saw");
    }
    assert_eq!(public.count(), 0, "a path that resolves to /admin is routed as /admin");
    let (status, body) = raw_request(&gw, "GET /public/..%2Fadmin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("application/problem+json"));
}

/// Sends raw bytes, returns (status, whole response).
pub fn raw_request(gw: &Gateway, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

#[tokio::test]
async fn upstream_sees_clean_headers_and_forwarding_facts() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
    let resp = client()
        .get(gw.url("/x?y=1"))
        .header("connection", "x-hop")
        .header("x-hop", "must go")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("authorization", "Bearer caller-credential")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("x-request-id", "client-chosen-id-1")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-id-1");
    assert!(resp.headers().get("keep-alive").is_none(), "hop-by-hop response headers are removed");
    assert_eq!(resp.headers()["x-upstream"], "yes");
    // The response carries the upstream's fields and the gateway's own, none of the request's.
    for leaked in ["x-custom", "authorization", "proxy-authorization", "x-forwarded-host", "host"] {
        assert!(resp.headers().get(leaked).is_none(), "the request's {leaked} came back: {:?}", resp.headers());
    }
    assert_eq!(resp.headers().get_all("x-request-id").iter().count(), 1);
    let v: Value = resp.json().await.unwrap();
    let h = &v["headers"];
    for gone in ["x-hop", "keep-alive", "proxy-authorization", "authorization"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "an untrusted client cannot choose its address");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(h["x-request-id"], "client-chosen-id-1");
    assert_eq!(h["host"], up.addr.to_string(), "Host is the upstream's");
    assert_eq!(v["uri"], "/x?y=1");

    // Without a usable id from the client, a fresh one goes both ways.
    let resp = client().get(gw.url("/x")).header("x-request-id", "<bad id>").send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], id.as_str());
    assert_eq!(id.len(), 36);
}

#[tokio::test]
async fn trusted_proxies_and_rfc7239() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  trusted_proxies: [127.0.0.0/8]\n  forwarded_headers: forwarded\nroutes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n",
        up.url()
    ));
    let v: Value = client()
        .get(gw.url("/"))
        .header("forwarded", "for=198.51.100.1;proto=https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fwd = v["headers"]["forwarded"].as_str().unwrap();
    assert!(fwd.starts_with("for=198.51.100.1;proto=https, for=127.0.0.1;proto=http;host="), "{fwd}");
}

#[tokio::test]
async fn upstream_failures_are_502_and_504_without_internals() {
    let up = Upstream::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: dead
    match: {{ path_prefix: /dead }}
    upstream: {dead}
    authenticate: [none]
  - id: slow
    match: {{ path_prefix: /slow }}
    upstream: {up}
    authenticate: [none]
    timeouts: {{ request: 300ms }}
  - id: drop
    match: {{ path_prefix: /drop }}
    upstream: {up}
    authenticate: [none]
  - id: status
    match: {{ path_prefix: /status }}
    upstream: {up}
    authenticate: [none]
"#,
        up = up.url()
    ));
    let c = client();
    let p = problem(c.get(gw.url("/dead")).send().await.unwrap(), 502).await;
    let text = p.to_string().to_lowercase();
    for leak in ["refused", "127.0.0.1", "os error", "tcp"] {
        assert!(!text.contains(leak), "502 leaks `{leak}`: {p}");
    }
    let started = Instant::now();
    let p = problem(c.get(gw.url("/slow?ms=3000")).send().await.unwrap(), 504).await;
    assert!(started.elapsed() < Duration::from_millis(2500), "timed out at the route timeout");
    assert_eq!(p["type"], "urn:portcullis:problem:upstream-timeout");
    problem(c.get(gw.url("/drop")).send().await.unwrap(), 502).await;
    // The upstream's own error statuses pass through untouched.
    let r = c.get(gw.url("/status/503")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await.unwrap(), "status 503");

    gw.wait_metric("upstream error metrics", |g| {
        g.metric("portcullis_upstream_errors_total{route=\"dead\",kind=\"connect\"}") >= 1.0
            && g.metric("portcullis_upstream_errors_total{route=\"slow\",kind=\"timeout\"}") >= 1.0
    });
}

/// The coarse timers read the clock when nothing is armed: a request that arrives after the
/// gateway sat idle gets its whole timeout, not one measured from the last busy moment.
#[tokio::test]
async fn a_request_after_an_idle_spell_gets_its_whole_timeout() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: slow
    upstream: {up}
    authenticate: [none]
    timeouts: {{ request: 800ms }}
"#,
        up = up.url()
    ));
    for round in 0..3 {
        // A new connection each time, so that no connection of the gateway's keeps a timer armed.
        let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let r = c.get(gw.url("/slow?ms=200")).send().await.unwrap();
        assert_eq!(r.status(), 200, "round {round}: {}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
}

/// Connections to an upstream are reused, and as many kept idle as `max_idle_connections`
/// says: beyond it they are closed after their exchange, and at 0 none is kept.
#[tokio::test]
async fn idle_upstream_connections_are_kept_up_to_the_limit() {
    let (a, b, z, h2) = (Upstream::start(), Upstream::start(), Upstream::start(), Upstream::start());
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: {{listen}}
  workers: 1
upstreams:
  a: {{ endpoints: [{a}] }}
  b: {{ endpoints: [{b}], max_idle_connections: 2 }}
  z: {{ endpoints: [{z}], max_idle_connections: 0 }}
  h2: {{ endpoints: [{h2}], protocol: http2, max_idle_connections: 0 }}
routes:
  - id: a
    match: {{ path_prefix: /a/ }}
    upstream: a
    authenticate: [none]
  - id: b
    match: {{ path_prefix: /b/ }}
    upstream: b
    authenticate: [none]
  - id: z
    match: {{ path_prefix: /z/ }}
    upstream: z
    authenticate: [none]
  - id: h2
    match: {{ path_prefix: /h2/ }}
    upstream: h2
    authenticate: [none]
"#,
        a = a.url(),
        b = b.url(),
        z = z.url(),
        h2 = h2.url()
    ));
    let c = client();
    // Six requests at once need six connections; the second six find them idle, or, past
    // the limit of 2, find two and open four.
    for (prefix, up, opened) in [("/a", &a, 6), ("/b", &b, 10)] {
        for _ in 0..2 {
            let wave = (0..6).map(|_| c.get(gw.url(&format!("{prefix}/slow?ms=1000"))).send());
            for r in futures_util::future::join_all(wave).await {
                assert_eq!(r.unwrap().status(), 200, "{prefix}");
            }
        }
        assert_eq!(up.count(), 12, "{prefix}");
        assert_eq!(up.connections(), opened, "{prefix}");
    }
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/z/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(z.connections(), 3, "no connection is kept at 0");
    // An HTTP/2 upstream's connection carries every request, one after another too.
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/h2/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!((h2.count(), h2.connections()), (3, 1), "the HTTP/2 connection is kept even at 0");
}

#[tokio::test]
async fn failing_endpoints_are_ejected_and_connect_failures_retried() {
    let up = Upstream::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  pool:
    endpoints: [{dead}, {live}]
    health: {{ consecutive_failures: 2, ejection_time: 30s }}
routes:
  - id: r
    upstream: pool
    authenticate: [none]
"#,
        live = up.url()
    ));
    let c = client();
    for i in 0..20 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}: body-less requests are retried on the other endpoint");
    }
    assert_eq!(up.count(), 20);
    assert_eq!(gw.metric("portcullis_upstream_ejections_total{upstream=\"pool\"}"), 1.0);
    // A request with a body cannot be replayed, but the dead endpoint is ejected by now.
    for _ in 0..5 {
        let r = c.post(gw.url("/x")).body("payload").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn header_and_body_limits() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: {{listen}}
  limits: {{ max_header_bytes: 4KiB, max_body_bytes: 1KiB, max_headers: 20 }}
routes:
  - id: small
    upstream: {u}
    authenticate: [none]
  - id: big
    match: {{ path_prefix: /big }}
    upstream: {u}
    authenticate: [none]
    limits: {{ max_body_bytes: 1MiB }}
"#,
        u = up.url()
    ));
    let c = client();
    let p = problem(c.get(gw.url("/")).header("x-big", "a".repeat(5000)).send().await.unwrap(), 431).await;
    assert_eq!(p["type"], "urn:portcullis:problem:headers-too-large");
    let mut req = c.get(gw.url("/"));
    for i in 0..25 {
        req = req.header(format!("x-h{i}"), "v");
    }
    problem(req.send().await.unwrap(), 431).await;
    // Far beyond the limit the HTTP layer refuses on its own, still with 431.
    let r = c.get(gw.url("/")).header("x-huge", "a".repeat(200_000)).send().await.unwrap();
    assert_eq!(r.status(), 431);

    problem(c.post(gw.url("/count")).body(vec![0u8; 2048]).send().await.unwrap(), 413).await;
    // A chunked body without a length is cut off as it streams.
    let chunks = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![1u8; 512])));
    let r = c.post(gw.url("/count")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    problem(r, 413).await;
    let r = c.post(gw.url("/big/upload")).body(vec![0u8; 100_000]).send().await.unwrap();
    assert_eq!(r.status(), 200, "the route's own limit applies");
    let r = c.post(gw.url("/count")).body(vec![0u8; 1000]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["bytes"], 1000);
}

#[tokio::test]
async fn rewrite_replaces_the_matched_prefix() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r\n    match: {{ path_prefix: /api/v1 }}\n    rewrite: {{ path_prefix: / }}\n    upstream: {}\n    authenticate: [none]\n",
        up.url()
    ));
    let v: Value = client().get(gw.url("/api/v1/orders/7?x=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["uri"], "/orders/7?x=1");
}

#[test]
fn slow_clients_are_cut_off() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  limits: {{ header_read_timeout: 1s }}\nroutes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n",
        up.url()
    ));
    // Slowloris: a head that never completes is dropped after the header timeout.
    let mut slow = TcpStream::connect(gw.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "closed without serving");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(4), "closed after {took:?}");
}

#[test]
fn connections_are_capped() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  limits: {{ max_connections: 2 }}\nroutes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n",
        up.url()
    ));
    // Two open connections use the whole allowance; a third waits until one closes.
    let mut c1 = keep_alive(&gw);
    let c2 = keep_alive(&gw);
    let mut c3 = TcpStream::connect(gw.addr).unwrap();
    c3.set_read_timeout(Some(Duration::from_millis(600))).unwrap();
    c3.write_all(b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert!(c3.read(&mut buf).is_err(), "a third connection must not be served while two are open");
    c1.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = c1.read_to_end(&mut sink);
    drop(c1);
    c3.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = c3.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "served once a slot freed");
    drop(c2);
}

fn keep_alive(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

#[tokio::test]
async fn metrics_access_log_and_effective_config() {
    let up = Upstream::start();
    // A Redis that needs the password in the URL: the gateway is ready only once it answers.
    let redis = crate::shared_state::Redis::start(&["--requirepass", "hunter2-secret"]);
    let gw = Gateway::start(&format!(
        r#"
state:
  backend: redis
  redis_url: "redis://:hunter2-secret@127.0.0.1:{}"
routes:
  - id: r
    upstream: {}
    authenticate: [none]
"#,
        redis.port,
        up.url()
    ));
    let c = client();
    c.get(gw.url("/x?access_token=leaky-token-value"))
        .header("authorization", "Bearer also-secret")
        .send()
        .await
        .unwrap();
    c.get(gw.url("/status/418")).send().await.unwrap();

    gw.wait_metric("request counts", |g| g.metric("portcullis_requests_total{route=\"r\",code=\"418\"}") == 1.0);
    let m = gw.metrics();
    assert!(m.contains("portcullis_requests_total{route=\"r\",code=\"200\"} 1"), "{m}");
    assert!(m.contains("portcullis_request_duration_seconds_bucket{le=\"0.005\",route=\"r\"}"), "{m}");
    assert!(m.contains("portcullis_upstream_duration_seconds_count{route=\"r\"} 2"), "{m}");
    assert!(m.contains("portcullis_config_generation 1"), "{m}");

    let (status, cfg) = crate::harness::admin_get(gw.admin, "/config").unwrap();
    assert_eq!(status, 200);
    let cfg: Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["config"]["routes"][0]["id"], "r");
    assert!(!cfg.to_string().contains("hunter2-secret"), "{cfg}");

    // The access log: one JSON line per request, no query strings, no credentials.
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = gw.access_log();
        if log.lines().count() >= 2 || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert_eq!(lines[0]["route"], "r");
    assert_eq!(lines[0]["path"], "/x");
    assert_eq!(lines[0]["status"], 200);
    assert!(lines[0]["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(lines[0]["upstream_ms"].as_f64().is_some());
    assert!(lines[0]["request_id"].as_str().unwrap().len() == 36);
    assert_eq!(lines[1]["status"], 418);
    let everything = format!("{log}{}", gw.stderr());
    for secret in ["leaky-token-value", "also-secret", "hunter2-secret"] {
        assert!(!everything.contains(secret), "`{secret}` was logged");
    }
}

/// Reads one response (head and a `Content-Length` body) from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head: {}", String::from_utf8_lossy(&out));
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length: ")).map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    out.extend_from_slice(&body);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn expect_continue_http10_keep_alive_and_pipelining() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r\n    upstream: {u}\n    authenticate: [none]\n  - id: small\n    match: {{ path_prefix: /small }}\n    upstream: {u}\n    authenticate: [none]\n    limits: {{ max_body_bytes: 1KiB }}\n",
        u = up.url()
    ));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    // 100-continue: the interim answer comes only when the body is wanted, then the answer.
    s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let interim = read_response(&mut s);
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim}");
    s.write_all(b"hello").unwrap();
    let resp = read_response(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200 ") && resp.ends_with("{\"bytes\":5}"), "{resp}");

    // A request refused before its body is read gets no 100 and closes the connection.
    s.write_all(b"POST /small/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let resp = read_response(&mut s);
    assert!(resp.starts_with("HTTP/1.1 413 "), "no 100 Continue before a refusal: {resp}");
    assert!(resp.to_ascii_lowercase().contains("connection: close\r\n"), "{resp}");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("the connection is closed after the refusal");
    assert!(rest.is_empty(), "nothing after the refusal: {}", String::from_utf8_lossy(&rest));

    // HTTP/1.0 keeps the connection only when asked, and says so.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        let resp = read_response(&mut s);
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
        assert!(resp.to_ascii_lowercase().contains("connection: keep-alive\r\n"), "{resp}");
    }
    s.write_all(b"GET /a HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("closed after answering");
    let all = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(all.starts_with("http/1.1 200 ") && all.contains("connection: close\r\n"), "{all}");

    // A chunked request body and a HEAD request on one connection, pipelined.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\nHEAD /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = read_response(&mut s);
    assert!(resp.ends_with("{\"bytes\":7}"), "{resp}");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ") && !head.contains("transfer-encoding"), "{head}");
    // No body follows a HEAD answer: the connection serves the next request at once.
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let resp = read_response(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");

    // The expectation is the gateway's to meet: it is not passed upstream.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n").unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 100 Continue"));
    s.write_all(b"ok").unwrap();
    let resp = read_response(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200 ") && !resp.to_ascii_lowercase().contains("\"expect\""), "{resp}");
}

#[tokio::test]
async fn an_absolute_target_is_the_host_the_upstream_sees() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "upstreams:\n  svc:\n    endpoints: [{}]\n    preserve_host: true\nroutes:\n  - id: r\n    upstream: svc\n    authenticate: [none]\n",
        up.url()
    ));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET http://public.example/x HTTP/1.1\r\nHost: admin.internal\r\n\r\n").unwrap();
    let resp = read_response(&mut s);
    let body: Value = serde_json::from_str(&resp[resp.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["headers"]["host"], "public.example", "{resp}");
    // Over HTTP/2, `:authority` is the host likewise.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let v: Value = h2.get(gw.url("/y")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["headers"]["host"], gw.addr.to_string());
}

/// Sends raw bytes and half-closes, returns the whole response ("" when the gateway closed
/// without answering).
/// Both endpoints still take requests in turn: neither was ejected.
fn assert_both_take_turns(gw: &Gateway, a: &Upstream, b: &Upstream) {
    let before = (a.count(), b.count());
    for _ in 0..4 {
        let r = raw_exchange(gw, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    }
    assert_eq!((a.count() - before.0, b.count() - before.1), (2, 2));
}

fn raw_exchange(gw: &Gateway, request: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A client's broken request body is the client's fault: `400` (and the connection closed)
/// for a malformed one, no answer for one the client abandoned, and neither counts against
/// the upstream's health or in its error metrics, so no client can eject healthy endpoints.
#[tokio::test]
async fn a_broken_request_body_never_counts_against_the_upstream() {
    let (a, b) = two_upstreams();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  pool:
    endpoints: [{a}, {b}]
    health: {{ consecutive_failures: 2, ejection_time: 30s }}
routes:
  - id: r
    upstream: pool
    authenticate: [none]
"#,
        a = a.url(),
        b = b.url()
    ));
    let head = "POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
    let broken = [
        "3g\r\nxyz\r\n0\r\n\r\n",                // not a hexadecimal size
        "10000000000000003\r\nxyz\r\n0\r\n\r\n", // a size past any limit
        "3\nxyz\r\n0\r\n\r\n",                   // a bare LF
        "0\r\nX-T: 1\n\n",                       // a malformed trailer section
    ];
    for round in 0..3 {
        for tail in broken {
            let resp = raw_exchange(&gw, format!("{head}{tail}").as_bytes());
            assert!(resp.starts_with("HTTP/1.1 400 "), "round {round}, {tail:?}: {resp}");
            let lower = resp.to_ascii_lowercase();
            assert!(lower.contains("content-type: application/problem+json"), "{resp}");
            assert!(lower.contains("connection: close\r\n"), "{resp}");
            assert!(resp.contains("malformed-body"), "{resp}");
        }
        // A client that stops mid-body and goes away gets no answer.
        let resp = raw_exchange(&gw, b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part");
        assert_eq!(resp, "", "nobody is left to answer");
    }
    let r = client().get(gw.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.metric("portcullis_upstream_ejections_total{upstream=\"pool\"}"), 0.0, "{}", gw.metrics());
    assert_eq!(gw.metric("portcullis_upstream_errors_total{route=\"r\",kind=\"protocol\"}"), 0.0);
    // The upstreams may still be finishing with the broken requests' connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_both_take_turns(&gw, &a, &b);
}

/// Of a request's trailers only integrity checks of the body reach the upstream: nothing a
/// stage judged in the head (hosts, credentials, connection options) can be sent again
/// after it.
#[test]
fn request_trailers_carry_only_integrity_checks() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
    let trailers = [
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Proto: https",
        "X-Forwarded-For: 6.6.6.6",
        "Forwarded: for=6.6.6.6",
        "Keep-Alive: timeout=5",
        "Upgrade: websocket",
        "Proxy-Connection: keep-alive",
        "Proxy-Authorization: Basic c2VjcmV0",
        "X-Api-Key: forged-key",
        "Host: other.example",
        "X-Custom: 1",
        "Content-Digest: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        "X-Checksum: abc",
    ]
    .join("\r\n");
    let (status, resp) = raw_request(
        &gw,
        &format!(
            "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n{trailers}\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    let v: Value = serde_json::from_str(body).unwrap();
    let got = v["trailers"].as_object().cloned().unwrap_or_default();
    let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["content-digest", "x-checksum"], "{v}");
}

/// What an upstream sends must be HTTP/1.1 the gateway can pass on faithfully; otherwise
/// `502`.
#[tokio::test]
async fn upstream_responses_the_gateway_cannot_pass_on_are_502() {
    let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok", "a".repeat(65_600));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a status above 599", b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("a status below 100", b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        ("a head over 64 KiB", big.into_bytes()),
        ("a coding other than chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00".to_vec()),
        (
            "chunked then gzip",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        // Chunked framing around gzip: re-framed, the gzip would go on unsaid.
        (
            "gzip then chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "gzip, then chunked in a second field",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "chunked twice",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
    ];
    for (what, answer) in cases {
        let up = crate::upstream::RawUpstream::start(answer);
        let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
        let r = client().get(gw.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 502, "{what}");
        problem(r, 502).await;
    }
    // A valid answer through the same upstream passes (the refusals are not a bad fixture).
    let up = crate::upstream::RawUpstream::start(b"HTTP/1.1 299 Fine\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
    let r = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 299);
    assert_eq!(r.text().await.unwrap(), "ok");
}

/// An HTTP/2 client's cookies, which it may split over several fields, reach an HTTP/1.1
/// upstream as one field (RFC 9113 §8.2.3).
#[tokio::test]
async fn http2_cookies_are_one_field_upstream() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(gw.url("/c")).header("cookie", "a=1").header("cookie", "b=2; c=3").send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["header_values"]["cookie"], serde_json::json!(["a=1; b=2; c=3"]), "{v}");
}

/// An upstream URL the gateway could not use as written is a config error naming its key,
/// and a password in one is never printed.
#[test]
fn upstream_urls_are_checked_and_never_echo_a_password() {
    let dir = crate::harness::TempDir::new("endpoints");
    let config = dir.write(
        "portcullis.yaml",
        r#"
server:
  listen: 127.0.0.1:0
upstreams:
  ports:
    endpoints: [http://127.0.0.1:99999]
  secret:
    endpoints: ["http://svc:s3cret-pw@127.0.0.1:8080"]
routes:
  - id: a
    match: { path_prefix: /a }
    upstream: ports
    authenticate: [none]
  - id: b
    match: { path_prefix: /b }
    upstream: secret
    authenticate: [none]
"#,
    );
    let (code, out, err) = crate::harness::run_cli(&["check", "--config", config.to_str().unwrap()]);
    let all = format!("{out}{err}");
    assert_eq!(code, 1, "{all}");
    assert!(all.contains("upstreams.ports.endpoints[0]") && all.contains("65535"), "{all}");
    assert!(all.contains("upstreams.secret.endpoints[0]") && all.contains("credentials"), "{all}");
    assert!(!all.contains("s3cret-pw"), "the password was printed: {all}");
}

/// The route's request timeout is the upstream's: an upload slower than it, but steady, is
/// forwarded; a client that stops sending its body for longer than `header_read_timeout`
/// gets `408`; neither counts against the upstream's health.
#[test]
fn slow_uploads_are_the_clients_time_not_the_upstreams() {
    let (a, b) = two_upstreams();
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: {{listen}}
  limits: {{ header_read_timeout: 1s }}
upstreams:
  pool:
    endpoints: [{a}, {b}]
    health: {{ consecutive_failures: 1, ejection_time: 30s }}
routes:
  - id: r
    upstream: pool
    authenticate: [none]
    timeouts: {{ request: 1s }}
"#,
        a = a.url(),
        b = b.url()
    ));
    // 2.4 s of upload, 24 bytes at a time every 400 ms: longer than the request timeout,
    // never silent for the idle limit.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 144\r\nConnection: close\r\n\r\n").unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(&[b'u'; 24]).unwrap();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200 "), "a steady upload outlasting the request timeout: {out}");
    assert!(out.contains("\"bytes\":144"), "{out}");

    // A part of the body, then silence.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nthe first part").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let took = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(out.to_ascii_lowercase().contains("application/problem+json"), "{out}");
    assert!(out.to_ascii_lowercase().contains("connection: close\r\n"), "{out}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "answered after {took:?}");

    assert_eq!(gw.metric("portcullis_upstream_ejections_total{upstream=\"pool\"}"), 0.0, "{}", gw.metrics());
    assert_eq!(gw.metric("portcullis_upstream_errors_total{route=\"r\",kind=\"timeout\"}"), 0.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_both_take_turns(&gw, &a, &b);
}

/// An HTTP/2 client is held to the same idle limit on its request body: a stream that sends a
/// part of its body and then nothing gets `408` instead of holding an upstream connection,
/// and a steady one outlasting the route's request timeout is forwarded. Both hold towards
/// an HTTP/1.1 upstream (the lean client) and an h2c one (hyper's client), from HTTP/1.1 and
/// HTTP/2 clients, and neither counts against the upstream; an upstream slow to answer still
/// gets `504` on both.
#[tokio::test]
async fn http2_uploads_have_the_same_idle_limit() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: {{listen}}
  limits: {{ header_read_timeout: 1s }}
upstreams:
  h2c:
    endpoints: [{u}]
    protocol: http2
    health: {{ consecutive_failures: 1 }}
routes:
  - id: r
    match: {{ path_prefix: /lean }}
    upstream: {u}
    authenticate: [none]
    timeouts: {{ request: 1s }}
  - id: h2c
    match: {{ path_prefix: /h2c }}
    upstream: h2c
    authenticate: [none]
    timeouts: {{ request: 1s }}
  - id: stream
    match: {{ path_prefix: /stream }}
    upstream: h2c
    authenticate: [none]
    timeouts: {{ request: 5s }}
"#,
        u = up.url()
    ));
    let h1 = reqwest::Client::new();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let parts = |pause_ms: u64, count: usize| {
        futures_util::stream::unfold(0usize, move |i| async move {
            if i == count {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"0123456789")), i + 1))
        })
    };
    for (client, prefix) in [(&h2, "/lean"), (&h2, "/h2c"), (&h1, "/h2c")] {
        // Steady: a part every 400 ms for 2 s.
        let body = reqwest::Body::wrap_stream(parts(400, 5));
        let r = client.post(gw.url(&format!("{prefix}/count"))).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{prefix}");
        assert_eq!(r.json::<Value>().await.unwrap()["bytes"], 50);
        // One part, then silence for longer than the idle limit.
        let stalled = futures_util::StreamExt::chain(parts(0, 1), parts(5_000, 1));
        let started = Instant::now();
        let r = client.post(gw.url(&format!("{prefix}/count"))).body(reqwest::Body::wrap_stream(stalled)).send();
        let r = r.await.unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 408, "{prefix}");
        assert_eq!(problem(r, 408).await["type"], "urn:portcullis:problem:body-timeout");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "answered after {took:?}");
    }
    for route in ["r", "h2c"] {
        let errors = gw.metric(&format!("portcullis_upstream_errors_total{{route=\"{route}\",kind=\"timeout\"}}"));
        assert_eq!(errors, 0.0, "{route}: {}", gw.metrics());
    }
    // Once the answer has begun, an HTTP/2 client's stream is relayed as it comes, quiet or
    // not (a gRPC call): here quiet for twice the client's idle limit (within the route's
    // 5 s, which bounds the upstream's own silence), then its last part.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    tx.send(Ok(bytes::Bytes::from_static(b"first "))).await.unwrap();
    let mut r = h2.post(gw.url("/stream/mirror")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.chunk().await.unwrap().unwrap()[..], b"first ");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tx.send(Ok(bytes::Bytes::from_static(b"last"))).await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.expect("the quiet stream was relayed, not cut") {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"last");

    // The upstream's own slowness is still its own, on both paths: a whole body sent at once,
    // then no answer within the second the route allows.
    for prefix in ["/lean", "/h2c"] {
        let started = Instant::now();
        let r = h2.post(gw.url(&format!("{prefix}/slow?ms=3000"))).body("all of it").send().await.unwrap();
        assert_eq!(r.status(), 504, "{prefix}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "{prefix}: {took:?}");
    }
    assert_eq!(gw.metric("portcullis_upstream_errors_total{route=\"h2c\",kind=\"timeout\"}"), 1.0);
}

/// An upstream that stops sending in the middle of its response body is cut off after the
/// route's request timeout (the client sees the message end short, and the connection to it
/// closes or the stream is reset), over the lean HTTP/1.1 client and hyper's h2c client
/// alike; a body that keeps coming, however long in all, is passed on whole.
#[tokio::test]
async fn a_response_body_that_stalls_is_cut_off_and_a_steady_one_is_not() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  h2:
    endpoints: [{u}]
    protocol: http2
routes:
  - id: h1
    match: {{ path_prefix: /h1 }}
    upstream: {u}
    authenticate: [none]
    timeouts: {{ request: 1s }}
  - id: h2
    match: {{ path_prefix: /h2 }}
    upstream: h2
    authenticate: [none]
    timeouts: {{ request: 1s }}
"#,
        u = up.url()
    ));
    let h1 = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().timeout(Duration::from_secs(20)).build().unwrap();
    for (client, prefix) in [(&h1, "/h1"), (&h1, "/h2"), (&h2, "/h1")] {
        // 6 parts, 400 ms apart: 2.4 s in all, never silent for the second the route allows.
        let r = client.get(gw.url(&format!("{prefix}/trickle?parts=6&ms=400"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 60, "{prefix}: a steady body outlasting the timeout");

        let started = Instant::now();
        let r = client.get(gw.url(&format!("{prefix}/stall"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "the head came in time");
        let body = r.bytes().await;
        let took = started.elapsed();
        assert!(body.is_err(), "{prefix}: a body cut short is not a whole body: {body:?}");
        assert!(took >= Duration::from_millis(900), "{prefix}: cut off too early ({took:?})");
        assert!(took < Duration::from_secs(8), "{prefix}: cut off by the gateway, not the client ({took:?})");
        // The gateway and the upstream are both fine afterwards.
        assert_eq!(client.get(gw.url(&format!("{prefix}/x"))).send().await.unwrap().status(), 200);
    }
}

/// The items of a channel, as a stream (for request bodies sent part by part).
fn tokio_stream_from<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
