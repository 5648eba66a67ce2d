//! The Portcullis transport: HTTP on the wire, and nothing of what the requests mean.
//!
//! It accepts connections ([`listener`]), speaks HTTP/1.1 on its own codec
//! ([`server::h1`]) and HTTP/2 on hyper's ([`server`]), streams bodies ([`body`]), sends
//! requests to upstreams ([`client`]), keeps time ([`timer`]), drains on shutdown
//! ([`drain`]) and relays upgraded connections ([`tunnel`]). Both codecs read message
//! framing the same way ([`framing`]).
//!
//! It knows nothing of routes, principals or config. An application plugs in through one
//! seam, the [`Handler`] trait: a request and its connection in, a response out.

#![forbid(unsafe_code)]

/// `Box::pin($fut)`, with the future built in its box. `Box::pin(f())` builds the future on
/// the stack, then copies all of it into the box: the room for every await point's state
/// too, kilobytes of which nothing is set yet. Allocating first lets the compiler write just
/// what is set (`bench/RESULTS.md`, "Allocations and copies a request").
#[macro_export]
macro_rules! boxed {
    ($fut:expr) => {
        ::std::boxed::Box::into_pin(::std::boxed::Box::write(::std::boxed::Box::new_uninit(), $fut))
    };
}

pub mod body;
pub mod client;
pub mod drain;
pub mod framing;
pub mod listener;
pub mod server;
pub mod timer;
pub mod tunnel;

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};

use body::{ClientBody, ResponseBody};

/// What a handler keeps about one connection (made once, when it is accepted), handed back
/// to it with each of the connection's requests.
pub type Attached = Arc<dyn Any + Send + Sync>;

/// A handler's response to come.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>;

/// The application the transport hands requests to: its one seam, in the spirit of a
/// proxy's phase list with a single phase. A handler is shared by every worker; what it
/// serves with may change between requests (a reload), so each method reads it afresh.
///
/// A trait object, so that the transport is compiled once, as one unit, whatever serves
/// behind it: its hot paths inline across its own modules as they did when they were one
/// crate with the pipeline (`bench/RESULTS.md`, "The transport apart from the pipeline").
pub trait Handler: Send + Sync + 'static {
    /// The settings a connection accepted now is served with.
    fn settings(&self) -> Arc<ServerSettings>;

    /// The handler's record of a new connection.
    fn connect(&self, info: ConnInfo) -> Attached;

    /// Serves one request that arrived on the connection `conn` was attached to.
    fn handle(&self, conn: &Attached, req: Request<ClientBody>) -> ResponseFuture;

    /// The transport refused a request itself, before it could be handed on (a malformed or
    /// oversized head): for the handler's accounting.
    fn refused(&self, status: StatusCode);
}

/// How connections are served: everything the transport takes from the configuration.
#[derive(Debug)]
pub struct ServerSettings {
    /// TLS, when the listener serves HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// The HTTP/1.1 codec's settings.
    pub h1: server::h1::Settings,
    /// HTTP/2, when enabled.
    pub h2: Option<hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>>,
    /// How long a worker drains its connections at shutdown.
    pub drain_timeout: Duration,
}

/// What the transport knows about a connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// TLS facts, for HTTPS connections.
    pub tls: Option<TlsInfo>,
}

/// Facts about a TLS connection.
#[derive(Debug, Default)]
pub struct TlsInfo {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The SNI host name the client sent.
    pub sni: Option<String>,
    /// The client's certificate chain (leaf first), when it presented one (and the TLS
    /// configuration verified it).
    pub peer_certificates: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}
