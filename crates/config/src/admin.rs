//! The admin listener: health, readiness, metrics and the effective config.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The admin listener. Keep it on a private address: it shows the effective config
/// (secrets redacted) and metrics.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener, e.g. `127.0.0.1:9901`. Changing it needs a restart.
    pub listen: SocketAddr,
}
