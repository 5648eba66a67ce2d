//! Logging: the process log and the per-request access (audit) log.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The process log (start-up, reloads, errors), written to standard error.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` for machines, `pretty` for people. `--log-format` overrides it.
    pub format: LogFormat,
    /// Minimum level (`error`, `warn`, `info`, `debug`, `trace`) or a `tracing` filter
    /// such as `info,portcullis_proxy=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Json, level: "info".into() }
    }
}

/// Format of the process log.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object a line.
    #[default]
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The access log: one JSON line per request with its route, status, latency and, once
/// later stages run, the principal and the authorization decision.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write the access log at all.
    pub enabled: bool,
    /// File to append to; standard output when absent. Reopened on reload (log rotation).
    pub path: Option<PathBuf>,
    /// The token claims kept in a decision's record (`authz.principal.claims`), by top-level
    /// name, e.g. `[sub, client_id, roles]`. None by default: claims such as `email` or `name`
    /// are personal data. The names of the claims left out are recorded (never their values),
    /// so that `portcullis authz replay` can say which decisions it cannot judge.
    pub claims: Vec<String>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self { enabled: true, path: None, claims: Vec::new() }
    }
}
