//! Log: every request is counted in its route's metrics, metered for usage (`usage`), and
//! written to the access log when one is configured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{Request, Version};
use portcullis_http::body::{ClientBody, Counted, RequestBody, ResponseBody};
use portcullis_state::usage::{Meter, Record};
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

/// The request body as it goes upstream, its size known for usage metering: declared, or
/// counted as it passes (a body of unknown length: what passed by the time the response head
/// is in).
pub fn count_request(ctx: &mut RequestCtx, body: RequestBody) -> RequestBody {
    match http_body::Body::size_hint(&body).exact() {
        Some(n) => {
            ctx.request_bytes = n;
            body
        }
        None => {
            let tally = Arc::new(AtomicU64::new(0));
            ctx.request_tally = Some(tally.clone());
            RequestBody::Counted(Box::new(Counted::live(body, tally)))
        }
    }
}

/// Meters a request answered with `resp` on a route: under its consumer, plan, route and
/// status class. A response body of unknown length is counted as it is sent, and its bytes
/// added when it ends. Out of line: the pipeline holds only what every request runs.
#[inline(never)]
pub fn meter(meter: &Arc<Meter>, rt: &Runtime, ctx: &RequestCtx, resp: &mut http::Response<ResponseBody>) {
    let Some(route) = &ctx.route else { return };
    let (consumer, plan) = match &ctx.principal {
        Some(p) => {
            let name = p.consumer.as_ref().map(|c| &c.name).or(p.subject.as_ref()).or(p.client_id.as_ref());
            (name.map_or("-", |n| &**n), rt.plans.name_of(p))
        }
        None => ("-", ""),
    };
    let status = resp.status().as_u16();
    let request_bytes = ctx.request_bytes + ctx.request_tally.as_ref().map_or(0, |t| t.load(Ordering::Relaxed));
    let declared = http_body::Body::size_hint(resp.body()).exact();
    let record = Record {
        consumer,
        plan,
        route: &route.id,
        status,
        requests: 1,
        request_bytes,
        response_bytes: declared.unwrap_or(0),
    };
    meter.record(&record);
    if declared.is_none() {
        let (meter, consumer, plan, route) = (meter.clone(), consumer.to_string(), plan.to_string(), route.id.clone());
        let report = move |n: u64| {
            let r = Record {
                consumer: &consumer,
                plan: &plan,
                route: &route,
                status,
                requests: 0,
                request_bytes: 0,
                response_bytes: n,
            };
            meter.record(&r);
        };
        let body = std::mem::replace(resp.body_mut(), ResponseBody::empty());
        *resp.body_mut() = ResponseBody::Counted(Box::new(Counted::new(body, Box::new(report))));
    }
}
