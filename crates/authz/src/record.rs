//! A decision's input as a record ([`InputRecord`]): written to the audit log with every
//! decision, read back by `portcullis authz explain` (a request described by hand) and
//! `portcullis authz replay` (past decisions judged by new policies).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_core::{AuthnMethod, Consumer, Principal, PrincipalKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Input;

/// A decision's input, owned and serialisable: the record the audit log keeps and the
/// request `authz explain` and `authz replay` read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    /// The route's id (matched from the method, host and path when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The HTTP method.
    pub method: String,
    /// The host the client addressed.
    #[serde(default)]
    pub host: String,
    /// The (normalised) path.
    pub path: String,
    /// Path-template parameters (filled by route matching when absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Who.
    #[serde(default)]
    pub principal: PrincipalRecord,
    /// In what context.
    #[serde(default)]
    pub context: ContextRecord,
}

/// The principal, as a record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalRecord {
    /// `user`, `client`, `workload` or `anonymous` (derived from the claims when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `jwt`, `introspection`, `api_key`, `mtls`, `dpop` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
    /// The subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The client application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The API consumer's plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Granted scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// When the credential was issued (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    /// The claims (roles, groups and policy tags come from them). The access log keeps only
    /// those `access_log.claims` names.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// Names of claims the token had but the access log left out: their values are unknown,
    /// so a decision that reads one cannot be judged again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_withheld: Vec<String>,
}

impl PrincipalRecord {
    /// Keeps only the claims `keep` names (`access_log.claims`); the names of the others go
    /// to `claims_withheld`, their values nowhere.
    pub fn withhold_claims(&mut self, keep: &[String]) {
        if self.claims.keys().all(|k| keep.contains(k)) {
            return;
        }
        for (k, v) in std::mem::take(&mut self.claims) {
            if keep.contains(&k) {
                self.claims.insert(k, v);
            } else {
                self.claims_withheld.push(k);
            }
        }
        self.claims_withheld.sort_unstable();
    }
}

/// The context, as a record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContextRecord {
    /// The client's address.
    #[serde(default = "unspecified")]
    pub client_ip: IpAddr,
    /// When (Unix seconds); now when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Over TLS.
    #[serde(default)]
    pub tls: bool,
    /// With a verified client certificate.
    #[serde(default)]
    pub mtls: bool,
    /// The risk score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<i64>,
}

impl Default for ContextRecord {
    fn default() -> Self {
        ContextRecord { client_ip: unspecified(), time: None, tls: false, mtls: false, risk: None }
    }
}

fn unspecified() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

impl InputRecord {
    /// The record of a request's input.
    pub fn of(input: &Input<'_>) -> InputRecord {
        let p = input.principal;
        let s = |v: &Option<Arc<str>>| v.as_deref().map(str::to_string);
        InputRecord {
            route: Some(input.route.to_string()),
            method: input.method.to_string(),
            host: input.host.to_string(),
            path: input.path.to_string(),
            params: input.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            principal: PrincipalRecord {
                kind: Some(kind_name(p.kind).to_string()),
                auth_method: Some(p.method.as_str().to_string()),
                subject: s(&p.subject),
                issuer: s(&p.issuer),
                client_id: s(&p.client_id),
                spiffe_id: s(&p.spiffe_id),
                plan: p.consumer.as_ref().and_then(|c| c.plan.as_deref().map(str::to_string)),
                scopes: Some(p.scopes.iter().map(|s| s.to_string()).collect()),
                issued_at: p.issued_at,
                claims: p.claims.as_ref().map(|c| c.map().clone()).unwrap_or_default(),
                claims_withheld: Vec::new(),
            },
            context: ContextRecord {
                client_ip: input.client_ip,
                time: input.now.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()),
                tls: input.tls,
                mtls: input.mtls,
                risk: input.risk,
            },
        }
    }

    /// The time of the request (now when the record has none).
    pub fn time(&self) -> SystemTime {
        self.context.time.map(|t| UNIX_EPOCH + Duration::from_secs(t)).unwrap_or_else(SystemTime::now)
    }
}

impl PrincipalRecord {
    /// The principal this record describes. Fields the record leaves out are taken from the
    /// claims the way token authentication takes them (`sub`, `client_id`/`azp`,
    /// `scope`/`scp`, `iat`; a SPIFFE ID in `sub` makes a workload).
    pub fn principal(&self) -> Result<Principal, String> {
        let claim = |k: &str| self.claims.get(k).and_then(Value::as_str).map(str::to_string);
        let subject = self.subject.clone().or_else(|| claim("sub"));
        let client_id = self.client_id.clone().or_else(|| claim("client_id")).or_else(|| claim("azp"));
        let spiffe_id = self
            .spiffe_id
            .clone()
            .or_else(|| subject.clone().filter(|s| portcullis_core::spiffe::parse_id(s).is_some()));
        let method = match self.auth_method.as_deref().unwrap_or("jwt") {
            "none" => AuthnMethod::None,
            "jwt" => AuthnMethod::Jwt,
            "introspection" => AuthnMethod::Introspection,
            "api_key" => AuthnMethod::ApiKey,
            "mtls" => AuthnMethod::Mtls,
            "dpop" => AuthnMethod::Dpop,
            other => return Err(format!("unknown auth_method `{other}`")),
        };
        let kind = match self.kind.as_deref() {
            Some("user") => PrincipalKind::User,
            Some("client") => PrincipalKind::Client,
            Some("workload") => PrincipalKind::Workload,
            Some("anonymous") => PrincipalKind::Anonymous,
            Some(other) => return Err(format!("unknown principal kind `{other}`")),
            None if method == AuthnMethod::None => PrincipalKind::Anonymous,
            None if spiffe_id.is_some() => PrincipalKind::Workload,
            None if subject.is_some() && subject != client_id => PrincipalKind::User,
            None => PrincipalKind::Client,
        };
        let scopes: Vec<Arc<str>> = match &self.scopes {
            Some(s) => s.iter().map(|s| Arc::from(s.as_str())).collect(),
            None => ["scope", "scp"]
                .iter()
                .filter_map(|k| self.claims.get(*k))
                .flat_map(|v| match v {
                    Value::String(s) => s.split(' ').filter(|s| !s.is_empty()).map(Arc::from).collect::<Vec<_>>(),
                    Value::Array(a) => a.iter().filter_map(Value::as_str).map(Arc::from).collect(),
                    _ => Vec::new(),
                })
                .collect(),
        };
        let mut p = Principal::new(kind, method);
        p.subject = subject.map(Arc::from);
        p.client_id = client_id.map(Arc::from);
        p.issuer = self.issuer.clone().or_else(|| claim("iss")).map(Arc::from);
        p.spiffe_id = spiffe_id.map(Arc::from);
        p.scopes = scopes.into();
        p.issued_at = self.issued_at.or_else(|| self.claims.get("iat").and_then(Value::as_u64));
        if let Some(plan) = &self.plan {
            let name = p.subject.clone().unwrap_or_else(|| Arc::from(""));
            p.consumer = Some(Consumer { name, plan: Some(Arc::from(plan.as_str())) });
        }
        if !self.claims.is_empty() {
            p.claims = Some(portcullis_core::Claims::from_map(self.claims.clone()));
        }
        Ok(p)
    }
}

fn kind_name(k: PrincipalKind) -> &'static str {
    match k {
        PrincipalKind::Anonymous => "anonymous",
        PrincipalKind::User => "user",
        PrincipalKind::Client => "client",
        PrincipalKind::Workload => "workload",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_not_kept_are_withheld_by_name() {
        let mut p = PrincipalRecord {
            claims: serde_json::from_str(r#"{"sub":"a","email":"a@example.com","roles":["r"]}"#).unwrap(),
            ..PrincipalRecord::default()
        };
        p.withhold_claims(&["roles".to_string()]);
        assert_eq!(Value::Object(p.claims.clone()), serde_json::json!({"roles": ["r"]}));
        assert_eq!(p.claims_withheld, ["email", "sub"]);
        let before = p.clone();
        p.withhold_claims(&["roles".to_string()]);
        assert_eq!(p, before, "nothing more to withhold");
    }
}
