//! Whole-gateway tests: the real `portcullis` binary on loopback, driven over HTTP/1.1,
//! HTTP/2 and TLS against real peers (an HTTP upstream, a gRPC server and client in Python).

mod harness;
mod pki;
mod upstream;

mod admin;
mod authn;
mod authz;
mod cli;
mod confusion;
mod deploy;
mod docs;
mod fleet;
mod identity;
mod lifecycle;
mod limits;
mod logout;
mod opaque;
mod pop;
mod protocols;
mod proxy;
mod revocation;
mod robustness;
mod shared_state;
mod streaming;
mod topologies;
mod usage;
mod workload;
