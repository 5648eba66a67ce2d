//! The Portcullis process: loads and compiles the config, serves the public and admin
//! listeners, reloads on SIGHUP or when a file changes (keeping the old config when the new
//! one is invalid), and drains connections on SIGTERM.

#![forbid(unsafe_code)]

pub mod admin;
pub mod bundle;
pub mod fleet;
pub mod policy_tools;
pub mod revoke;
mod source;
pub mod usage;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use portcullis_config::{ConfigErrors, Invalid, LoadedConfig, LogFormat, load_file};
use portcullis_http::listener;
use portcullis_proxy::pipeline::Pipeline;
use portcullis_proxy::{Lasting, Runtime};
use portcullis_telemetry::{AccessLog, Metrics, init_logging};
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch as channel;

use crate::admin::AdminState;
use crate::watch::{FileWatch, fingerprint};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
    /// A listener could not be opened.
    #[error("cannot listen on {addr} (`{key}`): {source}")]
    Bind {
        /// The config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Logging could not be set up.
    #[error("{0}")]
    Logging(String),
    /// No config bundle could be had (`config.source`).
    #[error("config bundle: {0}")]
    Bundle(String),
    /// Anything else the operating system refused.
    #[error("cannot start: {0}")]
    Io(#[from] io::Error),
}

/// How to run the gateway.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The config file.
    pub config: PathBuf,
    /// Overrides `log.format`.
    pub log_format: Option<LogFormat>,
    /// The gateway's version and the commit it was built from, for `/status`.
    pub build: (String, String),
}

/// What a successful `check` found.
#[derive(Debug)]
pub struct CheckSummary {
    /// Route ids in match order.
    pub routes: Vec<Arc<str>>,
}

/// Loads and compiles a config without serving it: every error a `serve` would hit at
/// start-up (syntax, types, cross-references, unreadable certificates...).
pub fn check(path: &Path) -> Result<CheckSummary, ConfigErrors> {
    // A bootstrap file: its keys must be readable; its config is checked when fetched.
    if let Some(boot) = portcullis_config::load_bootstrap(path)? {
        for key in &boot.config.source.public_keys {
            bundle::PublicKey::read(key).map_err(|e| {
                ConfigErrors(vec![portcullis_config::ConfigError {
                    file: path.to_path_buf(),
                    path: "config.source.public_keys".into(),
                    line: None,
                    column: None,
                    message: e,
                }])
            })?;
        }
        return Ok(CheckSummary { routes: Vec::new() });
    }
    let loaded = load_file(path)?;
    let lasting = Lasting::new(Arc::new(Metrics::new()), 1);
    admin_tls(&loaded)?;
    let runtime = Runtime::build(Arc::new(loaded), &lasting, None, 1)?;
    Ok(CheckSummary { routes: runtime.route_ids() })
}

/// Runs the gateway in the foreground until SIGTERM or SIGINT, then drains and returns.
/// `opts.config` is a config, or a bootstrap file whose `config.source` names where signed
/// config bundles are fetched.
pub fn serve(opts: ServeOptions) -> Result<(), Error> {
    let origin = match portcullis_config::load_bootstrap(&opts.config).map_err(Error::Config)? {
        Some(boot) => Origin::Bundle(boot),
        None => Origin::File(load_file(&opts.config).map_err(Error::Config)?),
    };
    let log = match &origin {
        Origin::File(loaded) => &loaded.config.log,
        Origin::Bundle(boot) => &boot.log,
    };
    let format = opts.log_format.unwrap_or(log.format);
    init_logging(format == LogFormat::Json, &log.level).map_err(Error::Logging)?;
    // This thread runs the control plane (signals, reloads, the admin API); requests run on
    // the worker threads `run` starts.
    let control = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    control.block_on(async move {
        match origin {
            Origin::File(loaded) => run(opts.config, loaded, opts.build, None).await,
            Origin::Bundle(boot) => {
                let (from, loaded) = first_bundle(boot).await?;
                run(from.first.config.clone(), loaded, opts.build, Some(from)).await
            }
        }
    })
}

/// Where the config at start comes from.
// One value, once, at start: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Origin {
    /// The file given.
    File(LoadedConfig),
    /// Signed bundles, as the bootstrap file given says.
    Bundle(portcullis_config::Bootstrap),
}

/// A config served from a bundle: its source, the bundle taken at start, the bootstrap's
/// own listen addresses, and the server's bundle refused at start, if one was.
struct FromBundle {
    source: source::Source,
    first: source::Fetched,
    listeners: Listeners,
    refused: Option<fleet::Refusal>,
}

/// The bundle to start with: the server's if its config loads, else the cached one.
async fn first_bundle(boot: portcullis_config::Bootstrap) -> Result<(FromBundle, LoadedConfig), Error> {
    let listeners = (boot.config.listen, boot.config.admin_listen);
    let mut source = source::Source::new(boot.config.source).map_err(Error::Bundle)?;
    let start = source.first().await;
    let load = |f: &source::Fetched| {
        let mut loaded = load_file(&f.config)?;
        loaded.set_listeners(listeners.0, listeners.1)?;
        Ok::<_, ConfigErrors>(loaded)
    };
    let mut refused = start.problem.clone();
    let (first, loaded) = match (start.fresh, start.cached) {
        (Some(fresh), cached) => match (load(&fresh), cached) {
            (Ok(loaded), _) => (fresh, loaded),
            (Err(e), Some(cached)) => {
                source.dropped(&fresh);
                refused = Some((Some(fresh.bundle.manifest.version), format!("its config: {e}")));
                let loaded = load(&cached).map_err(Error::Config)?;
                (cached, loaded)
            }
            (Err(e), None) => return Err(Error::Config(e)),
        },
        (None, Some(cached)) => {
            let loaded = load(&cached).map_err(Error::Config)?;
            (cached, loaded)
        }
        (None, None) => {
            let why = start.problem.map_or_else(|| "no bundle".to_string(), |p| p.1);
            return Err(Error::Bundle(format!("{}: {why}; and no cached bundle to start with", source.url())));
        }
    };
    if let Some((version, why)) = &refused {
        tracing::warn!(version, reason = %why, "config: the server's bundle is not taken; serving the cached bundle");
    }
    source.taken(&first);
    tracing::info!(version = first.bundle.manifest.version, from = %first.from, "config: bundle taken");
    let refused = refused.map(|(version, reason)| fleet::Refusal { version, reason, at: fleet::now() });
    Ok((FromBundle { source, first, listeners, refused }, loaded))
}

fn bundle_status(f: &source::Fetched) -> fleet::BundleStatus {
    fleet::BundleStatus {
        version: f.bundle.manifest.version,
        digest: f.bundle.digest.clone(),
        created: f.bundle.manifest.created.clone(),
        from: f.from.clone(),
    }
}

/// The admin listener's TLS settings, if it has any.
fn admin_tls(loaded: &LoadedConfig) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigErrors> {
    match &loaded.config.admin {
        None => Ok(None),
        Some(a) => admin::tls_config(a).map_err(|(key, msg)| loaded.locate([Invalid::new(key, msg)])),
    }
}

fn bind_admin(addr: SocketAddr) -> Result<TcpListener, Error> {
    let err = |source| Error::Bind { key: "admin.listen", addr, source };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(128).map_err(err)
}

async fn run(
    path: PathBuf,
    loaded: LoadedConfig,
    build: (String, String),
    from_bundle: Option<FromBundle>,
) -> Result<(), Error> {
    let listeners = from_bundle.as_ref().map_or((None, None), |b| b.listeners);
    // A gateway holds many sockets: use all the descriptors the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    let server = &loaded.config.server;
    let workers = server.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listen = server.listen;
    let max_connections = server.limits.max_connections;
    let admin_addr = loaded.config.admin.as_ref().map(|a| a.listen);
    let admin_tls_at_start = loaded.config.admin.as_ref().and_then(|a| a.tls.clone());
    let metrics = Arc::new(Metrics::new());
    let meter = open_meter(&loaded)?;
    let mut lasting = Lasting::new(metrics.clone(), workers);
    lasting.meter = Some(meter.clone());
    let lasting = Arc::new(lasting);
    let access_log = AccessLog::start(loaded.config.access_log.path.clone(), metrics.access_log_dropped.clone())?;
    access_log.keep_claims(loaded.config.access_log.claims.clone());
    let admin_tls = admin_tls(&loaded).map_err(Error::Config)?;
    let files = watched_files(&path, &loaded);

    let runtime = Runtime::build(Arc::new(loaded), &lasting, Some(access_log.clone()), 1).map_err(Error::Config)?;
    if let Some(state) = runtime.state() {
        meter.use_state(state);
    }
    meter.start();
    let routes = runtime.route_ids().len();
    let sockets =
        listener::bind(listen, workers).map_err(|source| Error::Bind { key: "server.listen", addr: listen, source })?;
    let admin_listener = admin_addr.map(bind_admin).transpose()?;

    let swap = Arc::new(ArcSwap::from_pointee(runtime));
    metrics.config_generation.set(1);
    let (shutdown_tx, shutdown_rx) = channel::channel(false);
    let ctx = listener::WorkerContext {
        handler: Arc::new(Pipeline::new(swap.clone())),
        connections_total: metrics.connections_total.clone(),
        connections_active: metrics.connections_active.clone(),
        connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        shutdown: shutdown_rx,
    };
    let mut threads = Vec::with_capacity(workers);
    for (i, socket) in sockets.into_iter().enumerate() {
        threads.push(listener::spawn_worker(i + 1, socket, ctx.clone())?);
    }
    let status = fleet::start(loaded_fleet_id(&swap).as_deref(), &build.0, &build.1, path.clone());
    let mut source = from_bundle.map(|b| {
        fleet::update(&status, |s| {
            s.bundle = Some(bundle_status(&b.first));
            s.last_refused_bundle = b.refused;
        });
        b.source
    });
    let mut admin_state = AdminState::new(swap.clone(), metrics.clone());
    admin_state.status = status.clone();
    let admin_state = Arc::new(admin_state);
    tokio::spawn(report_status(swap.clone(), status.clone()));
    if let Some(l) = admin_listener {
        // The admin listener lives until the process exits, so that /readyz says
        // "not ready" while connections drain.
        tokio::spawn(admin::serve(l, admin_state.clone(), admin_tls));
    }
    match admin_addr {
        Some(admin) => tracing::info!(%listen, %admin, routes, workers, "portcullis serving"),
        None => tracing::info!(%listen, routes, workers, "portcullis serving"),
    }

    let mut reloader = Reloader {
        path,
        lasting,
        swap: swap.clone(),
        access_log,
        watch: FileWatch::new(),
        files: Vec::new(),
        fingerprint: 0,
        generation: 1,
        listen,
        admin: admin_addr,
        admin_tls: admin_tls_at_start,
        status: status.clone(),
        bundle_unreachable: false,
        listeners,
    };
    reloader.set_files(files);
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut poll = source.as_ref().map(|s| {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + s.interval(), s.interval());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every
    });
    let terminated = loop {
        tokio::select! {
            _ = hangup.recv() => {
                let _ = reloader.reload("SIGHUP").await;
            }
            _ = async { poll.as_mut().expect("polled only with a source").tick().await }, if poll.is_some() => {
                if let Some(source) = source.as_mut() {
                    reloader.poll_bundle(source).await;
                }
            }
            _ = reloader.watch.changed() => {
                if fingerprint(&reloader.files) != reloader.fingerprint {
                    let _ = reloader.reload("file change").await;
                }
            }
            _ = terminate.recv() => break true,
            _ = interrupt.recv() => break false,
        }
    };

    // Not ready first, still accepting: a load balancer that follows /readyz (a Kubernetes
    // Service) stops sending new connections before the port closes. SIGINT (an operator at
    // a terminal) and a second signal skip the wait.
    admin_state.ready.store(false, Ordering::Release);
    let delay = swap.load().config.config.server.shutdown_delay.get();
    if terminated && !delay.is_zero() {
        tracing::info!(
            seconds = delay.as_secs_f64(),
            "shutting down: not ready; accepting until the shutdown delay ends"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
    // Drain: stop accepting, let requests in flight finish. Each worker drains its own
    // connections until the drain deadline.
    let drain = swap.load().config.config.server.drain_timeout.get();
    tracing::info!(connections = metrics.connections_active.get(), seconds = drain.as_secs_f64(), "draining");
    let _ = shutdown_tx.send(true);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await
    .map_err(io::Error::other)?;
    if let Err(e) = meter.close().await {
        tracing::error!(error = %e, "usage: the last counts could not be stored");
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// The usage meter, its journal opened when the state is in memory: `state.path`, else
/// `portcullis.state` beside the config. A journal named in the config must open; the
/// default one may not (a read-only config directory), and then counts last as long as the
/// process, which is logged.
fn open_meter(loaded: &LoadedConfig) -> Result<Arc<portcullis_state::usage::Meter>, Error> {
    use portcullis_state::usage::{Journal, Meter};
    let c = &loaded.config;
    let journal = match (c.state.backend, &c.state.path) {
        (portcullis_config::StateBackend::Redis, _) => None,
        (_, Some(path)) => {
            Some(Journal::open(path).map_err(|e| Error::Config(loaded.locate([Invalid::new("state.path", e)])))?)
        }
        (_, None) => {
            let path = loaded.file.parent().unwrap_or(Path::new(".")).join("portcullis.state");
            match Journal::open(&path) {
                Ok(j) => Some(j),
                Err(e) => {
                    tracing::warn!(error = %e, "usage: counts will not survive a restart; set `state.path` to a writable file");
                    None
                }
            }
        }
    };
    Ok(Arc::new(Meter::new(c.usage.retention.get(), c.usage.max_series, journal)))
}

/// The config file and every file it names.
fn watched_files(path: &Path, loaded: &LoadedConfig) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    files.extend(loaded.config.referenced_files());
    files
}

struct Reloader {
    path: PathBuf,
    lasting: Arc<Lasting>,
    swap: Arc<ArcSwap<Runtime>>,
    access_log: AccessLog,
    watch: FileWatch,
    files: Vec<PathBuf>,
    fingerprint: u64,
    generation: u64,
    listen: SocketAddr,
    /// The admin listener's address and TLS settings, as bound at start.
    admin: Option<SocketAddr>,
    admin_tls: Option<portcullis_config::TlsConfig>,
    /// What `/status` reports.
    status: fleet::Shared,
    /// The bundle server could not be asked at the last poll (logged once).
    bundle_unreachable: bool,
    /// A bootstrap's own listen addresses, over every config's.
    listeners: Listeners,
}

/// A bootstrap's `config.listen` and `config.admin_listen`.
type Listeners = (Option<SocketAddr>, Option<SocketAddr>);

impl Reloader {
    fn set_files(&mut self, files: Vec<PathBuf>) {
        self.watch.watch(&files);
        self.fingerprint = fingerprint(&files);
        self.files = files;
    }

    /// Why a new config would leave the admin listener open, if it would: the listener stays
    /// where it was bound at start (and with the TLS it was started with), so a reload that
    /// moves `admin.listen` to loopback, or drops the `admin` block, must not also drop the
    /// credential a non-loopback listener needs.
    fn opens_admin(&self, c: &portcullis_config::Config) -> Option<&'static str> {
        let bound = self.admin?;
        if bound.ip().is_loopback() {
            return None;
        }
        let admin = c.admin.as_ref();
        let token = admin.and_then(|a| a.auth.as_ref()).is_some_and(|a| a.bearer_token.is_some());
        let client_ca = |t: Option<&portcullis_config::TlsConfig>| t.is_some_and(|t| t.client_ca.is_some());
        let mtls = client_ca(self.admin_tls.as_ref()) && client_ca(admin.and_then(|a| a.tls.as_ref()));
        (!token && !mtls).then_some(
            "admin.listen: the admin listener is bound off loopback until a restart; keep admin.auth.bearer_token or admin.tls.client_ca",
        )
    }

    /// Loads, validates and compiles the config again; swaps it in only if all of that
    /// succeeds. Requests in flight finish on the runtime they started with.
    async fn reload(&mut self, cause: &'static str) -> Result<(), String> {
        let outcome = self.try_reload(cause).await;
        let generation = self.generation;
        fleet::update(&self.status, |s| {
            s.config.generation = generation;
            if outcome.is_ok() {
                s.config.file.clone_from(&self.path);
            }
            s.last_reload = Some(fleet::ReloadStatus {
                result: if outcome.is_ok() { "success" } else { "failure" }.into(),
                cause: cause.into(),
                at: fleet::now(),
                error: outcome.as_ref().err().cloned(),
            });
        });
        outcome
    }

    /// Asks the bundle source for a newer bundle, and takes it if its config loads.
    async fn poll_bundle(&mut self, source: &mut source::Source) {
        let refuse = |status: &fleet::Shared, version: Option<u64>, reason: String| {
            tracing::error!(version, reason = %reason, "config: bundle refused; still serving the previous config");
            fleet::update(status, |s| {
                s.last_refused_bundle = Some(fleet::Refusal { version, reason, at: fleet::now() })
            });
        };
        match source.poll().await {
            source::Polled::Unchanged => self.bundle_reachable(),
            source::Polled::Unreachable(why) => {
                if !std::mem::replace(&mut self.bundle_unreachable, true) {
                    tracing::warn!(url = %source.url(), error = %why, "config: the bundle server cannot be reached; still serving the current bundle");
                }
            }
            source::Polled::Refused(version, reason) => {
                self.bundle_reachable();
                refuse(&self.status, version, reason);
            }
            source::Polled::New(fetched) => {
                self.bundle_reachable();
                let previous = std::mem::replace(&mut self.path, fetched.config.clone());
                match self.reload("bundle").await {
                    Ok(()) => {
                        source.taken(&fetched);
                        tracing::info!(version = fetched.bundle.manifest.version, "config: bundle taken");
                        fleet::update(&self.status, |s| s.bundle = Some(bundle_status(&fetched)));
                    }
                    Err(e) => {
                        self.path = previous;
                        source.dropped(&fetched);
                        refuse(&self.status, Some(fetched.bundle.manifest.version), format!("its config: {e}"));
                    }
                }
            }
        }
    }

    fn bundle_reachable(&mut self) {
        if std::mem::take(&mut self.bundle_unreachable) {
            tracing::info!("config: the bundle server answers again");
        }
    }

    async fn try_reload(&mut self, cause: &'static str) -> Result<(), String> {
        let path = self.path.clone();
        let lasting = self.lasting.clone();
        let log = self.access_log.clone();
        let generation = self.generation + 1;
        let listeners = self.listeners;
        let built = tokio::task::spawn_blocking(move || {
            let mut loaded = load_file(&path)?;
            if listeners != (None, None) {
                loaded.set_listeners(listeners.0, listeners.1)?;
            }
            let files = watched_files(&path, &loaded);
            Runtime::build(Arc::new(loaded), &lasting, Some(log), generation).map(|rt| (rt, files))
        })
        .await;
        let metrics = &self.lasting.metrics;
        match built {
            Ok(Ok((runtime, files))) => {
                let c = &runtime.config.config;
                if let Some(why) = self.opens_admin(c) {
                    metrics.reload(false);
                    tracing::error!(
                        cause,
                        generation = self.generation,
                        why,
                        "config reload rejected; still serving the previous config"
                    );
                    self.fingerprint = fingerprint(&self.files);
                    return Err(why.to_string());
                }
                if c.server.listen != self.listen || c.admin.as_ref().map(|a| a.listen) != self.admin {
                    tracing::warn!("listen addresses changed; they take effect at the next restart");
                }
                if c.admin.as_ref().and_then(|a| a.tls.as_ref()) != self.admin_tls.as_ref() {
                    tracing::warn!("admin.tls changed; it takes effect at the next restart");
                }
                self.access_log.reopen(c.access_log.path.clone());
                self.access_log.keep_claims(c.access_log.claims.clone());
                let routes = runtime.route_ids().len();
                if let (Some(meter), Some(state)) = (&self.lasting.meter, runtime.state()) {
                    meter.use_state(state);
                }
                self.swap.store(Arc::new(runtime));
                self.generation = generation;
                metrics.reload(true);
                metrics.config_generation.set(i64::try_from(generation).unwrap_or(i64::MAX));
                tracing::info!(cause, generation, routes, "config reloaded");
                self.set_files(files);
                Ok(())
            }
            Ok(Err(errors)) => {
                metrics.reload(false);
                tracing::error!(cause, generation = self.generation, errors = %errors, "config reload rejected; still serving the previous config");
                // Do not retry the same broken files on every unrelated event.
                self.fingerprint = fingerprint(&self.files);
                Err(errors.to_string())
            }
            Err(e) => {
                metrics.reload(false);
                tracing::error!(cause, error = %e, "config reload failed");
                Err(e.to_string())
            }
        }
    }
}

/// The `fleet.id` of the config in service.
fn loaded_fleet_id(swap: &ArcSwap<Runtime>) -> Option<String> {
    swap.load().config.config.fleet.id.clone()
}

/// Posts the status to `fleet.report_url` every `fleet.report_interval`, as the config in
/// service says at each round.
async fn report_status(swap: Arc<ArcSwap<Runtime>>, status: fleet::Shared) {
    let client = reqwest::Client::new();
    let mut failing = false;
    loop {
        let fleet = swap.load().config.config.fleet.clone();
        tokio::time::sleep(fleet.report_interval.get().max(std::time::Duration::from_secs(1))).await;
        if let Some(url) = &fleet.report_url {
            let mut snapshot = fleet::snapshot(&status);
            if let Some(id) = &fleet.id {
                snapshot.id.clone_from(id);
            }
            fleet::report(&client, url, &snapshot, &mut failing).await;
        }
    }
}
