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
    /// A password in the URL is redacted from config dumps.
    #[serde(default, serialize_with = "serialize_opt_url")]
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

fn serialize_opt_url<S: serde::Serializer>(u: &Option<url::Url>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => crate::values::serialize_url_redacted(u, s),
        None => s.serialize_none(),
    }
}
