//! Traffic limits: how many requests a caller may make, per route and per plan.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Duration;

/// A rate limit: at most `limit` requests `per` period for each value of `key`, spread
/// evenly (GCRA), with up to `burst` of them at once.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The name given in the `RateLimit` and `RateLimit-Policy` response fields and in
    /// metrics. Default: the key, e.g. `consumer` or `client_ip+route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What is counted separately: `consumer` (the API consumer, else the principal's
    /// subject, else its client), `subject`, `client_id`, `client_ip`, `spiffe_id`, `route`,
    /// `header:<name>`, or several of them (a list, or joined by `+`). A request that lacks
    /// an identity part (an anonymous caller and `consumer`) is counted by its client IP.
    /// Default `consumer`.
    #[serde(default)]
    pub key: LimitKey,
    /// Requests allowed per period.
    pub limit: u64,
    /// The period, e.g. `1s`, `1m`, `1h`.
    pub per: Duration,
    /// How many requests may arrive at once (the bucket's size). Default: `limit`, so that
    /// a fresh caller may send `limit` requests at once, then one every `per / limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// What happens when the shared state cannot answer (Redis down): `open` lets the
    /// request through (counted in a metric and logged once per outage), `closed` refuses it
    /// with `503`. Default `open`.
    #[serde(default)]
    pub on_error: FailMode,
    /// `exact` (default): every request is counted in the shared state as it comes.
    /// `approximate`: with Redis, each replica counts locally and adds its counts to the
    /// shared bucket every `state.redis.sync_interval`, for rates too high for a round trip
    /// a request; see the README for how far it may overshoot.
    #[serde(default)]
    pub mode: LimitMode,
}

/// How a rate limit is counted across replicas.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Each request in the shared state, atomically.
    #[default]
    Exact,
    /// Locally, synced every `state.redis.sync_interval`.
    Approximate,
}

/// What a limit does when its state cannot be reached.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Let the request through.
    #[default]
    Open,
    /// Refuse the request (`503`).
    Closed,
}

/// One part of a limit's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The API consumer, else the subject, else the client application.
    Consumer,
    /// The principal's subject.
    Subject,
    /// The client application (`client_id` / `azp`).
    ClientId,
    /// The client's IP address (see `server.trusted_proxies`).
    ClientIp,
    /// The workload's SPIFFE ID.
    SpiffeId,
    /// The route (one count for all callers of it).
    Route,
    /// A request header's value (lower-case name).
    Header(String),
}

impl KeyPart {
    /// Reads one part as written in config; `Err` says what is accepted.
    pub fn parse(s: &str) -> Result<KeyPart, String> {
        Ok(match s.trim() {
            "consumer" => KeyPart::Consumer,
            "subject" => KeyPart::Subject,
            "client_id" => KeyPart::ClientId,
            "client_ip" => KeyPart::ClientIp,
            "spiffe_id" => KeyPart::SpiffeId,
            "route" => KeyPart::Route,
            other => match other.strip_prefix("header:") {
                Some(name) if !name.is_empty() && name.bytes().all(crate::validate::is_tchar) => {
                    KeyPart::Header(name.to_ascii_lowercase())
                }
                Some(_) => return Err(format!("`{other}`: `header:` needs a header name")),
                None => {
                    return Err(format!(
                        "`{other}` is not a key part: one of consumer, subject, client_id, client_ip, spiffe_id, \
                         route, header:<name>"
                    ));
                }
            },
        })
    }

    /// As written in config.
    pub fn name(&self) -> String {
        match self {
            KeyPart::Consumer => "consumer".into(),
            KeyPart::Subject => "subject".into(),
            KeyPart::ClientId => "client_id".into(),
            KeyPart::ClientIp => "client_ip".into(),
            KeyPart::SpiffeId => "spiffe_id".into(),
            KeyPart::Route => "route".into(),
            KeyPart::Header(h) => format!("header:{h}"),
        }
    }
}

/// A limit's key: one part or several. Written `consumer`, `client_ip+route` or
/// `[client_ip, route]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitKey(pub Vec<KeyPart>);

impl Default for LimitKey {
    fn default() -> Self {
        LimitKey(vec![KeyPart::Consumer])
    }
}

impl LimitKey {
    /// As written in config (`client_ip+route`).
    pub fn name(&self) -> String {
        self.0.iter().map(KeyPart::name).collect::<Vec<_>>().join("+")
    }

    fn from_parts<'a, E: de::Error>(parts: impl Iterator<Item = &'a str>) -> Result<LimitKey, E> {
        let mut out: Vec<KeyPart> = Vec::new();
        for p in parts {
            let part = KeyPart::parse(p).map_err(E::custom)?;
            if out.contains(&part) {
                return Err(E::custom(format!("`{}` is given twice", part.name())));
            }
            out.push(part);
        }
        if out.is_empty() {
            return Err(E::custom("a key needs at least one part"));
        }
        Ok(LimitKey(out))
    }
}

impl<'de> Deserialize<'de> for LimitKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LimitKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key such as `consumer`, `client_ip+route` or a list of key parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LimitKey, E> {
                LimitKey::from_parts(v.split('+'))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LimitKey, A::Error> {
                let mut parts: Vec<String> = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    parts.push(p);
                }
                LimitKey::from_parts(parts.iter().map(String::as_str))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Serialize for LimitKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl JsonSchema for LimitKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LimitKey".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`consumer`, `subject`, `client_id`, `client_ip`, `spiffe_id`, `route`, `header:<name>`, or several joined by `+` or listed",
            "anyOf": [g.subschema_for::<String>(), g.subschema_for::<Vec<String>>()]
        })
    }
}

/// A plan: the limits that apply to every consumer on it, on every route.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Rate limits of each consumer on the plan (key `consumer` unless given), counted
    /// across all routes.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Quotas of each consumer on the plan (key `consumer` unless given), counted across
    /// all routes, e.g. `[{limit: 10000, per: day}, {limit: 200000, per: month}]`.
    #[serde(default)]
    pub quotas: Vec<QuotaConfig>,
}

/// An entry of an IP list: an address or CIDR block (`10.0.0.0/8`, `2001:db8::/32`,
/// `192.0.2.7`), or a file of them, one per line (`#` starts a comment), read again when
/// it changes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum IpListEntry {
    /// An address or CIDR block.
    Net(String),
    /// A file of addresses and CIDR blocks.
    File {
        /// The file's path (relative to the config file).
        file: std::path::PathBuf,
    },
}

/// Which client addresses may use a route, checked before authentication.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IpRulesConfig {
    /// Only these addresses may use the route (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<IpListEntry>,
    /// These addresses may not, even when `allow` lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<IpListEntry>,
}

/// How many requests may be in flight at once (to a route or an upstream), to protect a
/// slow service: past `max`, up to `queue` requests wait up to `wait` for a slot, and the
/// rest are refused with `503`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// Requests in flight at most (from the end of the checks until the upstream's response
    /// head arrives).
    pub max: u32,
    /// Requests that may wait for a slot (default 0: refused at once).
    #[serde(default)]
    pub queue: u32,
    /// The longest a request waits for a slot (default `1s`).
    #[serde(default = "default_wait")]
    pub wait: Duration,
}

fn default_wait() -> Duration {
    Duration::from_secs(1)
}

/// Limits on the shape of JSON request bodies, checked as the body arrives. A route with
/// them takes JSON bodies only (`application/json`, `*/*+json`) unless `content_types`
/// lists others, which are then not checked.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JsonLimitsConfig {
    /// Nesting of objects and arrays (default 32).
    #[serde(default = "default_depth")]
    pub max_depth: u32,
    /// Members of one object (default 1,000).
    #[serde(default = "default_keys")]
    pub max_keys: u32,
    /// Bytes of one string, key or value, as sent (default 65,536).
    #[serde(default = "default_string")]
    pub max_string_length: u32,
    /// Items of one array (default 10,000).
    #[serde(default = "default_items")]
    pub max_array_length: u32,
    /// Values in the whole body (default 100,000).
    #[serde(default = "default_members")]
    pub max_members: u64,
}

impl Default for JsonLimitsConfig {
    fn default() -> Self {
        JsonLimitsConfig {
            max_depth: default_depth(),
            max_keys: default_keys(),
            max_string_length: default_string(),
            max_array_length: default_items(),
            max_members: default_members(),
        }
    }
}

fn default_depth() -> u32 {
    32
}
fn default_keys() -> u32 {
    1000
}
fn default_string() -> u32 {
    65_536
}
fn default_items() -> u32 {
    10_000
}
fn default_members() -> u64 {
    100_000
}

/// A quota: at most `limit` requests in each calendar window (`day`, `month`...), counted
/// per value of `key`. Unlike a rate limit it does not refill gradually: the count starts
/// again at the window's start.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// The name in the response fields and metrics. Default: the window, e.g. `day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What is counted apart (default `consumer`), as for rate limits.
    #[serde(default)]
    pub key: LimitKey,
    /// Requests allowed in each window.
    pub limit: u64,
    /// The window: `hour`, `day`, `week` (from Monday), `month`, or a duration (`10s`,
    /// `15m`), windows of which start at midnight. Calendar windows follow `quota_timezone`.
    pub per: QuotaWindow,
    /// What happens when the shared state cannot answer: as for rate limits.
    #[serde(default)]
    pub on_error: FailMode,
}

/// A quota's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaWindow {
    /// A calendar hour.
    Hour,
    /// A calendar day.
    Day,
    /// A week from Monday.
    Week,
    /// A calendar month.
    Month,
    /// Fixed windows of this length, the first starting at midnight.
    Every(std::time::Duration),
}

impl QuotaWindow {
    /// As written in config.
    pub fn name(&self) -> String {
        match self {
            QuotaWindow::Hour => "hour".into(),
            QuotaWindow::Day => "day".into(),
            QuotaWindow::Week => "week".into(),
            QuotaWindow::Month => "month".into(),
            QuotaWindow::Every(d) => humantime::format_duration(*d).to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for QuotaWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.trim() {
            "hour" => QuotaWindow::Hour,
            "day" => QuotaWindow::Day,
            "week" => QuotaWindow::Week,
            "month" => QuotaWindow::Month,
            other => QuotaWindow::Every(humantime::parse_duration(other).map_err(|_| {
                de::Error::custom(format!("`{other}`: a window is hour, day, week, month or a duration such as `10s`"))
            })?),
        })
    }
}

impl Serialize for QuotaWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl JsonSchema for QuotaWindow {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QuotaWindow".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`hour`, `day`, `week`, `month`, or a duration such as `10s`"
        })
    }
}

/// Brute-force blocking: a client address that fails authentication too often is refused
/// for a while, in the shared state.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BruteForceConfig {
    /// Failed authentications (a credential given and refused) an address may have in one
    /// `window`; the next is refused, and so is everything from that address for
    /// `block_for` (default 10).
    #[serde(default = "default_max_failures")]
    pub max_failures: u64,
    /// The window failures are counted in (default `1m`).
    #[serde(default = "default_failure_window")]
    pub window: Duration,
    /// How long a blocked address is refused (default `5m`).
    #[serde(default = "default_block_for")]
    pub block_for: Duration,
}

fn default_max_failures() -> u64 {
    10
}

fn default_failure_window() -> Duration {
    Duration::from_millis(60_000)
}

fn default_block_for() -> Duration {
    Duration::from_millis(300_000)
}
