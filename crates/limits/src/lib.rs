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
pub mod brute;
pub mod concurrency;
pub mod ip;
pub mod json;
mod key;
pub mod window;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use jiff::tz::TimeZone;
use portcullis_config::{Config, FailMode, KeyPart, LimitKey, LimitMode, QuotaConfig, QuotaWindow, RateLimitConfig};
use portcullis_core::{Principal, Problem};
use portcullis_state::State;
use portcullis_state::admit::{Check, Rule};
use portcullis_telemetry::{Counter, limit_metrics};

/// The `RateLimit-Policy` response field.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` response field.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The state namespace of rate-limit buckets and quota windows.
const NS: &str = "rl";

/// One compiled limit: a rate limit or a quota.
#[derive(Debug)]
pub struct RateLimit {
    /// Unique among all limits of a config, and stable across reloads (owner and name): the
    /// start of each of its keys.
    id: Box<str>,
    /// The name in the response fields (a valid structured-field string).
    name: Box<str>,
    /// `RateLimit-Policy` of a rate limit, the same for every response.
    policy: HeaderValue,
    parts: Box<[KeyPart]>,
    kind: Kind,
    on_error: FailMode,
    /// Requests this limit refused.
    refused: Counter,
}

#[derive(Debug)]
enum Kind {
    Rate {
        interval_us: u64,
        capacity_us: u64,
        /// The quota advertised: the bucket's size.
        burst: u64,
        /// Counted locally and synced (`mode: approximate`).
        synced: bool,
    },
    Quota {
        limit: u64,
        window: QuotaWindow,
        tz: TimeZone,
    },
}

impl RateLimit {
    /// Compiles a rate limit; `owner` names its list (`route:orders`, `plan:gold`), and with
    /// the limit's name (unique in the list) makes its buckets its own: a reload that
    /// reorders the list keeps each limit's counts.
    pub fn new(owner: &str, config: &RateLimitConfig) -> RateLimit {
        let per_us = u64::try_from(config.per.get().as_micros()).unwrap_or(u64::MAX);
        let limit = config.limit.max(1);
        // Rounded up: a limit may admit a little less than it says, never more.
        let interval_us = per_us.div_ceil(limit).max(1);
        let burst = config.burst.unwrap_or(limit).max(1);
        let capacity_us = interval_us.saturating_mul(burst);
        let name = config.name.clone().unwrap_or_else(|| config.key.name());
        let policy = policy(&name, burst, capacity_us.div_ceil(1_000_000));
        Self::compiled(
            owner,
            name,
            &config.key,
            config.on_error,
            policy,
            Kind::Rate { interval_us, capacity_us, burst, synced: config.mode == LimitMode::Approximate },
        )
    }

    /// Compiles a quota, its calendar windows in time zone `tz`.
    pub fn quota(owner: &str, config: &QuotaConfig, tz: &TimeZone) -> RateLimit {
        let name = config.name.clone().unwrap_or_else(|| config.per.name());
        let kind = Kind::Quota { limit: config.limit, window: config.per, tz: tz.clone() };
        Self::compiled(owner, name, &config.key, config.on_error, HeaderValue::from_static(""), kind)
    }

    fn compiled(
        owner: &str,
        name: String,
        key: &LimitKey,
        on_error: FailMode,
        policy: HeaderValue,
        kind: Kind,
    ) -> Self {
        let mut id = String::new();
        key::push_field(&mut id, 'o', owner);
        key::push_field(&mut id, 'n', &name);
        RateLimit {
            id: id.into(),
            refused: limit_metrics().refused(owner, &name),
            policy,
            name: name.into(),
            parts: key.0.clone().into(),
            kind,
            on_error,
        }
    }

    /// The limit's name, as in the response fields.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `RateLimit-Policy` for a limit of `quota` requests per `window_secs`.
fn policy(name: &str, quota: u64, window_secs: u64) -> HeaderValue {
    // Names are checked at load to be printable ASCII without `"` or `\`.
    HeaderValue::try_from(format!("\"{name}\";q={quota};w={window_secs}"))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\";q=0"))
}

/// The limits of one route, or of one plan.
#[derive(Debug, Default)]
pub struct Limits(Vec<RateLimit>);

impl Limits {
    /// Compiles the rate limits and quotas of `owner` (`route:orders`, `plan:gold`).
    pub fn new(owner: &str, rates: &[RateLimitConfig], quotas: &[QuotaConfig], tz: &TimeZone) -> Limits {
        let rates = rates.iter().map(|l| RateLimit::new(owner, l));
        Limits(rates.chain(quotas.iter().map(|q| RateLimit::quota(owner, q, tz))).collect())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The limits.
    pub fn iter(&self) -> std::slice::Iter<'_, RateLimit> {
        self.0.iter()
    }
}

/// No limits.
static NONE: Limits = Limits(Vec::new());

/// The plans of a config: the limits of each, and how a caller's plan is found.
#[derive(Debug, Default)]
pub struct Plans {
    by_name: HashMap<Box<str>, Limits>,
    claim: Option<Box<str>>,
    default: Option<Box<str>>,
}

impl Plans {
    /// The plans `config` defines; quota windows in time zone `tz`.
    pub fn new(config: &Config, tz: &TimeZone) -> Plans {
        let by_name = config
            .plans
            .iter()
            .map(|(name, plan)| {
                let owner = format!("plan:{name}");
                (name.as_str().into(), Limits::new(&owner, &plan.rate_limits, &plan.quotas, tz))
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
        self.by_name.values().all(Limits::is_empty)
    }

    /// The limits of `principal`'s plan: its API consumer's plan, else the plan its token's
    /// plan claim names, else (no plan, or one not defined) the default plan. None when
    /// there is no default plan either.
    pub fn of(&self, principal: &Principal) -> &Limits {
        self.find(principal).map_or(&NONE, |(_, limits)| limits)
    }

    /// The name of `principal`'s plan (found as [`Plans::of`] finds its limits); empty for
    /// none.
    pub fn name_of(&self, principal: &Principal) -> &str {
        self.find(principal).map_or("", |(name, _)| name)
    }

    fn find(&self, principal: &Principal) -> Option<(&str, &Limits)> {
        if self.by_name.is_empty() {
            return None;
        }
        let from_consumer = principal.consumer.as_ref().and_then(|c| c.plan.as_deref());
        let from_claim = || {
            let claim = self.claim.as_deref()?;
            principal.claims.as_ref()?.get(claim)?.as_str()
        };
        let get = |p: &str| self.by_name.get_key_value(p).map(|(k, v)| (&**k, v));
        from_consumer.or_else(from_claim).and_then(get).or_else(|| get(self.default.as_deref()?))
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
        // Room for these and the request id at once: growing the map rehashes it.
        headers.reserve(3);
        headers.insert(RATELIMIT_POLICY.clone(), self.policy);
        headers.insert(RATELIMIT.clone(), self.current);
    }
}

/// Counts a request against `route`'s limits and `plan`'s. `Ok(None)` when there are none
/// or the state could not answer and every limit fails open; `Ok(Some)` with the fields for
/// the response when it passes; `Err` (`429`, or `503` for a limit that fails closed) when
/// it does not.
pub async fn check(state: &State, route: &Limits, plan: &Limits, facts: &Facts<'_>) -> Result<Option<Report>, Problem> {
    // One rate limit: the common case, without the lists below.
    if let ([one], []) | ([], [one]) = (&route.0[..], &plan.0[..])
        && let Kind::Rate { interval_us, capacity_us, synced, .. } = one.kind
    {
        let key = key::bucket_key(&one.id, &one.parts, facts);
        let rule = match synced {
            true => Rule::Synced { interval_us, capacity_us },
            false => Rule::Gcra { interval_us, capacity_us },
        };
        let check = Check { key: &key, rule };
        let checked = match state.admit(NS, std::slice::from_ref(&check)).await {
            Ok(c) => c,
            Err(e) => return unavailable(&[one], e),
        };
        recovered();
        let f = Figures::of(one, checked.values[0], checked.admitted, None, 0);
        return match checked.admitted {
            true => Ok(Some(report(one, None, f.remaining, f.full_in))),
            false => Err(refusal(one, None, f.retry, f.full_in)),
        };
    }
    let limits: Vec<&RateLimit> = route.iter().chain(plan.iter()).collect();
    if limits.is_empty() {
        return Ok(None);
    }
    // The wall clock, for quotas' windows only.
    let now = if limits.iter().any(|l| matches!(l.kind, Kind::Quota { .. })) {
        jiff::Timestamp::now()
    } else {
        jiff::Timestamp::UNIX_EPOCH
    };
    // Each quota's current window (none for a rate limit).
    let windows: Vec<Option<window::Window>> = limits
        .iter()
        .map(|l| match &l.kind {
            Kind::Quota { window, tz, .. } => {
                Some(window::window(*window, now, tz).unwrap_or(window::Window { start_ms: 0, end_ms: i64::MAX }))
            }
            Kind::Rate { .. } => None,
        })
        .collect();
    let keys: Vec<Vec<u8>> = limits
        .iter()
        .zip(&windows)
        .map(|(l, w)| {
            let mut key = key::bucket_key(&l.id, &l.parts, facts);
            if let Some(w) = w {
                // The window's start names its count: a new window starts a new count.
                key.extend_from_slice(&w.start_ms.to_be_bytes());
            }
            key
        })
        .collect();
    let checks: Vec<Check<'_>> = limits
        .iter()
        .zip(&windows)
        .zip(&keys)
        .map(|((l, w), key)| {
            let rule = match (&l.kind, w) {
                (Kind::Quota { limit, .. }, Some(w)) => {
                    Rule::Window { limit: *limit, ends_ms: u64::try_from(w.end_ms).unwrap_or(0) }
                }
                (Kind::Rate { interval_us, capacity_us, synced: true, .. }, _) => {
                    Rule::Synced { interval_us: *interval_us, capacity_us: *capacity_us }
                }
                (Kind::Rate { interval_us, capacity_us, synced: false, .. }, _) => {
                    Rule::Gcra { interval_us: *interval_us, capacity_us: *capacity_us }
                }
                (Kind::Quota { limit, .. }, None) => Rule::Window { limit: *limit, ends_ms: u64::MAX },
            };
            Check { key, rule }
        })
        .collect();
    let checked = match state.admit(NS, &checks).await {
        Ok(c) => c,
        Err(e) => return unavailable(&limits, e),
    };
    recovered();
    let now_ms = now.as_millisecond();
    let figures: Vec<Figures> = (0..limits.len())
        .map(|i| Figures::of(limits[i], checked.values[i], checked.admitted, windows[i], now_ms))
        .collect();
    if checked.admitted {
        // The one with the least room left, relative to its size.
        let i = (0..limits.len())
            .min_by(|&a, &b| {
                let (fa, fb) = (&figures[a], &figures[b]);
                (u128::from(fa.remaining) * u128::from(fb.size)).cmp(&(u128::from(fb.remaining) * u128::from(fa.size)))
            })
            .unwrap_or(0);
        return Ok(Some(report(limits[i], windows[i], figures[i].remaining, figures[i].full_in)));
    }
    // Refused: by the limit that frees up last.
    let i =
        (0..limits.len()).filter(|&i| !checked.admits(i, &checks[i])).max_by_key(|&i| figures[i].retry).unwrap_or(0);
    Err(refusal(limits[i], windows[i], figures[i].retry, figures[i].full_in))
}

/// What a limit tells the client after a check.
struct Figures {
    /// Requests left.
    remaining: u64,
    /// The limit's size (a bucket's burst, a quota's limit).
    size: u64,
    /// Seconds until it is full again.
    full_in: u64,
    /// Seconds until the next request may pass, when it refuses.
    retry: u64,
}

impl Figures {
    /// From the state's value for the limit (a bucket's TAT ahead of now, or a window's
    /// count, with this request counted), whether the request was `admitted` (counted), its
    /// window and the time (ms since the epoch) for a quota.
    fn of(limit: &RateLimit, value: u64, admitted: bool, window: Option<window::Window>, now_ms: i64) -> Figures {
        match &limit.kind {
            Kind::Rate { interval_us, capacity_us, burst, .. } => {
                // Not counted: the bucket is full again when its last counted request has drained.
                let counted = if admitted { value } else { value.saturating_sub(*interval_us) };
                Figures {
                    remaining: (capacity_us.saturating_sub(value) / interval_us).min(*burst),
                    size: *burst,
                    full_in: counted.div_ceil(1_000_000),
                    retry: value.saturating_sub(*capacity_us).div_ceil(1_000_000),
                }
            }
            Kind::Quota { limit, .. } => {
                let end = window.map_or(now_ms, |w| w.end_ms);
                let reset = u64::try_from(end.saturating_sub(now_ms)).unwrap_or(0).div_ceil(1000);
                Figures { remaining: limit.saturating_sub(value), size: *limit, full_in: reset, retry: reset }
            }
        }
    }
}

/// The `429` for a request `limit` refused: the next may come in `retry` seconds; the limit
/// is full again in `full_in`.
#[cold]
fn refusal(limit: &RateLimit, window: Option<window::Window>, retry: u64, full_in: u64) -> Problem {
    limit.refused.inc();
    let retry = retry.max(1);
    let fields = report(limit, window, 0, full_in);
    let problem = match limit.kind {
        Kind::Rate { .. } => {
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests: rate limit exceeded")
        }
        Kind::Quota { .. } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!("the quota `{}` is used up until the window ends", limit.name),
        ),
    };
    problem
        .header(RETRY_AFTER, HeaderValue::from(retry))
        .header(RATELIMIT_POLICY.clone(), fields.policy)
        .header(RATELIMIT.clone(), fields.current)
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

fn report(limit: &RateLimit, window: Option<window::Window>, remaining: u64, reset_secs: u64) -> Report {
    // Written by hand: `format!` cost a request ~900 instructions (bench/RESULTS.md, "Rate limits").
    let mut current = Vec::with_capacity(limit.name.len() + 48);
    current.push(b'"');
    current.extend_from_slice(limit.name.as_bytes());
    current.extend_from_slice(b"\";r=");
    portcullis_core::push_decimal(&mut current, remaining);
    current.extend_from_slice(b";t=");
    portcullis_core::push_decimal(&mut current, reset_secs);
    Report {
        policy: match (&limit.kind, window) {
            (Kind::Quota { limit: quota, .. }, Some(w)) => {
                policy(&limit.name, *quota, u64::try_from(w.end_ms - w.start_ms).unwrap_or(0).div_ceil(1000))
            }
            _ => limit.policy.clone(),
        },
        current: HeaderValue::from_maybe_shared(bytes::Bytes::from(current))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\";r=0")),
    }
}

/// Compiles a route's limits; quota windows in time zone `tz`.
pub fn route_limits(route: &str, rates: &[RateLimitConfig], quotas: &[QuotaConfig], tz: &TimeZone) -> Limits {
    Limits::new(&format!("route:{route}"), rates, quotas, tz)
}

#[cfg(test)]
mod tests;
