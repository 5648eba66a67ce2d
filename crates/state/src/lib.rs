//! Shared state: facts that every request of a deployment must agree on, such as "this DPoP
//! proof has been seen". One replica keeps them in memory; a replica pool keeps them in
//! Redis, behind the same interface, so that a proof sent to two replicas is still refused
//! at the second. No other crate talks to Redis.
//!
//! Callers treat every error as a refusal (fail closed): a replay check that cannot be made
//! is a request that is not let through.

#![forbid(unsafe_code)]

pub mod admit;
mod batch;
mod memory;
mod redis;
pub mod revocations;
mod synced;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{StateBackend, StateConfig};

pub use memory::Memory;
pub use redis::Redis;

/// Why the state could not answer. The request that needed it is refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The store is full of unexpired entries.
    #[error("the in-memory state is full")]
    Full,
    /// The backend cannot be reached.
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
}

/// The shared-state backend of a deployment. Cheap to clone.
#[derive(Clone, Debug)]
pub enum State {
    /// In this process.
    Memory(Arc<Memory>),
    /// In Redis, shared by every replica that uses the same one.
    Redis(Arc<Redis>),
}

impl State {
    /// The backend `config` asks for. `Err` names the key under `state` at fault and says
    /// why the backend cannot be had.
    pub fn build(config: &StateConfig) -> Result<State, (&'static str, String)> {
        match config.backend {
            StateBackend::Memory => Ok(State::Memory(Arc::new(Memory::new(memory::DEFAULT_CAPACITY)))),
            StateBackend::Redis => {
                let redis = Arc::new(Redis::new(config)?);
                redis.start();
                Ok(State::Redis(redis))
            }
        }
    }

    /// A memory backend holding at most `capacity` entries (tests and tools).
    pub fn memory(capacity: usize) -> State {
        State::Memory(Arc::new(Memory::new(capacity)))
    }

    /// Records `key` in namespace `ns` for `ttl`, unless it is already there: `Ok(true)`
    /// the first time, `Ok(false)` while the earlier record lasts (a replay). Atomic: of
    /// two concurrent calls with one key, exactly one gets `true`.
    pub async fn insert_once(&self, ns: &str, key: &[u8], ttl: Duration) -> Result<bool, StateError> {
        match self {
            State::Memory(m) => m.insert_once(ns, key, ttl),
            State::Redis(r) => r.insert_once(ns, key, ttl).await,
        }
    }

    /// Forgets what [`State::insert_once`] recorded under `key` (an action it marked as
    /// done that then failed, so that it may be tried again).
    pub async fn forget(&self, ns: &str, key: &[u8]) -> Result<(), StateError> {
        match self {
            State::Memory(m) => m.forget(ns, key),
            State::Redis(r) => r.forget(ns, key).await,
        }
    }

    /// Counts a request against rate-limit buckets and quota windows (see [`admit`]),
    /// atomically: it is admitted only if every key admits it, and then counted by all of
    /// them. Of N concurrent checks against a key with room for M < N, exactly M are
    /// admitted. Keys are namespaced by `ns`.
    pub async fn admit(&self, ns: &str, checks: &[admit::Check<'_>]) -> Result<admit::Checked, StateError> {
        match self {
            State::Memory(m) => m.admit(ns, checks),
            State::Redis(r) => r.admit(ns, checks).await,
        }
    }

    /// Records a revocation: every replica refuses what it names within a second.
    pub async fn revoke(&self, r: revocations::Revocation) -> Result<(), StateError> {
        match self {
            State::Memory(m) => {
                m.revocations.apply(Some(r), None);
                Ok(())
            }
            State::Redis(redis) => redis.revoke(r).await,
        }
    }

    /// Undoes a revocation; `Ok(false)` if there was none.
    pub async fn unrevoke(&self, kind: revocations::Kind, value: &str) -> Result<bool, StateError> {
        match self {
            State::Memory(m) => {
                let known =
                    m.revocations.view().is_some_and(|v| v.list().iter().any(|r| r.kind == kind && r.value == value));
                m.revocations.apply(None, Some((kind, value)));
                Ok(known)
            }
            State::Redis(redis) => redis.unrevoke(kind, value).await,
        }
    }

    /// The revocations in force, as this replica knows them. `Err` when its copy of a shared
    /// list is stale (Redis out of reach for a while): what it would judge is refused.
    pub fn revoked(&self) -> Result<arc_swap::Guard<Arc<revocations::Revoked>>, StateError> {
        let copy = match self {
            State::Memory(m) => &m.revocations,
            State::Redis(r) => {
                r.start();
                &r.revocations
            }
        };
        copy.view().ok_or_else(|| StateError::Unavailable("the revocation list could not be read lately".into()))
    }

    /// The usage counts Redis holds for hours `from..to` (every replica's); none for the
    /// memory backend, whose counts are its process's (see [`usage::Meter::query`]).
    pub async fn stored_usage(&self, from: u64, to: u64) -> Result<Vec<(usage::Series, usage::Counts)>, StateError> {
        match self {
            State::Memory(_) => Ok(Vec::new()),
            State::Redis(r) => r.usage(from, to).await,
        }
    }

    /// Whether the backend can answer now (readiness): always for memory, a `PING` within
    /// the timeout for Redis.
    pub async fn ping(&self) -> Result<(), StateError> {
        match self {
            State::Memory(_) => Ok(()),
            State::Redis(r) => r.ping().await,
        }
    }

    /// The backend's name, for readiness reports.
    pub fn backend(&self) -> &'static str {
        match self {
            State::Memory(_) => "memory",
            State::Redis(_) => "redis",
        }
    }

    /// Whether two handles share one store (a reload keeps the store when the backend is
    /// unchanged, so the replay window survives it).
    pub fn same(&self, other: &State) -> bool {
        match (self, other) {
            (State::Memory(a), State::Memory(b)) => Arc::ptr_eq(a, b),
            (State::Redis(a), State::Redis(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
