//! Where shared state (rate limits, replay caches, revocations) lives.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
