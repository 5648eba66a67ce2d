//! Observability: Prometheus metrics with lock-free handles resolved once per route, the
//! JSON access log written off the request path, and process-log set-up.

#![forbid(unsafe_code)]

mod access_log;
mod exposition;
mod histogram;
mod logging;
mod metrics;

pub use access_log::{AccessLog, AccessRecord, withhold_claims};
pub use exposition::{Exposition, PrometheusText};
pub use histogram::AtomicHistogram;
pub use logging::init_logging;
pub use metrics::{
    LimitMetrics, Metrics, RouteMetrics, StateErrorKind, StateMetrics, UpstreamErrorKind, UsageMetrics, limit_metrics,
    state_metrics, usage_metrics,
};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
