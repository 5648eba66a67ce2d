//! Running many gateways from one place: a bootstrap file that points at a signed config
//! bundle instead of holding the config, and fleet status reporting.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::LogConfig;
use crate::values::Duration;

/// A bootstrap file: where the config comes from, instead of the config itself. It is told
/// from a config by its top-level key `config`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Where the config comes from.
    pub config: ConfigOrigin,
    /// The process log until the bundle's config is read (and of the fetches).
    #[serde(default)]
    pub log: LogConfig,
}

/// `config` in a bootstrap file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigOrigin {
    /// A signed bundle served over HTTP(S).
    pub source: BundleSource,
    /// This gateway's public listener, over the bundle's `server.listen` (one bundle for
    /// gateways that listen on different addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// This gateway's admin listener, over the bundle's `admin.listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// Where signed config bundles are fetched, and how they are checked.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleSource {
    /// The bundle's URL (`http://` or `https://`); fetched with `If-None-Match`.
    #[schemars(with = "String")]
    pub url: Url,
    /// PEM Ed25519 public keys (`openssl pkey -pubout`); a bundle signed by any is taken.
    pub public_keys: Vec<PathBuf>,
    /// How often the URL is asked for a newer bundle.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
    /// A writable folder for the last good bundle (used when the server cannot be reached at
    /// start) and the unpacked configs. Default: `bundles` beside this file.
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// PEM CA bundle trusted for an `https://` URL; the system roots when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}

/// Fleet status: who this gateway is, and where it reports its status.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// This gateway's name in status reports. Default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A URL the status (as `/status` shows it) is posted to, as JSON, every
    /// `report_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub report_url: Option<Url>,
    /// How often the status is posted.
    #[serde(default = "default_report_interval")]
    pub report_interval: Duration,
}

fn default_report_interval() -> Duration {
    Duration::from_secs(30)
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { id: None, report_url: None, report_interval: default_report_interval() }
    }
}
