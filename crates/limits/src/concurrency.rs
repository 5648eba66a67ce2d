//! Concurrency limits: at most `max` requests in flight to a route or an upstream, a
//! bounded number waiting for a slot for a bounded time, the rest refused at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER};
use portcullis_config::ConcurrencyConfig;
use portcullis_core::Problem;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one route or upstream.
#[derive(Debug)]
pub struct Concurrency {
    slots: Arc<Semaphore>,
    queue: u32,
    waiting: AtomicU32,
    wait: Duration,
}

/// A request's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Concurrency {
    /// Slots as `config` says.
    pub fn new(config: &ConcurrencyConfig) -> Concurrency {
        Concurrency {
            slots: Arc::new(Semaphore::new(config.max as usize)),
            queue: config.queue,
            waiting: AtomicU32::new(0),
            wait: config.wait.get(),
        }
    }

    /// A slot: at once if one is free, else after waiting in the queue if it has room and
    /// one frees up in time. `Err` is `503` with `Retry-After: 1`.
    pub async fn acquire(&self) -> Result<Slot, Problem> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot(permit));
        }
        self.queued().await
    }

    #[cold]
    async fn queued(&self) -> Result<Slot, Problem> {
        let joined =
            self.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.queue).then_some(n + 1));
        if joined.is_err() {
            return Err(overloaded());
        }
        // Leaves the queue however the wait ends, a request dropped mid-wait included.
        let _in_queue = Queued(&self.waiting);
        let got = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await;
        match got {
            Ok(Ok(permit)) => Ok(Slot(permit)),
            _ => Err(overloaded()),
        }
    }
}

/// A place in the queue, given back when dropped.
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn overloaded() -> Problem {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests in flight; try again shortly")
        .header(RETRY_AFTER, HeaderValue::from_static("1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ConcurrencyConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn past_max_requests_are_refused_at_once_without_a_queue() {
        let c = Concurrency::new(&config("{max: 2}"));
        let a = c.acquire().await.unwrap();
        let _b = c.acquire().await.unwrap();
        let started = std::time::Instant::now();
        let e = c.acquire().await.unwrap_err();
        assert_eq!(e.status, 503);
        assert!(started.elapsed() < Duration::from_millis(50));
        drop(a);
        assert!(c.acquire().await.is_ok());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_so_is_the_wait() {
        let c = Arc::new(Concurrency::new(&config("{max: 1, queue: 1, wait: 200ms}")));
        let held = c.acquire().await.unwrap();
        // One waits; a second waiter finds the queue full.
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = std::time::Instant::now();
        assert_eq!(c.acquire().await.unwrap_err().status, 503);
        assert!(started.elapsed() < Duration::from_millis(50), "refused at once, not after waiting");
        // The slot frees up in time: the waiter gets it.
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
        // Nobody frees it: the wait ends in a refusal.
        let _held = c.acquire().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(c.acquire().await.unwrap_err().status, 503);
        assert!(started.elapsed() >= Duration::from_millis(190), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_the_queue() {
        let c = Arc::new(Concurrency::new(&config("{max: 1, queue: 1, wait: 5s}")));
        let held = c.acquire().await.unwrap();
        for _ in 0..3 {
            // A waiter dropped mid-wait (its client went away) gives its place back.
            let gone = tokio::time::timeout(Duration::from_millis(20), c.acquire()).await;
            assert!(gone.is_err());
        }
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.acquire().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap().is_ok(), "the queue still had its place");
    }
}
