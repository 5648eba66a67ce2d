//! Group commit for the Redis commands on the request path: rate-limit admissions and
//! set-if-absent records (replay checks) wait in a queue while batches are in flight, and go
//! out together as the next batch, one script call (`admit::SCRIPT`). A request alone is
//! sent at once; under load, many share a round trip, so that a request costs a fraction of
//! a command, in the gateway's CPU and in Redis's.
//!
//! Each worker thread has its own queue, task and connection to Redis, on its own event
//! loop: a request's Redis work never wakes another thread (handing it to the control
//! thread's connection cost a context switch a batch and a preempted worker; bench/RESULTS.md,
//! "Rate limits on Redis, batched"). Until a worker's connection has answered once, its
//! batches go over the store's shared connection, so a worker's first request does not wait
//! for a connection to be made.
//!
//! A request waits at most `state.redis.timeout` from when it was queued: a batch is given
//! until the earliest deadline among its requests. A batch that fails fails every request in
//! it, and those queued meanwhile at once: they would wait for an answer that is not coming.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::Client;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, watch};

use crate::StateError;
use crate::redis::{Conn, Redis};

/// The most operations one batch carries; more wait for the next.
const MAX_OPS: usize = 256;

/// Batches a thread has out at once: a second goes out while the first is answered, so the
/// worker does not wait idle for a round trip.
const IN_FLIGHT: usize = 2;

/// One operation of a request.
pub(crate) enum Op {
    /// An admission: its keys, and for each how it counts (kind `0` bucket / `1` window, and
    /// the two numbers of `admit::SCRIPT`).
    Admit { keys: Vec<Vec<u8>>, rules: Vec<(u8, u64, u64)> },
    /// Set `key` if absent, for `ttl_ms`.
    Once { key: Vec<u8>, ttl_ms: u64 },
}

impl Op {
    /// How many keys it takes.
    fn keys(&self) -> usize {
        match self {
            Op::Admit { keys, .. } => keys.len(),
            Op::Once { .. } => 1,
        }
    }

    /// How many numbers the script answers for it.
    fn answers(&self) -> usize {
        match self {
            Op::Admit { keys, .. } => 1 + keys.len(),
            Op::Once { .. } => 1,
        }
    }
}

/// An operation waiting for its batch: where its answer goes (the script's numbers for it),
/// and when its request stops waiting.
pub(crate) struct Queued {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<Vec<i64>, StateError>>,
    pub(crate) deadline: Instant,
}

thread_local! {
    /// This thread's queue for each store it has used.
    static QUEUES: RefCell<Vec<(Weak<Redis>, mpsc::UnboundedSender<Queued>)>> = const { RefCell::new(Vec::new()) };
}

/// Queues `q` for `store`'s next batch from this thread, starting the thread's task on first
/// use. `Err` gives it back when this thread has no tokio runtime to run the task on.
pub(crate) fn queue(store: &Weak<Redis>, q: Queued) -> Result<(), Queued> {
    QUEUES.with_borrow_mut(|queues| {
        let q = match queues.iter().find(|(s, _)| Weak::ptr_eq(s, store)) {
            Some((_, tx)) => match tx.send(q) {
                Ok(()) => return Ok(()),
                // Its task ended with the runtime it ran on: another is started.
                Err(e) => e.0,
            },
            None => q,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return Err(q) };
        let Some(redis) = store.upgrade() else { return Err(q) };
        // Stores dropped since (a reload to another backend) and ended tasks are forgotten.
        queues.retain(|(s, tx)| s.strong_count() > 0 && !tx.is_closed());
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(run(store.clone(), rx, redis.closed()));
        let sent = tx.send(q).map_err(|e| e.0);
        queues.push((store.clone(), tx));
        sent
    })
}

/// A worker's own connection, and whether it has answered yet.
struct Own {
    /// The server it reaches (compared with the store's: behind Sentinel, the primary
    /// changes).
    server: Arc<Client>,
    conn: ConnectionManager,
    /// `UNKNOWN`, `ASKING` (a `PING` is out) or `READY`.
    state: Arc<AtomicU8>,
}

const UNKNOWN: u8 = 0;
const ASKING: u8 = 1;
const READY: u8 = 2;

/// A thread's batch task: sends what is queued, up to `IN_FLIGHT` batches at a time, until
/// the store is dropped.
async fn run(store: Weak<Redis>, mut rx: mpsc::UnboundedReceiver<Queued>, mut closed: watch::Receiver<()>) {
    let mut in_flight = FuturesUnordered::new();
    let mut own: Option<Own> = None;
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_OPS), if in_flight.len() < IN_FLIGHT => {
                if n == 0 {
                    return;
                }
                let Some(redis) = store.upgrade() else { return };
                // Those that gave up waiting are not sent.
                batch.retain(|q| !q.reply.is_closed());
                if !batch.is_empty() {
                    let conn = connection(&redis, &mut own);
                    in_flight.push(send(redis, conn, std::mem::take(&mut batch)));
                }
            }
            Some(failed) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(e) = failed {
                    while let Ok(q) = rx.try_recv() {
                        let _ = q.reply.send(Err(e.clone()));
                    }
                }
            }
            _ = closed.changed() => return,
        }
    }
}

/// Sends one batch and answers its requests; the error, if it failed.
async fn send(redis: Arc<Redis>, conn: Result<Conn, StateError>, batch: Vec<Queued>) -> Option<StateError> {
    let deadline = batch.iter().map(|q| q.deadline).min()?;
    let outcome = match conn {
        Ok(mut conn) => redis.send_ops(&mut conn, batch.iter().map(|q| &q.op), deadline).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(answers) => {
            let mut answers = answers.into_iter();
            for q in batch {
                let mine: Vec<i64> = answers.by_ref().take(q.op.answers()).collect();
                let _ = q.reply.send(Ok(mine));
            }
            None
        }
        Err(e) => {
            for q in batch {
                let _ = q.reply.send(Err(e.clone()));
            }
            Some(e)
        }
    }
}

/// The connection a batch goes over: this thread's own once it has answered, else the
/// store's shared one (asking the own one meanwhile).
fn connection(redis: &Redis, own: &mut Option<Own>) -> Result<Conn, StateError> {
    let Some(server) = redis.server() else { return redis.connection() };
    if own.as_ref().is_none_or(|o| !Arc::ptr_eq(&o.server, &server)) {
        match ConnectionManager::new_lazy_with_config((*server).clone(), redis.manager_config()) {
            Ok(conn) => *own = Some(Own { server, conn, state: Arc::new(AtomicU8::new(UNKNOWN)) }),
            Err(_) => return redis.connection(),
        }
    }
    let Some(o) = own.as_ref() else { return redis.connection() };
    match o.state.load(Ordering::Acquire) {
        READY => return Ok(Conn::Manager(o.conn.clone())),
        UNKNOWN => {
            o.state.store(ASKING, Ordering::Release);
            let (mut conn, state) = (o.conn.clone(), o.state.clone());
            tokio::spawn(async move {
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                let answered = matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)));
                state.store(if answered { READY } else { UNKNOWN }, Ordering::Release);
            });
        }
        _ => {}
    }
    redis.connection()
}

/// The admission script, hashed once.
pub(crate) fn script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(crate::admit::SCRIPT))
}

/// `EVALSHA` of `admit::SCRIPT` for `ops`: built as one command (its arguments in one
/// buffer), not through `ScriptInvocation`, which allocates an argument at a time.
pub(crate) fn command<'a>(ops: impl Iterator<Item = &'a Op> + Clone) -> redis::Cmd {
    let keys: usize = ops.clone().map(Op::keys).sum();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script().get_hash()).arg(keys);
    for op in ops.clone() {
        match op {
            Op::Admit { keys, .. } => {
                for k in keys {
                    cmd.arg(k.as_slice());
                }
            }
            Op::Once { key, .. } => {
                cmd.arg(key.as_slice());
            }
        }
    }
    for op in ops {
        match op {
            Op::Admit { rules, .. } => {
                cmd.arg("a").arg(rules.len());
                for &(kind, x, y) in rules {
                    cmd.arg(kind).arg(x).arg(y);
                }
            }
            Op::Once { ttl_ms, .. } => {
                cmd.arg("s").arg(*ttl_ms);
            }
        }
    }
    cmd
}

/// Whether `answers` are what the script gives for `ops`: admissions `0` or `1` then
/// values that are not negative; records `0` or `1`.
pub(crate) fn plausible<'a>(ops: impl Iterator<Item = &'a Op>, answers: &[i64]) -> bool {
    let mut at = 0;
    for op in ops {
        let n = op.answers();
        let Some(mine) = answers.get(at..at + n) else { return false };
        if !matches!(mine[0], 0 | 1) || mine[1..].iter().any(|v| *v < 0) {
            return false;
        }
        at += n;
    }
    at == answers.len()
}
