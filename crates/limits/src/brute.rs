//! Brute-force blocking: a client address whose credentials are refused more than
//! `max_failures` times in a `window` is refused (`429`) for `block_for`, whatever it sends.
//!
//! Failures are counted in the shared state (fixed windows, so replicas on one Redis add up
//! their counts). The block itself is kept by each replica that sees the address go over:
//! checking it costs a request no round trip, and a replica that has not seen the address
//! fail yet blocks it at its first failure there (its shared count is already over).
//! Addresses are counted as rate limits count them: IPv6 by its /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER};
use portcullis_config::BruteForceConfig;
use portcullis_core::Problem;
use portcullis_state::State;
use portcullis_state::admit::{Check, Rule};

/// The state namespace of failure counts.
const NS: &str = "bf";

/// Blocked addresses held at most (a sweep of lapsed blocks makes room).
const MAX_BLOCKED: usize = 100_000;

/// A config's brute-force blocking.
#[derive(Debug)]
pub struct BruteForce {
    max_failures: u64,
    window_ms: u64,
    block_for: Duration,
}

/// Blocked addresses and until when: process-wide, so that a reload keeps them.
fn blocked() -> &'static Mutex<HashMap<[u8; 17], Instant>> {
    static BLOCKED: OnceLock<Mutex<HashMap<[u8; 17], Instant>>> = OnceLock::new();
    BLOCKED.get_or_init(Mutex::default)
}

impl BruteForce {
    /// Blocking as `config` says.
    pub fn new(config: &BruteForceConfig) -> BruteForce {
        BruteForce {
            max_failures: config.max_failures,
            window_ms: u64::try_from(config.window.get().as_millis()).unwrap_or(u64::MAX).max(1),
            block_for: config.block_for.get(),
        }
    }

    /// `Err` (`429`) while `ip` is blocked.
    pub fn check(&self, ip: IpAddr) -> Result<(), Problem> {
        let addr = crate::key::counted_address(ip);
        let mut map = blocked().lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&addr) {
            Some(until) if *until > Instant::now() => Err(refused(*until - Instant::now())),
            Some(_) => {
                map.remove(&addr);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`, refused with `problem`: the problem itself,
    /// or `429` when it is one failure too many (and the address is blocked from now). When
    /// the state cannot count it, the credential is refused all the same.
    pub async fn failed(&self, state: &State, ip: IpAddr, problem: Problem) -> Problem {
        let addr = crate::key::counted_address(ip);
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let window = now_ms / self.window_ms;
        let mut key = Vec::with_capacity(25);
        key.extend_from_slice(&addr);
        key.extend_from_slice(&window.to_be_bytes());
        let ends_ms = window.saturating_add(1).saturating_mul(self.window_ms);
        let check = Check { key: &key, rule: Rule::Window { limit: self.max_failures, ends_ms } };
        match state.admit(NS, std::slice::from_ref(&check)).await {
            Ok(c) if !c.admitted => {
                self.block(addr);
                tracing::warn!(client_ip = %ip, "authentication: too many failed attempts from this address; it is blocked");
                refused(self.block_for)
            }
            _ => problem,
        }
    }

    fn block(&self, addr: [u8; 17]) {
        let now = Instant::now();
        let mut map = blocked().lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_BLOCKED {
            map.retain(|_, until| *until > now);
        }
        // Full of live blocks: none is lifted early; this address is still refused at each
        // failure by its shared count.
        if map.len() < MAX_BLOCKED || map.contains_key(&addr) {
            map.insert(addr, now + self.block_for);
        }
    }
}

/// `429` for a blocked address, with `Retry-After`.
#[cold]
fn refused(left: Duration) -> Problem {
    let secs = left.as_secs_f64().ceil().max(1.0) as u64;
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        "too many failed authentications from this address; try again later",
    )
    .header(RETRY_AFTER, HeaderValue::from(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: u64) -> BruteForceConfig {
        serde_saphyr::from_str(&format!("max_failures: {max}\nwindow: 1m\nblock_for: 2s\n")).unwrap()
    }

    #[tokio::test]
    async fn an_address_is_blocked_after_its_failures_and_others_are_not() {
        let b = BruteForce::new(&config(3));
        let state = State::memory(1000);
        let (bad, good): (IpAddr, IpAddr) = ("192.0.2.7".parse().unwrap(), "198.51.100.1".parse().unwrap());
        let invalid = || Problem::new(StatusCode::UNAUTHORIZED, "invalid_token", "x");
        for _ in 0..3 {
            b.check(bad).unwrap();
            assert_eq!(b.failed(&state, bad, invalid()).await.status, StatusCode::UNAUTHORIZED);
        }
        let p = b.failed(&state, bad, invalid()).await;
        assert_eq!((p.status, p.code), (StatusCode::TOO_MANY_REQUESTS, "too_many_failures"));
        assert_eq!(b.check(bad).unwrap_err().status, StatusCode::TOO_MANY_REQUESTS);
        b.check(good).unwrap();
        // Another address in the blocked IPv6 /64 is the same caller; IPv4-mapped is IPv4.
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        for _ in 0..4 {
            let _ = b.failed(&state, v6, invalid()).await;
        }
        assert!(b.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(b.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert!(b.check("::ffff:192.0.2.7".parse().unwrap()).is_err());
    }
}
