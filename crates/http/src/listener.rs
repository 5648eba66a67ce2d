//! The public listener and its workers.
//!
//! Thread per core, as nginx does it: each worker is a thread with its own single-threaded
//! async runtime, its own listening socket on the shared port (`SO_REUSEPORT`, so the kernel
//! spreads connections across workers) and its own upstream connection pools. A request is
//! accepted, processed and forwarded on one thread, with no hand-off between threads; on one
//! core this measured ~35% more throughput than a work-stealing scheduler.
//!
//! Each request runs on the runtime that is current when it arrives, so a reload applies to
//! open keep-alive connections too. On shutdown each worker stops accepting and drains its
//! connections until the drain deadline.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_telemetry::{Counter, Gauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::{ConnInfo, Handler, TlsInfo};

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The slot of the worker running on this thread: 1..=workers on worker threads, 0 on any
/// other thread. Per-worker resources (upstream pools) are indexed by it.
pub fn worker_slot() -> usize {
    WORKER.with(Cell::get)
}

/// Opens one listening socket per worker on `addr`, sharing the port (`SO_REUSEPORT`).
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    (0..workers.max(1))
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect()
}

/// What every worker shares.
#[derive(Clone)]
pub struct WorkerContext {
    /// What requests are handed to.
    pub handler: Arc<dyn Handler>,
    /// Client connections accepted.
    pub connections_total: Counter,
    /// Client connections open now.
    pub connections_active: Gauge,
    /// Connection slots, shared by all workers (`server.limits.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Turns true when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Starts worker `slot` (1-based) on its own thread, serving `listener` until shutdown and
/// then draining. The thread ends when its connections are done or the drain deadline
/// (the handler's [`crate::ServerSettings::drain_timeout`] at shutdown) has passed.
pub fn spawn_worker(
    slot: usize,
    listener: std::net::TcpListener,
    ctx: WorkerContext,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("portcullis-worker-{slot}")).spawn(move || {
        WORKER.set(slot);
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = slot, error = %e, "cannot start worker runtime");
                return;
            }
        };
        rt.block_on(async move {
            tokio::spawn(crate::timer::install());
            let tcp = match TcpListener::from_std(listener) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(worker = slot, error = %e, "cannot register listener");
                    return;
                }
            };
            let handler = ctx.handler.clone();
            serve(tcp, ctx).await;
            let deadline = handler.settings().drain_timeout;
            if tokio::time::timeout(deadline, crate::drain::drain()).await.is_err() {
                tracing::warn!(
                    worker = slot,
                    open = crate::drain::open(),
                    "drain deadline passed; closing the remaining connections"
                );
            }
        });
    })
}

/// Accepts connections until shutdown. The connections still open are this worker's to
/// drain ([`crate::drain::drain`]).
pub async fn serve(tcp: TcpListener, ctx: WorkerContext) {
    let WorkerContext { handler, connections_total, connections_active, connections, mut shutdown } = ctx;
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        // Past the limit, hold the connection unserved and stop accepting until a slot frees;
        // later connections wait in the kernel's backlog. The slot is taken after `accept`, not
        // before: with one `SO_REUSEPORT` socket per worker, a worker holding a slot while idle
        // in `accept` would strand connections the kernel hashed to a worker without one.
        let permit = match connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => tokio::select! {
                p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stopped(&mut shutdown) => break,
            },
        };
        let _ = stream.set_nodelay(true);
        connections_total.inc();
        connections_active.inc();
        let handler = handler.clone();
        let active = connections_active.clone();
        tokio::spawn(async move {
            connection(stream, peer, handler).await;
            active.dec();
            drop(permit);
        });
    }
}

/// Resolves once shutdown is signalled (not holding the channel's lock across the wait).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn connection(stream: TcpStream, peer: SocketAddr, handler: Arc<dyn Handler>) {
    let Ok(local) = stream.local_addr() else { return };
    let settings = handler.settings();
    match settings.tls.clone() {
        None => {
            let conn = handler.connect(ConnInfo { peer, local, tls: None });
            crate::server::serve(Box::new(stream), false, &settings, conn, handler).await;
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tls = match tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let session = tls.get_ref().1;
            let h2 = session.alpn_protocol() == Some(b"h2");
            let tls_info = TlsInfo {
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                sni: session.server_name().map(str::to_string),
                peer_certificates: session
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect()),
            };
            let conn = handler.connect(ConnInfo { peer, local, tls: Some(tls_info) });
            crate::server::serve(Box::new(tls), h2, &settings, conn, handler).await;
        }
    }
}
