//! The generic cell rate algorithm (GCRA), as the backends run it: each bucket is one
//! number, its theoretical arrival time (TAT). A request is admitted by a bucket when, with
//! it counted, the TAT would be at most `capacity` ahead of now.
//!
//! A request subject to several limits is admitted only if every one of them admits it, and
//! then counted by all of them at once; a refused request counts against none (it must not
//! use up another limit's allowance).

/// One limit's bucket in a check.
#[derive(Clone, Copy, Debug)]
pub struct Bucket<'a> {
    /// The bucket's key (namespaced by the caller).
    pub key: &'a [u8],
    /// Time one request adds to the TAT: the limit's period divided by its count (µs).
    pub interval_us: u64,
    /// How far ahead of now the TAT may be: `burst × interval` (µs).
    pub capacity_us: u64,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Every bucket admitted the request, and it was counted.
    pub admitted: bool,
    /// For each bucket, in order: how far ahead of now its TAT is with this request
    /// counted (µs), whether or not it was admitted.
    pub ahead_us: Vec<u64>,
}

impl Checked {
    /// Whether bucket `i` (of `buckets`) admits the request.
    pub fn admits(&self, i: usize, bucket: &Bucket<'_>) -> bool {
        self.ahead_us[i] <= bucket.capacity_us
    }
}

/// Applies one check to TATs read from a store, `now` in µs. Returns the outcome and, when
/// admitted, the new TAT of each bucket.
///
/// A TAT further ahead than the bucket's capacity (left by a stricter limit before a
/// reload) is read as a full bucket's.
pub(crate) fn decide(buckets: &[Bucket<'_>], tats: impl Iterator<Item = Option<u64>>, now: u64) -> Checked {
    let ahead_us: Vec<u64> = buckets
        .iter()
        .zip(tats)
        .map(|(b, tat)| tat.unwrap_or(now).clamp(now, now.saturating_add(b.capacity_us)) - now + b.interval_us)
        .collect();
    let admitted = buckets.iter().zip(&ahead_us).all(|(b, a)| *a <= b.capacity_us);
    Checked { admitted, ahead_us }
}

/// The Redis side: the same rule as [`decide`], run atomically in the server with its clock
/// (so replicas with skewed clocks agree). `KEYS` are the buckets; `ARGV` holds each one's
/// interval and capacity, in µs. A value that is not a number (someone else's key, a version
/// skew) reads as an empty bucket. Returns `{admitted, ahead_1, ahead_2, ...}`.
pub(crate) const SCRIPT: &str = r"
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ahead = {}
local ok = 1
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key))
  if tat == nil or tat < now then tat = now end
  if tat > now + tonumber(ARGV[2 * i]) then tat = now + tonumber(ARGV[2 * i]) end
  local a = tat - now + tonumber(ARGV[2 * i - 1])
  ahead[i] = a
  if a > tonumber(ARGV[2 * i]) then ok = 0 end
end
if ok == 1 then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, string.format('%.0f', now + ahead[i]), 'PX', math.ceil(ahead[i] / 1000) + 1)
  end
end
local out = {ok}
for i = 1, #ahead do out[i + 1] = ahead[i] end
return out
";

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(interval_us: u64, burst: u64) -> Bucket<'static> {
        Bucket { key: b"k", interval_us, capacity_us: interval_us * burst }
    }

    #[test]
    fn a_fresh_bucket_admits_burst_requests_at_once() {
        let b = [bucket(1000, 3)];
        let mut tat = None;
        let mut admitted = 0;
        for _ in 0..5 {
            let c = decide(&b, [tat].into_iter(), 10_000);
            if c.admitted {
                admitted += 1;
                tat = Some(10_000 + c.ahead_us[0]);
            }
        }
        assert_eq!(admitted, 3);
        // One interval later, one more.
        assert!(decide(&b, [tat].into_iter(), 11_000).admitted);
        assert!(!decide(&b, [tat].into_iter(), 10_999).admitted);
    }

    #[test]
    fn a_refusal_by_one_bucket_is_a_refusal_by_all() {
        let b = [bucket(1000, 10), bucket(1000, 1)];
        let c = decide(&b, [None, Some(20_000)].into_iter(), 10_000);
        assert!(!c.admitted);
        assert!(c.admits(0, &b[0]));
        assert!(!c.admits(1, &b[1]));
        assert_eq!(c.ahead_us, [1000, 2000]);
    }

    #[test]
    fn a_tat_beyond_the_capacity_reads_as_a_full_bucket() {
        // A day's wait left by a stricter limit: read as the current limit's full bucket.
        let b = [bucket(1000, 2)];
        let c = decide(&b, [Some(10_000 + 86_400_000_000)].into_iter(), 10_000);
        assert_eq!(c.ahead_us, [3000]);
        assert!(!c.admitted);
        assert!(decide(&b, [Some(10_000 + 1000)].into_iter(), 10_000).admitted);
    }
}
