//! Where shared state (rate limits, replay caches, revocations) lives.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, Secret};

/// Where state shared by requests lives: in this process, or in Redis for a replica pool.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `memory` for a single replica, `redis` to share state across replicas.
    #[serde(default)]
    pub backend: StateBackend,
    /// Redis address, e.g. `redis://127.0.0.1:6379` (required with `backend: redis`).
    /// A password in the URL is hidden in config dumps and error messages.
    #[serde(
        default,
        serialize_with = "crate::values::serialize_opt_url_redacted",
        deserialize_with = "crate::values::deserialize_opt_url"
    )]
    #[schemars(with = "Option<String>")]
    pub redis_url: Option<url::Url>,
    /// Settings of the Redis connection (with `backend: redis`).
    #[serde(default)]
    pub redis: RedisConfig,
    /// The file that keeps this replica's usage counts across restarts with
    /// `backend: memory` (journaled every second and at shutdown); `portcullis.state`
    /// beside the config file by default. One gateway process at a time may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

/// Usage metering: requests and bytes per consumer, plan, route, status class and hour.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Whether requests are metered (on by default).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long hourly counts are kept (default 35 days: a billing month and some days to
    /// export it).
    #[serde(default = "default_retention")]
    pub retention: Duration,
    /// The most series (consumer, plan, route, status class, hour) kept in memory with
    /// `backend: memory`; past it, new consumers are counted as `(other)`.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig { enabled: true, retention: default_retention(), max_series: default_max_series() }
    }
}

fn default_true() -> bool {
    true
}

fn default_retention() -> Duration {
    Duration(std::time::Duration::from_secs(35 * 86_400))
}

fn default_max_series() -> usize {
    1_000_000
}

/// A shared-state backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    /// In-process state; nothing else needed.
    #[default]
    Memory,
    /// Redis, shared by every replica.
    Redis,
}

/// How the gateway talks to Redis.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// User name (Redis ACL); overrides one in `redis_url`.
    #[serde(default)]
    pub username: Option<String>,
    /// Password; overrides one in `redis_url`. Inline, `{ env: VAR }` or `{ file: path }`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The longest a command may take, connecting included: past it the request that needed
    /// it is refused (`503`) rather than held.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Duration,
    /// Prefix of every key the gateway writes, so that gateways can share a Redis with
    /// other applications or with each other.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// TLS settings for a `rediss://` URL (and, with `sentinel` or `cluster`, for every
    /// node: TLS is on when this is given).
    #[serde(default)]
    pub tls: Option<RedisTls>,
    /// Redis behind Sentinel: the primary is asked of the sentinels, and asked again after
    /// a failover (instead of `redis_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelConfig>,
    /// Redis Cluster: its nodes (instead of `redis_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// The database number with `sentinel` (default 0; a Cluster has only 0).
    #[serde(default)]
    pub db: u32,
    /// How often replicas add their local counts of `mode: approximate` rate limits to
    /// Redis and read the others' (default `100ms`).
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Duration,
}

fn default_sync_interval() -> Duration {
    Duration::from_millis(100)
}

/// Redis Sentinel: the sentinels to ask and the name of the primary they watch.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the sentinels know the primary by (`sentinel monitor <name> ...`).
    pub master: String,
    /// The sentinels, as `host:port`.
    pub nodes: Vec<String>,
    /// The sentinels' own ACL user, if they have one.
    #[serde(default)]
    pub username: Option<String>,
    /// The sentinels' own password (`requirepass` in sentinel.conf), if they have one.
    #[serde(default)]
    pub password: Option<Secret>,
}

/// Redis Cluster: nodes to learn the cluster's layout from.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Some of the cluster's nodes, as `host:port` (any one that answers will do).
    pub nodes: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            username: None,
            password: None,
            timeout: default_redis_timeout(),
            key_prefix: default_key_prefix(),
            tls: None,
            sentinel: None,
            cluster: None,
            db: 0,
            sync_interval: default_sync_interval(),
        }
    }
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_key_prefix() -> String {
    "portcullis:".into()
}

/// TLS towards Redis (`rediss://`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    /// PEM bundle of CAs trusted for the server's certificate; the system roots when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM chain) for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `host:port` (a name or an IP address, IPv6 in brackets) split, if it is that.
pub fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    (!host.is_empty() && host.chars().all(plain)).then(|| (host.to_string(), port))
}
