//! Draining a worker's connections on shutdown.
//!
//! hyper-util's graceful-shutdown wrapper polls a broadcast channel on every poll of every
//! connection (measured: about 350 instructions per request). A worker's connections all
//! live on its thread, so a thread-local list of them does the same job: a connection registers
//! its waker once; shutdown sets a flag and wakes every connection, which then closes
//! gracefully (HTTP/1: after the response in flight; HTTP/2: GOAWAY). A poll costs one
//! thread-local read.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// The worker's open connections: their wakers, and whether the worker is draining.
#[derive(Default)]
struct Connections {
    draining: bool,
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
    open: usize,
    all_closed: Option<Waker>,
}

thread_local! {
    static CONNECTIONS: RefCell<Connections> = RefCell::new(Connections::default());
}

/// A connection registered with its worker's drain.
pub struct Tracked<C> {
    conn: Pin<Box<C>>,
    /// Starts the connection's graceful close.
    close: fn(Pin<&mut C>),
    key: Option<usize>,
    closing: bool,
}

/// Registers `conn` with this thread's drain; `close` starts its graceful close.
pub fn track<C: Future>(conn: C, close: fn(Pin<&mut C>)) -> Tracked<C> {
    CONNECTIONS.with(|r| r.borrow_mut().open += 1);
    Tracked { conn: Box::pin(conn), close, key: None, closing: false }
}

impl<C: Future> Future for Tracked<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if !this.closing {
            let draining = CONNECTIONS.with(|r| {
                let mut r = r.borrow_mut();
                match this.key {
                    None => {
                        let waker = Some(cx.waker().clone());
                        this.key = Some(match r.free.pop() {
                            Some(k) => {
                                r.wakers[k] = waker;
                                k
                            }
                            None => {
                                r.wakers.push(waker);
                                r.wakers.len() - 1
                            }
                        });
                    }
                    Some(k) => {
                        if let Some(slot) = r.wakers.get_mut(k)
                            && !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            *slot = Some(cx.waker().clone());
                        }
                    }
                }
                r.draining
            });
            if draining {
                this.closing = true;
                (this.close)(this.conn.as_mut());
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Tracked<C> {
    fn drop(&mut self) {
        let _ = CONNECTIONS.try_with(|r| {
            let Ok(mut r) = r.try_borrow_mut() else { return };
            if let Some(k) = self.key {
                r.wakers[k] = None;
                r.free.push(k);
            }
            r.open -= 1;
            if r.open == 0
                && let Some(w) = r.all_closed.take()
            {
                w.wake();
            }
        });
    }
}

/// Asks every connection of this worker to finish, and returns once none is open.
pub async fn drain() {
    let wakers: Vec<Waker> = CONNECTIONS.with(|r| {
        let mut r = r.borrow_mut();
        r.draining = true;
        r.wakers.iter_mut().filter_map(Option::take).collect()
    });
    for w in wakers {
        w.wake();
    }
    std::future::poll_fn(|cx| {
        CONNECTIONS.with(|r| {
            let mut r = r.borrow_mut();
            if r.open == 0 {
                Poll::Ready(())
            } else {
                r.all_closed = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    })
    .await
}

/// Whether this worker is draining: a connection that notices closes once idle.
pub fn draining() -> bool {
    CONNECTIONS.with(|r| r.borrow().draining)
}

/// Connections of this worker still open.
pub fn open() -> usize {
    CONNECTIONS.with(|r| r.borrow().open)
}
