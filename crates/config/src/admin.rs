//! The admin listener: health, readiness, metrics and the effective config, and who may call
//! it.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Config, Invalid, Secret, TlsConfig};

/// The admin listener. `/healthz` and `/readyz` are always open (for probes); every other
/// endpoint needs the credential `auth` or `tls.client_ca` names, when one is configured.
/// Listening on anything but a loopback address needs one.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener, e.g. `127.0.0.1:9901`. Changing it needs a restart.
    /// A non-loopback address needs `auth.bearer_token` or `tls.client_ca`.
    pub listen: SocketAddr,
    /// How callers of the protected endpoints (`/metrics`, `/config`...) authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AdminAuthConfig>,
    /// Serve the admin API over HTTPS. With `client_ca`, a verified client certificate
    /// authenticates the caller (mTLS); with `client_auth: required`, a connection without
    /// one is refused at the handshake. Read at start; changing it needs a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Credentials of the admin API.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminAuthConfig {
    /// A shared token callers send as `Authorization: Bearer <token>`: inline, `{ env: VAR }`
    /// or `{ file: path }`; at least 16 characters. Compared in constant time; never logged
    /// or shown. A reload picks up a new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
}

/// Shortest bearer token accepted.
const MIN_TOKEN: usize = 16;

impl AdminConfig {
    /// The bearer token callers may present, if one is configured.
    pub fn bearer_token(&self) -> Option<&Secret> {
        self.auth.as_ref().and_then(|a| a.bearer_token.as_ref())
    }

    /// Whether a verified client certificate authenticates a caller.
    pub fn mtls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }

    /// Whether the protected endpoints need a credential.
    pub fn authenticates(&self) -> bool {
        self.bearer_token().is_some() || self.mtls()
    }

    /// Rules that need the whole admin block: a reachable listener must authenticate.
    pub(crate) fn validate(&self, out: &mut Vec<Invalid>) {
        if let Some(token) = self.bearer_token()
            && token.expose().chars().count() < MIN_TOKEN
        {
            out.push(Invalid::new(
                "admin.auth.bearer_token",
                format!("must be at least {MIN_TOKEN} characters (e.g. the output of `openssl rand -hex 32`)"),
            ));
        }
        if !self.listen.ip().is_loopback() && !self.authenticates() {
            out.push(Invalid::new(
                "admin.listen",
                format!(
                    "`{}` is not a loopback address and the admin API has no authentication: anyone who can \
                     reach it could read the config and metrics. Set `admin.auth.bearer_token` (e.g. \
                     `{{ env: PORTCULLIS_ADMIN_TOKEN }}`) or `admin.tls.client_ca`, or listen on 127.0.0.1",
                    self.listen
                ),
            ));
        }
    }
}

/// What replaces a stored API-key hash in a config dump.
const HIDDEN_HASH: &str = "sha256:<redacted>";

/// The config as the admin API's `/config` shows it: secrets already serialise redacted
/// (see [`Secret`]); API-key hashes (`sha256:...`) are redacted here too, because a hash of a
/// short or guessable key is as good as the key.
pub fn redacted(config: &Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    redact_hashes(&mut v);
    v
}

fn redact_hashes(v: &mut Value) {
    match v {
        Value::String(s) if s.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("sha256:")) => {
            *s = HIDDEN_HASH.to_string();
        }
        Value::Array(a) => a.iter_mut().for_each(redact_hashes),
        Value::Object(o) => o.values_mut().for_each(redact_hashes),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(yaml: &str) -> AdminConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn problems(a: &AdminConfig) -> Vec<Invalid> {
        let mut out = Vec::new();
        a.validate(&mut out);
        out
    }

    #[test]
    fn loopback_needs_no_auth_but_other_addresses_do() {
        assert!(problems(&admin("listen: 127.0.0.1:9901")).is_empty());
        assert!(problems(&admin("listen: '[::1]:9901'")).is_empty());
        let p = problems(&admin("listen: 0.0.0.0:9901"));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "admin.listen");
        assert!(p[0].message.contains("admin.auth.bearer_token"), "{}", p[0].message);
        let ok = admin("listen: 0.0.0.0:9901\nauth: {bearer_token: 0123456789abcdef0123}");
        assert!(problems(&ok).is_empty());
        let mtls = admin("listen: 0.0.0.0:9901\ntls: {cert: c.pem, key: k.pem, client_ca: ca.pem}");
        assert!(problems(&mtls).is_empty());
        // TLS without client certificates is not authentication.
        let tls = admin("listen: 0.0.0.0:9901\ntls: {cert: c.pem, key: k.pem}");
        assert_eq!(problems(&tls).len(), 1);
    }

    #[test]
    fn short_tokens_are_refused_without_echoing_them() {
        let p = problems(&admin("listen: 127.0.0.1:9901\nauth: {bearer_token: hunter2}"));
        assert_eq!(p[0].path, "admin.auth.bearer_token");
        assert!(!p[0].message.contains("hunter2"));
    }

    #[test]
    fn hashes_are_redacted_at_any_depth() {
        let mut v = serde_json::json!({"a": [{"keys": ["sha256:00ff", "SHA256:ab"]}], "b": "sha25", "c": 1});
        redact_hashes(&mut v);
        assert_eq!(v, serde_json::json!({"a": [{"keys": [HIDDEN_HASH, HIDDEN_HASH]}], "b": "sha25", "c": 1}));
    }
}
