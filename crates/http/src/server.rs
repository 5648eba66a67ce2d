//! The server side of a client connection: HTTP/1.1 on the gateway's own codec ([`h1`]),
//! HTTP/2 on hyper's.
//!
//! A connection is HTTP/2 when TLS negotiated `h2` (ALPN), or when a cleartext client opens
//! with the HTTP/2 preface (prior knowledge); otherwise HTTP/1.1. Both hand requests to the
//! same [`Handler`].

pub mod h1;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::ClientBody;
use crate::{Attached, Handler, ServerSettings};

/// HTTP/2 flow-control windows of client connections.
///
/// Data a peer sent that the gateway has not passed on yet holds both its stream's window and
/// its connection's. A stream whose other side is slow (an upstream slow to read an upload, a
/// client slow to read a response) therefore holds up to a stream window of its connection's:
/// were the two equal (as hyper's adaptive window makes them), one such stream would stop
/// every other stream of the connection. Here a stream can hold at most a sixteenth of its
/// connection's window. The connection's window bounds what one client connection can make
/// the gateway hold (4 MiB); a stream's, the speed of one upload (256 KiB in flight: about
/// 20 Mbit/s at 100 ms round trips, more over shorter ones).
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONNECTION_WINDOW: u32 = 16 * H2_STREAM_WINDOW;

/// A client connection's byte stream: TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Resolves once a read would find something (data, end of stream or an error), without
    /// a buffer: an idle keep-alive connection waits here holding no memory for input.
    /// Streams that cannot tell resolve at once.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl Io for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Io for tokio_rustls::server::TlsStream<TcpStream> {}

/// In-memory streams, for the codec's tests.
#[cfg(test)]
impl Io for tokio::io::DuplexStream {}

/// A connection's stream with bytes already read from it put back in front: the input a
/// protocol sniff read, or what followed a protocol switch's head.
pub struct Rewind {
    prefix: Bytes,
    io: Box<dyn Io>,
    /// Dropped with the stream: tells the connection it came from that it is done with.
    _held: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Rewind {
    /// `io`, reading `prefix` first.
    pub fn new(prefix: Bytes, io: Box<dyn Io>) -> Self {
        Rewind { prefix, io, _held: None }
    }

    /// The same stream, and a receiver that completes when the stream is dropped.
    pub fn held(mut self) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self._held = Some(tx);
        (self, rx)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The client's side of an HTTP/1.1 protocol upgrade, in a request's extensions: resolves
/// to the connection's stream once the `101` response has been written, or to an error if
/// the request was answered otherwise.
#[derive(Clone, Debug)]
pub struct OnUpgrade(Arc<Mutex<Option<tokio::sync::oneshot::Receiver<Rewind>>>>);

impl OnUpgrade {
    /// The stream after the switch.
    pub async fn upgraded(self) -> Option<Rewind> {
        let rx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        rx.await.ok()
    }
}

impl std::fmt::Debug for Rewind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewind").field("prefix", &self.prefix.len()).finish_non_exhaustive()
    }
}

/// Serves one client connection until it closes (or the worker drains it). `h2` says TLS
/// negotiated HTTP/2.
pub async fn serve(io: Box<dyn Io>, h2: bool, settings: &ServerSettings, conn: Attached, handler: Arc<dyn Handler>) {
    if h2 && settings.h2.is_some() {
        return serve_h2(Rewind::new(Bytes::new(), io), settings, conn, handler).await;
    }
    let h1 = h1::serve(io, settings.h1, conn.clone(), handler.clone());
    if let Some(h1::Switch::Http2(stream)) = crate::drain::track(h1, |_| {}).await {
        serve_h2(stream, settings, conn, handler).await;
    }
}

async fn serve_h2(io: Rewind, settings: &ServerSettings, conn: Attached, handler: Arc<dyn Handler>) {
    let Some(builder) = &settings.h2 else { return };
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        // Boxed by the handler: hyper moves a stream's future several times on its way into
        // the task it spawns for it.
        let resp = handler.handle(&conn, req.map(ClientBody::Http2));
        async move { Ok::<_, Infallible>(crate::body::materialize_head(resp.await)) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = crate::drain::track(conn, |c| c.graceful_shutdown()).await {
        tracing::trace!(error = %e, "HTTP/2 connection ended with an error");
    }
}

/// A new upgrade handle for a request, and the sender the connection completes it with.
pub(crate) fn upgrade_pair() -> (OnUpgrade, tokio::sync::oneshot::Sender<Rewind>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (OnUpgrade(Arc::new(Mutex::new(Some(rx)))), tx)
}
