//! The Portcullis data plane: the public listener, routing, the request pipeline and
//! forwarding to upstreams.
//!
//! A config is compiled into a [`Runtime`] once per load or reload; the listener serves each
//! request with the runtime current at its arrival, through the stages of [`pipeline`].

#![forbid(unsafe_code)]

/// `Box::pin($fut)`, with the future built in its box. `Box::pin(f())` builds the future on
/// the stack, then copies all of it into the box: the room for every await point's state
/// too, kilobytes of which nothing is set yet. Allocating first lets the compiler write just
/// what is set (the upstream exchange's future: a 2,120-byte copy became one of 464).
macro_rules! boxed {
    ($fut:expr) => {
        ::std::boxed::Box::into_pin(::std::boxed::Box::write(::std::boxed::Box::new_uninit(), $fut))
    };
}
pub(crate) use boxed;

pub mod body;
pub mod drain;
mod echo;
pub mod headers;
pub mod listener;
pub mod pipeline;
pub mod router;
pub mod runtime;
pub mod server;
pub mod timer;
pub mod tls;
mod tunnel;
pub mod upstream;

pub use runtime::{Lasting, Runtime};
