//! What the stages share: the connection a request came on, and what they learn about the
//! request as it passes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use portcullis_authn::ClientCert;
use portcullis_core::Principal;
use portcullis_http::ConnInfo;

use crate::router::PathParams;
use crate::runtime::Route;

/// A client connection as the pipeline sees it: the transport's facts, and what is read
/// from them once for every request the connection carries.
#[derive(Debug)]
pub struct Connection {
    /// What the transport knows.
    pub info: ConnInfo,
    /// The peer's IP address as a header value (for `X-Forwarded-For`).
    pub peer_value: HeaderValue,
    /// The client's verified certificate.
    pub client_cert: Option<ClientCert>,
}

impl Connection {
    /// Reads a new connection's facts.
    pub fn new(info: ConnInfo) -> Self {
        let client_cert = info
            .tls
            .as_ref()
            .and_then(|t| t.peer_certificates.as_ref())
            .and_then(|c| c.first())
            .and_then(|leaf| ClientCert::from_leaf(leaf));
        Connection { peer_value: crate::headers::ip_value(info.peer.ip()), client_cert, info }
    }

    /// The peer's IP address.
    pub fn peer_ip(&self) -> IpAddr {
        self.info.peer.ip()
    }

    /// The connection is TLS.
    pub fn tls(&self) -> bool {
        self.info.tls.is_some()
    }

    /// The client presented a certificate (mutual TLS).
    pub fn mtls(&self) -> bool {
        self.info.tls.as_ref().is_some_and(|t| t.peer_certificates.is_some())
    }
}

/// What authorization decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The request may pass.
    Allow,
    /// The request is refused.
    Deny,
}

impl Decision {
    /// As the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// What the stages learn about a request as it passes.
#[derive(Debug)]
pub struct RequestCtx {
    /// Sent upstream, returned to the client, and logged.
    pub request_id: HeaderValue,
    /// The client's address (see `server.trusted_proxies`).
    pub client_ip: IpAddr,
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// Template parameters of the matched path.
    pub params: PathParams,
    /// Who sent the request.
    pub principal: Option<Arc<Principal>>,
    /// The authorization outcome.
    pub decision: Option<Decision>,
    /// How long the upstream took to answer.
    pub upstream_elapsed: Option<Duration>,
    /// Why the request was stopped, if it was.
    pub reason: Option<&'static str>,
    /// The authorization decision's explanation, for the audit log.
    pub explained: Option<Explained>,
    /// Request body bytes of a body of known length (usage metering).
    pub request_bytes: u64,
    /// Request body bytes counted as they pass, for a body of unknown length.
    pub request_tally: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// A decision's explanation, as the audit log records it.
#[derive(Debug)]
pub struct Explained {
    /// The policies that decided.
    pub policies: Vec<String>,
    /// Evaluation errors.
    pub errors: Vec<String>,
    /// The decision's input.
    pub facts: Option<serde_json::Value>,
}
