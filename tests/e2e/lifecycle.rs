//! The process: config check, hot reload (under load, and of an invalid config), draining
//! on SIGTERM, the admin API's metrics as real scrapers parse them, the process log, and the
//! CLI's other commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Gateway, TempDir, admin_get, client, free_port, run_cli};
use crate::upstream::Upstream;

fn routes(up: &str, extra_route: bool) -> String {
    let mut s = format!(
        "routes:\n  - id: main\n    match: {{ path_prefix: /main }}\n    upstream: {up}\n    authenticate: [none]\n"
    );
    if extra_route {
        s.push_str("  - id: extra\n    match: { path_prefix: /extra }\n    upstream: echo\n    authenticate: [none]\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_fails_no_request() {
    let up = Upstream::start();
    let gw = Gateway::start(&routes(&up.url(), false));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..8 {
        // Half reuse connections, half open a new one per request.
        let c =
            if i % 2 == 0 { client() } else { reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap() };
        let (url, stop, ok) = (gw.url("/main/x"), stop.clone(), ok.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        }));
    }
    let gw = Arc::new(gw);
    for round in 0..20 {
        gw.write_config(&routes(&up.url(), round % 2 == 0));
        let g = gw.clone();
        tokio::task::spawn_blocking(move || g.reload()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} requests failed during reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 200, "the load ran: {} requests", ok.load(Ordering::Relaxed));
    // Each round is seen by SIGHUP and, racing it, by the file watch: at least 20 reloads, none
    // failed, and every success advanced the generation exactly once.
    // Read from one snapshot, so that a late reload cannot fall between the two values.
    let text = gw.metrics();
    let value = |name: &str| -> f64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
    };
    let successes = value("portcullis_config_reloads_total{result=\"success\"}");
    assert!(successes >= 20.0, "{successes} successful reloads");
    assert_eq!(value("portcullis_config_reloads_total{result=\"failure\"}"), 0.0);
    assert_eq!(value("portcullis_config_generation"), successes + 1.0);
}

#[tokio::test]
async fn invalid_reload_keeps_the_old_config_serving() {
    let up = Upstream::start();
    let gw = Gateway::start(&routes(&up.url(), true));
    let c = client();
    assert_eq!(c.get(gw.url("/extra")).send().await.unwrap().status(), 200);

    for broken in [
        "routes:\n  - id: main\n    upstream: echo\n", // default deny: no authenticate
        "routes: [\n",                                 // YAML syntax
        "server:\n  listen: {listen}\n  tls: { cert: /nonexistent.pem, key: /nonexistent-key.pem }\nroutes: []\n",
    ] {
        gw.write_config(broken);
        gw.reload();
        assert_eq!(
            c.get(gw.url("/extra")).send().await.unwrap().status(),
            200,
            "old config still serves after {broken:?}"
        );
        assert_eq!(c.get(gw.url("/main/y")).send().await.unwrap().status(), 200);
    }
    assert_eq!(gw.metric("portcullis_config_reloads_total{result=\"failure\"}"), 3.0);
    assert_eq!(gw.metric("portcullis_config_generation"), 1.0);
    let log = gw.stderr();
    assert!(log.contains("config reload rejected"), "{log}");
    assert!(log.contains("routes[0].authenticate"), "the log names the key: {log}");

    // A good config after the bad ones is taken.
    gw.write_config(&routes(&up.url(), false));
    gw.reload();
    assert_eq!(c.get(gw.url("/extra")).send().await.unwrap().status(), 404);
    assert_eq!(gw.metric("portcullis_config_generation"), 2.0);
}

/// A Kubernetes ConfigMap volume: the file is a symlink through `..data`, itself a symlink
/// to a timestamped folder, and an update swaps `..data` in one rename. The gateway sees it
/// and reloads, with no signal.
#[tokio::test]
async fn a_configmap_update_is_reloaded() {
    use std::os::unix::fs::symlink;
    let up = Upstream::start();
    let gw = Gateway::start(&routes(&up.url(), false));
    let dir = gw.config.parent().unwrap().to_path_buf();
    let first = std::fs::read_to_string(&gw.config).unwrap();
    // The volume's layout, with the same content (no reload: nothing changed).
    std::fs::create_dir(dir.join("..2026_12_08_01")).unwrap();
    std::fs::write(dir.join("..2026_12_08_01/portcullis.yaml"), &first).unwrap();
    symlink("..2026_12_08_01", dir.join("..data")).unwrap();
    symlink("..data/portcullis.yaml", dir.join("portcullis.yaml.link")).unwrap();
    std::fs::rename(dir.join("portcullis.yaml.link"), &gw.config).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.metric("portcullis_config_generation"), 1.0);
    let c = client();
    assert_eq!(c.get(gw.url("/extra")).send().await.unwrap().status(), 404);
    // The update, as the kubelet makes it.
    let second = first.replace(&routes(&up.url(), false), &routes(&up.url(), true));
    assert_ne!(second, first);
    std::fs::create_dir(dir.join("..2026_12_08_02")).unwrap();
    std::fs::write(dir.join("..2026_12_08_02/portcullis.yaml"), &second).unwrap();
    symlink("..2026_12_08_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_12_08_01")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric("portcullis_config_generation") < 2.0 {
        assert!(Instant::now() < deadline, "no reload after the swap: {}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.get(gw.url("/extra")).send().await.unwrap().status(), 200);
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let up = Upstream::start();
    let mut gw = Gateway::start(&format!(
        "server:\n  listen: {{listen}}\n  drain_timeout: 10s\n  shutdown_delay: 0s\n{}",
        routes(&up.url(), false)
    ));
    let url = gw.url("/main/slow?ms=1500");
    let in_flight = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { client().get(url).send().await.map(|r| r.status().as_u16()) })
    });
    std::thread::sleep(Duration::from_millis(400));
    let started = Instant::now();
    gw.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(admin_get(gw.admin, "/readyz").unwrap().0, 503, "not ready while draining");
    assert!(std::net::TcpStream::connect(gw.addr).is_err(), "no new connections while draining");
    let status = gw.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert_eq!(in_flight.join().unwrap().unwrap(), 200, "the request in flight completed");
    assert!(started.elapsed() >= Duration::from_millis(900), "exit waited for the request");
}

/// A rolling update: on SIGTERM the gateway reports not-ready at once and keeps accepting
/// for `server.shutdown_delay`, then drains. Clients that route by readiness, as a
/// Kubernetes Service does (here: /readyz polled every 100 ms, a probe), lose no request
/// while one of two replicas goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_a_shutdown_delay_loses_no_request() {
    let up = Upstream::start();
    let config = format!(
        "server:\n  listen: {{listen}}\n  shutdown_delay: 1500ms\n  drain_timeout: 5s\n{}",
        routes(&up.url(), false)
    );
    let mut a = Gateway::start(&config);
    let b = Gateway::start(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new([AtomicBool::new(true), AtomicBool::new(true)]);
    let probe = {
        let (ready, stop, admins) = (ready.clone(), stop.clone(), [a.admin, b.admin]);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, admin) in admins.iter().enumerate() {
                    let up = matches!(admin_get(*admin, "/readyz"), Ok((200, _)));
                    ready[i].store(up, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let ok = Arc::new(AtomicU64::new(0));
    let urls = Arc::new([a.url("/main/x"), b.url("/main/x")]);
    let mut clients = Vec::new();
    for i in 0..8 {
        // Half keep connections alive, half open one a request.
        let c =
            if i % 2 == 0 { client() } else { reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap() };
        let (urls, ready, stop, ok) = (urls.clone(), ready.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let pick = if ready[n % 2].load(Ordering::Relaxed) { n % 2 } else { 1 - n % 2 };
                match c.get(&urls[pick]).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("replica {pick}: status {}", r.status())),
                    Err(e) => failures.push(format!("replica {pick}: {e}")),
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    a.signal("TERM");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Within the delay: not ready, and still serving a new connection.
    assert_eq!(admin_get(a.admin, "/readyz").unwrap().0, 503, "not ready at once");
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    assert_eq!(fresh.get(a.url("/main/late")).send().await.unwrap().status(), 200, "accepting during the delay");
    let status = tokio::task::spawn_blocking(move || a.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "accepted until the delay ended");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    probe.join().unwrap();
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "{} lost requests: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(ok.load(Ordering::Relaxed) > 100, "load ran: {}", ok.load(Ordering::Relaxed));
    drop(b);
}

#[test]
fn drain_has_a_deadline() {
    let up = Upstream::start();
    let mut gw =
        Gateway::start(&format!("server:\n  listen: {{listen}}\n  drain_timeout: 500ms\n{}", routes(&up.url(), false)));
    let url = gw.url("/main/slow?ms=10000");
    let _stuck = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { client().get(url).send().await.map(|r| r.status().as_u16()) })
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = gw.terminate(Duration::from_secs(5));
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(3), "exited at the drain deadline, not after the request");
}

/// `check` reports every malformed config with the key and the line.
#[test]
fn check_names_key_and_line() {
    let dir = TempDir::new("check");
    let good = "server:\n  listen: 127.0.0.1:8080\nroutes:\n  - id: a\n    upstream: echo\n    authenticate: [none]\n";
    let path = dir.write("good.yaml", good);
    let (code, out, _) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("valid (1 routes)"), "{out}");

    let cases: &[(&str, &str, &str)] = &[
        ("server:\n  listen: 127.0.0.1:8080\n  lisen: x\nroutes: []\n", ":3:", "unknown key `lisen`"),
        ("server:\n  listen: nowhere\nroutes: []\n", ":2:", "server.listen"),
        (
            "server:\n  listen: 127.0.0.1:8080\nroutes:\n  - id: a\n    upstream: echo\n",
            ":4:",
            "routes[0].authenticate",
        ),
        (
            "server:\n  listen: 127.0.0.1:8080\nroutes:\n  - id: a\n    match: { path_template: \"/a/{id\" }\n    upstream: echo\n    authenticate: [none]\n",
            ":5:",
            "routes[0].match.path_template",
        ),
        (
            "server:\n  listen: 127.0.0.1:8080\n  tls: { cert: missing.pem, key: missing-key.pem }\nroutes: []\n",
            ":3:",
            "server.tls.cert",
        ),
        (
            "server:\n  listen: 127.0.0.1:8080\nroutes:\n  - id: a\n    upstream: ftp://x\n    authenticate: [none]\n",
            ":5:",
            "routes[0].upstream",
        ),
        (
            "server:\n  listen: 127.0.0.1:8080\nroutes:\n  - id: a\n    upstream: echo\n    authenticate: [none]\n  - id: b\n    upstream: echo\n    authenticate: [none]\n",
            ":7:",
            "routes[1].match",
        ),
        (
            "server:\n  listen: 127.0.0.1:8080\nroutes:\n  - id: a\n    upstream: echo\n    authenticate: [jwt]\n",
            ":6:",
            "issuers",
        ),
    ];
    for (yaml, line, key) in cases {
        let path = dir.write("bad.yaml", yaml);
        let (code, _, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "accepted:\n{yaml}");
        assert!(err.contains(&format!("bad.yaml{line}")), "no line {line} in: {err}");
        assert!(err.contains(key), "no `{key}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (code, _, err) = run_cli(&["check", "--config", "/nonexistent/portcullis.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn serve_refuses_an_invalid_config() {
    let dir = TempDir::new("serve-bad");
    let path = dir.write("bad.yaml", "server:\n  listen: 127.0.0.1:1\nroutes:\n  - id: a\n    upstream: echo\n");
    let (code, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("routes[0].authenticate"), "{err}");
}

#[test]
fn schema_and_version() {
    let (code, out, _) = run_cli(&["config", "schema"]);
    assert_eq!(code, 0);
    let schema: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(schema["title"], "Portcullis configuration");
    assert!(schema["properties"]["routes"].is_object());
    let (code, out, _) = run_cli(&["version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("portcullis "), "{out}");
}

/// Parses metrics text with Python's prometheus_client, the reference parser of each format
/// (`text` for the Prometheus text format 0.0.4, `openmetrics`), and returns its families as
/// `{name: {"type": ..., "samples": [[name, labels, value]...]}}`.
fn parse_metrics(format: &str, body: &str) -> Value {
    use std::io::Write;
    const SCRIPT: &str = r#"
import json, sys
if sys.argv[1] == "text":
    from prometheus_client.parser import text_string_to_metric_families
else:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    assert f.name not in families, "family %s split in two" % f.name
    families[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(families))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT, format])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the {format} parser refused:\n{}\n{body}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` with exactly `labels` in a parsed family.
fn sample(families: &Value, family: &str, name: &str, labels: Value) -> Option<f64> {
    families[family]["samples"].as_array()?.iter().find(|s| s[0] == name && s[1] == labels).and_then(|s| s[2].as_f64())
}

/// What every scraper must find, whichever format: the request counter typed as a counter
/// with one series per route and status, and the reload counter before any reload.
fn assert_scraped(families: &Value, body: &str) {
    let requests = &families["portcullis_requests"];
    assert_eq!(requests["type"], "counter", "{body}");
    let count = |route: &str, code: &str| {
        sample(
            families,
            "portcullis_requests",
            "portcullis_requests_total",
            serde_json::json!({"route": route, "code": code}),
        )
    };
    assert_eq!(count("hello", "200"), Some(3.0), "{body}");
    assert_eq!(count("down", "502"), Some(2.0), "{body}");
    assert_eq!(requests["samples"].as_array().unwrap().len(), 2, "{body}");
    for result in ["success", "failure"] {
        let reloads = sample(
            families,
            "portcullis_config_reloads",
            "portcullis_config_reloads_total",
            serde_json::json!({ "result": result }),
        );
        assert_eq!(reloads, Some(0.0), "{body}");
    }
    assert_eq!(families["portcullis_request_duration_seconds"]["type"], "histogram", "{body}");
    let observed = sample(
        families,
        "portcullis_request_duration_seconds",
        "portcullis_request_duration_seconds_count",
        serde_json::json!({"route": "hello"}),
    );
    assert_eq!(observed, Some(3.0), "{body}");
    assert_eq!(families["portcullis_config_generation"]["type"], "gauge", "{body}");
    for (name, family) in families.as_object().unwrap() {
        assert_ne!(family["type"], "unknown", "{name} has no type:\n{body}");
        assert_ne!(family["type"], "untyped", "{name} has no type:\n{body}");
    }
}

#[tokio::test]
async fn metrics_are_prometheus_text_unless_openmetrics_is_asked_for() {
    let closed = free_port();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: hello\n    match: {{ path: /hello }}\n    upstream: echo\n    authenticate: [none]\n\
         \x20 - id: down\n    match: {{ path: /down }}\n    upstream: http://127.0.0.1:{closed}\n    authenticate: [none]\n"
    ));
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/hello")).send().await.unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/down")).send().await.unwrap().status(), 502);
    }
    gw.wait_metric("the requests counted", |g| {
        g.metric("portcullis_requests_total{route=\"down\",code=\"502\"}") == 2.0
    });
    let metrics = format!("http://{}/metrics", gw.admin);
    let scrape = |accept: Option<&'static str>| {
        let (c, metrics) = (c.clone(), metrics.clone());
        async move {
            let mut req = c.get(&metrics);
            if let Some(a) = accept {
                req = req.header("accept", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            (ct, r.text().await.unwrap())
        }
    };

    // No preference (a plain curl, a text/plain scraper): the Prometheus text format.
    let (_, plain) = admin_get(gw.admin, "/metrics").unwrap();
    for accept in [
        None,
        Some("*/*"),
        Some("text/plain"),
        Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
    ] {
        let (ct, body) = scrape(accept).await;
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8", "for {accept:?}");
        assert!(!body.contains("# EOF") && !body.contains("# UNIT"), "{body}");
        assert_scraped(&parse_metrics("text", &body), &body);
    }
    assert!(plain.contains("# TYPE portcullis_requests_total counter\n"), "{plain}");
    assert_scraped(&parse_metrics("text", &plain), &plain);

    // OpenMetrics for those that ask for it, Prometheus's own scraper among them.
    for accept in [
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ] {
        let (ct, body) = scrape(Some(accept)).await;
        assert_eq!(ct, "application/openmetrics-text; version=1.0.0; charset=utf-8", "for {accept}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_scraped(&parse_metrics("openmetrics", &body), &body);
    }
}

/// With `log.level: trace` and the log written into the config's folder (which the reload
/// watch observes), a log line must not cause another: the log stays quiet while nothing
/// happens, and the trace level still reaches the gateway's own logging.
#[tokio::test]
async fn trace_logging_next_to_the_config_does_not_feed_itself() {
    let closed = free_port();
    let gw = Gateway::start(&format!(
        "log:\n  level: trace\nroutes:\n  - id: down\n    match: {{ path: /down }}\n    upstream: http://127.0.0.1:{closed}\n    authenticate: [none]\n"
    ));
    // The harness writes the process log beside the config file.
    assert_eq!(gw.config.parent(), Some(gw.dir.path()));
    let c = client();
    // A failed request is logged at debug.
    assert_eq!(c.get(gw.url("/down")).send().await.unwrap().status(), 502);
    assert_eq!(c.get(gw.url("/nowhere")).send().await.unwrap().status(), 404);
    let size = || std::fs::metadata(gw.dir.path().join("stderr.log")).map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let settled = size();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = size();
    assert!(later - settled < 16 * 1024, "the idle log grew {} bytes in 2 s (from {settled})", later - settled);
    assert!(later < 1024 * 1024, "the log is {later} bytes");
    let log = gw.stderr();
    let own_detail = log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|l| {
        matches!(l["level"].as_str(), Some("DEBUG" | "TRACE"))
            && l["target"].as_str().is_some_and(|t| t.starts_with("portcullis"))
    });
    assert!(own_detail, "no debug or trace line of the gateway's own:\n{log}");
    for noisy in ["notify", "inotify", "mio", "hyper", "h2", "rustls", "tokio"] {
        let flooding = log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|l| {
            matches!(l["level"].as_str(), Some("DEBUG" | "TRACE"))
                && l["target"].as_str().is_some_and(|t| t == noisy || t.starts_with(&format!("{noisy}::")))
        });
        assert!(!flooding, "{noisy} logs below info:\n{log}");
    }
}
