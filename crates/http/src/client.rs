//! The client side of upstream connections: the lean HTTP/1.1 client ([`h1`]), and what
//! every sender takes (the fields to add, how long to wait).

pub mod h1;

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// How long an exchange waits, and for whom.
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    /// For the upstream: to take the head, each part of the body, and then to answer; then
    /// the longest pause between two parts of its response body.
    pub upstream: Duration,
    /// For the client: the longest pause within its request body (HTTP/1.1 upstreams; a
    /// stalled body is the client's failure, never the upstream's).
    pub client_idle: Duration,
}

/// Fields the sender adds on the way upstream. They are kept apart from the request's
/// map until sending: the lean HTTP/1.1 client writes them straight into the request head
/// (no hashing and no growing of the map), other senders insert them.
#[derive(Clone, Debug, Default)]
pub struct Added {
    entries: [Option<(&'static HeaderName, HeaderValue)>; 6],
    len: usize,
}

impl Added {
    /// Adds a header. The caller has removed any copy the client sent.
    pub fn push(&mut self, name: &'static HeaderName, value: HeaderValue) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = Some((name, value));
            self.len += 1;
        }
    }

    /// The added headers.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.entries[..self.len].iter().flatten().map(|(n, v)| (*n, v))
    }

    /// Puts them into `map`, replacing what is there.
    pub fn insert_into(&self, map: &mut HeaderMap) {
        for (name, value) in self.iter() {
            map.insert(name, value.clone());
        }
    }
}
