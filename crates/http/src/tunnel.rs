//! Upgraded connections (WebSocket and the like): after the upstream's `101`, bytes are relayed
//! both ways until either side closes, or until no data has moved either way for the route's
//! `timeouts.tunnel_idle` (a peer that vanished without closing would otherwise hold both
//! connections, and a worker's memory, for ever).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Relays bytes between `client` and `upstream` until one closes, the tunnel is idle for
/// `idle`, or `stop` completes (the caller's credential was revoked); then both are dropped
/// (closed).
pub async fn relay<C, U>(client: C, upstream: U, idle: Duration, stop: impl Future<Output = ()>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Clock { epoch: crate::timer::now(), last: Arc::new(AtomicU64::new(0)) };
    let mut client = Watched { io: client, clock: clock.clone() };
    let mut upstream = Watched { io: upstream, clock: clock.clone() };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = clock.idle_for(idle) => {
            tracing::debug!(idle = ?idle, "closing an idle upgraded connection");
        }
        () = stop => {}
    }
}

/// When data last moved, as milliseconds since `epoch`.
#[derive(Clone)]
struct Clock {
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Clock {
    fn millis(&self) -> u64 {
        u64::try_from(crate::timer::now().saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.millis(), Ordering::Relaxed);
    }

    /// Completes once no data has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let last = self.last.load(Ordering::Relaxed);
            let due = last.saturating_add(idle_ms);
            let now = self.millis();
            if now >= due {
                return;
            }
            crate::timer::Sleep::until(crate::timer::deadline(Duration::from_millis(due - now))).await;
        }
    }
}

/// An I/O object that notes on its clock every read that brings data and every write that
/// takes some.
struct Watched<T> {
    io: T,
    clock: Clock,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        // A slow receiver still taking data is not idle.
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_closes_and_a_busy_one_stays() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, upstream, Duration::from_secs(10), std::future::pending()));
        // Data every 6 s, either way, keeps it open past the idle time.
        for i in 0..4u8 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            if i % 2 == 0 {
                client_peer.write_all(&[i]).await.unwrap();
                let mut b = [0; 1];
                upstream_peer.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [i]);
            } else {
                upstream_peer.write_all(&[i]).await.unwrap();
                let mut b = [0; 1];
                client_peer.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [i]);
            }
        }
        assert!(!relay.is_finished(), "a tunnel carrying data was closed");
        // Then nothing: closed within the idle time and a bit.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(relay.is_finished(), "an idle tunnel stayed open");
        let mut rest = Vec::new();
        assert_eq!(client_peer.read_to_end(&mut rest).await.unwrap(), 0, "the client's side is closed");
        assert_eq!(upstream_peer.read_to_end(&mut rest).await.unwrap(), 0, "the upstream's side is closed");
    }
}
