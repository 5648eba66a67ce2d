//! The public listener: accepts connections (up to a limit), completes TLS, serves HTTP/1.1
//! and HTTP/2 on them, and drains them on shutdown. Each request runs on the runtime that is
//! current when it arrives, so a reload applies to open keep-alive connections too.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use portcullis_telemetry::Metrics;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::pipeline::{self, ConnInfo, TlsInfo};
use crate::runtime::Runtime;

/// Accepts connections on `tcp` until `shutdown` turns true, then returns the handle that
/// drains the connections still open (await its `shutdown()`, with a deadline).
pub async fn serve(
    tcp: TcpListener,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(max_connections));
    loop {
        // Past the limit, stop accepting: new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
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
        let _ = stream.set_nodelay(true);
        metrics.connections_total.inc();
        metrics.connections_active.inc();
        let runtime = runtime.clone();
        let metrics = metrics.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            connection(stream, peer, runtime, watcher).await;
            metrics.connections_active.dec();
            drop(permit);
        });
    }
    graceful
}

/// Resolves once shutdown is signalled (not holding the channel's lock across the wait).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    runtime: Arc<ArcSwap<Runtime>>,
    watcher: Watcher,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let rt = runtime.load_full();
    match rt.tls.clone() {
        None => {
            let info = Arc::new(ConnInfo {
                peer,
                local,
                tls: None,
            });
            http(TokioIo::new(stream), &rt, info, runtime, watcher).await;
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tls =
                match tokio::time::timeout(rt.handshake_timeout, acceptor.accept(stream)).await {
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
            let tls_info = TlsInfo {
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                sni: session.server_name().map(str::to_string),
                peer_certificates: session
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect()),
            };
            let info = Arc::new(ConnInfo {
                peer,
                local,
                tls: Some(tls_info),
            });
            http(TokioIo::new(tls), &rt, info, runtime, watcher).await;
        }
    }
}

async fn http<I>(
    io: TokioIo<I>,
    rt: &Runtime,
    info: Arc<ConnInfo>,
    runtime: Arc<ArcSwap<Runtime>>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let rt = runtime.load_full();
        let info = info.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(rt, info, req).await) }
    });
    let conn = rt
        .http
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}
