//! Usage metering: requests, request bytes and response bytes per consumer, plan, route,
//! status class and hour, for billing.
//!
//! A request adds to a counter in this process (a sharded map, no I/O). Once a second, and
//! when asked (a usage query, shutdown), the counts gathered since the last time are
//! flushed:
//!
//! - with the memory backend, appended to a journal file ([`Journal`]) and added to the
//!   totals this process keeps, so that a restart continues the counts and `kill -9` loses
//!   at most the last second;
//! - with Redis, added to hourly hashes there by one script call per batch. A batch carries
//!   an id that the script records, so that a batch sent again after a timeout (applied or
//!   not, the gateway cannot tell) is counted once.
//!
//! Usage is not on the security path: when the journal cannot be written or Redis cannot be
//! reached, the counts are kept and sent again, and the problem is logged once.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::State;

/// What a finished request (or the rest of a streamed body) adds.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Who used it: the API consumer, else the subject, else the client; `-` for anonymous
    /// callers.
    pub consumer: &'a str,
    /// The caller's plan; empty for none.
    pub plan: &'a str,
    /// The route's id.
    pub route: &'a str,
    /// The response status.
    pub status: u16,
    /// Requests (1, or 0 for bytes counted after the response head).
    pub requests: u64,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// One counted series: what is counted apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Series {
    /// Hours since the Unix epoch (UTC).
    #[serde(rename = "h")]
    pub hour: u64,
    /// See [`Record::consumer`].
    #[serde(rename = "c")]
    pub consumer: Box<str>,
    /// See [`Record::plan`].
    #[serde(rename = "p")]
    pub plan: Box<str>,
    /// See [`Record::route`].
    #[serde(rename = "r")]
    pub route: Box<str>,
    /// The status class: 1 to 5 (`2` is 2xx).
    #[serde(rename = "s")]
    pub class: u8,
}

/// What a series counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests.
    #[serde(rename = "n", default)]
    pub requests: u64,
    /// Request body bytes.
    #[serde(rename = "i", default)]
    pub request_bytes: u64,
    /// Response body bytes.
    #[serde(rename = "o", default)]
    pub response_bytes: u64,
}

impl Counts {
    /// Adds `other`.
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.request_bytes = self.request_bytes.saturating_add(other.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(other.response_bytes);
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// The consumer that series past `usage.max_series` are counted as.
pub const OTHER: &str = "(other)";

const SHARDS: usize = 16;

/// Rows per Redis batch: one script call runs about three commands a row, and holds Redis
/// for that long.
const BATCH_ROWS: usize = 1000;

/// How long Redis remembers that a batch was applied: far longer than any retry.
const APPLIED_TTL_SECS: u64 = 86_400;

/// Compaction rewrites the journal once it is this large and twice its totals' size.
const COMPACT_MIN_BYTES: u64 = 4 << 20;

/// The first line of a journal.
const HEADER: &str = "{\"portcullis_usage\":1}";

/// A shard of counts not yet flushed, by the series' 128-bit hash.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<HashMap<u128, (Series, Counts), foldhash::fast::FixedState>>);

/// The meter of a process: counts requests as they are answered and flushes them to where
/// they last.
pub struct Meter {
    shards: Box<[Shard]>,
    seeds: [foldhash::fast::FixedState; 2],
    retention_hours: u64,
    max_series: usize,
    /// Where counts go: `None` for this process's journal, else the Redis store.
    sink: arc_swap::ArcSwapOption<crate::Redis>,
    local: Mutex<Local>,
    outbox: tokio::sync::Mutex<Outbox>,
    /// Serializes flushes, so that counts reach their store in order.
    flushing: tokio::sync::Mutex<()>,
    /// A flush failed; logged once until one succeeds.
    failing: AtomicBool,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").field("retention_hours", &self.retention_hours).finish_non_exhaustive()
    }
}

/// The totals of the memory backend, and their journal.
#[derive(Default)]
struct Local {
    totals: HashMap<Series, Counts>,
    /// Series by hour, to hold each hour to its share of `max_series`.
    per_hour: HashMap<u64, usize>,
    journal: Option<Journal>,
    /// The hour before which series were last dropped.
    pruned: u64,
}

/// Batches for Redis: those sent at least once (sent again, with their ids, until one is
/// answered), and what came since.
#[derive(Default)]
struct Outbox {
    sent: VecDeque<Batch>,
    next: HashMap<Series, Counts>,
    seq: u64,
    /// This process's part of batch ids.
    replica: u64,
}

/// Counts sent to Redis in one script call.
#[derive(Debug)]
pub struct Batch {
    /// Unique among every batch of every replica.
    pub id: String,
    /// What to add.
    pub rows: Vec<(Series, Counts)>,
}

impl Meter {
    /// A meter keeping hourly counts for `retention`, at most `max_series` of them in
    /// memory. Counts go to `journal` (see [`Journal::open`]) until [`Meter::use_state`]
    /// names a Redis store; without a journal they live as long as the process.
    pub fn new(retention: Duration, max_series: usize, journal: Option<Journal>) -> Meter {
        let seed = |i: u64| foldhash::fast::FixedState::with_seed(random_u64() ^ i);
        let mut local = Local { journal, ..Local::default() };
        if let Some(j) = &mut local.journal {
            local.totals = std::mem::take(&mut j.loaded);
        }
        for s in local.totals.keys() {
            *local.per_hour.entry(s.hour).or_default() += 1;
        }
        Meter {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            seeds: [seed(1), seed(2)],
            retention_hours: retention.as_secs().div_ceil(3600).max(1),
            max_series,
            sink: arc_swap::ArcSwapOption::empty(),
            local: Mutex::new(local),
            outbox: tokio::sync::Mutex::new(Outbox { replica: random_u64(), ..Outbox::default() }),
            flushing: tokio::sync::Mutex::new(()),
            failing: AtomicBool::new(false),
        }
    }

    /// Counts into `state`: its Redis store, or this process's journal for the memory
    /// backend. Called with every config's state.
    pub fn use_state(&self, state: &State) {
        match state {
            State::Memory(_) => self.sink.store(None),
            State::Redis(r) => self.sink.store(Some(r.clone())),
        }
    }

    /// Counts a request. Cheap: a hash and a short lock of one shard of sixteen.
    pub fn record(&self, r: &Record<'_>) {
        self.record_at(now_secs() / 3600, r);
    }

    fn record_at(&self, hour: u64, r: &Record<'_>) {
        let class = (r.status / 100).clamp(1, 5) as u8;
        let key = (hour, class, r.consumer, r.plan, r.route);
        let hash = (u128::from(self.seeds[0].hash_one(key)) << 64) | u128::from(self.seeds[1].hash_one(key));
        let add = Counts { requests: r.requests, request_bytes: r.request_bytes, response_bytes: r.response_bytes };
        let mut shard = self.shards[hash as usize % SHARDS].0.lock().unwrap_or_else(|e| e.into_inner());
        shard
            .entry(hash)
            .or_insert_with(|| {
                let series =
                    Series { hour, consumer: r.consumer.into(), plan: r.plan.into(), route: r.route.into(), class };
                (series, Counts::default())
            })
            .1
            .add(&add);
    }

    /// Takes the counts gathered since the last call.
    fn drain(&self) -> Vec<(Series, Counts)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.0.lock().unwrap_or_else(|e| e.into_inner()));
            out.extend(taken.into_values().filter(|(_, c)| !c.is_zero()));
        }
        out
    }

    /// Flushes what was counted since the last flush to where counts last (see the module
    /// documentation), and into the Prometheus usage metrics. `Err` says why they could not
    /// all be stored; they are kept and tried again by the next flush.
    pub async fn flush(&self) -> Result<(), String> {
        let _serial = self.flushing.lock().await;
        let deltas = self.drain();
        let metrics = portcullis_telemetry::usage_metrics();
        for (s, c) in &deltas {
            metrics.add(&s.route, &s.plan, s.class, c.requests, c.request_bytes, c.response_bytes);
        }
        let result = match self.sink.load_full() {
            None => self.flush_local(deltas),
            Some(redis) => self.flush_redis(&redis, deltas).await,
        };
        match &result {
            Ok(()) if self.failing.swap(false, Ordering::AcqRel) => {
                tracing::info!("usage: counts are stored again");
            }
            Err(e) if !self.failing.swap(true, Ordering::AcqRel) => {
                tracing::warn!(error = %e, "usage: counts cannot be stored; they are kept and tried again every second");
            }
            _ => {}
        }
        result
    }

    fn flush_local(&self, deltas: Vec<(Series, Counts)>) -> Result<(), String> {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let local = &mut *local;
        let hour = now_secs() / 3600;
        let oldest = hour.saturating_sub(self.retention_hours);
        if local.pruned < oldest {
            local.totals.retain(|s, _| s.hour >= oldest);
            local.per_hour.retain(|h, _| *h >= oldest);
            local.pruned = oldest;
        }
        // Each hour gets its share of the cap, so that a full store still counts the hours
        // to come by consumer (past the share, new consumers of an hour are `(other)`).
        let share = (self.max_series / self.retention_hours as usize).max(1000).min(self.max_series);
        let mut lines = Vec::new();
        for (mut series, counts) in deltas {
            if series.hour < oldest {
                continue;
            }
            if !local.totals.contains_key(&series) && local.per_hour.get(&series.hour).copied().unwrap_or(0) >= share {
                series.consumer = OTHER.into();
            }
            if !local.totals.contains_key(&series) {
                *local.per_hour.entry(series.hour).or_default() += 1;
            }
            if local.journal.is_some() {
                push_line(&mut lines, &series, &counts);
            }
            local.totals.entry(series).or_default().add(&counts);
        }
        let Some(journal) = &mut local.journal else { return Ok(()) };
        // The totals hold every count: after a failed write (a full disk), the next flush
        // rewrites the file from them rather than append to a line it may have cut.
        if journal.broken || journal.due() {
            journal.broken = true;
            journal.compact(&local.totals)?;
            journal.broken = false;
            return Ok(());
        }
        journal.append(&lines).inspect_err(|_| journal.broken = true)
    }

    async fn flush_redis(&self, redis: &crate::Redis, deltas: Vec<(Series, Counts)>) -> Result<(), String> {
        let mut outbox = self.outbox.lock().await;
        for (mut series, counts) in deltas {
            // Redis out of reach for long: what waits is bounded, new consumers folded.
            if outbox.next.len() >= self.max_series && !outbox.next.contains_key(&series) {
                series.consumer = OTHER.into();
            }
            outbox.next.entry(series).or_default().add(&counts);
        }
        if outbox.sent.is_empty() && !outbox.next.is_empty() {
            let rows: Vec<_> = std::mem::take(&mut outbox.next).into_iter().collect();
            for chunk in rows.chunks(BATCH_ROWS) {
                outbox.seq += 1;
                let id = format!("{:016x}:{}", outbox.replica, outbox.seq);
                outbox.sent.push_back(Batch { id, rows: chunk.to_vec() });
            }
        }
        let ttl = self.retention_hours.saturating_add(1).saturating_mul(3600);
        while let Some(batch) = outbox.sent.front() {
            redis.add_usage(batch, ttl, APPLIED_TTL_SECS).await.map_err(|e| e.to_string())?;
            outbox.sent.pop_front();
        }
        Ok(())
    }

    /// The counts of hours `from..to` (hours since the epoch), this process's last counts
    /// flushed first: from the journal's totals, or from Redis (every replica's counts, up
    /// to each one's last second).
    pub async fn query(&self, from: u64, to: u64) -> Result<Vec<(Series, Counts)>, String> {
        let flushed = self.flush().await;
        match self.sink.load_full() {
            None => {
                let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
                Ok(local
                    .totals
                    .iter()
                    .filter(|(s, _)| (from..to).contains(&s.hour))
                    .map(|(s, c)| (s.clone(), *c))
                    .collect())
            }
            Some(redis) => {
                flushed?;
                redis.usage(from, to).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Flushes every second until the meter is dropped (within a tokio runtime).
    pub fn start(self: &Arc<Self>) {
        let meter: Weak<Meter> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(m) = meter.upgrade() else { return };
                let _ = m.flush().await;
            }
        });
    }

    /// The last flush, at shutdown: what is left is stored and the journal synced to disk.
    pub async fn close(&self) -> Result<(), String> {
        let flushed = self.flush().await;
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = &mut local.journal {
            j.file.sync_data().map_err(|e| format!("cannot sync {}: {e}", j.path.display()))?;
        }
        flushed
    }
}

fn push_line(out: &mut Vec<u8>, series: &Series, counts: &Counts) {
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(flatten)]
        series: &'a Series,
        #[serde(flatten)]
        counts: &'a Counts,
    }
    // Serializing plain strings and numbers cannot fail.
    let _ = serde_json::to_writer(&mut *out, &Line { series, counts });
    out.push(b'\n');
}

/// One line of a journal.
#[derive(Deserialize)]
struct Line {
    #[serde(flatten)]
    series: Series,
    #[serde(flatten)]
    counts: Counts,
}

/// The memory backend's usage journal: a file of JSON lines, each adding counts to a
/// series, after a header line. Appended to every second; rewritten as one line per series
/// (compacted) when it has grown to twice that. A lock file beside it (`<path>.lock`) keeps
/// a second gateway from counting into it.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    _lock: std::fs::File,
    /// Bytes in the file.
    bytes: u64,
    /// Bytes of the file as last compacted.
    compacted: u64,
    /// A write failed: the file is rewritten whole before anything is appended.
    broken: bool,
    /// The totals read at open, until the meter takes them.
    loaded: HashMap<Series, Counts>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads its totals. A line that does not
    /// parse is skipped and logged (a last line cut short by a crash is expected); if any
    /// other than the last was, the file is kept as `<path>.corrupt` before it is rewritten.
    /// `Err` when the file cannot be written, is another program's, or is in use by another
    /// gateway.
    pub fn open(path: &Path) -> Result<Journal, String> {
        let shown = path.display();
        let lock_path = with_suffix(path, ".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        lock.try_lock().map_err(|_| {
            format!("{shown} is in use by another gateway process: give each replica its own `state.path`")
        })?;
        let (loaded, bad) = read(path)?;
        if bad.iter().any(|&(_, last)| !last) {
            let kept = with_suffix(path, ".corrupt");
            std::fs::copy(path, &kept).map_err(|e| format!("cannot keep a copy of {shown}: {e}"))?;
            tracing::warn!(path = %shown, copy = %kept.display(), "usage: the journal had unreadable lines; a copy is kept");
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {shown} for writing: {e}"))?;
        let mut j =
            Journal { path: path.to_path_buf(), file, _lock: lock, bytes: 0, compacted: 0, broken: false, loaded };
        // Starts from a clean file: one line per series, the header first.
        let totals = std::mem::take(&mut j.loaded);
        j.compact(&totals)?;
        j.loaded = totals;
        Ok(j)
    }

    fn append(&mut self, lines: &[u8]) -> Result<(), String> {
        if lines.is_empty() {
            return Ok(());
        }
        self.file.write_all(lines).map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        self.bytes += lines.len() as u64;
        Ok(())
    }

    fn due(&self) -> bool {
        self.bytes > COMPACT_MIN_BYTES && self.bytes > 2 * self.compacted
    }

    /// Rewrites the file as `totals`: to a temporary file, synced, then renamed over it.
    fn compact(&mut self, totals: &HashMap<Series, Counts>) -> Result<(), String> {
        let tmp = with_suffix(&self.path, ".tmp");
        let err = |e: std::io::Error| format!("cannot rewrite {}: {e}", self.path.display());
        let mut out = Vec::with_capacity(totals.len() * 96 + HEADER.len() + 1);
        out.extend_from_slice(HEADER.as_bytes());
        out.push(b'\n');
        for (s, c) in totals {
            push_line(&mut out, s, c);
        }
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&out).map_err(err)?;
        f.sync_data().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(err)?;
        self.bytes = out.len() as u64;
        self.compacted = self.bytes;
        Ok(())
    }
}

/// Reads the journal at `path` (none there: no counts), without taking it: what
/// `portcullis usage export` shows of a gateway's memory backend. Its unreadable lines are
/// skipped and logged.
pub fn read_journal(path: &Path) -> Result<Totals, String> {
    read(path).map(|(totals, _)| totals)
}

/// Counts by series.
pub type Totals = HashMap<Series, Counts>;

/// The totals of a journal, and its unreadable lines (number, whether it is the last).
fn read(path: &Path) -> Result<(Totals, Vec<(usize, bool)>), String> {
    let shown = path.display();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let mut totals = Totals::new();
    let mut bad = Vec::new();
    let mut lines = std::io::BufReader::new(file).split(b'\n').enumerate().peekable();
    match lines.next() {
        None => return Ok((totals, bad)),
        Some((_, Ok(first))) if first == HEADER.as_bytes() => {}
        Some((_, Ok(first))) if first.is_empty() => {}
        Some(_) => return Err(format!("{shown} is not a Portcullis usage journal; name another file in `state.path`")),
    }
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(|e| format!("cannot read {shown}: {e}"))?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(&line) {
            Ok(l) => totals.entry(l.series).or_default().add(&l.counts),
            Err(e) => {
                let last = lines.peek().is_none();
                tracing::warn!(path = %shown, line = i + 1, error = %e, "usage: a journal line cannot be read and is skipped");
                bad.push((i + 1, last));
            }
        }
    }
    Ok((totals, bad))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // The system's generator does not fail on Linux; a zero seed would still count right.
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}

/// The Redis field of a series' counter `what` (`n` requests, `i` request bytes, `o`
/// response bytes) in its hour's hash: `what|["consumer","plan","route",class]`.
pub(crate) fn field(what: char, s: &Series) -> String {
    let mut f = String::with_capacity(s.consumer.len() + s.plan.len() + s.route.len() + 16);
    f.push(what);
    f.push('|');
    f.push_str(&serde_json::json!([&*s.consumer, &*s.plan, &*s.route, s.class]).to_string());
    f
}

/// A field [`field`] wrote, read back: the counter and the series (of hour `hour`).
pub(crate) fn parse_field(hour: u64, f: &[u8]) -> Option<(u8, Series)> {
    let (&what, rest) = f.split_first()?;
    let rest = rest.strip_prefix(b"|")?;
    let (consumer, plan, route, class): (String, String, String, u8) = serde_json::from_slice(rest).ok()?;
    if !matches!(what, b'n' | b'i' | b'o') || !(1..=5).contains(&class) {
        return None;
    }
    Some((what, Series { hour, consumer: consumer.into(), plan: plan.into(), route: route.into(), class }))
}

#[cfg(test)]
mod tests;
