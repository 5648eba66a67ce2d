//! Portcullis configuration: the typed YAML model, strict loading (unknown keys are errors,
//! every error names its key path and line), validation and the JSON Schema.
//!
//! The config is turned into runtime objects once, at load or reload; nothing on the request
//! path reads these types.

#![forbid(unsafe_code)]

mod admin;
mod authz;
mod dpop;
mod fleet;
mod identity;
mod issuer;
mod limits;
mod load;
mod route;
mod server;
mod spiffe;
pub mod state;
mod telemetry;
mod upstream;
mod validate;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use admin::{AdminAuthConfig, AdminConfig, redacted};
pub use authz::{AuthorizationConfig, CedarConfig};
pub use dpop::DpopConfig;
pub use fleet::{Bootstrap, BundleSource, ConfigOrigin, FleetConfig};
pub use identity::{
    AudienceConfig, EncryptConfig, InternalTokenConfig, Listener, PropagateConfig, SigningKeysConfig,
    TokenClientConfig, TokenServiceConfig,
};
pub use issuer::{
    ApiKeysConfig, BackchannelLogoutConfig, ClientAuthMethod, ConsumerConfig, IntrospectionConfig, IssuerConfig,
    KeyFetchConfig, SharedSignalsConfig,
};
pub use limits::{
    BruteForceConfig, ConcurrencyConfig, FailMode, IpListEntry, IpRulesConfig, JsonLimitsConfig, KeyPart, LimitKey,
    LimitMode, PlanConfig, QuotaConfig, QuotaWindow, RateLimitConfig,
};
pub use load::{ConfigError, ConfigErrors, Invalid, LoadedConfig, load_bootstrap, load_file, load_str};
pub use route::{
    AuthMethod, AuthorizeConfig, CredentialsConfig, OtherMethods, Rewrite, RouteConfig, RouteLimits, RouteMatch,
    RouteTimeouts,
};
pub use server::{ClientAuth, ForwardedHeaders, Limits, ServerConfig, TlsConfig};
pub use spiffe::{SpiffeConfig, SvidConfig};
pub use state::{ClusterConfig, RedisConfig, RedisTls, SentinelConfig, StateBackend, StateConfig, UsageConfig};
pub use telemetry::{AccessLogConfig, LogConfig, LogFormat};
pub use upstream::{PassiveHealth, UpstreamConfig, UpstreamProtocol, UpstreamTimeouts, UpstreamTls};
pub use values::{ByteSize, Duration, Secret};

/// The name of the built-in upstream that answers every request with what it received.
pub const ECHO_UPSTREAM: &str = "echo";

/// A Portcullis config file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Portcullis configuration")]
pub struct Config {
    /// The public listener.
    pub server: ServerConfig,
    /// The admin listener (health, readiness, metrics, effective config).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where shared state lives.
    #[serde(default)]
    pub state: StateConfig,
    /// The process log.
    #[serde(default)]
    pub log: LogConfig,
    /// The per-request access log.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Identity providers whose JWTs are accepted.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Token introspection (RFC 7662) for opaque tokens.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// API keys and their consumers.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// How DPoP proofs of possession are checked (RFC 9449).
    #[serde(default)]
    pub dpop: DpopConfig,
    /// SPIFFE workload identity: trust bundles and the gateway's own SVID.
    #[serde(default)]
    pub spiffe: SpiffeConfig,
    /// The gateway's token service: signing keys for internal tokens, the JWKS it publishes,
    /// token exchange and client credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_service: Option<TokenServiceConfig>,
    /// Named upstream services with several endpoints, timeouts and health checking.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Where route rules find roles and groups, and the Cedar policies.
    #[serde(default)]
    pub authorization: AuthorizationConfig,
    /// Routes, matched most specific first.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Plans by name: the limits of the consumers on each. A consumer's plan comes from
    /// `api_keys.consumers[].plan` or from the token claim `plan_claim`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, PlanConfig>,
    /// The token (or introspection) claim that names the caller's plan, e.g. `plan`. None
    /// by default: plans come from API consumers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_claim: Option<String>,
    /// The plan of callers that have none, or name one not in `plans`. None by default:
    /// such callers are held to their routes' limits only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_plan: Option<String>,
    /// The time zone of quota windows (days start at its midnight): `UTC` (the default), an
    /// IANA name such as `Europe/Paris`, or a fixed offset such as `+02:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_timezone: Option<String>,
    /// Usage metering: what each consumer used, for billing.
    #[serde(default)]
    pub usage: UsageConfig,
    /// Brute-force blocking of client addresses that fail authentication too often (off
    /// when absent: behind a proxy not listed in `server.trusted_proxies`, every client has
    /// the proxy's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brute_force: Option<BruteForceConfig>,
    /// OpenID Connect Back-Channel Logout: identity providers post logout tokens, and the
    /// sessions (or users) they name are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout: Option<BackchannelLogoutConfig>,
    /// A Shared Signals receiver: transmitters push security events (CAEP, RISC), and the
    /// sessions or users they name are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_signals: Option<SharedSignalsConfig>,
    /// Fleet status: this gateway's name, and where it reports its status.
    #[serde(default)]
    pub fleet: FleetConfig,
}

impl Config {
    /// The JSON Schema of the config file, generated from these types.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
    }

    /// Makes every file path absolute (relative ones are relative to the config file) and
    /// reads secrets given as `{ env }` or `{ file }`.
    fn resolve_files(&mut self, resolve: impl Fn(&Path) -> PathBuf) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let base = resolve(Path::new("."));
        let mut secret = |s: &mut Secret, at: String| {
            if let Err(e) = s.resolve(&base) {
                problems.push(Invalid::new(at, e));
            }
        };
        for (i, issuer) in self.issuers.iter_mut().enumerate() {
            if let Some(s) = &mut issuer.hmac_secret {
                secret(s, format!("issuers[{i}].hmac_secret"));
            }
        }
        if let Some(intro) = &mut self.introspection {
            secret(&mut intro.client_secret, "introspection.client_secret".into());
        }
        if let Some(s) = &mut self.dpop.nonce_secret {
            secret(s, "dpop.nonce_secret".into());
        }
        if let Some(s) = self.admin.as_mut().and_then(|a| a.auth.as_mut()).and_then(|a| a.bearer_token.as_mut()) {
            secret(s, "admin.auth.bearer_token".into());
        }
        if let Some(s) = &mut self.state.redis.password {
            secret(s, "state.redis.password".into());
        }
        if let Some(s) = self.state.redis.sentinel.as_mut().and_then(|s| s.password.as_mut()) {
            secret(s, "state.redis.sentinel.password".into());
        }
        let fix = |p: &mut PathBuf| *p = resolve(p);
        if let Some(tls) = &mut self.server.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
        if let Some(tls) = self.admin.as_mut().and_then(|a| a.tls.as_mut()) {
            fix(&mut tls.cert);
            fix(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
        if let Some(path) = &mut self.access_log.path {
            fix(path);
        }
        if let Some(path) = &mut self.state.path {
            fix(path);
        }
        if let Some(tls) = &mut self.state.redis.tls {
            for p in [&mut tls.ca, &mut tls.cert, &mut tls.key].into_iter().flatten() {
                fix(p);
            }
        }
        self.spiffe.trust_domains.values_mut().for_each(fix);
        if let Some(svid) = &mut self.spiffe.svid {
            fix(&mut svid.cert);
            fix(&mut svid.key);
        }
        for issuer in &mut self.issuers {
            for f in [&mut issuer.jwks_file, &mut issuer.keys.ca].into_iter().flatten() {
                fix(f);
            }
        }
        if let Some(ca) = self.introspection.as_mut().and_then(|i| i.ca.as_mut()) {
            fix(ca);
        }
        if let Some(cedar) = &mut self.authorization.cedar {
            cedar.policies.iter_mut().chain(&mut cedar.schema).chain(&mut cedar.entities).for_each(fix);
        }
        for upstream in self.upstreams.values_mut() {
            if let Some(tls) = &mut upstream.tls {
                for p in [&mut tls.ca, &mut tls.cert, &mut tls.key].into_iter().flatten() {
                    fix(p);
                }
            }
        }
        if let Some(ts) = &mut self.token_service {
            ts.keys.files.iter_mut().for_each(fix);
            ts.clients.iter_mut().for_each(|c| fix(&mut c.jwks_file));
        }
        for route in &mut self.routes {
            if let Some(e) =
                route.propagate.as_mut().and_then(|p| p.internal_token.as_mut()).and_then(|t| t.encrypt.as_mut())
            {
                fix(&mut e.key);
            }
            if let Some(rules) = &mut route.client_ips {
                for entry in rules.allow.iter_mut().chain(&mut rules.deny) {
                    if let IpListEntry::File { file } = entry {
                        fix(file);
                    }
                }
            }
        }
        problems
    }

    /// Every file the config refers to, for reload on change.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(tls) = &self.server.tls {
            files.extend([tls.cert.clone(), tls.key.clone()]);
            files.extend(tls.client_ca.clone());
        }
        if let Some(tls) = self.admin.as_ref().and_then(|a| a.tls.as_ref()) {
            files.extend([tls.cert.clone(), tls.key.clone()]);
            files.extend(tls.client_ca.clone());
        }
        files.extend(self.spiffe.trust_domains.values().cloned());
        if let Some(svid) = &self.spiffe.svid {
            files.extend([svid.cert.clone(), svid.key.clone()]);
        }
        files.extend(self.issuers.iter().filter_map(|i| i.jwks_file.clone()));
        files.extend(self.issuers.iter().filter_map(|i| i.keys.ca.clone()));
        files.extend(self.introspection.as_ref().and_then(|i| i.ca.clone()));
        if let Some(cedar) = &self.authorization.cedar {
            // A folder of policies is watched (and fingerprinted) as a whole.
            files.extend(cedar.policies.iter().chain(&cedar.schema).chain(&cedar.entities).cloned());
        }
        for upstream in self.upstreams.values() {
            if let Some(tls) = &upstream.tls {
                files.extend([&tls.ca, &tls.cert, &tls.key].into_iter().flatten().cloned());
            }
        }
        if let Some(ts) = &self.token_service {
            files.extend(ts.keys.files.iter().cloned());
            files.extend(ts.clients.iter().map(|c| c.jwks_file.clone()));
        }
        for rules in self.routes.iter().filter_map(|r| r.client_ips.as_ref()) {
            files.extend(rules.allow.iter().chain(&rules.deny).filter_map(|e| match e {
                IpListEntry::File { file } => Some(file.clone()),
                IpListEntry::Net(_) => None,
            }));
        }
        files.extend(
            self.routes
                .iter()
                .filter_map(|r| r.propagate.as_ref()?.internal_token.as_ref()?.encrypt.as_ref())
                .map(|e| e.key.clone()),
        );
        files
    }
}

#[cfg(test)]
mod tests;
