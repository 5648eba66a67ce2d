//! The catalogue of Portcullis metrics, and per-route handles resolved once when a config is
//! loaded so that recording a request takes no lock and no label allocation.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::exposition::{Exposition, PrometheusText};
use crate::histogram::AtomicHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCode {
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteErrorLabels {
    route: String,
    kind: UpstreamErrorKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: ReloadResult,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ReloadResult {
    success,
    failure,
}

/// Why a request to an upstream failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamErrorKind {
    /// No connection could be made.
    connect,
    /// No response in time.
    timeout,
    /// The exchange broke (reset, protocol error).
    protocol,
}

/// Why a command to the shared-state backend (Redis) failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StateErrorKind {
    /// No answer within `state.redis.timeout`.
    timeout,
    /// No connection, or it broke.
    connection,
    /// An answer that is an error or not the one expected.
    protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateErrorLabel {
    kind: StateErrorKind,
}

/// The shared-state backend's metrics. Process-wide: the backend outlives configs and is
/// built where the metrics registry is not at hand; [`Metrics::new`] exports them.
#[derive(Debug)]
pub struct StateMetrics {
    duration: AtomicHistogram,
    errors: Family<StateErrorLabel, Counter>,
    by_kind: [Counter; 3],
    up: Gauge,
}

impl StateMetrics {
    /// Records how long a command took (answered or not).
    pub fn command(&self, elapsed: Duration) {
        self.duration.observe(elapsed);
    }

    /// Records a failed command.
    pub fn error(&self, kind: StateErrorKind) {
        self.by_kind[kind as usize].inc();
    }

    /// Records whether the shared state answers now (1) or is in an outage (0): while it is
    /// 0, replay and revocation checks refuse and rate limits fail open or closed as
    /// configured.
    pub fn up(&self, up: bool) {
        self.up.set(i64::from(up));
    }
}

/// The process's shared-state metrics.
pub fn state_metrics() -> &'static StateMetrics {
    static STATE: OnceLock<StateMetrics> = OnceLock::new();
    STATE.get_or_init(|| {
        let errors = Family::<StateErrorLabel, Counter>::default();
        let by_kind = [StateErrorKind::timeout, StateErrorKind::connection, StateErrorKind::protocol]
            .map(|kind| errors.get_or_create_owned(&StateErrorLabel { kind }));
        let up = Gauge::default();
        up.set(1);
        StateMetrics { duration: AtomicHistogram::default(), errors, by_kind, up }
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    owner: String,
    limit: String,
}

/// Rate-limit metrics. Process-wide, like [`StateMetrics`]: the limits are compiled where
/// the registry is not at hand.
#[derive(Debug, Default)]
pub struct LimitMetrics {
    refused: Family<LimitLabels, Counter>,
    failed_open: Counter,
    failed_closed: Counter,
}

impl LimitMetrics {
    /// The counter of requests refused by limit `limit` of `owner` (`route:orders`,
    /// `plan:gold`): labels come from the config, so their number is bounded.
    pub fn refused(&self, owner: &str, limit: &str) -> Counter {
        self.refused.get_or_create_owned(&LimitLabels { owner: owner.to_string(), limit: limit.to_string() })
    }

    /// Counts a request whose limits could not be checked, let through (`on_error: open`)
    /// or refused (`closed`).
    pub fn unchecked(&self, passed: bool) {
        if passed {
            self.failed_open.inc()
        } else {
            self.failed_closed.inc()
        };
    }
}

/// The process's rate-limit metrics.
pub fn limit_metrics() -> &'static LimitMetrics {
    static LIMITS: OnceLock<LimitMetrics> = OnceLock::new();
    LIMITS.get_or_init(LimitMetrics::default)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    route: String,
    plan: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageBytesLabels {
    route: String,
    plan: String,
    direction: &'static str,
}

/// Usage metrics: what each plan used of each route. Labels come from the config (routes,
/// plans), so their number is bounded; usage per consumer is in the admin API only.
#[derive(Debug, Default)]
pub struct UsageMetrics {
    requests: Family<UsageLabels, Counter>,
    bytes: Family<UsageBytesLabels, Counter>,
}

impl UsageMetrics {
    /// Adds a series' counts (status class `class`, 1 to 5).
    pub fn add(&self, route: &str, plan: &str, class: u8, requests: u64, request_bytes: u64, response_bytes: u64) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let class = CLASSES[usize::from(class.clamp(1, 5) - 1)];
        if requests > 0 {
            let labels = UsageLabels { route: route.to_string(), plan: plan.to_string(), class };
            self.requests.get_or_create(&labels).inc_by(requests);
        }
        for (direction, n) in [("request", request_bytes), ("response", response_bytes)] {
            if n > 0 {
                let labels = UsageBytesLabels { route: route.to_string(), plan: plan.to_string(), direction };
                self.bytes.get_or_create(&labels).inc_by(n);
            }
        }
    }
}

/// The process's usage metrics.
pub fn usage_metrics() -> &'static UsageMetrics {
    static USAGE: OnceLock<UsageMetrics> = OnceLock::new();
    USAGE.get_or_init(UsageMetrics::default)
}

const KINDS: [UpstreamErrorKind; 3] =
    [UpstreamErrorKind::connect, UpstreamErrorKind::timeout, UpstreamErrorKind::protocol];

/// Every metric the gateway exports, registered once for the life of the process (values
/// survive config reloads).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteCode, Counter>,
    duration: Family<RouteLabel, AtomicHistogram>,
    upstream_duration: Family<RouteLabel, AtomicHistogram>,
    upstream_errors: Family<RouteErrorLabels, Counter>,
    ejections: Family<UpstreamLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    /// The generation of the config being served (1 at start, +1 per successful reload).
    pub config_generation: Gauge,
    /// Client connections open now.
    pub connections_active: Gauge,
    /// Client connections accepted since start.
    pub connections_total: Counter,
    /// Access-log lines dropped because the writer could not keep up.
    pub access_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `portcullis_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics {
            requests: Family::default(),
            duration: Family::default(),
            upstream_duration: Family::default(),
            upstream_errors: Family::default(),
            ejections: Family::default(),
            reloads: Family::default(),
            config_generation: Gauge::default(),
            connections_active: Gauge::default(),
            connections_total: Counter::default(),
            access_log_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "Requests by route and response status", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to sending the response head, by route",
            m.duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time the upstream took to answer with a response head, by route",
            m.upstream_duration.clone(),
        );
        registry.register("upstream_errors", "Failed upstream requests by route and kind", m.upstream_errors.clone());
        registry.register("upstream_ejections", "Endpoints ejected by passive health checks", m.ejections.clone());
        registry.register("config_reloads", "Config reload attempts by result", m.reloads.clone());
        // Both results are exported from the start (at 0), so that rates and alerts on
        // failures have a series before the first reload.
        for result in [ReloadResult::success, ReloadResult::failure] {
            let _ = m.reloads.get_or_create(&ResultLabel { result });
        }
        registry.register("config_generation", "Generation of the config being served", m.config_generation.clone());
        registry.register("connections_active", "Client connections open now", m.connections_active.clone());
        registry.register("connections", "Client connections accepted", m.connections_total.clone());
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped under overload",
            m.access_log_dropped.clone(),
        );
        let state = state_metrics();
        registry.register(
            "state_command_duration_seconds",
            "Time a shared-state (Redis) command took, answered or not",
            state.duration.clone(),
        );
        registry.register("state_errors", "Failed shared-state (Redis) commands by kind", state.errors.clone());
        registry.register(
            "state_up",
            "1 while the shared state (Redis) answers, 0 during an outage (replay and revocation checks refuse; rate limits fail open or closed as configured)",
            state.up.clone(),
        );
        let limits = limit_metrics();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by owner and limit",
            limits.refused.clone(),
        );
        registry.register(
            "rate_limit_failed_open",
            "Requests let through because their rate limits could not be checked (on_error: open)",
            limits.failed_open.clone(),
        );
        registry.register(
            "rate_limit_failed_closed",
            "Requests refused because their rate limits could not be checked (on_error: closed)",
            limits.failed_closed.clone(),
        );
        let usage = usage_metrics();
        registry.register(
            "usage_requests",
            "Metered requests by route, plan and status class (flushed every second)",
            usage.requests.clone(),
        );
        registry.register(
            "usage_bytes",
            "Metered body bytes by route, plan and direction (flushed every second)",
            usage.bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Handles for one route, to be kept by the compiled route.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let label = RouteLabel { route: route.to_string() };
        RouteMetrics {
            route: route.to_string(),
            requests: self.requests.clone(),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            duration: self.duration.get_or_create_owned(&label),
            upstream_duration: self.upstream_duration.get_or_create_owned(&label),
            upstream_errors: KINDS.map(|kind| {
                self.upstream_errors.get_or_create_owned(&RouteErrorLabels { route: route.to_string(), kind })
            }),
        }
    }

    /// Counts an endpoint ejection.
    pub fn ejection(&self, upstream: &str) -> Counter {
        self.ejections.get_or_create_owned(&UpstreamLabel { upstream: upstream.to_string() })
    }

    /// Counts a reload attempt.
    pub fn reload(&self, ok: bool) {
        let result = if ok { ReloadResult::success } else { ReloadResult::failure };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Every metric, in `format`.
    pub fn encode(&self, format: Exposition) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        match format {
            Exposition::OpenMetrics => {
                let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            }
            Exposition::Prometheus => {
                let mut text = PrometheusText::new(&mut out);
                let _ = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry);
                text.finish();
            }
        }
        out
    }
}

/// Metric handles of one route.
#[derive(Debug)]
pub struct RouteMetrics {
    route: String,
    requests: Family<RouteCode, Counter>,
    /// One counter per status code 100..=599, created on first use.
    by_status: Box<[OnceLock<Counter>]>,
    duration: AtomicHistogram,
    upstream_duration: AtomicHistogram,
    upstream_errors: [Counter; 3],
}

impl RouteMetrics {
    /// Records a finished request.
    pub fn request(&self, status: u16, elapsed: Duration) {
        self.duration.observe(elapsed);
        let Some(slot) = self.by_status.get(usize::from(status).wrapping_sub(100)) else {
            return;
        };
        slot.get_or_init(|| self.requests.get_or_create_owned(&RouteCode { route: self.route.clone(), code: status }))
            .inc();
    }

    /// Records how long the upstream took to answer.
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed);
    }

    /// Records a failed upstream request.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_handles_count_into_the_shared_families() {
        let m = Metrics::new();
        let r = m.route("orders");
        r.request(200, Duration::from_millis(2));
        r.request(200, Duration::from_millis(2));
        r.request(404, Duration::from_millis(1));
        r.request(999, Duration::from_millis(1)); // out of range: ignored, no panic
        r.upstream_error(UpstreamErrorKind::timeout);
        // A second handle for the same route (after a reload) shares the counters.
        m.route("orders").request(200, Duration::from_millis(1));
        m.reload(false);
        let text = m.encode(Exposition::Prometheus);
        assert!(text.contains(r#"portcullis_requests_total{route="orders",code="200"} 3"#), "{text}");
        assert!(text.contains(r#"portcullis_requests_total{route="orders",code="404"} 1"#), "{text}");
        assert!(text.contains(r#"portcullis_upstream_errors_total{route="orders",kind="timeout"} 1"#), "{text}");
        assert!(text.contains(r#"portcullis_config_reloads_total{result="failure"} 1"#), "{text}");
        assert!(text.contains(r#"portcullis_request_duration_seconds_count{route="orders"} 5"#), "{text}");
    }

    #[test]
    fn reload_results_are_exported_before_the_first_reload() {
        let m = Metrics::new();
        for format in [Exposition::Prometheus, Exposition::OpenMetrics] {
            let text = m.encode(format);
            assert!(text.contains("portcullis_config_reloads_total{result=\"success\"} 0\n"), "{text}");
            assert!(text.contains("portcullis_config_reloads_total{result=\"failure\"} 0\n"), "{text}");
        }
    }

    #[test]
    fn text_format_types_the_series_it_exports() {
        let m = Metrics::new();
        let r = m.route("orders");
        r.request(200, Duration::from_millis(2));
        r.upstream(Duration::from_millis(1));
        m.config_generation.set(1);
        let text = m.encode(Exposition::Prometheus);
        assert!(!text.contains("# EOF") && !text.contains("# UNIT") && !text.contains("_created"), "{text}");
        // Every sample belongs to the family the last `# TYPE` named.
        let (mut family, mut help) = (("", ""), "");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                help = rest.split_once(' ').unwrap().0;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(help, name, "HELP and TYPE name the same family:\n{text}");
                family = (name, kind);
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap();
            let allowed: &[&str] = match family.1 {
                "counter" | "gauge" => &[""],
                "histogram" => &["_bucket", "_sum", "_count"],
                other => panic!("unexpected type {other}: {text}"),
            };
            assert!(allowed.iter().any(|s| format!("{}{s}", family.0) == name), "{name} outside {family:?}:\n{text}");
        }
        assert!(text.contains("# TYPE portcullis_requests_total counter\n"), "{text}");
        assert!(text.contains("# HELP portcullis_requests_total Requests by route and response status.\n"), "{text}");
        assert!(text.contains("# TYPE portcullis_request_duration_seconds histogram\n"), "{text}");
        assert!(text.contains("# TYPE portcullis_config_generation gauge\nportcullis_config_generation 1\n"), "{text}");
        // The OpenMetrics spelling, on request.
        let open = m.encode(Exposition::OpenMetrics);
        assert!(open.contains("# TYPE portcullis_requests counter\n") && open.ends_with("# EOF\n"), "{open}");
    }
}
