//! Upstream services: endpoints, protocol, timeouts, passive health checks and TLS.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::Duration;

/// A named upstream service, referred to by routes as `upstream: NAME`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// One or more base URLs (`http://host:port` or `https://host:port`), used in turn
    /// (round robin); an endpoint that keeps failing is ejected for a while.
    #[serde(serialize_with = "crate::values::serialize_url_texts_redacted")]
    pub endpoints: Vec<String>,
    /// Protocol towards the upstream.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Timeouts towards the upstream.
    #[serde(default)]
    pub timeouts: UpstreamTimeouts,
    /// Passive health checking: eject endpoints that fail repeatedly.
    #[serde(default)]
    pub health: PassiveHealth,
    /// TLS settings for `https://` endpoints.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Send the client's `Host` header instead of the endpoint's host and port.
    #[serde(default)]
    pub preserve_host: bool,
    /// Idle connections kept for reuse, per endpoint and worker thread. Connections in use
    /// beyond it are closed when their exchange ends; 0 opens a connection per request.
    #[serde(default = "default_max_idle_connections")]
    pub max_idle_connections: usize,
    /// Requests in flight to this upstream at most, over all routes that use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::ConcurrencyConfig>,
}

fn default_max_idle_connections() -> usize {
    1024
}

impl UpstreamConfig {
    /// An upstream of one endpoint with every other setting at its default (what a route
    /// whose `upstream` is a URL gets).
    pub fn for_endpoint(endpoint: impl Into<String>) -> UpstreamConfig {
        UpstreamConfig {
            endpoints: vec![endpoint.into()],
            protocol: UpstreamProtocol::default(),
            timeouts: UpstreamTimeouts::default(),
            health: PassiveHealth::default(),
            tls: None,
            preserve_host: false,
            max_idle_connections: default_max_idle_connections(),
            concurrency: None,
        }
    }
}

/// Protocol spoken to an upstream.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 in plain text; over TLS, HTTP/2 when the upstream offers it by ALPN.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) in plain text, ALPN `h2` over TLS. Needed for gRPC.
    Http2,
}

/// Timeouts towards an upstream. Expiry is answered with `504` (connect failures `502`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    /// Time to establish a connection (TCP and TLS).
    pub connect: Duration,
    /// Time from sending the request until the response headers arrive. Routes may override.
    pub request: Duration,
    /// How long an unused pooled connection is kept.
    pub idle: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self { connect: Duration::from_secs(5), request: Duration::from_secs(30), idle: Duration::from_secs(90) }
    }
}

/// Passive health checking: an endpoint that fails `consecutive_failures` times in a row
/// (connect errors, timeouts, `502`/`503`/`504`) is ejected for `ejection_time`, doubling on
/// each repeat up to `max_ejection_time`. When every endpoint is ejected, requests are
/// still tried rather than refused.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection period.
    pub ejection_time: Duration,
    /// Longest ejection period.
    pub max_ejection_time: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
        }
    }
}

/// TLS towards an upstream.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of CAs trusted for the upstream's certificate; the system roots when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Name to verify in the upstream's certificate (and send as SNI); the endpoint's host
    /// when absent.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate (PEM chain) for mutual TLS towards the upstream.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Verify the upstream as a SPIFFE workload with this ID: its X.509-SVID must carry the
    /// ID and chain to the bundle of the ID's trust domain (`spiffe.trust_domains`). Replaces
    /// host-name verification.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Present the gateway's own SVID (`spiffe.svid`) as the client certificate.
    #[serde(default)]
    pub svid: bool,
}
