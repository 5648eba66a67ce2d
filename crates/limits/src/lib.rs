//! Traffic limits: rate limits per route and per plan, counted in the shared state so that
//! every replica that shares it enforces one limit, exactly.
//!
//! A limit is a GCRA bucket per value of its key (see `portcullis_state::gcra`). A request
//! is checked against the route's limits and its plan's together, in one atomic step (one
//! Redis round trip): it passes only if all of them have room, and is then counted by all.
//! A passing request learns the limit closest to exhaustion, for the `RateLimit` and
//! `RateLimit-Policy` response fields (draft-ietf-httpapi-ratelimit-headers); a refused one
//! gets `429` with `Retry-After` and those fields.

#![forbid(unsafe_code)]

pub mod body;
pub mod concurrency;
pub mod ip;
pub mod json;
mod key;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use portcullis_config::{Config, FailMode, KeyPart, RateLimitConfig};
use portcullis_core::{Principal, Problem};
use portcullis_state::State;
use portcullis_state::gcra::Bucket;
use portcullis_telemetry::{Counter, limit_metrics};

/// The `RateLimit-Policy` response field.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` response field.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The state namespace of rate-limit buckets.
const NS: &str = "rl";

/// One compiled rate limit.
#[derive(Debug)]
pub struct RateLimit {
    /// Unique among all limits of a config, and stable across reloads (owner and name): the
    /// start of each of its buckets' keys.
    id: Box<str>,
    /// The name in the response fields (a valid structured-field string).
    name: Box<str>,
    /// `RateLimit-Policy`, the same for every response.
    policy: HeaderValue,
    parts: Box<[KeyPart]>,
    interval_us: u64,
    capacity_us: u64,
    /// The quota advertised: the bucket's size.
    quota: u64,
    on_error: FailMode,
    /// Requests this limit refused.
    refused: Counter,
}

impl RateLimit {
    /// Compiles a limit; `owner` names its list (`route:orders`, `plan:gold`), and with the
    /// limit's name (unique in the list) makes its buckets its own: a reload that reorders
    /// the list keeps each limit's counts.
    pub fn new(owner: &str, config: &RateLimitConfig) -> RateLimit {
        let per_us = u64::try_from(config.per.get().as_micros()).unwrap_or(u64::MAX);
        let limit = config.limit.max(1);
        // Rounded up: a limit may admit a little less than it says, never more.
        let interval_us = per_us.div_ceil(limit).max(1);
        let burst = config.burst.unwrap_or(limit).max(1);
        let capacity_us = interval_us.saturating_mul(burst);
        let name = config.name.clone().unwrap_or_else(|| config.key.name());
        let mut id = String::new();
        key::push_field(&mut id, 'o', owner);
        key::push_field(&mut id, 'n', &name);
        let window_secs = capacity_us.div_ceil(1_000_000);
        // Names are checked at load to be printable ASCII without `"` or `\`.
        let policy = HeaderValue::try_from(format!("\"{name}\";q={burst};w={window_secs}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\";q=0"));
        RateLimit {
            id: id.into(),
            refused: limit_metrics().refused(owner, &name),
            policy,
            name: name.into(),
            parts: config.key.0.clone().into(),
            interval_us,
            capacity_us,
            quota: burst,
            on_error: config.on_error,
        }
    }

    /// The limit's name, as in the response fields.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The plans of a config: the limits of each, and how a caller's plan is found.
#[derive(Debug, Default)]
pub struct Plans {
    by_name: HashMap<Box<str>, Box<[RateLimit]>>,
    claim: Option<Box<str>>,
    default: Option<Box<str>>,
}

impl Plans {
    /// The plans `config` defines.
    pub fn new(config: &Config) -> Plans {
        let by_name = config
            .plans
            .iter()
            .map(|(name, plan)| {
                let owner = format!("plan:{name}");
                let limits = plan.rate_limits.iter().map(|l| RateLimit::new(&owner, l)).collect();
                (name.as_str().into(), limits)
            })
            .collect();
        Plans {
            by_name,
            claim: config.plan_claim.as_deref().map(Into::into),
            default: config.default_plan.as_deref().map(Into::into),
        }
    }

    /// Whether any plan has limits (else no request needs a plan looked up).
    pub fn is_empty(&self) -> bool {
        self.by_name.values().all(|l| l.is_empty())
    }

    /// The limits of `principal`'s plan: its API consumer's plan, else the plan its token's
    /// plan claim names, else (no plan, or one not defined) the default plan. None when
    /// there is no default plan either.
    pub fn of(&self, principal: &Principal) -> &[RateLimit] {
        if self.by_name.is_empty() {
            return &[];
        }
        let from_consumer = principal.consumer.as_ref().and_then(|c| c.plan.as_deref());
        let from_claim = || {
            let claim = self.claim.as_deref()?;
            principal.claims.as_ref()?.get(claim)?.as_str()
        };
        let named = from_consumer.or_else(from_claim).and_then(|p| self.by_name.get(p));
        match named.or_else(|| self.by_name.get(self.default.as_deref()?)) {
            Some(limits) => limits,
            None => &[],
        }
    }
}

/// What a limit's key is made of, for one request.
#[derive(Debug)]
pub struct Facts<'a> {
    /// Who sent the request.
    pub principal: &'a Principal,
    /// The client's address.
    pub client_ip: IpAddr,
    /// The route's id.
    pub route: &'a str,
    /// The request's header fields.
    pub headers: &'a HeaderMap,
}

/// The limit closest to exhaustion after a request was counted: what the response tells
/// the client about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `RateLimit-Policy`: the limit's name, quota and window.
    pub policy: HeaderValue,
    /// `RateLimit`: the limit's name, what remains and when it is full again.
    pub current: HeaderValue,
}

impl Report {
    /// Adds the fields to a response's headers.
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        headers.insert(RATELIMIT.clone(), self.current);
    }
}

/// Counts a request against `route`'s limits and `plan`'s. `Ok(None)` when there are none
/// or the state could not answer and every limit fails open; `Ok(Some)` with the fields for
/// the response when it passes; `Err` (`429`, or `503` for a limit that fails closed) when
/// it does not.
pub async fn check(
    state: &State,
    route: &[RateLimit],
    plan: &[RateLimit],
    facts: &Facts<'_>,
) -> Result<Option<Report>, Problem> {
    let limits: Vec<&RateLimit> = route.iter().chain(plan).collect();
    if limits.is_empty() {
        return Ok(None);
    }
    let keys: Vec<Vec<u8>> = limits.iter().map(|l| key::bucket_key(&l.id, &l.parts, facts)).collect();
    let buckets: Vec<Bucket<'_>> = limits
        .iter()
        .zip(&keys)
        .map(|(l, k)| Bucket { key: k, interval_us: l.interval_us, capacity_us: l.capacity_us })
        .collect();
    let checked = match state.gcra(NS, &buckets).await {
        Ok(c) => c,
        Err(e) => return unavailable(&limits, e),
    };
    if checked.admitted {
        // The one with the least room left, relative to its size.
        let (i, remaining) = limits
            .iter()
            .zip(&checked.ahead_us)
            .map(|(l, ahead)| (l.capacity_us.saturating_sub(*ahead) / l.interval_us).min(l.quota))
            .enumerate()
            .min_by(|(a, ra), (b, rb)| {
                (u128::from(*ra) * u128::from(limits[*b].quota)).cmp(&(u128::from(*rb) * u128::from(limits[*a].quota)))
            })
            .unwrap_or((0, 0));
        let reset = checked.ahead_us[i].div_ceil(1_000_000);
        recovered();
        return Ok(Some(report(limits[i], remaining, reset)));
    }
    // Refused: by the limit that frees up last.
    let (i, wait_us) = limits
        .iter()
        .zip(&checked.ahead_us)
        .enumerate()
        .filter(|(_, (l, ahead))| **ahead > l.capacity_us)
        .map(|(i, (l, ahead))| (i, ahead - l.capacity_us))
        .max_by_key(|(_, wait)| *wait)
        .unwrap_or((0, 1_000_000));
    let limit = limits[i];
    limit.refused.inc();
    recovered();
    let retry = wait_us.div_ceil(1_000_000).max(1);
    // Not counted: the bucket is full again when its last counted request has drained.
    let full_in = (checked.ahead_us[i] - limit.interval_us).div_ceil(1_000_000);
    let fields = report(limit, 0, full_in);
    Err(Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests: rate limit exceeded")
        .header(RETRY_AFTER, HeaderValue::from(retry))
        .header(RATELIMIT_POLICY.clone(), fields.policy)
        .header(RATELIMIT.clone(), fields.current))
}

/// The state could not count the request: refused if any of its limits fails closed.
#[cold]
fn unavailable(limits: &[&RateLimit], e: portcullis_state::StateError) -> Result<Option<Report>, Problem> {
    if limits.iter().any(|l| l.on_error == FailMode::Closed) {
        limit_metrics().unchecked(false);
        if !FAILING.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "rate limits cannot be checked; requests are refused where `on_error: closed`, pass where `open`");
        }
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_unavailable",
            "the rate limit cannot be checked now; try again shortly",
        )
        .header(RETRY_AFTER, HeaderValue::from_static("1")));
    }
    limit_metrics().unchecked(true);
    if !FAILING.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "rate limits cannot be checked; requests pass unchecked where `on_error: open`, are refused where `closed`");
    }
    Ok(None)
}

/// Limits could not be checked lately: logged once as it starts, once as it ends.
static FAILING: AtomicBool = AtomicBool::new(false);

fn recovered() {
    if FAILING.load(Ordering::Relaxed) && FAILING.swap(false, Ordering::Relaxed) {
        tracing::info!("rate limits are checked again");
    }
}

fn report(limit: &RateLimit, remaining: u64, reset_secs: u64) -> Report {
    let current = format!("\"{}\";r={remaining};t={reset_secs}", limit.name);
    Report {
        policy: limit.policy.clone(),
        current: HeaderValue::try_from(current).unwrap_or_else(|_| HeaderValue::from_static("\"limit\";r=0")),
    }
}

/// Compiles a route's limits.
pub fn route_limits(route: &str, limits: &[RateLimitConfig]) -> Arc<[RateLimit]> {
    let owner = format!("route:{route}");
    limits.iter().map(|l| RateLimit::new(&owner, l)).collect()
}

#[cfg(test)]
mod tests;
