//! Rate-limit buckets counted locally and synced with Redis (`mode: approximate`): a
//! request is decided in this process, without a round trip; every `sync_interval` the
//! replica adds what it admitted to the shared bucket and takes back the bucket as all
//! replicas left it.
//!
//! A bucket is a GCRA TAT, as in exact mode. Every admitted request is added to the shared
//! TAT, so over time the rate is the limit's; between two syncs a replica does not see what
//! the others admitted, so together they may admit up to (replicas − 1) × the burst more
//! than the limit (each may spend what it last saw left), and the shared TAT then runs ahead
//! of now (a debt) until the rate falls back. While Redis cannot be reached, each replica
//! goes on limiting with its own counts, which are added when it answers again.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use crate::admit::{Check, Rule};

const SHARDS: usize = 16;

/// Local buckets held at most, per shard (a million in all): past it, requests for new keys
/// are counted in Redis directly, as in exact mode.
const PER_SHARD: usize = 1 << 16;

/// A bucket untouched for this long (µs) and fully synced is forgotten: the next request
/// for its key starts from what the next sync says.
const IDLE_US: u64 = 2_000_000;

/// One local bucket.
#[derive(Debug)]
struct Bucket {
    /// The Redis key.
    key: Box<[u8]>,
    interval_us: u64,
    /// The TAT as this replica knows it (µs on the store's clock).
    tat: u64,
    /// Requests admitted here and not yet added to the shared bucket.
    pending: u64,
    /// When a request last used it.
    used: u64,
}

/// The local buckets of a store.
#[derive(Debug)]
pub(crate) struct Synced {
    shards: Box<[Mutex<HashMap<u128, Bucket>>]>,
    seeds: [foldhash::fast::FixedState; 2],
    epoch: Instant,
}

/// One bucket's part of a sync: its Redis key, its interval, and what it adds.
pub(crate) struct Outgoing {
    id: u128,
    pub(crate) key: Box<[u8]>,
    pub(crate) interval_us: u64,
    pub(crate) pending: u64,
}

impl Synced {
    pub(crate) fn new() -> Synced {
        let seed = |i: u64| {
            let mut b = [0u8; 8];
            // The system's generator does not fail on Linux; the ids stay distinct either way.
            let _ = aws_lc_rs::rand::fill(&mut b);
            foldhash::fast::FixedState::with_seed(u64::from_le_bytes(b) ^ i)
        };
        Synced {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            seeds: [seed(1), seed(2)],
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn id(&self, key: &[u8]) -> u128 {
        (u128::from(self.seeds[0].hash_one(key)) << 64) | u128::from(self.seeds[1].hash_one(key))
    }

    fn shard(&self, id: u128) -> std::sync::MutexGuard<'_, HashMap<u128, Bucket>> {
        self.shards[id as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value each `Rule::Synced` check of `checks` (with its Redis key in `keys`) would
    /// have with this request counted, as [`crate::admit::decide`] computes it; the other
    /// checks' are 0.
    pub(crate) fn peek(&self, checks: &[Check<'_>], keys: &[Vec<u8>]) -> Vec<u64> {
        let now = self.now();
        checks
            .iter()
            .zip(keys)
            .map(|(c, key)| match c.rule {
                // A TAT past the capacity (a debt other replicas ran up) counts in full.
                Rule::Synced { interval_us, .. } => {
                    let id = self.id(key);
                    let tat = self.shard(id).get(&id).map_or(now, |b| b.tat);
                    tat.max(now) - now + interval_us
                }
                _ => 0,
            })
            .collect()
    }

    /// Whether every `Rule::Synced` key of `checks` has a bucket here or room for one.
    pub(crate) fn has_room(&self, checks: &[Check<'_>], keys: &[Vec<u8>]) -> bool {
        checks.iter().zip(keys).filter(|(c, _)| matches!(c.rule, Rule::Synced { .. })).all(|(_, key)| {
            let id = self.id(key);
            let shard = self.shard(id);
            shard.len() < PER_SHARD || shard.contains_key(&id)
        })
    }

    /// Counts a request admitted by the `Rule::Synced` checks of `checks`.
    pub(crate) fn commit(&self, checks: &[Check<'_>], keys: &[Vec<u8>]) {
        let now = self.now();
        for (c, key) in checks.iter().zip(keys) {
            let Rule::Synced { interval_us, .. } = c.rule else { continue };
            let id = self.id(key);
            let mut shard = self.shard(id);
            let b = shard.entry(id).or_insert_with(|| Bucket {
                key: key.clone().into_boxed_slice(),
                interval_us,
                tat: now,
                pending: 0,
                used: now,
            });
            b.tat = b.tat.max(now) + interval_us;
            b.pending += 1;
            b.used = now;
            b.interval_us = interval_us;
        }
    }

    /// The buckets to sync: those with counts to add, or used lately (to learn the others'
    /// counts). Idle, synced buckets are forgotten.
    pub(crate) fn outgoing(&self) -> Vec<Outgoing> {
        let now = self.now();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, b| b.pending > 0 || now.saturating_sub(b.used) < IDLE_US);
            out.extend(shard.iter().map(|(id, b)| Outgoing {
                id: *id,
                key: b.key.clone(),
                interval_us: b.interval_us,
                pending: b.pending,
            }));
        }
        out
    }

    /// Takes what a sync found: for each bucket sent, how far the shared TAT is ahead of
    /// Redis's now (µs) with its counts added. What was admitted here since is kept on top.
    pub(crate) fn synced(&self, sent: &[Outgoing], ahead: &[u64]) {
        let now = self.now();
        for (o, ahead) in sent.iter().zip(ahead) {
            let mut shard = self.shard(o.id);
            if let Some(b) = shard.get_mut(&o.id) {
                b.pending = b.pending.saturating_sub(o.pending);
                b.tat = now + ahead + b.pending * b.interval_us;
            }
        }
    }
}

/// The Redis side of a sync: for each key, `ARGV` holds the requests to add and the
/// interval (µs); the TAT moves to `max(TAT, now) + requests × interval` and is kept until
/// it is reached. Returns, for each key, how far its TAT is ahead of now (µs).
pub(crate) const SCRIPT: &str = r"
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local n, interval = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then tat = now end
  if n > 0 then
    tat = tat + n * interval
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[i] = tat - now
end
return out
";

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &[u8], interval_us: u64, burst: u64) -> Check<'_> {
        Check { key, rule: Rule::Synced { interval_us, capacity_us: interval_us * burst } }
    }

    #[test]
    fn a_bucket_admits_its_burst_locally_then_takes_the_shared_count() {
        let s = Synced::new();
        let c = [check(b"k", 1_000_000, 3)];
        let keys = vec![b"rl:k".to_vec()];
        let mut admitted = 0;
        for _ in 0..5 {
            let v = s.peek(&c, &keys);
            if v[0] <= 3_000_000 {
                s.commit(&c, &keys);
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        let out = s.outgoing();
        assert_eq!((out.len(), out[0].pending), (1, 3));
        // Another replica used the bucket too: the shared TAT is 5 intervals ahead.
        s.synced(&out, &[5_000_000]);
        assert!(s.peek(&c, &keys)[0] > 3_000_000, "refused while in debt");
        assert_eq!(s.outgoing()[0].pending, 0);
    }

    #[test]
    fn requests_admitted_during_a_sync_are_kept() {
        let s = Synced::new();
        let c = [check(b"k", 1_000, 100)];
        let keys = vec![b"rl:k".to_vec()];
        s.commit(&c, &keys);
        let out = s.outgoing();
        s.commit(&c, &keys);
        s.synced(&out, &[1_000]);
        assert_eq!(s.outgoing()[0].pending, 1, "the second request is still to be added");
    }
}
