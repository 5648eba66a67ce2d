//! The Redis backend. A store has one shared multiplexed connection that reconnects by
//! itself with backoff (`redis::aio::ConnectionManager`), made when the store is and run on
//! the control thread, for background work. A request never opens a connection nor takes a
//! lock: its admissions and replay records are queued on its worker and sent in batches,
//! one script call each, over the worker's own connection (see [`crate::batch`]); it waits
//! at most `state.redis.timeout`, past which it gets [`StateError::Unavailable`] and refuses.
//!
//! Behind Sentinel, a task asks the sentinels for the primary every second (at once after a
//! failed command) and, when a majority of them name another, swaps in a connection to it. With Redis
//! Cluster, the redis crate's cluster connection routes each command to its key's node; a
//! request counted against limits whose keys live on several slots is counted slot by slot,
//! and counts taken before a refusal are given back (see [`Redis::admit`]). Cluster
//! commands are sent one by one, not batched: a batch's keys would have to share a slot.
//!
//! Keys are `<prefix><namespace>:<key>`. A caller's key that is short and made of plain
//! characters is used as it is (readable in `redis-cli`); any other is replaced by `#` and
//! the base64url SHA-256 of it, so that a key has a bounded size whatever the caller's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_config::StateConfig;
use portcullis_telemetry::{StateErrorKind, state_metrics};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError, RedisFuture};

use crate::StateError;
use crate::admit::{Check, Checked, Rule};
use crate::batch::{Op, Queued};
use crate::revocations::{self, Copy, Kind, Revocation};

/// Caller keys longer than this are hashed.
const MAX_RAW_KEY: usize = 64;

/// How a store reaches Redis.
enum Reach {
    /// One server.
    Single(Client),
    /// The primary the sentinels name.
    Sentinel(Sentinel),
    /// A cluster.
    Cluster(ClusterClient),
}

/// Sentinels, and how to reach the primary they name.
struct Sentinel {
    master: String,
    sentinels: Vec<Client>,
    /// The primary's settings (database, credentials), its address left to the sentinels.
    primary: ConnectionInfo,
    tls: Option<redis::TlsCertificates>,
    /// The primary connected to now.
    current: Mutex<Option<(String, u16)>>,
}

/// A connection: to one server, or to a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis store.
pub struct Redis {
    reach: Reach,
    /// The connection: made on first use for one server (or at build, within a runtime:
    /// making it spawns a task), by the keeper task behind Sentinel and for a cluster.
    conn: arc_swap::ArcSwapOption<Conn>,
    timeout: Duration,
    prefix: String,
    /// The last command failed; cleared by the next that succeeds. Logs an outage once.
    down: AtomicBool,
    /// This replica's copy of the revocation list.
    pub(crate) revocations: Arc<Copy>,
    /// The task that keeps the copy current has been started.
    following: AtomicBool,
    /// The task that keeps the connection (Sentinel, Cluster) has been started.
    keeping: AtomicBool,
    /// Wakes the keeper early: a command failed.
    wake: Arc<tokio::sync::Notify>,
    /// Wakes the revocation follower: a change was published.
    revocations_changed: Arc<tokio::sync::Notify>,
    /// A cluster node to subscribe on.
    cluster_node: Option<Client>,
    /// Buckets of `mode: approximate` limits, counted here and synced.
    synced: crate::synced::Synced,
    sync_interval: Duration,
    /// The task that syncs them has been started.
    syncing: AtomicBool,
    /// This store, for the batch tasks (see [`crate::batch`]), which batch the request
    /// path's commands: set when started within a runtime, and not for a cluster.
    me: std::sync::OnceLock<std::sync::Weak<Redis>>,
    /// The server the shared connection reaches (one server, or the primary the sentinels
    /// name): each worker's own connection goes to it too.
    server: arc_swap::ArcSwapOption<Client>,
    /// Dropped with the store: ends the workers' batch tasks.
    closing: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the password: not shown.
        f.debug_struct("Redis").field("timeout", &self.timeout).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// A store for `config`'s Redis. Connects in the background when called within a tokio
    /// runtime, else on first use. `Err` names the key (under `state`) and what is wrong with
    /// it, and never shows a password.
    pub fn new(config: &StateConfig) -> Result<Redis, (&'static str, String)> {
        let r = &config.redis;
        let url_password = config.redis_url.as_ref().and_then(|u| u.password());
        let sentinel_password = r.sentinel.as_ref().and_then(|s| s.password.as_ref()).map(|p| p.expose());
        let scrub = |e: RedisError| {
            let once = scrub(&e.to_string(), r.password.as_ref().map(|p| p.expose()), url_password);
            scrub(&once, sentinel_password, None)
        };
        let read = |p: &std::path::Path, key: &'static str| {
            std::fs::read(p).map_err(|e| (key, format!("cannot read {}: {e}", p.display())))
        };
        let certificates = match &r.tls {
            Some(tls) => {
                let client_tls = match (&tls.cert, &tls.key) {
                    (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                        client_cert: read(c, "redis.tls.cert")?,
                        client_key: read(k, "redis.tls.key")?,
                    }),
                    _ => None,
                };
                let root_cert = tls.ca.as_deref().map(|c| read(c, "redis.tls.ca")).transpose()?;
                Some(redis::TlsCertificates { client_tls, root_cert })
            }
            None => None,
        };
        let with_credentials = |mut settings: redis::RedisConnectionInfo| {
            if let Some(user) = &r.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &r.password {
                settings = settings.set_password(password.expose());
            }
            settings
        };
        let addr = |host: String, port: u16| match r.tls {
            Some(_) => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
            None => ConnectionAddr::Tcp(host, port),
        };
        let open = |info: ConnectionInfo, key: &'static str| match &certificates {
            Some(c) => Client::build_with_tls(info, c.clone()).map_err(|e| (key, scrub(e))),
            None => Client::open(info).map_err(|e| (key, scrub(e))),
        };
        let node = |text: &str, key: &'static str| {
            portcullis_config::state::host_port(text).ok_or((key, format!("`{text}` is not host:port")))
        };
        let mut cluster_node = None;
        let reach = if let Some(url) = &config.redis_url {
            let info = url.clone().into_connection_info().map_err(|e| ("redis_url", scrub(e)))?;
            let settings = with_credentials(info.redis_settings().clone());
            Reach::Single(open(info.set_redis_settings(settings), "redis_url")?)
        } else if let Some(s) = &r.sentinel {
            let mut sentinels = Vec::new();
            for n in &s.nodes {
                let (host, port) = node(n, "redis.sentinel.nodes")?;
                let mut settings = redis::RedisConnectionInfo::default();
                if let Some(user) = &s.username {
                    settings = settings.set_username(user);
                }
                if let Some(password) = &s.password {
                    settings = settings.set_password(password.expose());
                }
                let info = addr(host, port).into_connection_info().map_err(|e| ("redis.sentinel.nodes", scrub(e)))?;
                sentinels.push(open(info.set_redis_settings(settings), "redis.sentinel.nodes")?);
            }
            let settings = with_credentials(redis::RedisConnectionInfo::default().set_db(i64::from(r.db)));
            let primary = addr("0.0.0.0".into(), 1)
                .into_connection_info()
                .map_err(|e| ("redis.sentinel", scrub(e)))?
                .set_redis_settings(settings);
            Reach::Sentinel(Sentinel {
                master: s.master.clone(),
                sentinels,
                primary,
                tls: certificates.clone(),
                current: Mutex::new(None),
            })
        } else if let Some(c) = &r.cluster {
            let mut nodes = Vec::new();
            for n in &c.nodes {
                let (host, port) = node(n, "redis.cluster.nodes")?;
                nodes.push(addr(host, port).into_connection_info().map_err(|e| ("redis.cluster.nodes", scrub(e)))?);
            }
            if let Some(first) = nodes.first() {
                let settings = with_credentials(first.redis_settings().clone());
                cluster_node = Some(open(first.clone().set_redis_settings(settings), "redis.cluster.nodes")?);
            }
            let mut builder = ClusterClient::builder(nodes)
                .connection_timeout(r.timeout.get().max(Duration::from_millis(250)))
                .response_timeout(r.timeout.get())
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200);
            if let Some(user) = &r.username {
                builder = builder.username(user);
            }
            if let Some(password) = &r.password {
                builder = builder.password(password.expose());
            }
            if let Some(c) = &certificates {
                builder = builder.tls(redis::cluster::TlsMode::Secure).certs(c.clone());
            }
            Reach::Cluster(builder.build().map_err(|e| ("redis.cluster", scrub(e)))?)
        } else {
            return Err((
                "redis_url",
                "`backend: redis` needs `redis_url`, `redis.sentinel` or `redis.cluster`".into(),
            ));
        };
        let redis = Redis {
            reach,
            conn: arc_swap::ArcSwapOption::empty(),
            revocations: Arc::new(Copy::shared()),
            following: AtomicBool::new(false),
            keeping: AtomicBool::new(false),
            wake: Arc::new(tokio::sync::Notify::new()),
            synced: crate::synced::Synced::new(),
            revocations_changed: Arc::new(tokio::sync::Notify::new()),
            cluster_node,
            sync_interval: r.sync_interval.get(),
            syncing: AtomicBool::new(false),
            me: std::sync::OnceLock::new(),
            server: arc_swap::ArcSwapOption::empty(),
            closing: tokio::sync::watch::channel(()).0,
            timeout: r.timeout.get(),
            prefix: r.key_prefix.clone(),
            down: AtomicBool::new(false),
        };
        if let Reach::Single(client) = &redis.reach {
            redis.server.store(Some(Arc::new(client.clone())));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            // Connects in the background; a failure is reported by the first command.
            let _ = redis.connection();
        }
        Ok(redis)
    }

    /// The connection. For one server, made on first call (which must be within a tokio
    /// runtime: making it spawns the connection's task there); behind Sentinel and for a
    /// cluster, the keeper's (see [`Redis::keep_connected`]), `Err` until it has one.
    pub(crate) fn connection(&self) -> Result<Conn, StateError> {
        if let Some(c) = &*self.conn.load() {
            return Ok((**c).clone());
        }
        let Reach::Single(client) = &self.reach else {
            return Err(StateError::Unavailable("Redis is not connected yet".into()));
        };
        let c = ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config())
            .map_err(|e| self.failed(StateErrorKind::connection, &e.to_string()))?;
        let c = Arc::new(Conn::Manager(c));
        // Of two first callers, both use the one stored first.
        let stored = self.conn.compare_and_swap(&None::<Arc<Conn>>, Some(c.clone()));
        Ok(match &*stored {
            Some(earlier) => (**earlier).clone(),
            None => (*c).clone(),
        })
    }

    /// Reconnection is tried on demand, a few times with short backoff: a request waits at
    /// most `timeout` for it, and the next request tries again.
    pub(crate) fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200))
    }

    /// Starts, once and within a tokio runtime, the tasks a store needs: the revocation
    /// list's follower and, behind Sentinel or for a cluster, the connection's keeper. They
    /// end when the store is dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        self.follow_revocations();
        self.sync_synced();
        if !matches!(self.reach, Reach::Cluster(_)) {
            self.me.get_or_init(|| Arc::downgrade(self));
        }
        if matches!(self.reach, Reach::Single(_))
            || self.keeping.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || self.keeping.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut complained = false;
            let mut backoff = Duration::from_millis(50);
            loop {
                let Some(redis) = store.upgrade() else { return };
                let outcome = redis.keep_connected().await;
                match &outcome {
                    Ok(true) => return,
                    Ok(false) => {
                        complained = false;
                        backoff = Duration::from_millis(50);
                    }
                    Err(e) if !complained => {
                        complained = true;
                        tracing::warn!(error = %e, "shared state: no Redis primary or cluster node answers; retrying");
                    }
                    Err(_) => backoff = (backoff * 2).min(Duration::from_secs(1)),
                }
                let pause = if outcome.is_ok() { Duration::from_secs(1) } else { backoff };
                let wake = redis.wake.clone();
                drop(redis);
                let _ = tokio::time::timeout(pause, wake.notified()).await;
                // At most ten rounds a second, however many commands fail.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Starts, once, the task that syncs the buckets of `mode: approximate` limits every
    /// `sync_interval`.
    fn sync_synced(self: &Arc<Self>) {
        if self.syncing.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || self.syncing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let store = Arc::downgrade(self);
        let every = self.sync_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut complained = false;
            loop {
                tick.tick().await;
                let Some(redis) = store.upgrade() else { return };
                match redis.sync_buckets().await {
                    Ok(()) => complained = false,
                    Err(e) if !complained => {
                        complained = true;
                        tracing::warn!(error = %e, "shared state: approximate rate limits cannot be synced; each replica limits with its own counts until Redis answers");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// One round of the keeper: for a cluster, connects (`Ok(true)`: done, the cluster
    /// connection finds moved slots and failed nodes by itself); behind Sentinel, asks the
    /// sentinels for the primary and connects to it when it is another.
    async fn keep_connected(&self) -> Result<bool, String> {
        match &self.reach {
            Reach::Single(_) => Ok(true),
            Reach::Cluster(client) => {
                let connecting = client.get_async_connection();
                let c = tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), connecting)
                    .await
                    .map_err(|_| "no cluster node answered in time".to_string())?
                    .map_err(|e| e.to_string())?;
                self.conn.store(Some(Arc::new(Conn::Cluster(c))));
                tracing::info!("shared state: connected to the Redis Cluster");
                Ok(true)
            }
            Reach::Sentinel(s) => {
                let (host, port) = s.primary().await?;
                let mut current = s.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if current.as_ref() != Some(&(host.clone(), port)) || self.conn.load().is_none() {
                    let client = s.client(&host, port)?;
                    let c = ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config())
                        .map_err(|e| e.to_string())?;
                    self.conn.store(Some(Arc::new(Conn::Manager(c))));
                    self.server.store(Some(Arc::new(client)));
                    if current.is_some() {
                        tracing::warn!(primary = %format!("{host}:{port}"), "shared state: the sentinels name a new Redis primary; connected to it");
                    } else {
                        tracing::info!(primary = %format!("{host}:{port}"), "shared state: connected to the Redis primary the sentinels name");
                    }
                    current = Some((host, port));
                    *s.current.lock().unwrap_or_else(|e| e.into_inner()) = current;
                }
                Ok(false)
            }
        }
    }

    /// The Redis key of `key` in namespace `ns`.
    pub(crate) fn key(&self, ns: &str, key: &[u8]) -> Vec<u8> {
        build_key(&self.prefix, ns, key)
    }

    /// See [`crate::State::insert_once`]: `SET key 1 NX PX ttl` in the admission script.
    pub async fn insert_once(&self, ns: &str, key: &[u8], ttl: Duration) -> Result<bool, StateError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let answer = self.run_op(Op::Once { key: self.key(ns, key), ttl_ms }).await?;
        Ok(answer.first() == Some(&1))
    }

    /// Runs `op` within the timeout: in this thread's next batch when the store batches (one
    /// server, Sentinel) and the thread has a runtime, else alone (a cluster routes it by its
    /// keys, which share a slot).
    async fn run_op(&self, op: Op) -> Result<Vec<i64>, StateError> {
        let deadline = Instant::now() + self.timeout;
        let op = match self.me.get() {
            Some(me) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                match crate::batch::queue(me, Queued { op, reply, deadline }) {
                    // The batch answers by the deadline: no timer of its own.
                    Ok(()) => {
                        return answer
                            .await
                            .unwrap_or_else(|_| Err(StateError::Unavailable("the shared state has stopped".into())));
                    }
                    Err(q) => q.op,
                }
            }
            None => op,
        };
        self.send_ops(&mut self.connection()?, std::iter::once(&op), deadline).await
    }

    /// Sends `ops` as one script call (see [`crate::batch`]), answered by `deadline`: the
    /// script's answers for all of them.
    pub(crate) async fn send_ops<'a>(
        &self,
        conn: &mut Conn,
        ops: impl Iterator<Item = &'a Op> + Clone,
        deadline: Instant,
    ) -> Result<Vec<i64>, StateError> {
        let cmd = crate::batch::command(ops.clone());
        let call = async {
            match cmd.query_async::<Vec<i64>>(&mut *conn).await {
                // The server lost the script (a restart, `SCRIPT FLUSH`): loaded again.
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    crate::batch::script().load_async(&mut *conn).await?;
                    cmd.query_async(&mut *conn).await
                }
                other => other,
            }
        };
        let answers: Vec<i64> = self.timed_until(deadline, call).await?;
        if !crate::batch::plausible(ops, &answers) {
            return Err(self.failed(StateErrorKind::protocol, "unexpected answer to the batch script"));
        }
        Ok(answers)
    }

    /// The server the shared connection reaches, when the request path's commands are
    /// batched (not for a cluster).
    pub(crate) fn server(&self) -> Option<Arc<Client>> {
        match self.reach {
            Reach::Cluster(_) => None,
            _ => self.server.load_full(),
        }
    }

    /// Ends with the store (the batch tasks wait on it).
    pub(crate) fn closed(&self) -> tokio::sync::watch::Receiver<()> {
        self.closing.subscribe()
    }

    /// See [`crate::State::forget`]: `DEL`.
    pub async fn forget(&self, ns: &str, key: &[u8]) -> Result<(), StateError> {
        self.run(redis::cmd("DEL").arg(self.key(ns, key))).await.map(drop)
    }

    /// See [`crate::State::admit`]: one script call, whatever the number of keys. On a
    /// Redis Cluster, keys on several slots are counted slot by slot: a refusal on one gives
    /// back what the others counted.
    pub async fn admit(&self, ns: &str, checks: &[Check<'_>]) -> Result<Checked, StateError> {
        if checks.iter().any(|c| matches!(c.rule, Rule::Synced { .. })) {
            return self.admit_synced(ns, checks).await;
        }
        self.admit_exact(ns, checks).await
    }

    /// Checks with `Rule::Synced` keys: those decided here (see [`crate::synced`]), the
    /// others in Redis; counted by all only if all admit.
    async fn admit_synced(&self, ns: &str, checks: &[Check<'_>]) -> Result<Checked, StateError> {
        let keys: Vec<Vec<u8>> = checks.iter().map(|c| self.key(ns, c.key)).collect();
        if !self.synced.has_room(checks, &keys) {
            // No room for another local bucket: counted in Redis, exactly.
            let exact: Vec<Check<'_>> = checks
                .iter()
                .map(|c| match c.rule {
                    Rule::Synced { interval_us, capacity_us } => {
                        Check { key: c.key, rule: Rule::Gcra { interval_us, capacity_us } }
                    }
                    _ => *c,
                })
                .collect();
            return self.admit_exact(ns, &exact).await;
        }
        let mut values = self.synced.peek(checks, &keys);
        let local = |c: &Check<'_>| matches!(c.rule, Rule::Synced { .. });
        if !checks.iter().zip(&values).all(|(c, v)| !local(c) || crate::admit::admits(c.rule, *v)) {
            return Ok(Checked { admitted: false, values });
        }
        let exact: Vec<usize> = (0..checks.len()).filter(|&i| !local(&checks[i])).collect();
        if !exact.is_empty() {
            let part: Vec<Check<'_>> = exact.iter().map(|&i| checks[i]).collect();
            let checked = self.admit_exact(ns, &part).await?;
            for (&i, v) in exact.iter().zip(&checked.values) {
                values[i] = *v;
            }
            if !checked.admitted {
                return Ok(Checked { admitted: false, values });
            }
        }
        self.synced.commit(checks, &keys);
        Ok(Checked { admitted: true, values })
    }

    /// Adds this replica's counts of synced buckets to Redis and takes back the shared
    /// buckets: one script call per batch (per slot on a cluster).
    async fn sync_buckets(&self) -> Result<(), StateError> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(crate::synced::SCRIPT));
        let out = self.synced.outgoing();
        if out.is_empty() {
            return Ok(());
        }
        let mut groups: Vec<Vec<crate::synced::Outgoing>> = Vec::new();
        if matches!(self.reach, Reach::Cluster(_)) {
            let mut by_slot: std::collections::HashMap<redis::cluster_routing::Slot, Vec<crate::synced::Outgoing>> =
                Default::default();
            for o in out {
                by_slot.entry(redis::cluster_routing::Slot::for_key(&o.key)).or_default().push(o);
            }
            groups.extend(by_slot.into_values());
        } else {
            let mut out = out;
            while !out.is_empty() {
                let rest = out.split_off(out.len().min(256));
                groups.push(std::mem::replace(&mut out, rest));
            }
        }
        let mut conn = self.connection()?;
        for group in groups {
            let mut call = script.prepare_invoke();
            for o in &group {
                call.key(&*o.key).arg(o.pending).arg(o.interval_us);
            }
            let wait = self.timeout.max(Duration::from_secs(1));
            let ahead: Vec<i64> = match tokio::time::timeout(wait, call.invoke_async(&mut conn)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => return Err(StateError::Unavailable(e.to_string())),
                Err(_) => return Err(StateError::Unavailable("no answer in time".into())),
            };
            if ahead.len() != group.len() {
                return Err(StateError::Unavailable("unexpected answer to the sync script".into()));
            }
            let ahead: Vec<u64> = ahead.into_iter().map(|a| a.max(0) as u64).collect();
            self.synced.synced(&group, &ahead);
        }
        Ok(())
    }

    async fn admit_exact(&self, ns: &str, checks: &[Check<'_>]) -> Result<Checked, StateError> {
        if checks.len() > 1 && matches!(self.reach, Reach::Cluster(_)) {
            let slot = |c: &Check<'_>| redis::cluster_routing::Slot::for_key(self.key(ns, c.key));
            let first = slot(&checks[0]);
            if checks[1..].iter().any(|c| slot(c) != first) {
                return self.admit_across_slots(ns, checks).await;
            }
        }
        self.admit_on_one_slot(ns, checks).await
    }

    async fn admit_across_slots(&self, ns: &str, checks: &[Check<'_>]) -> Result<Checked, StateError> {
        let mut groups: Vec<(redis::cluster_routing::Slot, Vec<usize>)> = Vec::new();
        for (i, c) in checks.iter().enumerate() {
            let slot = redis::cluster_routing::Slot::for_key(self.key(ns, c.key));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        // Keys not reached (after a refusal) read as having room.
        let mut values = vec![0; checks.len()];
        let mut counted: Vec<&[usize]> = Vec::new();
        for (_, members) in &groups {
            let part: Vec<Check<'_>> = members.iter().map(|&i| checks[i]).collect();
            let outcome = self.admit_on_one_slot(ns, &part).await;
            let checked = match outcome {
                Ok(c) => c,
                Err(e) => {
                    self.refund(ns, checks, &counted).await;
                    return Err(e);
                }
            };
            for (&i, v) in members.iter().zip(&checked.values) {
                values[i] = *v;
            }
            if !checked.admitted {
                self.refund(ns, checks, &counted).await;
                return Ok(Checked { admitted: false, values });
            }
            counted.push(members);
        }
        Ok(Checked { admitted: true, values })
    }

    /// Gives back the counts of the groups `counted` (of `checks`), one script call each.
    /// Best effort: a count not given back (Redis gone meanwhile) only makes its limit
    /// stricter until it refills.
    async fn refund(&self, ns: &str, checks: &[Check<'_>], counted: &[&[usize]]) {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(crate::admit::REFUND));
        for members in counted {
            let mut call = script.prepare_invoke();
            for &i in *members {
                call.key(self.key(ns, checks[i].key));
                match checks[i].rule {
                    Rule::Gcra { interval_us, .. } | Rule::Synced { interval_us, .. } => call.arg(0).arg(interval_us),
                    Rule::Window { .. } => call.arg(1).arg(0),
                };
            }
            let Ok(mut conn) = self.connection() else { return };
            let _: Result<i64, StateError> = self.timed(call.invoke_async(&mut conn)).await;
        }
    }

    async fn admit_on_one_slot(&self, ns: &str, checks: &[Check<'_>]) -> Result<Checked, StateError> {
        let op = Op::Admit {
            keys: checks.iter().map(|c| self.key(ns, c.key)).collect(),
            rules: checks
                .iter()
                .map(|c| match c.rule {
                    Rule::Gcra { interval_us, capacity_us } | Rule::Synced { interval_us, capacity_us } => {
                        (0, interval_us, capacity_us)
                    }
                    Rule::Window { limit, ends_ms } => (1, limit, ends_ms),
                })
                .collect(),
        };
        let answer = self.run_op(op).await?;
        match answer.split_first() {
            Some((&ok, values)) if values.len() == checks.len() => {
                Ok(Checked { admitted: ok == 1, values: values.iter().map(|a| *a as u64).collect() })
            }
            _ => Err(self.failed(StateErrorKind::protocol, "unexpected answer to the rate-limit script")),
        }
    }

    /// The key of the revocation list, and of its version.
    fn revocation_keys(&self) -> (String, String) {
        // One hash tag: the script that changes both runs on one Cluster slot.
        (format!("{}{{revocations}}", self.prefix), format!("{}{{revocations}}:version", self.prefix))
    }

    /// The channel a change of the revocation list is published on.
    fn revocation_channel(&self) -> String {
        format!("{}{{revocations}}:changes", self.prefix)
    }

    /// The client to subscribe with: the server, the primary now, or a cluster node
    /// (messages published on a cluster reach every node).
    fn subscriber(&self) -> Option<Client> {
        match &self.reach {
            Reach::Single(c) => Some(c.clone()),
            Reach::Sentinel(s) => {
                let current = s.current.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
                s.client(&current.0, current.1).ok()
            }
            Reach::Cluster(_) => self.cluster_node.clone(),
        }
    }

    /// Starts the task that listens for published changes of the revocation list and
    /// wakes the follower, so that a revocation reaches this replica within a round trip
    /// (the poll stays, for a message missed).
    fn listen_for_revocations(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            loop {
                let Some(redis) = store.upgrade() else { return };
                let (client, channel, changed) =
                    (redis.subscriber(), redis.revocation_channel(), redis.revocations_changed.clone());
                drop(redis);
                if let Some(client) = client
                    && let Ok(Ok(mut pubsub)) =
                        tokio::time::timeout(Duration::from_secs(1), client.get_async_pubsub()).await
                    && pubsub.subscribe(&channel).await.is_ok()
                {
                    // Whatever was published while not subscribed is read now.
                    changed.notify_one();
                    let mut messages = pubsub.into_on_message();
                    while messages.next().await.is_some() {
                        if store.strong_count() == 0 {
                            return;
                        }
                        changed.notify_one();
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// See [`crate::State::revoke`]: the list and its version in one script call; lapsed
    /// revocations are dropped on the way.
    pub async fn revoke(&self, r: Revocation) -> Result<(), StateError> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| {
            redis::Script::new(
                r"
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local expires = tonumber(string.match(all[i + 1], ' (%d+)$'))
  if expires ~= nil and expires <= tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], version)
return version
",
            )
        });
        let (list, version) = self.revocation_keys();
        let (field, value) = revocations::encode(&r);
        let mut call = script.prepare_invoke();
        call.key(list).key(version).arg(field).arg(value).arg(revocations::now_ms()).arg(self.revocation_channel());
        let mut conn = self.connection()?;
        let _: i64 = self.timed(call.invoke_async(&mut conn)).await?;
        self.revocations.apply(Some(r), None);
        Ok(())
    }

    /// See [`crate::State::unrevoke`].
    pub async fn unrevoke(&self, kind: Kind, value: &str) -> Result<bool, StateError> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| {
            redis::Script::new(
                r"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if n > 0 then redis.call('PUBLISH', ARGV[2], redis.call('INCR', KEYS[2])) end
return n
",
            )
        });
        let (list, version) = self.revocation_keys();
        let mut call = script.prepare_invoke();
        call.key(list).key(version).arg(format!("{}\n{value}", kind.as_str())).arg(self.revocation_channel());
        let mut conn = self.connection()?;
        let removed: i64 = self.timed(call.invoke_async(&mut conn)).await?;
        self.revocations.apply(None, Some((kind, value)));
        Ok(removed > 0)
    }

    /// Starts the task that keeps this replica's copy of the revocation list current, once
    /// (within a tokio runtime; it ends when the store is dropped).
    pub(crate) fn follow_revocations(self: &Arc<Self>) {
        if self.following.load(Ordering::Relaxed) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        self.listen_for_revocations();
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Some(redis) = store.upgrade() {
                redis.migrate_revocations().await;
            }
            let mut seen: Option<i64> = None;
            let mut last_full: Option<Instant> = None;
            let mut complained = false;
            loop {
                let Some(redis) = store.upgrade() else { return };
                match redis.read_revocations(&mut seen, &mut last_full).await {
                    Ok(()) => {
                        redis.revocations.fresh();
                        complained = false;
                    }
                    Err(e) if !complained => {
                        complained = true;
                        tracing::warn!(error = %e, "shared state: the revocation list cannot be read; requests are refused once this replica's copy is 3s old");
                    }
                    Err(_) => {}
                }
                let changed = redis.revocations_changed.clone();
                drop(redis);
                // Read again at the next poll, or at once when a change is published.
                let _ = tokio::time::timeout(revocations::POLL, changed.notified()).await;
            }
        });
    }

    /// Moves a revocation list kept under the keys of earlier versions (`<prefix>revocations`,
    /// without the hash tag) to the current ones, unless those exist: an upgrade keeps the
    /// revocations in force. Not on a cluster (the two keys may live on different slots), which
    /// earlier versions did not support.
    async fn migrate_revocations(&self) {
        if matches!(self.reach, Reach::Cluster(_)) {
            return;
        }
        let (list, version) = self.revocation_keys();
        for (old, new) in
            [(format!("{}revocations", self.prefix), list), (format!("{}revocations:version", self.prefix), version)]
        {
            if let Ok(redis::Value::Int(1)) = self.background(redis::cmd("RENAMENX").arg(&old).arg(&new)).await {
                tracing::info!(from = %old, to = %new, "shared state: the revocation list moved to its current key");
            }
        }
    }

    /// One poll: the version, and the list when it moved (or was not read for a while).
    async fn read_revocations(
        &self,
        seen: &mut Option<i64>,
        last_full: &mut Option<Instant>,
    ) -> Result<(), StateError> {
        let (list, version) = self.revocation_keys();
        let now: Option<i64> = match self.background(redis::cmd("GET").arg(&version)).await? {
            redis::Value::Nil => None,
            redis::Value::BulkString(b) => Some(
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| self.unreadable(&version, "a version that is not a number"))?,
            ),
            _ => return Err(self.unreadable(&version, "a version that is not a string")),
        };
        if *seen == now && seen.is_some() && last_full.is_some_and(|t| t.elapsed() < revocations::FULL_READ) {
            return Ok(());
        }
        let fields = match self.background(redis::cmd("HGETALL").arg(&list)).await? {
            redis::Value::Array(fields) => fields,
            redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return Err(self.unreadable(&list, "not a hash")),
        };
        let mut parsed = Vec::with_capacity(fields.len() / 2);
        for pair in fields.chunks(2) {
            let [redis::Value::BulkString(f), redis::Value::BulkString(v)] = pair else {
                return Err(self.unreadable(&list, "a field that is not a string"));
            };
            parsed.push(revocations::decode(f, v).map_err(|what| self.unreadable(&list, what))?);
        }
        self.revocations.replace(parsed);
        *seen = now;
        *last_full = Some(Instant::now());
        Ok(())
    }

    /// A value of the revocation list that does not parse: logged with its key, never its
    /// value; the list is not taken (fail closed).
    fn unreadable(&self, key: &str, what: &str) -> StateError {
        tracing::warn!(
            key,
            problem = what,
            "shared state: the revocation list holds something this gateway cannot read"
        );
        StateError::Unavailable("the revocation list cannot be read".into())
    }

    /// The key of an hour's usage hash. The hash tag keeps every usage key on one Cluster
    /// slot, so that one script can add to several hours.
    fn usage_key(&self, hour: u64) -> String {
        format!("{}{{usage}}:{hour}", self.prefix)
    }

    /// Adds a usage batch to the hourly hashes (kept `ttl_secs`), once: the script records
    /// the batch's id for `applied_secs`, and a batch sent again is not counted again.
    pub(crate) async fn add_usage(
        &self,
        batch: &crate::usage::Batch,
        ttl_secs: u64,
        applied_secs: u64,
    ) -> Result<(), StateError> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| {
            redis::Script::new(
                r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 3, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
end
for i = 2, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return 1
",
            )
        });
        let mut call = script.prepare_invoke();
        call.key(format!("{}{{usage}}:applied:{}", self.prefix, batch.id));
        call.arg(applied_secs).arg(ttl_secs);
        let mut hours: Vec<u64> = Vec::new();
        for (series, counts) in &batch.rows {
            let index = match hours.iter().position(|h| *h == series.hour) {
                Some(i) => i + 2,
                None => {
                    hours.push(series.hour);
                    call.key(self.usage_key(series.hour));
                    hours.len() + 1
                }
            };
            for (what, n) in [('n', counts.requests), ('i', counts.request_bytes), ('o', counts.response_bytes)] {
                if n > 0 {
                    call.arg(index).arg(crate::usage::field(what, series)).arg(n.min(i64::MAX as u64));
                }
            }
        }
        let mut conn = self.connection()?;
        match tokio::time::timeout(Duration::from_secs(2), call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StateError::Unavailable(e.to_string())),
            Err(_) => Err(StateError::Unavailable("no answer in time".into())),
        }
    }

    /// The usage counts of hours `from..to`, every replica's. A field that does not parse
    /// (someone else's, a version skew) is skipped and logged with its key.
    pub(crate) async fn usage(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(crate::usage::Series, crate::usage::Counts)>, StateError> {
        use std::collections::HashMap;
        let mut totals: HashMap<crate::usage::Series, crate::usage::Counts> = HashMap::new();
        let hours: Vec<u64> = (from..to).collect();
        let mut conn = self.connection()?;
        for chunk in hours.chunks(256) {
            let mut pipe = redis::pipe();
            for h in chunk {
                pipe.cmd("HGETALL").arg(self.usage_key(*h));
            }
            let answers: Vec<redis::Value> =
                match tokio::time::timeout(Duration::from_secs(5), pipe.query_async(&mut conn)).await {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => return Err(StateError::Unavailable(e.to_string())),
                    Err(_) => return Err(StateError::Unavailable("no answer in time".into())),
                };
            for (hour, answer) in chunk.iter().zip(answers) {
                let fields = match answer {
                    redis::Value::Array(fields) => fields,
                    redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                    _ => {
                        tracing::warn!(key = self.usage_key(*hour), "usage: a key that is not a hash is skipped");
                        continue;
                    }
                };
                let mut skipped = false;
                for pair in fields.chunks(2) {
                    let parsed = match pair {
                        [redis::Value::BulkString(f), redis::Value::BulkString(v)] => {
                            let n = std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok());
                            crate::usage::parse_field(*hour, f).zip(n)
                        }
                        _ => None,
                    };
                    let Some(((what, series), n)) = parsed else {
                        skipped = true;
                        continue;
                    };
                    let c = totals.entry(series).or_default();
                    match what {
                        b'n' => c.requests += n,
                        b'i' => c.request_bytes += n,
                        _ => c.response_bytes += n,
                    }
                }
                if skipped {
                    tracing::warn!(key = self.usage_key(*hour), "usage: fields this gateway cannot read are skipped");
                }
            }
        }
        Ok(totals.into_iter().collect())
    }

    /// `PING`, within the timeout: whether the store can answer now.
    pub async fn ping(&self) -> Result<(), StateError> {
        match self.run(&redis::cmd("PING")).await? {
            redis::Value::SimpleString(_) | redis::Value::Okay | redis::Value::BulkString(_) => Ok(()),
            other => Err(self.failed(StateErrorKind::protocol, &format!("unexpected answer to PING: {other:?}"))),
        }
    }

    async fn run(&self, cmd: &redis::Cmd) -> Result<redis::Value, StateError> {
        let mut conn = self.connection()?;
        self.timed(conn.req_packed_command(cmd)).await
    }

    /// A command of the background task that reads the revocation list: a second to answer,
    /// and its failures reported by that task (once), not as an outage of the request path
    /// (which its own commands and `/readyz` report).
    async fn background(&self, cmd: &redis::Cmd) -> Result<redis::Value, StateError> {
        let mut conn = self.connection()?;
        match tokio::time::timeout(Duration::from_secs(1), conn.req_packed_command(cmd)).await {
            Ok(Ok(redis::Value::ServerError(e))) => {
                Err(StateError::Unavailable(format!("Redis answered {:?}", e.code())))
            }
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StateError::Unavailable(e.to_string())),
            Err(_) => Err(StateError::Unavailable("no answer in time".into())),
        }
    }

    /// Awaits a command within the timeout, recording its latency and any failure.
    async fn timed<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StateError> {
        self.timed_until(Instant::now() + self.timeout, command).await
    }

    /// Awaits a command until `deadline`, recording its latency and any failure.
    async fn timed_until<T>(
        &self,
        deadline: Instant,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let result = tokio::time::timeout_at(deadline.into(), command).await;
        state_metrics().command(started.elapsed());
        match result {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::AcqRel) {
                    state_metrics().up(true);
                    tracing::info!("shared state: Redis answers again");
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                let kind = if e.is_timeout() {
                    StateErrorKind::timeout
                } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    StateErrorKind::connection
                } else {
                    StateErrorKind::protocol
                };
                Err(self.failed(kind, &e.to_string()))
            }
            Err(_) => Err(self.failed(StateErrorKind::timeout, "no answer in time")),
        }
    }

    /// Counts a failure, logs the start of an outage, and says what the caller reports.
    fn failed(&self, kind: StateErrorKind, detail: &str) -> StateError {
        state_metrics().error(kind);
        // Behind Sentinel, the primary may have changed: ask now rather than at the next round.
        self.wake.notify_one();
        if !self.down.swap(true, Ordering::AcqRel) {
            state_metrics().up(false);
            tracing::warn!(kind = ?kind, error = %detail, "shared state: Redis unavailable; requests that need it are refused until it answers");
        }
        StateError::Unavailable(
            match kind {
                StateErrorKind::timeout => "Redis did not answer in time",
                StateErrorKind::connection => "Redis cannot be reached",
                StateErrorKind::protocol => "Redis answered with an error",
            }
            .into(),
        )
    }
}

impl Sentinel {
    /// The primary's address: the one a majority of the configured sentinels names, if it
    /// answers `ROLE` as a primary. A sentinel cut off from the others may still name a
    /// primary the rest have replaced; writes sent there would be lost when it rejoins, so
    /// without a majority there is no primary (and what needs Redis is refused).
    async fn primary(&self) -> Result<(String, u16), String> {
        let ask = |sentinel: &Client| {
            let sentinel = sentinel.clone();
            async move {
                let asked = async {
                    let mut c = sentinel.get_multiplexed_async_connection().await?;
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(&self.master)
                        .query_async::<Option<(String, u16)>>(&mut c)
                        .await
                };
                match tokio::time::timeout(Duration::from_millis(500), asked).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in time".to_string()),
                }
            }
        };
        let answers = futures_util::future::join_all(self.sentinels.iter().map(ask)).await;
        let mut votes: Vec<((String, u16), usize)> = Vec::new();
        let mut last = String::from("no sentinel configured");
        for answer in answers {
            match answer {
                Ok(Some(addr)) => match votes.iter_mut().find(|(a, _)| *a == addr) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((addr, 1)),
                },
                Ok(None) => last = format!("a sentinel knows no primary named `{}`", self.master),
                Err(e) => last = format!("a sentinel: {e}"),
            }
        }
        let needed = self.sentinels.len() / 2 + 1;
        let Some(((host, port), _)) = votes.into_iter().find(|(_, n)| *n >= needed) else {
            return Err(format!("no majority of the sentinels names one primary ({last})"));
        };
        self.is_primary(&host, port).await.map_err(|e| format!("{host}:{port}, named by the sentinels: {e}"))?;
        Ok((host, port))
    }

    /// A client for the server at `host:port`, with the primary's settings.
    fn client(&self, host: &str, port: u16) -> Result<Client, String> {
        let host = host.to_string();
        let addr = match self.tls {
            Some(_) => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
            None => ConnectionAddr::Tcp(host, port),
        };
        let info = self.primary.clone().set_addr(addr);
        match &self.tls {
            Some(c) => Client::build_with_tls(info, c.clone()),
            None => Client::open(info),
        }
        .map_err(|e| e.to_string())
    }

    /// Whether the server at `host:port` answers `ROLE` as a primary.
    async fn is_primary(&self, host: &str, port: u16) -> Result<(), String> {
        let client = self.client(host, port)?;
        let asked = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("ROLE").query_async::<redis::Value>(&mut c).await
        };
        match tokio::time::timeout(Duration::from_millis(500), asked).await {
            Ok(Ok(redis::Value::Array(parts))) => match parts.first() {
                Some(redis::Value::BulkString(r)) if r == b"master" => Ok(()),
                _ => Err("not a primary".into()),
            },
            Ok(Ok(_)) => Err("an unexpected answer to ROLE".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }
}

/// `<prefix><ns>:<key>`, the key hashed unless short and plain.
pub(crate) fn build_key(prefix: &str, ns: &str, key: &[u8]) -> Vec<u8> {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'/' | b'=');
    let mut out = Vec::with_capacity(prefix.len() + ns.len() + 1 + MAX_RAW_KEY);
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(ns.as_bytes());
    out.push(b':');
    if key.len() <= MAX_RAW_KEY && !key.is_empty() && key.iter().all(plain) {
        out.extend_from_slice(key);
    } else {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
        out.push(b'#');
        out.extend_from_slice(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()).as_bytes());
    }
    out
}

/// `text` without the passwords it might quote.
fn scrub(text: &str, a: Option<&str>, b: Option<&str>) -> String {
    let mut out = text.to_string();
    for p in [a, b].into_iter().flatten().filter(|p| !p.is_empty()) {
        out = out.replace(p, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_short_keys_are_kept_and_others_hashed() {
        assert_eq!(build_key("portcullis:", "dpop-jti", b"abc-123"), b"portcullis:dpop-jti:abc-123");
        let long = build_key("p:", "ns", &[b'a'; 65]);
        assert!(long.starts_with(b"p:ns:#"), "{}", String::from_utf8_lossy(&long));
        assert_eq!(long.len(), "p:ns:#".len() + 43);
        // A newline (the DPoP key joins thumbprint and jti with one) is not plain.
        let joined = build_key("p:", "dpop-jti", b"thumb\njti");
        assert!(joined.starts_with(b"p:dpop-jti:#"));
        // Distinct keys stay distinct; one key gives one Redis key.
        assert_ne!(build_key("p:", "ns", b"a\n"), build_key("p:", "ns", b"a\r"));
        assert_eq!(build_key("p:", "ns", b"a\n"), build_key("p:", "ns", b"a\n"));
        // A raw key cannot look like a hashed one.
        assert!(build_key("p:", "ns", b"#x").starts_with(b"p:ns:#"));
        assert_ne!(build_key("p:", "ns", b"#x"), b"p:ns:#x");
        // Namespaces and prefixes separate.
        assert_ne!(build_key("p:", "a", b"k"), build_key("p:", "b", b"k"));
        assert_ne!(build_key("p:", "ns", b"k"), build_key("q:", "ns", b"k"));
        assert_eq!(build_key("", "ns", b""), {
            let mut k = b"ns:#".to_vec();
            k.extend_from_slice(b"47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
            k
        });
    }

    #[test]
    fn scrub_hides_passwords() {
        assert_eq!(scrub("auth failed for s3cret", Some("s3cret"), None), "auth failed for ***");
        assert_eq!(scrub("x", Some(""), None), "x");
    }

    fn config(yaml: &str) -> StateConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn builds_without_a_runtime_and_without_connecting() {
        let c = config("backend: redis\nredis_url: redis://127.0.0.1:1\nredis: { key_prefix: 'gw1:' }\n");
        let r = Redis::new(&c).unwrap();
        assert_eq!(r.key("dpop-jti", b"k"), b"gw1:dpop-jti:k");
        assert_eq!(r.timeout, Duration::from_millis(50));
        assert!(r.conn.load().is_none());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_within_the_timeout() {
        // Port 1 on loopback: nothing listens, the connection is refused.
        let c = config("backend: redis\nredis_url: redis://127.0.0.1:1\nredis: { timeout: 100ms }\n");
        let r = Redis::new(&c).unwrap();
        for _ in 0..3 {
            let started = Instant::now();
            let e = r.insert_once("dpop-jti", b"k", Duration::from_secs(5)).await.unwrap_err();
            assert!(matches!(e, StateError::Unavailable(_)), "{e:?}");
            assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
            assert!(r.ping().await.is_err());
        }
    }
}
