//! Fleet status: what a gateway runs (version, config, bundle) and how its last reload went,
//! at `/status` on the admin listener, posted to `fleet.report_url` if set, and gathered
//! from many gateways by `portcullis fleet status`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `/status` reports.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Status {
    /// `fleet.id`, else the host name.
    pub id: String,
    /// The gateway's version.
    pub version: String,
    /// The commit it was built from.
    pub commit: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// The config it serves.
    pub config: ConfigStatus,
    /// The bundle it came from, when the config comes from a signed bundle.
    pub bundle: Option<BundleStatus>,
    /// The last reload, if any.
    pub last_reload: Option<ReloadStatus>,
    /// The last bundle refused (bad signature or digest, older, invalid config), if any.
    pub last_refused_bundle: Option<Refusal>,
}

/// The config in service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ConfigStatus {
    /// Increases with every reload taken (1 at start).
    pub generation: u64,
    /// The file it was read from.
    pub file: PathBuf,
}

/// The bundle in service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct BundleStatus {
    /// Its manifest's version.
    pub version: u64,
    /// The SHA-256 of the bundle file (hex).
    pub digest: String,
    /// When it was made.
    pub created: String,
    /// Where it came from: its URL, or the cache when the server could not be reached.
    pub from: String,
}

/// How a reload went.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ReloadStatus {
    /// `success` or `failure`.
    pub result: String,
    /// What caused it: `SIGHUP`, `file change`, `bundle`.
    pub cause: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A bundle not taken.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Refusal {
    /// Its version, when its manifest could be trusted.
    pub version: Option<u64>,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

/// The status, shared by the control loop (which changes it) and the admin API.
pub type Shared = Arc<Mutex<Status>>;

/// The status of a gateway starting now.
pub fn start(id: Option<&str>, version: &str, commit: &str, file: PathBuf) -> Shared {
    Arc::new(Mutex::new(Status {
        id: id.map_or_else(hostname, str::to_string),
        version: version.to_string(),
        commit: commit.to_string(),
        started: now(),
        config: ConfigStatus { generation: 1, file },
        ..Status::default()
    }))
}

/// The time now, RFC 3339.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "portcullis".into())
}

/// Changes the status.
pub fn update(status: &Shared, f: impl FnOnce(&mut Status)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// A copy of the status.
pub fn snapshot(status: &Shared) -> Status {
    status.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Posts the status to `url` as JSON; a failure is logged once until a post succeeds.
pub async fn report(client: &reqwest::Client, url: &url::Url, status: &Status, failing: &mut bool) {
    let sent = client.post(url.clone()).json(status).timeout(Duration::from_secs(5)).send().await;
    match sent {
        Ok(r) if r.status().is_success() => {
            if std::mem::take(failing) {
                tracing::info!("fleet: the status is reported again");
            }
        }
        outcome => {
            if !std::mem::replace(failing, true) {
                let why = match outcome {
                    Ok(r) => format!("status {}", r.status().as_u16()),
                    Err(e) => e.without_url().to_string(),
                };
                tracing::warn!(error = %why, "fleet: the status cannot be reported; retrying every report_interval");
            }
        }
    }
}

/// `portcullis fleet status`: each gateway's `/status` (the admin listener's base URL), as a
/// table; `Err` lines for those that do not answer.
pub async fn gather(urls: &[String], token: Option<&str>) -> Vec<(String, Result<Status, String>)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let mut out = Vec::new();
    for url in urls {
        let target = format!("{}/status", url.trim_end_matches('/'));
        let mut req = client.get(&target);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let got = match req.send().await {
            Ok(r) if r.status().is_success() => r.json::<Status>().await.map_err(|e| e.without_url().to_string()),
            Ok(r) => Err(format!("status {}", r.status().as_u16())),
            Err(e) => Err(e.without_url().to_string()),
        };
        out.push((url.clone(), got));
    }
    out
}

/// `portcullis fleet status`: the table, and whether every gateway answered.
pub fn status(urls: &[String], token: Option<&str>) -> (String, bool) {
    let rows = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(gather(urls, token)),
        Err(e) => urls.iter().map(|u| (u.clone(), Err(e.to_string()))).collect(),
    };
    (table(&rows), rows.iter().all(|(_, r)| r.is_ok()))
}

/// The table `portcullis fleet status` prints.
pub fn table(rows: &[(String, Result<Status, String>)]) -> String {
    let mut lines = vec![[
        "GATEWAY".to_string(),
        "ID".into(),
        "VERSION".into(),
        "BUNDLE".into(),
        "DIGEST".into(),
        "GENERATION".into(),
        "LAST RELOAD".into(),
    ]];
    for (url, row) in rows {
        lines.push(match row {
            Ok(s) => [
                url.clone(),
                s.id.clone(),
                format!("{} ({})", s.version, s.commit),
                s.bundle.as_ref().map_or("-".into(), |b| b.version.to_string()),
                s.bundle.as_ref().map_or("-".into(), |b| b.digest.chars().take(12).collect()),
                s.config.generation.to_string(),
                s.last_reload.as_ref().map_or("-".into(), |r| match &r.error {
                    Some(e) => format!("{} ({}): {e}", r.result, r.cause),
                    None => format!("{} ({})", r.result, r.cause),
                }),
            ],
            Err(e) => [
                url.clone(),
                format!("unreachable: {e}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        });
    }
    let widths: Vec<usize> = (0..7).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
