//! HTTP/2 (h2c and ALPN over TLS), TLS and mutual TLS, gRPC end to end, protocol upgrades.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Gateway, TempDir, client, helper};
use crate::pki::Ca;
use crate::upstream::Upstream;

#[tokio::test]
async fn http2_prior_knowledge_and_h2c_upstreams() {
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
  - id: h2
    match: {{ path_prefix: /h2 }}
    upstream: h2
    authenticate: [none]
"#,
        u = up.url()
    ));
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(gw.url("/h1/x")).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2, "the gateway speaks h2c");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["version"], "HTTP/1.1", "HTTP/2 in, HTTP/1.1 out");
    let v: Value = client().get(gw.url("/h2/x")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["version"], "HTTP/2.0", "HTTP/1.1 in, h2c out");

    // Many concurrent streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let h2 = h2.clone();
        let url = gw.url(&format!("/h2/stream/{i}"));
        tasks.push(tokio::spawn(async move { h2.get(url).send().await.unwrap().status() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}

/// Sends `request` on a new connection and reads the response head (up to its blank line,
/// nothing after it), leaving the connection open: for protocol upgrades.
fn send_head(gw: &Gateway, request: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

fn tls_gateway(dir: TempDir, ca: &Ca, extra: &str, upstream: &str) -> Gateway {
    let server = ca.server();
    dir.write("server.pem", &server.cert);
    dir.write("server-key.pem", &server.key);
    Gateway::start_in(
        dir,
        &format!(
            "server:\n  listen: {{listen}}\n  tls:\n    cert: server.pem\n    key: server-key.pem\n{extra}routes:\n  - id: r\n    upstream: {upstream}\n    authenticate: [none]\n"
        ),
    )
}

fn tls_client(ca: &Ca) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .tls_info(true)
        .pool_max_idle_per_host(0)
}

fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap().peer_certificate().unwrap().to_vec()
}

#[tokio::test]
async fn tls_with_alpn_and_certificate_reload() {
    let ca = Ca::new("test ca");
    let gw = tls_gateway(TempDir::new("tls"), &ca, "", "echo");
    let url = format!("https://localhost:{}/x", gw.addr.port());

    let r = tls_client(&ca).build().unwrap().get(&url).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2, "h2 by ALPN");
    let first = peer_cert(&r);
    let r = tls_client(&ca).http1_only().build().unwrap().get(&url).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");

    // Plain HTTP on the TLS port gets nowhere.
    assert!(client().get(gw.url("/x")).send().await.is_err());

    // Rotate the certificate on disk: new connections get the new one, without a restart.
    let next = ca.server();
    gw.dir.write("server-key.pem", &next.key);
    gw.dir.write("server.pem", &next.cert);
    gw.wait_metric("the certificate reload", |g| g.metric("portcullis_config_generation") >= 2.0);
    let r = tls_client(&ca).build().unwrap().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(peer_cert(&r), first, "new connections present the rotated certificate");
}

#[tokio::test]
async fn mutual_tls_required() {
    let ca = Ca::new("clients ca");
    let other = Ca::new("someone else");
    let dir = TempDir::new("mtls");
    dir.write("clients.pem", ca.pem());
    let gw = tls_gateway(dir, &ca, "    client_ca: clients.pem\n    client_auth: required\n", "echo");
    let url = format!("https://localhost:{}/x", gw.addr.port());

    assert!(tls_client(&ca).build().unwrap().get(&url).send().await.is_err(), "no certificate, no handshake");
    let foreign = other.client("mallory");
    let c = tls_client(&ca).identity(foreign.identity()).build().unwrap();
    assert!(c.get(&url).send().await.is_err(), "a certificate from another CA is refused");
    let good = ca.client("alice");
    let c = tls_client(&ca).identity(good.identity()).build().unwrap();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
}

#[test]
fn grpc_end_to_end_with_trailers_and_streaming() {
    let mut cmd = Command::new("python3");
    cmd.arg(helper("grpc_echo.py")).arg("serve");
    let (mut server, line) = crate::harness::spawn_peer(cmd);
    let port: u16 = line.parse().unwrap_or_else(|_| panic!("grpc server said {line:?} (pip install grpcio?)"));

    let gw = Gateway::start(&format!(
        r#"
upstreams:
  grpc:
    endpoints: [http://127.0.0.1:{port}]
    protocol: http2
routes:
  - id: echo-service
    match: {{ path_prefix: /test.Echo, methods: [POST] }}
    upstream: grpc
    authenticate: [none]
"#
    ));
    let out =
        Command::new("python3").arg(helper("grpc_echo.py")).args(["client", &gw.addr.to_string()]).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "grpc client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["say"], "olleh");
    assert_eq!(v["trailers"]["x-trailer"], "present", "trailers cross the gateway");
    assert_eq!(v["fail"], serde_json::json!(["INVALID_ARGUMENT", "asked to fail"]), "grpc-status crosses the gateway");
    let count: Vec<String> = serde_json::from_value(v["count"].clone()).unwrap();
    assert_eq!(count.len(), 100);
    assert_eq!(count[99], "99");
}

/// A tunnel is still a connection: it holds its place under `max_connections` until it ends.
#[test]
fn upgraded_connections_count_against_the_connection_limit() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  limits: {{ max_connections: 1 }}\nroutes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n",
        up.url()
    ));
    let (mut tunnel, head) =
        send_head(&gw, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let mut byte = [0u8; 1];
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // While the tunnel is open, another connection waits.
    let mut other = TcpStream::connect(gw.addr).unwrap();
    other.set_read_timeout(Some(Duration::from_millis(600))).unwrap();
    other.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert!(other.read(&mut buf).is_err(), "served while the tunnel held the only slot");
    tunnel.write_all(b"x").unwrap();
    tunnel.read_exact(&mut byte).unwrap();
    assert_eq!(byte[0], b'x', "the tunnel still relays");
    // The tunnel ends: the slot frees and the waiting connection is served.
    drop(tunnel);
    other.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = other.read_to_end(&mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
}

/// An upgraded connection that carries nothing either way for the route's `tunnel_idle` is
/// closed on both sides; one that carries data stays open past that time.
#[test]
fn idle_upgraded_connections_are_closed() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n    timeouts: {{ tunnel_idle: 1s }}\n",
        up.url()
    ));
    let (mut s, head) =
        send_head(&gw, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let mut byte = [0u8; 1];
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Busy for 2.4 s (more than twice the idle time): still relayed.
    for i in 0..6u8 {
        std::thread::sleep(Duration::from_millis(400));
        s.write_all(&[b'a' + i]).unwrap();
        s.read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], b'a' + i);
    }
    // Then idle: the gateway closes the connection.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).expect("closed, not timed out");
    assert_eq!(n, 0);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(3000), "closed after {took:?}");
}

#[test]
fn http1_upgrades_are_relayed() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
    let (mut s, head) =
        send_head(&gw, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping over the upgraded connection").unwrap();
    let mut buf = [0u8; 33];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping over the upgraded connection");

    // Of several protocols offered, only those the route allows reach the upstream (which
    // switches to the first it is offered).
    let (_s, head) = send_head(
        &gw,
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tunnel/1, WebSocket\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket\r\n"), "{head}");

    // Any other protocol is not relayed by default: the request is served as plain HTTP,
    // and the upstream sees no upgrade.
    let (_s, head) =
        send_head(&gw, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo-protocol\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Never to HTTP/2 by upgrade: the upstream would then take requests the gateway never
    // sees. The request is served as plain HTTP/1.1, without the upgrade.
    let (_s, head) = send_head(&gw, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// A route lists the protocols it relays; `[]` turns upgrades off.
#[test]
fn routes_choose_which_upgrades_they_relay() {
    let up = Upstream::start();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: custom\n    match: {{ path_prefix: /custom }}\n    upstream: {u}\n    authenticate: [none]\n    upgrades: [echo-protocol]\n  - id: off\n    match: {{ path_prefix: /off }}\n    upstream: {u}\n    authenticate: [none]\n    upgrades: []\n",
        u = up.url()
    ));
    let (mut s, head) = send_head(
        &gw,
        b"GET /custom/upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: Echo-Protocol\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"relayed").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"relayed");
    // Not in this route's list, although allowed by default elsewhere.
    let (_s, head) =
        send_head(&gw, b"GET /custom/upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_s, head) =
        send_head(&gw, b"GET /off/upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// A `101` must name what the upstream switched to, and only what it was offered.
#[test]
fn an_upstream_switching_to_what_it_was_not_offered_is_refused() {
    for (what, upgrade) in [("nothing", ""), ("another protocol", "tunnel"), ("an offer and more", "websocket, tunnel")]
    {
        let up = crate::upstream::RawUpstream::start(
            format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {upgrade}\r\n\r\n")
                .into_bytes(),
        );
        let gw = Gateway::start(&format!("routes:\n  - id: r\n    upstream: {}\n    authenticate: [none]\n", up.url()));
        let (_s, head) =
            send_head(&gw, b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 502"), "switched to {what}: {head}");
    }
}
