//! The in-process backend: a sharded map of key digests to expiry times.
//!
//! Keys are stored as SHA-256 digests of namespace and key, so an entry has a fixed size
//! whatever the caller's key, and the capacity bounds memory (about 64 bytes an entry).
//! Expired entries are swept from a shard when it fills or once a second, whichever comes
//! first. A shard that is full of live entries refuses new ones (fail closed) rather than
//! forget a live one, which would let a replay through.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::StateError;
use crate::admit::{self, Check, Checked, Rule};

/// Default number of entries: room for a million proofs within their replay window.
pub(crate) const DEFAULT_CAPACITY: usize = 1 << 20;

const SHARDS: usize = 16;

/// An in-memory store.
#[derive(Debug)]
pub struct Memory {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    epoch: Instant,
    buckets: Buckets,
    /// The revocations: with one replica, the copy is the list.
    pub(crate) revocations: crate::revocations::Copy,
}

#[derive(Debug, Default)]
struct Shard {
    /// Digest → expiry, in milliseconds since the store's epoch.
    entries: HashMap<[u8; 32], u64>,
    next_sweep: u64,
}

impl Memory {
    /// A store holding at most `capacity` live entries.
    pub fn new(capacity: usize) -> Memory {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Memory {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            epoch: Instant::now(),
            buckets: Buckets::new(capacity),
            revocations: crate::revocations::Copy::local(),
        }
    }

    /// See [`crate::State::admit`].
    pub fn admit(&self, ns: &str, checks: &[Check<'_>]) -> Result<Checked, StateError> {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.buckets.check(ns, checks, now)
    }

    fn digest(ns: &str, key: &[u8]) -> Result<[u8; 32], StateError> {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&(ns.len() as u64).to_be_bytes());
        ctx.update(ns.as_bytes());
        ctx.update(key);
        ctx.finish().as_ref().try_into().map_err(|_| StateError::Full)
    }

    /// See [`crate::State::forget`].
    pub fn forget(&self, ns: &str, key: &[u8]) -> Result<(), StateError> {
        let digest = Self::digest(ns, key)?;
        self.shards[digest[0] as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner()).entries.remove(&digest);
        Ok(())
    }

    /// See [`crate::State::insert_once`].
    pub fn insert_once(&self, ns: &str, key: &[u8], ttl: Duration) -> Result<bool, StateError> {
        let digest = Self::digest(ns, key)?;
        let now = self.epoch.elapsed().as_millis() as u64;
        let until = now.saturating_add(ttl.as_millis() as u64);
        let shard = &self.shards[digest[0] as usize % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if shard.entries.len() >= self.per_shard || now >= shard.next_sweep {
            shard.entries.retain(|_, exp| *exp > now);
            shard.next_sweep = now + 1000;
        }
        let full = shard.entries.len() >= self.per_shard;
        match shard.entries.get_mut(&digest) {
            Some(exp) if *exp > now => Ok(false),
            Some(exp) => {
                *exp = until;
                Ok(true)
            }
            None if full => Err(StateError::Full),
            None => {
                shard.entries.insert(digest, until);
                Ok(true)
            }
        }
    }
}

/// Rate-limit buckets and quota windows: key → (TAT or count, expiry), times in µs since
/// the store's epoch. A bucket whose TAT has passed is full, the same as absent; a window
/// that has ended is forgotten; both are swept like expired replay entries.
///
/// A key is stored as 128 bits of two hashes seeded at random for the process (foldhash, two
/// seeds): a fixed size whatever the caller's key, no allocation, and a few hundred
/// instructions where a SHA-256 of a typical key (an issuer and a subject) cost 4,000
/// (bench/RESULTS.md, "Rate limits"). Two callers share a bucket only if both hashes
/// collide, which nobody can aim for without the seeds.
#[derive(Debug)]
struct Buckets {
    shards: Box<[Mutex<BucketShard>]>,
    per_shard: usize,
    hi: foldhash::quality::RandomState,
    lo: foldhash::fast::RandomState,
}

#[derive(Debug, Default)]
struct BucketShard {
    tats: HashMap<u128, (u64, u64), foldhash::fast::RandomState>,
    last_sweep: u64,
    next_sweep: u64,
}

impl Buckets {
    fn new(capacity: usize) -> Buckets {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::new(BucketShard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hi: foldhash::quality::RandomState::default(),
            lo: foldhash::fast::RandomState::default(),
        }
    }

    fn check(&self, ns: &str, checks: &[Check<'_>], now: u64) -> Result<Checked, StateError> {
        // A window ends at a wall-clock time: its expiry on the store's clock.
        let unix_us =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let expiry = |rule: Rule, value: u64, unix_now: u64| match rule {
            Rule::Gcra { .. } | Rule::Synced { .. } => now + value,
            Rule::Window { ends_ms, .. } => now + (ends_ms.saturating_mul(1000)).saturating_sub(unix_now),
        };
        let stored_value = |rule: Rule, value: u64| match rule {
            Rule::Gcra { .. } | Rule::Synced { .. } => now + value,
            Rule::Window { .. } => value,
        };
        if let [check] = checks {
            // One limit, one shard: the common case, without the bookkeeping below; a known
            // caller's entry is updated in place.
            let unix_now = if matches!(check.rule, Rule::Window { .. }) { unix_us() } else { 0 };
            let key = self.stored_key(ns, check.key);
            let mut shard = self.shards[self.shard_of(key)].lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = shard.tats.get_mut(&key) {
                let live = Some(entry.0).filter(|_| entry.1 > now);
                let checked = admit::decide(checks, [live].into_iter(), now);
                if checked.admitted {
                    *entry =
                        (stored_value(check.rule, checked.values[0]), expiry(check.rule, checked.values[0], unix_now));
                }
                return Ok(checked);
            }
            let checked = admit::decide(checks, [None].into_iter(), now);
            if checked.admitted {
                self.room(&mut shard, key, now)?;
                let v = checked.values[0];
                shard.tats.insert(key, (stored_value(check.rule, v), expiry(check.rule, v, unix_now)));
            }
            return Ok(checked);
        }
        let unix_now = if checks.iter().any(|c| matches!(c.rule, Rule::Window { .. })) { unix_us() } else { 0 };
        let keys: Vec<u128> = checks.iter().map(|c| self.stored_key(ns, c.key)).collect();
        // The shards of all the keys are held together, taken in ascending order (so two
        // checks cannot deadlock): the decision and the update are one step.
        let mut order: Vec<usize> = keys.iter().map(|k| self.shard_of(*k)).collect();
        order.sort_unstable();
        order.dedup();
        let mut held: Vec<MutexGuard<'_, BucketShard>> =
            order.iter().map(|&i| self.shards[i].lock().unwrap_or_else(|e| e.into_inner())).collect();
        let at: Vec<usize> = keys.iter().map(|k| order.binary_search(&self.shard_of(*k)).unwrap_or_default()).collect();
        let checked = admit::decide(
            checks,
            keys.iter().zip(&at).map(|(k, &h)| held[h].tats.get(k).filter(|e| e.1 > now).map(|e| e.0)),
            now,
        );
        if !checked.admitted {
            return Ok(checked);
        }
        // Room first, for every key: a request is counted by all its limits or by none.
        for (key, &h) in keys.iter().zip(&at) {
            self.room(&mut held[h], *key, now)?;
        }
        for (((key, &h), v), c) in keys.into_iter().zip(&at).zip(&checked.values).zip(checks) {
            held[h].tats.insert(key, (stored_value(c.rule, *v), expiry(c.rule, *v, unix_now)));
        }
        Ok(checked)
    }

    /// The stored form of `key` in namespace `ns`.
    fn stored_key(&self, ns: &str, key: &[u8]) -> u128 {
        let hi = self.hi.hash_one((ns, key));
        let lo = self.lo.hash_one((ns, key));
        (u128::from(hi) << 64) | u128::from(lo)
    }

    fn shard_of(&self, key: u128) -> usize {
        (key as usize) % SHARDS
    }

    /// Whether `shard` has room for `key`: full buckets (a TAT passed) are swept once a
    /// second, and, while the shard is full, at most every 10 ms (a sweep visits every
    /// entry: one per new key would make a full store slow to refuse).
    fn room(&self, shard: &mut BucketShard, key: u128, now: u64) -> Result<(), StateError> {
        let full = shard.tats.len() >= self.per_shard;
        if now >= shard.next_sweep || (full && now >= shard.last_sweep + 10_000) {
            shard.tats.retain(|_, entry| entry.1 > now);
            shard.last_sweep = now;
            shard.next_sweep = now + 1_000_000;
        }
        if shard.tats.len() >= self.per_shard && !shard.tats.contains_key(&key) {
            return Err(StateError::Full);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_insert_is_a_replay_until_expiry() {
        let m = Memory::new(100);
        assert_eq!(m.insert_once("dpop", b"a", Duration::from_millis(50)), Ok(true));
        assert_eq!(m.insert_once("dpop", b"a", Duration::from_millis(50)), Ok(false));
        // Another namespace is another key.
        assert_eq!(m.insert_once("other", b"a", Duration::from_millis(50)), Ok(true));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(m.insert_once("dpop", b"a", Duration::from_millis(50)), Ok(true));
    }

    #[test]
    fn a_full_store_refuses_rather_than_forgets() {
        let m = Memory::new(SHARDS); // one entry per shard
        let mut refused = 0;
        for i in 0..200u32 {
            match m.insert_once("dpop", &i.to_be_bytes(), Duration::from_secs(60)) {
                Ok(true) => {}
                Ok(false) => panic!("a fresh key was called a replay"),
                Err(StateError::Full) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused >= 200 - SHARDS, "only {refused} refused");
        // The live entries are still remembered.
        let remembered = (0..200u32)
            .filter(|i| m.insert_once("dpop", &i.to_be_bytes(), Duration::from_secs(60)) == Ok(false))
            .count();
        assert!((1..=SHARDS).contains(&remembered));
    }

    #[test]
    fn expired_entries_make_room() {
        let m = Memory::new(SHARDS);
        for i in 0..64u32 {
            let _ = m.insert_once("dpop", &i.to_be_bytes(), Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(20));
        let ok =
            (100..164u32).filter(|i| m.insert_once("dpop", &i.to_be_bytes(), Duration::from_secs(1)).is_ok()).count();
        assert!(ok >= SHARDS / 2, "{ok}");
    }

    #[test]
    fn concurrent_inserts_admit_exactly_one() {
        let m = std::sync::Arc::new(Memory::new(1000));
        let wins: usize = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    usize::from(m.insert_once("dpop", b"same", Duration::from_secs(5)) == Ok(true))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
    }

    fn bucket(key: &'static [u8], interval_us: u64, burst: u64) -> Check<'static> {
        Check { key, rule: Rule::Gcra { interval_us, capacity_us: interval_us * burst } }
    }

    #[test]
    fn a_refused_request_is_counted_by_no_bucket() {
        let m = Memory::new(1000);
        let (wide, narrow) = (bucket(b"wide", 1_000_000, 3), bucket(b"narrow", 1_000_000, 1));
        assert!(m.admit("rl", &[wide, narrow]).unwrap().admitted);
        for _ in 0..5 {
            assert!(!m.admit("rl", &[wide, narrow]).unwrap().admitted);
        }
        // The wide bucket counted one request, not six: two more fit.
        assert!(m.admit("rl", &[wide]).unwrap().admitted);
        assert!(m.admit("rl", &[wide]).unwrap().admitted);
        assert!(!m.admit("rl", &[wide]).unwrap().admitted);
    }

    #[test]
    fn racing_checks_of_two_buckets_on_two_shards_are_exact() {
        let m = std::sync::Arc::new(Memory::new(100_000));
        // Keys on different shards (found, not assumed).
        let a: &'static [u8] = b"a";
        let b: &'static [u8] = [&b"b"[..], b"c", b"d", b"e", b"f", b"g", b"h"]
            .into_iter()
            .find(|k| {
                m.buckets.shard_of(m.buckets.stored_key("rl", k)) != m.buckets.shard_of(m.buckets.stored_key("rl", a))
            })
            .unwrap();
        let admitted: usize = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .filter(|_| {
                            m.admit("rl", &[bucket(a, 1_000_000_000, 50), bucket(b, 1_000_000_000, 70)])
                                .unwrap()
                                .admitted
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 50);
        // The other bucket counted exactly those: 20 left.
        let left = (0..100).filter(|_| m.admit("rl", &[bucket(b, 1_000_000_000, 70)]).unwrap().admitted).count();
        assert_eq!(left, 20);
    }

    #[test]
    fn a_full_store_refuses_new_buckets_and_makes_room_as_they_fill_up() {
        let m = Memory::new(SHARDS); // one bucket per shard
        let keys: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut full = 0;
        for k in &keys {
            match m.admit("rl", &[Check { key: k, rule: Rule::Gcra { interval_us: 20_000, capacity_us: 20_000 } }]) {
                Ok(c) => assert!(c.admitted),
                Err(StateError::Full) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full >= 200 - SHARDS, "{full}");
        // Once the buckets are full again (20 ms), their entries make room.
        std::thread::sleep(Duration::from_millis(40));
        let ok = keys
            .iter()
            .filter(|k| m.admit("rl", &[Check { key: k, rule: Rule::Gcra { interval_us: 1, capacity_us: 1 } }]).is_ok())
            .count();
        assert!(ok >= SHARDS / 2, "{ok}");
        // Keys are stored as 128 bits, whatever their length; namespaces separate.
        let b = &m.buckets;
        assert_ne!(b.stored_key("rl", &[7u8; 1000]), b.stored_key("rl", &[8u8; 1000]));
        assert_ne!(b.stored_key("rl", b"k"), b.stored_key("q", b"k"));
        assert_ne!(b.stored_key("rl", b"ab"), b.stored_key("rla", b"b"));
    }

    #[test]
    fn a_window_counts_to_its_limit_and_is_forgotten_when_it_ends() {
        let m = Memory::new(1000);
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let w = Check { key: b"q", rule: Rule::Window { limit: 3, ends_ms: unix_ms + 60 } };
        let admitted = (0..5).filter(|_| m.admit("q", &[w]).unwrap().admitted).count();
        assert_eq!(admitted, 3);
        assert_eq!(m.admit("q", &[w]).unwrap().values, [4]);
        std::thread::sleep(Duration::from_millis(80));
        assert!(m.admit("q", &[w]).unwrap().admitted, "a window that ended is forgotten");
    }
}
