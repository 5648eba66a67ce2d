//! Workload identity: SPIFFE trust bundles and the gateway's own X.509-SVID.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// SPIFFE workload identity (X.509-SVIDs).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpiffeConfig {
    /// The trust bundle of each trust domain whose workloads are trusted, by trust domain name
    /// (`example.org: bundles/example.org.pem`). A bundle is a PEM file of CA certificates or
    /// a SPIFFE bundle (a JWK Set whose `x509-svid` keys carry `x5c`). An SVID must chain to the
    /// bundle of the trust domain in its own SPIFFE ID. Reloaded when the files change.
    #[serde(default)]
    pub trust_domains: BTreeMap<String, PathBuf>,
    /// The gateway's own X.509-SVID, presented to upstreams that ask for it
    /// (`upstreams.*.tls.svid: true`). Reloaded when the files change (rotation on disk).
    #[serde(default)]
    pub svid: Option<SvidConfig>,
}

/// An X.509-SVID on disk.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SvidConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}
