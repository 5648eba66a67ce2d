//! The Portcullis data plane: routing, the request pipeline, and forwarding to upstreams,
//! over the transport of `portcullis-http`.
//!
//! A config is compiled into a [`Runtime`] once per load or reload; the transport hands each
//! request to the [`pipeline`], which serves it with the runtime current at its arrival.

#![forbid(unsafe_code)]

mod echo;
pub mod headers;
pub mod pipeline;
mod receivers;
pub mod router;
pub mod runtime;
pub mod tls;
pub mod token_endpoint;
pub mod upstream;

pub use runtime::{Lasting, Runtime};
