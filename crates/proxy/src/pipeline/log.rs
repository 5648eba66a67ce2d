//! Log: every request is counted in its route's metrics, and written to the access log
//! when one is configured.

use std::time::{Duration, SystemTime};

use http::{Request, Version};
use portcullis_http::body::ClientBody;
use portcullis_telemetry::AccessRecord;

use super::context::{Decision, RequestCtx};
use crate::runtime::Runtime;

/// Records a finished request: `status` after `elapsed`; `fields`, taken before the stages
/// consumed the request, when the access log is on.
pub fn log(rt: &Runtime, ctx: &mut RequestCtx, fields: Option<LogFields>, status: u16, elapsed: Duration) {
    match &ctx.route {
        Some(route) => route.metrics.request(status, elapsed),
        None => rt.no_route.request(status, elapsed),
    }
    if let (Some(log), Some(fields)) = (&rt.access_log, fields) {
        write_access_log(log, ctx, fields, status, elapsed);
    }
}

/// What the access log needs of the request, taken before the stages consume it.
pub type LogFields = (SystemTime, String, String, &'static str);

/// The log stage's record. Out of line (not cold: many deployments log every request), so
/// that the pipeline holds only what every request runs (`bench/RESULTS.md`, "The code a request
/// touches").
#[inline(never)]
pub fn write_access_log(
    log: &portcullis_telemetry::AccessLog,
    ctx: &mut RequestCtx,
    (time, method, path, protocol): LogFields,
    status: u16,
    elapsed: Duration,
) {
    log.write(&AccessRecord {
        time,
        request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
        client_ip: ctx.client_ip,
        protocol,
        method,
        path,
        route: ctx.route.as_ref().map(|r| r.id.clone()),
        status,
        duration_ms: elapsed.as_secs_f64() * 1e3,
        upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1e3),
        principal: ctx.principal.as_ref().and_then(|p| p.subject.clone().or_else(|| p.client_id.clone())),
        auth_method: ctx.principal.as_ref().map(|p| p.method.as_str()),
        decision: ctx.decision.map(Decision::as_str),
        reason: ctx.reason,
        policies: ctx.explained.as_mut().map(|e| std::mem::take(&mut e.policies)),
        policy_errors: ctx.explained.as_mut().map(|e| std::mem::take(&mut e.errors)).filter(|e| !e.is_empty()),
        authz: ctx.explained.as_mut().and_then(|e| e.facts.take()),
    });
}

/// Taken only when the access log is on; out of line for the same reason.
#[inline(never)]
pub fn log_fields(req: &Request<ClientBody>) -> LogFields {
    (SystemTime::now(), req.method().to_string(), req.uri().path().to_string(), protocol(req.version()))
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}
