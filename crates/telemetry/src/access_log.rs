//! The access log: one JSON line per request, serialised on the request's task and written
//! by a dedicated thread, so a slow disk never stalls a request.
//!
//! The query string is never logged (it may carry credentials), nor are headers.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use serde::{Serialize, Serializer};

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
    /// What the decision was made on (`portcullis authz replay` reads it back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<serde_json::Value>,
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
}

impl AccessLog {
    /// Starts the writer, appending to `path` (standard output when `None`).
    pub fn start(path: Option<PathBuf>, dropped: Counter) -> io::Result<AccessLog> {
        let out = open(path.as_ref())?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new().name("access-log".into()).spawn(move || writer(rx, out))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues one record. Never blocks: when the writer is behind, the line is dropped and
    /// counted in `portcullis_access_log_dropped_total`.
    pub fn write(&self, record: &AccessRecord) {
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, record).is_err() {
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
}
