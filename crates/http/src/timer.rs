//! Coarse timers for the request path: request deadlines and hyper's connection timers.
//!
//! Every request needs a deadline and every keep-alive request re-arms the header-read
//! timeout, but none of them needs millisecond precision, and almost all are cancelled
//! before they fire. tokio's timer costs about 2k instructions per request for that
//! (registration and removal in the driver's wheel, measured under callgrind); here a worker
//! keeps its deadlines in a thread-local slab that a ticker task scans every [`TICK`], so
//! arming and cancelling are a slab insert and remove. A deadline fires between its time and
//! one tick later.
//!
//! The wheel exists on worker threads only ([`install`]); elsewhere (tests, the control
//! thread) the same types fall back to tokio's timer.
//!
//! The small functions every request runs are `#[inline]`, so that inlining them into the
//! crate's other codegen units does not depend on how the crate happens to be split
//! (`bench/RESULTS.md`, "The data a request writes").

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Resolution of the coarse timers.
pub const TICK: Duration = Duration::from_millis(10);

struct Entry {
    /// Milliseconds since the wheel's epoch.
    deadline: u64,
    waker: Option<Waker>,
    fired: bool,
    generation: u32,
}

struct Wheel {
    epoch: Instant,
    /// Milliseconds since `epoch`, as of the last tick.
    now: u64,
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    generation: u32,
    /// Woken when the first entry arrives in an empty wheel.
    idle: Option<Waker>,
    live: usize,
}

thread_local! {
    static WHEEL: RefCell<Option<Wheel>> = const { RefCell::new(None) };
}

impl Wheel {
    /// While nothing is armed the ticker sleeps and `now` stands still; the first deadline
    /// after an idle spell must be judged against the clock, not against the last tick.
    #[inline]
    fn catch_up(&mut self) {
        if self.live == 0 {
            self.now = self.millis(Instant::now());
        }
    }

    #[inline]
    fn insert(&mut self, deadline: u64, waker: Waker) -> (usize, u32) {
        self.catch_up();
        self.generation = self.generation.wrapping_add(1);
        let entry = Entry { deadline, waker: Some(waker), fired: deadline <= self.now, generation: self.generation };
        let key = match self.free.pop() {
            Some(k) => {
                self.entries[k] = Some(entry);
                k
            }
            None => {
                self.entries.push(Some(entry));
                self.entries.len() - 1
            }
        };
        self.live += 1;
        if self.live == 1
            && let Some(w) = self.idle.take()
        {
            w.wake();
        }
        (key, self.generation)
    }

    #[inline]
    fn get(&mut self, (key, generation): (usize, u32)) -> Option<&mut Entry> {
        self.entries.get_mut(key)?.as_mut().filter(|e| e.generation == generation)
    }

    #[inline]
    fn remove(&mut self, id: (usize, u32)) {
        if self.get(id).is_some() {
            self.entries[id.0] = None;
            self.free.push(id.0);
            self.live -= 1;
        }
    }

    fn tick(&mut self) {
        self.now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        for e in self.entries.iter_mut().flatten() {
            if !e.fired && e.deadline <= self.now {
                e.fired = true;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            }
        }
    }

    #[inline]
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Installs the wheel on this thread and returns the ticker, which must be spawned on this
/// thread's (single-threaded) runtime.
pub fn install() -> impl Future<Output = ()> {
    WHEEL.with(|w| {
        *w.borrow_mut() = Some(Wheel {
            epoch: Instant::now(),
            now: 0,
            entries: Vec::new(),
            free: Vec::new(),
            generation: 0,
            idle: None,
            live: 0,
        })
    });
    async {
        loop {
            // With nothing armed, sleep until something is.
            std::future::poll_fn(|cx| {
                WHEEL.with(|w| match w.borrow_mut().as_mut() {
                    Some(wheel) if wheel.live == 0 => {
                        wheel.idle = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                })
            })
            .await;
            tokio::time::sleep(TICK).await;
            WHEEL.with(|w| {
                if let Some(wheel) = w.borrow_mut().as_mut() {
                    wheel.tick();
                }
            });
        }
    }
}

/// The time now: on worker threads the last tick's while timers are armed (no clock read,
/// at most one tick old), the clock's when none is (the ticker is asleep then); the clock's
/// elsewhere.
#[inline]
pub fn now() -> Instant {
    WHEEL
        .with(|w| {
            w.borrow_mut().as_mut().map(|wheel| {
                wheel.catch_up();
                wheel.epoch + Duration::from_millis(wheel.now)
            })
        })
        // tokio's clock: the same as the system's, except in tests that pause time.
        .unwrap_or_else(|| tokio::time::Instant::now().into_std())
}

/// A sleep on the coarse wheel, or on tokio's timer where there is no wheel.
pub struct Sleep {
    inner: Inner,
}

enum Inner {
    Coarse { deadline: Instant, id: Option<(usize, u32)> },
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Sleep {
    /// A sleep until `deadline`.
    #[inline]
    pub fn until(deadline: Instant) -> Sleep {
        let coarse = WHEEL.with(|w| w.borrow().is_some());
        let inner = if coarse {
            Inner::Coarse { deadline, id: None }
        } else {
            Inner::Tokio(Box::pin(tokio::time::sleep_until(deadline.into())))
        };
        Sleep { inner }
    }

    /// Moves the deadline.
    pub fn reset(&mut self, deadline: Instant) {
        match &mut self.inner {
            Inner::Coarse { deadline: d, id } => {
                *d = deadline;
                if let Some(id) = id.take() {
                    WHEEL.with(|w| {
                        if let Some(wheel) = w.borrow_mut().as_mut() {
                            wheel.remove(id);
                        }
                    });
                }
            }
            Inner::Tokio(s) => s.as_mut().reset(deadline.into()),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().inner {
            Inner::Tokio(s) => s.as_mut().poll(cx),
            Inner::Coarse { deadline, id } => WHEEL.with(|w| {
                let mut w = w.borrow_mut();
                let Some(wheel) = w.as_mut() else { return Poll::Ready(()) };
                match *id {
                    None => {
                        let at = wheel.millis(*deadline);
                        *id = Some(wheel.insert(at, cx.waker().clone()));
                        if wheel.get(id.unwrap_or_default()).is_some_and(|e| e.fired) {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    }
                    Some(key) => match wheel.get(key) {
                        None => Poll::Ready(()),
                        Some(e) if e.fired => Poll::Ready(()),
                        Some(e) => {
                            if !e.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                                e.waker = Some(cx.waker().clone());
                            }
                            Poll::Pending
                        }
                    },
                }
            }),
        }
    }
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sleep")
    }
}

impl Drop for Sleep {
    #[inline]
    fn drop(&mut self) {
        if let Inner::Coarse { id: Some(id), .. } = self.inner {
            // `try_with`: the thread may be shutting down.
            let _ = WHEEL.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut()
                    && let Some(wheel) = w.as_mut()
                {
                    wheel.remove(id);
                }
            });
        }
    }
}

/// Polls the stall timer of a stream that must keep moving, now that it waits: armed at its
/// first wait since it last moved (`*stall` is `None` then; whoever sees it move sets it so),
/// and `Ready` once it has waited `idle`. A stream that never waits costs nothing.
pub fn poll_stalled(stall: &mut Option<Sleep>, idle: Duration, cx: &mut Context<'_>) -> Poll<()> {
    Pin::new(stall.get_or_insert_with(|| Sleep::until(deadline(idle)))).poll(cx)
}

/// The error of [`timeout`]: the deadline passed first.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// The deadline `after` from now, for a coarse [`Sleep`]: from the tick's time plus one tick,
/// so never early (the tick's time may be up to a tick behind the clock), and no clock read.
#[inline]
pub fn deadline(after: Duration) -> Instant {
    now() + after + TICK
}

/// Runs `fut` until it completes or `after` has passed (coarsely).
pub fn timeout<F: Future>(after: Duration, fut: F) -> Timeout<F> {
    Timeout { fut, sleep: Sleep::until(deadline(after)) }
}

/// `fut`, or [`Elapsed`] at `deadline`, on the coarse wheel.
pub fn timeout_at<F: Future>(deadline: Instant, fut: F) -> Timeout<F> {
    Timeout { fut, sleep: Sleep::until(deadline) }
}

pin_project_lite::pin_project! {
    /// A future with a coarse deadline ([`timeout`]). A struct rather than an `async fn`:
    /// an `async fn` keeps its argument and its pinned copy both, and request futures that
    /// contain this one (the upstream exchange) were twice as large, copied on every request.
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

/// hyper's timer (header-read timeout, HTTP/2 keep-alive) on the coarse wheel.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseTimer;

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(s) => s.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f)
    }

    #[test]
    fn coarse_deadlines_fire_and_cancel() {
        local(async {
            tokio::spawn(install());
            let started = Instant::now();
            assert_eq!(timeout(Duration::from_millis(50), std::future::pending::<()>()).await, Err(Elapsed));
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(50) && took < Duration::from_millis(50) + 5 * TICK, "{took:?}");
            // Completed futures win, and their entries are removed.
            for _ in 0..1000 {
                assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
            }
            WHEEL.with(|w| assert_eq!(w.borrow().as_ref().unwrap().live, 0));
            // A reset moves the deadline.
            let mut s = Box::pin(Sleep::until(Instant::now() + Duration::from_secs(60)));
            std::future::poll_fn(|cx| {
                assert!(s.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            s.as_mut().get_mut().reset(Instant::now() + Duration::from_millis(20));
            let started = Instant::now();
            s.await;
            assert!(started.elapsed() < Duration::from_millis(20) + 5 * TICK);
        });
    }

    #[test]
    fn after_an_idle_spell_deadlines_count_from_the_clock() {
        local(async {
            tokio::spawn(install());
            assert_eq!(timeout(Duration::from_millis(30), async { 1 }).await, Ok(1));
            // Nothing armed: the ticker sleeps.
            std::thread::sleep(Duration::from_millis(300));
            let started = Instant::now();
            let slow = tokio::time::sleep(Duration::from_millis(100));
            assert_eq!(timeout(Duration::from_millis(200), slow).await, Ok(()), "fired early");
            assert!(now() + TICK >= Instant::now(), "now() lags the clock");
            assert!(started.elapsed() >= Duration::from_millis(100));
        });
    }

    #[test]
    fn without_a_wheel_tokio_serves() {
        local(async {
            assert_eq!(timeout(Duration::from_millis(20), std::future::pending::<()>()).await, Err(Elapsed));
            assert_eq!(timeout(Duration::from_secs(1), async { 1 }).await, Ok(1));
        });
    }
}
