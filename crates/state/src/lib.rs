//! Shared state: facts that every request of a deployment must agree on, such as "this DPoP
//! proof has been seen". One replica keeps them in memory; a replica pool will keep them in
//! Redis, behind the same interface, so that a proof sent to two replicas is still refused
//! at the second.
//!
//! Callers treat every error as a refusal (fail closed): a replay check that cannot be made
//! is a request that is not let through.

#![forbid(unsafe_code)]

mod memory;

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::{StateBackend, StateConfig};

pub use memory::Memory;

/// Why the state could not answer. The request that needed it is refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The store is full of unexpired entries.
    #[error("the replay cache is full")]
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
}

impl State {
    /// The backend `config` asks for. `Err` says why it cannot be had.
    pub fn build(config: &StateConfig) -> Result<State, String> {
        match config.backend {
            StateBackend::Memory => Ok(State::Memory(Arc::new(Memory::new(memory::DEFAULT_CAPACITY)))),
            StateBackend::Redis => Err("the Redis backend is not available in this build; use `memory`".into()),
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
        }
    }

    /// Whether two handles share one store (a reload keeps the store when the backend is
    /// unchanged, so the replay window survives it).
    pub fn same(&self, other: &State) -> bool {
        match (self, other) {
            (State::Memory(a), State::Memory(b)) => Arc::ptr_eq(a, b),
        }
    }
}
