//! Starting the real `portcullis` binary with a config, and talking to it.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A folder that is removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-e2e-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The gateway under test: this build's binary, or the one `PORTCULLIS_E2E_BIN` names (to run
/// the suite against another build of the same source, e.g. `bench/pgo.py`'s). A name of its
/// own, not the benchmark's `PORTCULLIS_BIN`: a variable left over from benchmarking must not
/// put a stale binary under test. Made absolute, since gateways start in their own directory.
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| match std::env::var_os("PORTCULLIS_E2E_BIN") {
        Some(path) => {
            let path = std::path::absolute(&path).expect("PORTCULLIS_E2E_BIN");
            eprintln!("gateway under test: {}", path.display());
            path.to_string_lossy().into_owned()
        }
        None => env!("CARGO_BIN_EXE_portcullis").into(),
    })
}

/// A running gateway. Killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub config: PathBuf,
}

/// The part of a config every test shares: listeners and logs. `{listen}` and `{admin}`
/// in `rest` are not needed: the harness adds the `server`/`admin` keys itself unless the
/// test gives a full `server:` block containing `{listen}`.
pub fn config_with(listen: SocketAddr, admin: SocketAddr, body: &str) -> String {
    let body = body.replace("{listen}", &listen.to_string()).replace("{admin}", &admin.to_string());
    let mut out = String::new();
    if !body.contains("server:") {
        out.push_str(&format!("server:\n  listen: {listen}\n"));
    }
    if !body.contains("admin:") {
        out.push_str(&format!("admin:\n  listen: {admin}\n"));
    }
    if !body.contains("access_log:") {
        out.push_str("access_log:\n  path: access.log\n");
    }
    out.push_str(&body);
    out
}

impl Gateway {
    /// Starts the gateway with `body` (see [`config_with`]) and waits until it is ready.
    pub fn start(body: &str) -> Gateway {
        Self::start_in(TempDir::new("gw"), body)
    }

    /// Starts the gateway and waits only until it is alive (`/healthz`), not ready.
    pub fn start_alive(body: &str) -> Gateway {
        Self::start_with(TempDir::new("gw"), body, "/healthz")
    }

    /// Like [`Gateway::start_alive`], in a folder the test already filled.
    pub fn start_alive_in(dir: TempDir, body: &str) -> Gateway {
        Self::start_with(dir, body, "/healthz")
    }

    /// Like [`Gateway::start`], in a folder the test already filled (certificates...).
    pub fn start_in(dir: TempDir, body: &str) -> Gateway {
        Self::start_with(dir, body, "/readyz")
    }

    fn start_with(dir: TempDir, body: &str, probe: &'static str) -> Gateway {
        let mut dir = Some(dir);
        for _ in 0..3 {
            // Both ports held at once while chosen, so the two can never be the same.
            let (a, b) = (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap());
            let (addr, admin) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            drop((a, b));
            let d = dir.take().unwrap();
            let config = d.write("portcullis.yaml", config_with(addr, admin, body));
            let mut gw = Gateway { child: None, addr, admin, config, dir: d };
            match gw.spawn(probe) {
                Ok(()) => return gw,
                // The port was taken between our probe and the gateway's bind: try others.
                Err(e) if e.contains("cannot listen") => {
                    gw.child = None;
                    dir = Some(std::mem::replace(&mut gw.dir, TempDir(PathBuf::new())));
                }
                Err(e) => {
                    gw.child = None;
                    panic!("gateway did not start: {e}");
                }
            }
        }
        panic!("gateway did not start: no free ports");
    }

    fn spawn(&mut self, probe: &str) -> Result<(), String> {
        let stderr = std::fs::File::create(self.dir.path().join("stderr.log")).unwrap();
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", self.stderr()));
            }
            if admin_get(self.admin, probe).map(|(s, _)| s == 200).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from {probe} after 20s: {}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway again after it exited, with the same folder, config and ports.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn("/readyz").unwrap_or_else(|e| panic!("gateway did not start again: {e}"));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Rewrites the config (same listeners) without signalling.
    pub fn write_config(&self, body: &str) {
        // Atomically, as deployment tools do: the file watch never sees it half written.
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, config_with(self.addr, self.admin, body)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").unwrap().1
    }

    /// The value of the first metric line starting with `prefix` (0 when absent).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `cond` holds on the metrics text.
    pub fn wait_metric(&self, what: &str, cond: impl Fn(&Gateway) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends SIGHUP and waits for the reload to be counted (success or failure).
    pub fn reload(&self) {
        let before = self.reloads();
        self.signal("HUP");
        self.wait_metric("a reload", |g| g.reloads() > before);
    }

    pub fn reloads(&self) -> f64 {
        self.metric("portcullis_config_reloads_total{result=\"success\"}")
            + self.metric("portcullis_config_reloads_total{result=\"failure\"}")
    }

    /// Sends SIGTERM and waits for the exit. Once the gateway has taken it (it reports
    /// not-ready), a second SIGTERM skips `server.shutdown_delay`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(admin_get(self.admin, "/readyz"), Ok((200, _))) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Not asserted: it may have exited already.
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        self.wait_exit(within)
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "gateway did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `VmHWM`: the peak resident memory of the gateway, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Tests assert on behaviour; a panic in the gateway is a failure whatever the test.
        let err = self.stderr();
        if err.contains("panicked") && !std::thread::panicking() {
            panic!("the gateway panicked:\n{err}");
        }
    }
}

/// A blocking GET on the admin listener: (status, body).
pub fn admin_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, dechunk(&body)))
}

/// Decodes a chunked body if it looks chunked (admin responses are small).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// A new API key and its hash, from `portcullis apikey new`: (key, hash).
pub fn new_api_key() -> (String, String) {
    let (_, out, _) = run_cli(&["apikey", "new"]);
    let key = out.lines().find_map(|l| l.strip_prefix("key:  ")).unwrap().to_string();
    let hash = out.lines().find_map(|l| l.strip_prefix("hash: ")).unwrap().to_string();
    (key, hash)
}

/// Runs `portcullis` with arguments: (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP client that does not reuse connections across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Parses a problem+json response, checking its content type and status field.
pub async fn problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert_eq!(
        resp.headers().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "problem responses are application/problem+json"
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["status"], status);
    assert!(v["type"].as_str().unwrap().starts_with("urn:portcullis:problem:"), "{v}");
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
    v
}

/// Starts a peer process that prints one line (its address) when ready; returns it and that
/// line. The rest of its output is drained in the background, so the peer never dies of a
/// closed pipe.
pub fn spawn_peer(mut cmd: std::process::Command) -> (Child, String) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    (child, line.trim().to_string())
}

/// Python helpers live next to the tests.
pub fn helper(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers").join(name)
}
