//! Admission counts: the rate-limit buckets (GCRA) and quota windows a request is counted
//! against, as the backends keep them.
//!
//! A GCRA bucket is one number, its theoretical arrival time (TAT): a request is admitted
//! when, with it counted, the TAT would be at most the bucket's capacity ahead of now. A
//! quota window is a count that must stay within its limit until the window ends.
//!
//! A request subject to several limits is admitted only if every one of them admits it, and
//! then counted by all of them at once; a refused request counts against none (it must not
//! use up another limit's allowance).

/// How one key counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A GCRA bucket.
    Gcra {
        /// Time one request adds to the TAT: the limit's period divided by its count (µs).
        interval_us: u64,
        /// How far ahead of now the TAT may be: `burst × interval` (µs).
        capacity_us: u64,
    },
    /// A GCRA bucket counted locally and synced with the shared state every
    /// `state.redis.sync_interval` (`mode: approximate`; see `synced`). Exact with one
    /// replica.
    Synced {
        /// As for [`Rule::Gcra`].
        interval_us: u64,
        /// As for [`Rule::Gcra`].
        capacity_us: u64,
    },
    /// A count in a window (the key names the window).
    Window {
        /// Requests allowed in the window.
        limit: u64,
        /// When the window ends (ms since the Unix epoch): the count is forgotten then.
        ends_ms: u64,
    },
}

/// One key of a check.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// The key (namespaced by the caller).
    pub key: &'a [u8],
    /// How it counts.
    pub rule: Rule,
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Every key admitted the request, and it was counted.
    pub admitted: bool,
    /// For each key, in order, with this request counted (whether or not it was admitted):
    /// for a bucket, how far ahead of now its TAT is (µs); for a window, its count.
    pub values: Vec<u64>,
}

impl Checked {
    /// Whether key `i` (of `checks`) admits the request.
    pub fn admits(&self, i: usize, check: &Check<'_>) -> bool {
        admits(check.rule, self.values[i])
    }
}

pub(crate) fn admits(rule: Rule, value: u64) -> bool {
    match rule {
        Rule::Gcra { capacity_us, .. } | Rule::Synced { capacity_us, .. } => value <= capacity_us,
        Rule::Window { limit, .. } => value <= limit,
    }
}

/// Applies one check to values read from a store (a TAT in µs on the store's clock, or a
/// count), `now` in µs on that clock. A TAT further ahead than the bucket's capacity (left
/// by a stricter limit before a reload) reads as a full bucket's.
pub(crate) fn decide(checks: &[Check<'_>], stored: impl Iterator<Item = Option<u64>>, now: u64) -> Checked {
    let values: Vec<u64> = checks
        .iter()
        .zip(stored)
        .map(|(c, v)| match c.rule {
            Rule::Gcra { interval_us, capacity_us } | Rule::Synced { interval_us, capacity_us } => {
                v.unwrap_or(now).clamp(now, now.saturating_add(capacity_us)) - now + interval_us
            }
            Rule::Window { .. } => v.unwrap_or(0).saturating_add(1),
        })
        .collect();
    let admitted = checks.iter().zip(&values).all(|(c, v)| admits(c.rule, *v));
    Checked { admitted, values }
}

/// The Redis side: the same rule as [`decide`], run atomically in the server, buckets on its
/// clock (so replicas with skewed clocks agree), for a batch of operations in one call (see
/// `batch`). `ARGV` is the operations in turn, each taking the next of `KEYS`:
/// - `a`, `n`, then three values for each of its `n` keys: `0`, interval and capacity (µs)
///   for a bucket; `1`, limit and end (ms since the epoch) for a window. It answers
///   `admitted, value_1, ..., value_n`.
/// - `s`, `ttl` (ms): its one key is set if absent, for `ttl`. It answers `1` if it was set,
///   `0` if it was there.
///
/// A value that is not a number (someone else's key, a version skew) reads as absent. The
/// operations run in order, so two of one batch on one key see each other's counts; a key is
/// read once a batch and written once at its end (one caller's many requests in a batch cost
/// Redis one `GET` and one `SET`).
pub(crate) const SCRIPT: &str = r"
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cache, ends, written = {}, {}, {}
local out = {}
local k = 0
local a = 1
while a <= #ARGV do
  if ARGV[a] == 's' then
    k = k + 1
    if redis.call('SET', KEYS[k], 1, 'NX', 'PX', ARGV[a + 1]) then out[#out + 1] = 1 else out[#out + 1] = 0 end
    a = a + 2
  else
    local n = tonumber(ARGV[a + 1])
    a = a + 2
    local values = {}
    local ok = 1
    for i = 1, n do
      local key = KEYS[k + i]
      local kind, x, y = ARGV[a + 3 * i - 3], tonumber(ARGV[a + 3 * i - 2]), tonumber(ARGV[a + 3 * i - 1])
      local stored = cache[key]
      if stored == nil then
        stored = tonumber(redis.call('GET', key)) or false
        cache[key] = stored
      end
      if stored == false then stored = nil end
      local v
      if kind == '0' then
        if stored == nil or stored < now then stored = now end
        if stored > now + y then stored = now + y end
        v = stored - now + x
        if v > y then ok = 0 end
      else
        v = (stored or 0) + 1
        if v > x then ok = 0 end
      end
      values[i] = v
    end
    if ok == 1 then
      for i = 1, n do
        local key = KEYS[k + i]
        if ends[key] == nil then written[#written + 1] = key end
        if ARGV[a + 3 * i - 3] == '0' then
          cache[key] = now + values[i]
          ends[key] = false
        else
          cache[key] = values[i]
          ends[key] = ARGV[a + 3 * i - 1]
        end
      end
    end
    out[#out + 1] = ok
    for i = 1, n do out[#out + 1] = values[i] end
    k = k + n
    a = a + 3 * n
  end
end
for _, key in ipairs(written) do
  local v = cache[key]
  if ends[key] == false then
    redis.call('SET', key, string.format('%.0f', v), 'PX', math.ceil((v - now) / 1000) + 1)
  else
    redis.call('SET', key, string.format('%.0f', v))
    redis.call('PEXPIREAT', key, ends[key])
  end
end
return out
";

/// Gives back what [`SCRIPT`] counted (Redis Cluster: a request admitted on one slot and
/// refused on another). `ARGV` holds two values for each key: `0` and the interval (µs) for
/// a bucket (its TAT moves back by one interval, not before now), `1` and `0` for a window
/// (its count goes down by one). A race may see the count before it is given back: a limit
/// may then admit fewer than it says for a moment, never more.
pub(crate) const REFUND: &str = r"
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local stored = tonumber(redis.call('GET', key))
  if stored ~= nil then
    if ARGV[2 * i - 1] == '0' then
      local back = stored - tonumber(ARGV[2 * i])
      if back <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.0f', back), 'KEEPTTL')
      end
    elseif stored > 0 then
      redis.call('SET', key, string.format('%.0f', stored - 1), 'KEEPTTL')
    end
  end
end
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(interval_us: u64, burst: u64) -> Check<'static> {
        Check { key: b"k", rule: Rule::Gcra { interval_us, capacity_us: interval_us * burst } }
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
                tat = Some(10_000 + c.values[0]);
            }
        }
        assert_eq!(admitted, 3);
        // One interval later, one more.
        assert!(decide(&b, [tat].into_iter(), 11_000).admitted);
        assert!(!decide(&b, [tat].into_iter(), 10_999).admitted);
    }

    #[test]
    fn a_refusal_by_one_key_is_a_refusal_by_all() {
        let window = Check { key: b"w", rule: Rule::Window { limit: 5, ends_ms: 0 } };
        let b = [bucket(1000, 10), bucket(1000, 1), window];
        let c = decide(&b, [None, Some(20_000), Some(2)].into_iter(), 10_000);
        assert!(!c.admitted);
        assert!(c.admits(0, &b[0]));
        assert!(!c.admits(1, &b[1]));
        assert!(c.admits(2, &b[2]));
        assert_eq!(c.values, [1000, 2000, 3]);
    }

    #[test]
    fn a_window_admits_its_limit() {
        let w = [Check { key: b"w", rule: Rule::Window { limit: 2, ends_ms: 0 } }];
        assert!(decide(&w, [None].into_iter(), 0).admitted);
        assert!(decide(&w, [Some(1)].into_iter(), 0).admitted);
        assert!(!decide(&w, [Some(2)].into_iter(), 0).admitted);
    }

    #[test]
    fn a_tat_beyond_the_capacity_reads_as_a_full_bucket() {
        // A day's wait left by a stricter limit: read as the current limit's full bucket.
        let b = [bucket(1000, 2)];
        let c = decide(&b, [Some(10_000 + 86_400_000_000)].into_iter(), 10_000);
        assert_eq!(c.values, [3000]);
        assert!(!c.admitted);
        assert!(decide(&b, [Some(10_000 + 1000)].into_iter(), 10_000).admitted);
    }
}
