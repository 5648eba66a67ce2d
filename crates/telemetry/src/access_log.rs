//! The access log: one JSON line per request, serialised on the request's task and written
//! by a dedicated thread, so a slow disk never stalls a request.
//!
//! The query string is never logged (it may carry credentials), nor are headers. A decision's
//! record keeps only the token claims `access_log.claims` allows (none by default); the names
//! of the others are recorded as `authz.principal.claims_withheld`, their values never.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// Lines that may wait for the writer before new ones are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// One request, as the access log records it. Stages fill their fields as the request
/// passes; the log stage writes it when the response is done.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    /// When the request arrived.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The request id (also sent upstream and returned to the client).
    pub request_id: String,
    /// The client's address, as the gateway believes it (see `trusted_proxies`).
    pub client_ip: IpAddr,
    /// `HTTP/1.1`, `HTTP/2`...
    pub protocol: &'static str,
    /// The request method.
    pub method: String,
    /// The normalised path, without the query string.
    pub path: String,
    /// The route that matched.
    pub route: Option<Arc<str>>,
    /// The response status sent to the client.
    pub status: u16,
    /// Milliseconds from request to response head.
    pub duration_ms: f64,
    /// Milliseconds the upstream took to answer, when it was called.
    pub upstream_ms: Option<f64>,
    /// Who the caller was, once authenticated.
    pub principal: Option<Arc<str>>,
    /// How the caller authenticated.
    pub auth_method: Option<&'static str>,
    /// `allow` or `deny`, once authorization ran.
    pub decision: Option<&'static str>,
    /// Why the request was refused or failed (a problem code).
    pub reason: Option<&'static str>,
    /// The Cedar policies that decided (the permits of an allow, the forbids of a deny).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<String>>,
    /// Errors met evaluating the policies (each denies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_errors: Option<Vec<String>>,
    /// What the decision was made on (`portcullis authz replay` reads it back). Written by
    /// [`AccessLog::write`], which first drops the claims the allowlist does not name.
    #[serde(skip)]
    pub authz: Option<serde_json::Value>,
}

/// A record as written: the record, then its decision input with the claims filtered.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    record: &'a AccessRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    authz: Option<Cow<'a, Value>>,
}

/// The decision input `authz` with only the claims named in `keep`; the names of the others
/// go to `principal.claims_withheld`. Borrowed when nothing is withheld.
pub fn withhold_claims<'a>(authz: &'a Value, keep: &[String]) -> Cow<'a, Value> {
    let claims = authz.get("principal").and_then(|p| p.get("claims")).and_then(Value::as_object);
    let Some(claims) = claims.filter(|c| c.keys().any(|k| !keep.contains(k))) else {
        return Cow::Borrowed(authz);
    };
    let mut kept = Map::new();
    let mut withheld = Vec::new();
    for (k, v) in claims {
        if keep.contains(k) {
            kept.insert(k.clone(), v.clone());
        } else {
            withheld.push(Value::String(k.clone()));
        }
    }
    withheld.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    let mut out = authz.clone();
    if let Some(p) = out.get_mut("principal").and_then(Value::as_object_mut) {
        if kept.is_empty() {
            p.remove("claims");
        } else {
            p.insert("claims".into(), Value::Object(kept));
        }
        p.insert("claims_withheld".into(), Value::Array(withheld));
    }
    Cow::Owned(out)
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

enum Msg {
    Line(Vec<u8>),
    Reopen(Option<PathBuf>),
}

/// Handle to the access-log writer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Counter,
    /// `access_log.claims`: replaced on reload.
    claims: Arc<ArcSwap<Vec<String>>>,
}

impl AccessLog {
    /// Starts the writer, appending to `path` (standard output when `None`).
    pub fn start(path: Option<PathBuf>, dropped: Counter) -> io::Result<AccessLog> {
        let out = open(path.as_ref())?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("access-log".into()).spawn(move || writer(rx, out))?;
        Ok(AccessLog { tx, dropped, claims: Arc::default() })
    }

    /// The claims a decision's record keeps (`access_log.claims`): the request path withholds
    /// the others before it builds the record, so that [`AccessLog::write`] has nothing to copy.
    pub fn kept_claims(&self) -> Arc<Vec<String>> {
        self.claims.load_full()
    }

    /// Sets the claims a decision's record keeps (`access_log.claims`); all others are
    /// withheld. Applies to every clone of this handle.
    pub fn keep_claims(&self, claims: Vec<String>) {
        self.claims.store(Arc::new(claims));
    }

    /// Queues one record. Never blocks: when the writer is behind, the line is dropped and
    /// counted in `portcullis_access_log_dropped_total`.
    pub fn write(&self, record: &AccessRecord) {
        let mut line = Vec::with_capacity(384);
        // The pipeline's records arrive with their claims withheld already (borrowed here,
        // nothing copied); this holds the rule for any other record.
        let keep = self.claims.load();
        let authz = record.authz.as_ref().map(|a| withhold_claims(a, &keep));
        if serde_json::to_writer(&mut line, &Line { record, authz }).is_err() {
            return;
        }
        line.push(b'\n');
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Switches to `path` (or standard output), reopening the file: after log rotation, or
    /// when a reload changes the path.
    pub fn reopen(&self, path: Option<PathBuf>) {
        // Blocking send: a reopen must not be lost.
        let _ = self.tx.send(Msg::Reopen(path));
    }
}

fn open(path: Option<&PathBuf>) -> io::Result<Box<dyn Write + Send>> {
    Ok(match path {
        Some(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
        None => Box::new(io::stdout()),
    })
}

fn writer(rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything already queued, then flush once.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Msg::Reopen(path) => {
                    let _ = out.flush();
                    match open(path.as_ref()) {
                        Ok(w) => out = BufWriter::with_capacity(64 * 1024, w),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot reopen the access log; keeping the old one")
                        }
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_reopens() {
        let dir = std::env::temp_dir().join(format!("pc-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.log"), dir.join("b.log"));
        let log = AccessLog::start(Some(a.clone()), Counter::default()).unwrap();
        let rec = AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: "r1".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            method: "GET".into(),
            path: "/x".into(),
            route: Some("orders".into()),
            status: 200,
            duration_ms: 1.5,
            upstream_ms: None,
            principal: None,
            auth_method: None,
            decision: None,
            reason: None,
            policies: None,
            policy_errors: None,
            authz: None,
        };
        log.write(&rec);
        log.reopen(Some(b.clone()));
        log.write(&rec);
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(&b).map(|s| s.is_empty()).unwrap_or(true) {
            assert!(std::time::Instant::now() < deadline, "second file never written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let first = std::fs::read_to_string(&a).unwrap();
        let v: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["route"], "orders");
        assert_eq!(v["status"], 200);
        assert_eq!(std::fs::read_to_string(&b).unwrap().lines().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn claims_are_withheld_unless_allowed() {
        let authz = serde_json::json!({
            "method": "GET", "path": "/x",
            "principal": {"subject": "alice", "claims": {"sub": "alice", "email": "a@example.com", "roles": ["r"]}}
        });
        let none = withhold_claims(&authz, &[]);
        assert_eq!(none["principal"].get("claims"), None);
        assert_eq!(none["principal"]["claims_withheld"], serde_json::json!(["email", "roles", "sub"]));
        assert_eq!(none["principal"]["subject"], "alice");
        let some = withhold_claims(&authz, &["sub".into(), "roles".into()]);
        assert_eq!(some["principal"]["claims"], serde_json::json!({"sub": "alice", "roles": ["r"]}));
        assert_eq!(some["principal"]["claims_withheld"], serde_json::json!(["email"]));
        let all = withhold_claims(&authz, &["sub".into(), "roles".into(), "email".into()]);
        assert!(matches!(all, Cow::Borrowed(_)), "nothing to withhold, nothing copied");
    }

    #[test]
    fn the_writer_applies_the_allowlist() {
        let dir = std::env::temp_dir().join(format!("pc-al-claims-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        let log = AccessLog::start(Some(path.clone()), Counter::default()).unwrap();
        log.keep_claims(vec!["sub".into()]);
        let rec = AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            request_id: "r1".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            protocol: "HTTP/1.1",
            method: "GET".into(),
            path: "/x".into(),
            route: None,
            status: 200,
            duration_ms: 1.0,
            upstream_ms: None,
            principal: Some("alice".into()),
            auth_method: Some("jwt"),
            decision: Some("allow"),
            reason: None,
            policies: Some(Vec::new()),
            policy_errors: None,
            authz: Some(serde_json::json!({"principal": {"claims": {"sub": "alice", "email": "a@example.com"}}})),
        };
        log.write(&rec);
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read_to_string(&path).map(|s| s.is_empty()).unwrap_or(true) {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("a@example.com"), "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["authz"]["principal"]["claims"], serde_json::json!({"sub": "alice"}));
        assert_eq!(v["authz"]["principal"]["claims_withheld"], serde_json::json!(["email"]));
        assert_eq!(v["decision"], "allow");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
