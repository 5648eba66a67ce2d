//! Managing a fleet: signed config bundles made with `portcullis bundle create` (keys made by
//! `openssl`), served by a real nginx to two gateways that poll it. A new version reaches
//! both; a tampered, older or invalid bundle is refused and the running config keeps
//! serving; the server going away changes nothing; a restart without it serves the cached
//! bundle. `/status` and `portcullis fleet status` report what each runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{TempDir, admin_get, binary, client, free_port, run_cli};

/// nginx serving the files of a folder, with its ETags. Stopped when dropped.
struct Nginx {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    fn start(root: &Path) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let user = if is_root() { "user root;\n" } else { "" };
        let conf = format!(
            "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{\n    listen 127.0.0.1:{port};\n    root {r};\n  }}\n}}\n",
            d = dir.path().display(),
            r = root.display()
        );
        let path = dir.write("nginx.conf", conf);
        let mut n = Nginx { child: None, port, dir };
        n.spawn(&path);
        n
    }

    fn spawn(&mut self, conf: &Path) {
        let child = Command::new("nginx")
            .args(["-c", conf.to_str().unwrap(), "-p", self.dir.path().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Fast shutdown (SIGTERM): the master stops its workers too, which SIGKILL would leave
    /// serving.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective user.
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// An Ed25519 key pair made by openssl: (signing key, public key) paths.
fn keys(dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.path().join(format!("{name}.key"));
    let public = dir.path().join(format!("{name}.pub"));
    let ok = Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&private).status().unwrap();
    assert!(ok.success());
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    (private, public)
}

/// A config folder whose route `/v` answers from the echo upstream with `X-Bundle: <tag>`
/// added by the route, plus a policy file it does not need (bundled all the same).
fn config_dir(dir: &TempDir, tag: &str, extra: &str) -> PathBuf {
    let d = dir.path().join(format!("src-{tag}"));
    std::fs::create_dir_all(d.join("policies")).unwrap();
    std::fs::write(
        d.join("portcullis.yaml"),
        format!(
            "server:\n  listen: 127.0.0.1:1\n  shutdown_delay: 0s\nadmin:\n  listen: 127.0.0.1:2\nroutes:\n  - id: {tag}\n    match: {{ path_prefix: /{tag} }}\n    upstream: echo\n    authenticate: [none]\n{extra}"
        ),
    )
    .unwrap();
    std::fs::write(d.join("policies/readme.txt"), format!("bundle {tag}\n")).unwrap();
    d
}

/// `portcullis bundle create SRC --key KEY --bundle-version VERSION --out OUT`.
fn create(src: &Path, key: &Path, version: u64, out: &Path) -> (i32, String, String) {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let version = version.to_string();
    run_cli(&["bundle", "create", &path(src), "--key", &path(key), "--bundle-version", &version, "--out", &path(out)])
}

/// Publishes a bundle of `src` as version `version` at `root/edge.tar` (atomically, as a
/// deployment would).
fn publish(root: &Path, src: &Path, key: &Path, version: u64) {
    let tmp = root.join("edge.tar.tmp");
    let (code, _, err) = create(src, key, version, &tmp);
    assert_eq!(code, 0, "{err}");
    // nginx's ETag is the modification time in seconds and the size, which tar pads: a time
    // of its own for each publication, as files published seconds apart would have.
    static PUBLISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_800_000_000);
    let at = PUBLISHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(Command::new("touch").arg("-d").arg(format!("@{at}")).arg(&tmp).status().unwrap().success());
    std::fs::rename(&tmp, root.join("edge.tar")).unwrap();
}

/// A gateway started from a bootstrap file.
struct Managed {
    child: Option<Child>,
    port: u16,
    admin: std::net::SocketAddr,
    dir: TempDir,
}

impl Managed {
    fn start(url: &str, public: &Path, name: &str) -> Managed {
        let dir = TempDir::new(name);
        let (port, admin) = (free_port(), free_port());
        dir.write(
            "bootstrap.yaml",
            format!(
                "config:\n  source:\n    url: {url}\n    public_keys: [{}]\n    poll_interval: 1s\n  listen: 127.0.0.1:{port}\n  admin_listen: 127.0.0.1:{admin}\n",
                public.display()
            ),
        );
        let mut m = Managed { child: None, port, admin: ([127, 0, 0, 1], admin).into(), dir };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("stderr.log")).unwrap();
        let child = Command::new(binary())
            .args(["serve", "--config", "bootstrap.yaml"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {s}: {}", self.stderr());
            }
            if matches!(admin_get(self.admin, "/readyz"), Ok((200, _))) {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&admin_get(self.admin, "/status").unwrap().1).unwrap()
    }

    async fn get(&self, path: &str) -> u16 {
        client().get(format!("http://127.0.0.1:{}{path}", self.port)).send().await.unwrap().status().as_u16()
    }

    /// Waits until `/status` shows bundle `version` (and returns the status).
    async fn runs(&self, version: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.status();
            if s["bundle"]["version"] == version {
                return s;
            }
            assert!(Instant::now() < deadline, "still {} after 5s: {}", s["bundle"], self.stderr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/status` shows a refused bundle for which `check` holds.
    async fn refused(&self, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.status();
            if check(&s["last_refused_bundle"]) {
                return s;
            }
            assert!(Instant::now() < deadline, "no such refusal: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bundles_from_nginx_drive_two_gateways() {
    let work = TempDir::new("fleet");
    let (key, public) = keys(&work, "signing");
    let (other_key, _) = keys(&work, "other");
    let root = work.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let mut nginx = Nginx::start(&root);
    let url = nginx.url("edge.tar");

    publish(&root, &config_dir(&work, "one", ""), &key, 1);
    let a = Managed::start(&url, &public, "gw-a");
    let mut b = Managed::start(&url, &public, "gw-b");
    for g in [&a, &b] {
        assert_eq!(g.get("/one/x").await, 200);
        assert_eq!(g.get("/two/x").await, 404);
        let s = g.runs(1).await;
        assert_eq!(s["bundle"]["from"], url.as_str());
        assert_eq!(s["config"]["generation"], 1);
    }

    // A new version reaches both within the poll interval (1s), without a signal.
    publish(&root, &config_dir(&work, "two", ""), &key, 2);
    for g in [&a, &b] {
        let s = g.runs(2).await;
        assert_eq!(g.get("/two/x").await, 200);
        assert_eq!(g.get("/one/x").await, 404);
        assert_eq!(s["last_reload"]["result"], "success");
        assert_eq!(s["last_reload"]["cause"], "bundle");
    }

    // Tampered: one byte of the config changed after signing. Refused; version 2 serves.
    publish(&root, &config_dir(&work, "three", ""), &key, 3);
    let mut bytes = std::fs::read(root.join("edge.tar")).unwrap();
    let at = bytes.windows(5).position(|w| w == b"three").unwrap();
    bytes[at..at + 5].copy_from_slice(b"thref");
    std::fs::write(root.join("edge.tar"), &bytes).unwrap();
    for g in [&a, &b] {
        let s = g.refused(|r| r["reason"].as_str().is_some_and(|r| r.contains("digest"))).await;
        assert_eq!(s["bundle"]["version"], 2);
        assert_eq!(g.get("/two/x").await, 200);
    }
    // Signed by a key the gateways do not trust.
    publish(&root, &config_dir(&work, "four", ""), &other_key, 4);
    for g in [&a, &b] {
        g.refused(|r| r["reason"].as_str().is_some_and(|r| r.contains("signature"))).await;
        assert_eq!(g.get("/two/x").await, 200);
    }
    // Older than the running one (a rollback), though well signed.
    publish(&root, &config_dir(&work, "one", ""), &key, 1);
    for g in [&a, &b] {
        g.refused(|r| r["version"] == 1 && r["reason"].as_str().is_some_and(|r| r.contains("not newer"))).await;
        assert_eq!(g.get("/two/x").await, 200);
        assert_eq!(g.get("/one/x").await, 404);
    }
    // Newer and signed, but its config is invalid: refused, named, and version 2 serves.
    publish(&root, &config_dir(&work, "five", "    authorize: { scopes: 7 }\n"), &key, 5);
    for g in [&a, &b] {
        let s = g.refused(|r| r["version"] == 5).await;
        assert!(s["last_refused_bundle"]["reason"].as_str().unwrap().contains("routes[0].authorize"), "{s}");
        assert_eq!(s["last_reload"]["result"], "failure");
        assert_eq!(s["bundle"]["version"], 2);
        assert_eq!(g.get("/two/x").await, 200);
    }

    // `portcullis fleet status` shows both.
    let admin_urls = [format!("http://{}", a.admin), format!("http://{}", b.admin)];
    let (code, table, err) = run_cli(&["fleet", "status", &admin_urls[0], &admin_urls[1]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.lines().skip(1).all(|l| l.contains(" 2 ")), "both on bundle 2: {table}");
    let (code, table, _) = run_cli(&["fleet", "status", &admin_urls[0], &format!("http://127.0.0.1:{}", free_port())]);
    assert_eq!(code, 1);
    assert!(table.contains("unreachable"), "{table}");

    // A restart while the server offers the invalid version 5: the cached version 2.
    b.restart();
    assert_eq!(b.get("/two/x").await, 200);
    let s = b.status();
    assert_eq!((s["bundle"]["version"].clone(), s["bundle"]["from"].clone()), (2.into(), "cache".into()), "{s}");
    assert_eq!(s["last_refused_bundle"]["version"], 5, "{s}");

    // The server goes away: both keep serving version 2.
    nginx.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", nginx.port)).is_err(), "nginx still serves");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for g in [&a, &b] {
        assert_eq!(g.get("/two/x").await, 200);
        assert_eq!(g.status()["bundle"]["version"], 2);
    }
    // A restart without the server serves the cached bundle (version 2).
    b.restart();
    assert_eq!(b.get("/two/x").await, 200);
    let s = b.status();
    assert_eq!(s["bundle"]["version"], 2);
    assert_eq!(s["bundle"]["from"], "cache");
    assert!(s["last_refused_bundle"]["reason"].as_str().unwrap().contains("cannot be reached"), "{s}");
    // With neither server nor cache, a gateway does not start, and says why.
    let (code, _, err) = run_cli_in(&b.dir, &["serve", "--config", "bootstrap.yaml"], &["bundles"]);
    assert_eq!(code, 1);
    assert!(err.contains("no cached bundle"), "{err}");
}

/// Runs the CLI in `dir`, after removing `remove` there.
fn run_cli_in(dir: &TempDir, args: &[&str], remove: &[&str]) -> (i32, String, String) {
    for r in remove {
        let _ = std::fs::remove_dir_all(dir.path().join(r));
    }
    let out = Command::new(binary()).args(args).current_dir(dir.path()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bundle_create_and_verify_on_the_command_line() {
    let work = TempDir::new("bundle-cli");
    let (key, public) = keys(&work, "signing");
    let (_, other) = keys(&work, "other");
    let src = config_dir(&work, "one", "");
    let out = work.path().join("b.tar");
    let (code, said, err) = create(&src, &key, 42, &out);
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("version 42"), "{said}");
    // The tar holds the manifest, the signature and the files; tar(1) reads it.
    let listing = Command::new("tar").arg("tf").arg(&out).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        [".manifest", ".signature", "policies/readme.txt", "portcullis.yaml"]
    );

    let (code, said, err) =
        run_cli(&["bundle", "verify", out.to_str().unwrap(), "--public-key", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(said.contains("version 42") && said.contains("portcullis.yaml (config)"), "{said}");
    let (code, _, err) = run_cli(&["bundle", "verify", out.to_str().unwrap(), "--public-key", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("signature"), "{err}");
    // The public key printed from the signing key is openssl's.
    let (_, printed, _) = run_cli(&["bundle", "public-key", "--key", key.to_str().unwrap()]);
    assert_eq!(printed, std::fs::read_to_string(&public).unwrap());

    // A bootstrap file checks, and names a key that cannot be read.
    let boot = work.write(
        "boot.yaml",
        format!("config:\n  source:\n    url: http://127.0.0.1:1/b.tar\n    public_keys: [{}]\n", public.display()),
    );
    let (code, _, err) = run_cli(&["check", "--config", boot.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let boot = work.write("boot2.yaml", "config:\n  source:\n    url: ftp://x/b.tar\n    public_keys: []\n");
    let (code, _, err) = run_cli(&["check", "--config", boot.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("config.source.public_keys") && err.contains("config.source.url"), "{err}");
}

/// A receiver of status reports: every request's text (head and body), answered `204`.
fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/fleet", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut text = Vec::new();
            let mut buf = [0u8; 8192];
            // The head, then as many body bytes as it announces.
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text.extend_from_slice(&buf[..n]),
                }
                let t = String::from_utf8_lossy(&text).to_string();
                if let Some((head, body)) = t.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            seen.lock().unwrap().push(String::from_utf8_lossy(&text).into_owned());
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn the_status_is_reported_to_the_fleet_url() {
    let (url, got) = receiver();
    let gw = crate::harness::Gateway::start(&format!(
        "fleet:\n  id: edge-7\n  report_url: {url}\n  report_interval: 1s\nroutes:\n  - id: a\n    match: {{ path_prefix: /a }}\n    upstream: echo\n    authenticate: [none]\n"
    ));
    let status: Value = serde_json::from_str(&admin_get(gw.admin, "/status").unwrap().1).unwrap();
    assert_eq!(status["id"], "edge-7");
    assert_eq!(status["config"]["generation"], 1);
    assert!(status["bundle"].is_null(), "a config from a file: {status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        if let Some(r) = got.lock().unwrap().first().cloned() {
            break r;
        }
        assert!(Instant::now() < deadline, "no status report within 5s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(report.starts_with("POST /fleet HTTP/1.1"), "{report}");
    let body: Value = serde_json::from_str(report.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["id"], "edge-7");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}
