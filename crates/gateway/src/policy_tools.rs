//! `portcullis authz explain` and `portcullis authz replay`: authorization run offline, on a
//! described request or on the decisions of an audit log, with the gateway's own code.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use portcullis_authz::{Decision, InputRecord};
use portcullis_config::load_file;
use portcullis_proxy::{Lasting, Runtime};
use portcullis_telemetry::Metrics;
use serde::Serialize;

/// Builds the runtime of a config without serving it.
fn runtime(config: &Path) -> Result<Runtime, String> {
    let loaded = load_file(config).map_err(|e| e.to_string())?;
    let lasting = Lasting::new(Arc::new(Metrics::new()), 1);
    Runtime::build(Arc::new(loaded), &lasting, None, 1).map_err(|e| e.to_string())
}

/// Why a request would be allowed or denied.
#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The route that took the request (none: `404`).
    pub route: Option<String>,
    /// The reason code.
    pub reason: &'static str,
    /// The safe explanation the caller would get.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub detail: &'static str,
    /// The policies that decided.
    pub policies: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
}

/// Explains the decision on one request described as an [`InputRecord`] (JSON).
pub fn explain(config: &Path, request_json: &str) -> Result<Explanation, String> {
    let rt = runtime(config)?;
    let input: InputRecord = serde_json::from_str(request_json).map_err(|e| format!("request: {e}"))?;
    let principal = std::sync::Arc::new(input.principal.principal().map_err(|e| format!("request: principal: {e}"))?);
    Ok(match rt.judge(&input, &principal).map_err(|e| format!("request: {e}"))? {
        None => Explanation::no_route(),
        Some((route, d)) => explanation(Some(route.to_string()), d),
    })
}

impl Explanation {
    /// No route takes the request: the gateway answers `404`.
    fn no_route() -> Explanation {
        Explanation {
            decision: "deny",
            route: None,
            reason: "no_route",
            detail: "no route takes this request (404)",
            policies: Vec::new(),
            errors: Vec::new(),
        }
    }
}

fn explanation(route: Option<String>, d: Decision) -> Explanation {
    Explanation {
        decision: if d.allowed { "allow" } else { "deny" },
        route,
        reason: d.code,
        detail: d.detail,
        policies: d.policies,
        errors: d.errors,
    }
}

/// A past decision that the new config decides the other way.
#[derive(Debug, Serialize)]
pub struct Flip {
    /// The audit line's number (from 1).
    pub line: usize,
    /// When the request was made.
    pub time: Option<String>,
    /// Its request id.
    pub request_id: Option<String>,
    /// Who made it.
    pub principal: Option<String>,
    /// `METHOD path`.
    pub request: String,
    /// The logged decision.
    pub was: String,
    /// The new decision, explained.
    pub now: Explanation,
}

/// A past decision that replay cannot judge: the new config's decision may read claims
/// that were not logged.
#[derive(Debug, Serialize)]
pub struct NotJudged {
    /// The audit line's number (from 1).
    pub line: usize,
    /// Its request id.
    pub request_id: Option<String>,
    /// `METHOD path`.
    pub request: String,
    /// The route that would judge it.
    pub route: String,
    /// The logged decision.
    pub was: String,
    /// The claims the decision may read that the log left out.
    pub missing_claims: Vec<String>,
    /// Why, in words: `could not be judged: claim email not logged`.
    pub reason: String,
}

/// What replaying an audit log against a config found.
#[derive(Debug, Default, Serialize)]
pub struct Replay {
    /// Audit lines read.
    pub lines: usize,
    /// Decisions replayed.
    pub replayed: usize,
    /// Replayed decisions that stay the same.
    pub unchanged: usize,
    /// Past allows the new config denies.
    pub allow_to_deny: Vec<Flip>,
    /// Past denies the new config allows.
    pub deny_to_allow: Vec<Flip>,
    /// Decisions that could not be judged again: they may depend on claims the audit log
    /// left out (see `access_log.claims`).
    pub not_judged: Vec<NotJudged>,
    /// Lines without a recorded decision input (no authorization ran, or the route had
    /// nothing to check).
    pub skipped: usize,
    /// Lines that could not be read, with why.
    pub unreadable: Vec<String>,
}

impl Replay {
    /// Whether any decision flips.
    pub fn flips(&self) -> usize {
        self.allow_to_deny.len() + self.deny_to_allow.len()
    }
}

/// Judges every decision recorded in an audit log (the access log's JSON lines) by the
/// config at `config`, and reports the decisions that would flip.
pub fn replay(config: &Path, log: impl BufRead) -> Result<Replay, String> {
    let rt = runtime(config)?;
    let mut report = Replay::default();
    for (i, line) in log.lines().enumerate() {
        let line = line.map_err(|e| format!("audit log: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        let record: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                report.unreadable.push(format!("line {}: {e}", i + 1));
                continue;
            }
        };
        let (Some(logged), Some(was)) = (record.get("authz"), record.get("decision").and_then(|d| d.as_str())) else {
            report.skipped += 1;
            continue;
        };
        let input: InputRecord = match serde_json::from_value(logged.clone()) {
            Ok(f) => f,
            Err(e) => {
                report.unreadable.push(format!("line {}: authz: {e}", i + 1));
                continue;
            }
        };
        let principal = match input.principal.principal() {
            Ok(p) => std::sync::Arc::new(p),
            Err(e) => {
                report.unreadable.push(format!("line {}: principal: {e}", i + 1));
                continue;
            }
        };
        let now = match rt.judge(&input, &principal) {
            Ok(Some((route, d))) => {
                let withheld = &input.principal.claims_withheld;
                let missing = rt.route_authz(&route).map(|a| a.claims_read().missing(withheld)).unwrap_or_default();
                if !missing.is_empty() {
                    let names = missing.join(", ");
                    let plural = if missing.len() == 1 { "claim" } else { "claims" };
                    report.not_judged.push(NotJudged {
                        line: i + 1,
                        request_id: record.get("request_id").and_then(|v| v.as_str()).map(str::to_string),
                        request: format!("{} {}", input.method, input.path),
                        route: route.to_string(),
                        was: was.to_string(),
                        missing_claims: missing.iter().map(|m| m.to_string()).collect(),
                        reason: format!("could not be judged: {plural} {names} not logged"),
                    });
                    continue;
                }
                explanation(Some(route.to_string()), d)
            }
            Ok(None) => Explanation::no_route(),
            Err(e) => {
                report.unreadable.push(format!("line {}: {e}", i + 1));
                continue;
            }
        };
        report.replayed += 1;
        if now.decision == was {
            report.unchanged += 1;
            continue;
        }
        let text = |k: &str| record.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let flip = Flip {
            line: i + 1,
            time: text("time"),
            request_id: text("request_id"),
            principal: text("principal"),
            request: format!("{} {}", input.method, input.path),
            was: was.to_string(),
            now,
        };
        if was == "allow" { report.allow_to_deny.push(flip) } else { report.deny_to_allow.push(flip) }
    }
    Ok(report)
}
