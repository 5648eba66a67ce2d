//! The Portcullis data plane: the public listener, routing, the request pipeline and
//! forwarding to upstreams.
//!
//! A config is compiled into a [`Runtime`] once per load or reload; the listener serves each
//! request with the runtime current at its arrival, through the stages of [`pipeline`].

#![forbid(unsafe_code)]

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

pub use runtime::{Runtime, Shared};
