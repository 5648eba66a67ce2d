//! The public listener: address, TLS, protocol limits and proxy headers.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{ByteSize, Duration};

/// The public listener that clients connect to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on, e.g. `0.0.0.0:8443`. Changing it needs a restart.
    pub listen: SocketAddr,
    /// Serve HTTPS instead of plain HTTP (HTTP/2 negotiated by ALPN).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2 (prior-knowledge h2c in plain text, ALPN `h2` over TLS).
    #[serde(default = "yes")]
    pub http2: bool,
    /// Protocol limits that protect the gateway and the services behind it.
    #[serde(default)]
    pub limits: Limits,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed (load balancers in
    /// front of the gateway). From anyone else those headers are replaced, so a client cannot
    /// choose the IP address that risk scoring and policies see.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: Vec<IpNet>,
    /// Which headers tell the upstream about the original client.
    #[serde(default)]
    pub forwarded_headers: ForwardedHeaders,
    /// On SIGTERM, how long requests in flight may take to finish before the process exits.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// On SIGTERM, how long the gateway reports not-ready while still accepting, before it
    /// stops accepting and drains: load balancers (a Kubernetes Service) take it out of
    /// rotation first, so no new connection meets a closed port. `0` outside such set-ups.
    #[serde(default = "default_shutdown_delay")]
    pub shutdown_delay: Duration,
    /// Worker threads for the data plane. Default: one per available CPU.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Match route paths without regard to ASCII case (`/Admin` takes the `/admin` route), for
    /// upstreams that read paths that way (IIS, some Spring set-ups). Routes may say otherwise
    /// with `match.ignore_case`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_path_case: bool,
}

/// TLS on the public listener.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Reloaded when the file changes.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Reloaded when the file changes.
    pub key: PathBuf,
    /// PEM bundle of CAs that sign client certificates. Enables mutual TLS.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client certificate is `required` at the handshake or
    /// `optional` (routes that need one then reject requests without it).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Whether the TLS handshake demands a client certificate.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Ask for a certificate; connections without one are still accepted.
    #[default]
    Optional,
    /// Refuse the handshake without a valid client certificate.
    Required,
}

/// Limits on what a client may send. Each violation gets its standard status code.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line and all headers); larger gets `431`.
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request; more gets `431`.
    pub max_headers: usize,
    /// Largest request body; larger gets `413`. Routes may set their own.
    pub max_body_bytes: ByteSize,
    /// Time a client has to send a complete request head; also how long an idle keep-alive
    /// connection is kept open. Defends against slow-header (slowloris) clients.
    pub header_read_timeout: Duration,
    /// Most client connections open at once; further connections wait in the kernel's
    /// accept queue.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: ByteSize::kib(16),
            max_headers: 100,
            max_body_bytes: ByteSize::mib(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 25_000,
            max_concurrent_streams: 256,
        }
    }
}

/// Which headers carry the original client's address, scheme and host to the upstream.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.
    #[default]
    XForwarded,
    /// The standard `Forwarded` header (RFC 7239).
    Forwarded,
}

fn yes() -> bool {
    true
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_shutdown_delay() -> Duration {
    Duration::from_secs(5)
}
