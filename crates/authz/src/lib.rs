//! Authorization: every request that passed authentication is judged before it is forwarded.
//!
//! Two layers, both of which must allow when both are configured:
//! * [`rules`]: a route's simple rules (scopes, roles, groups, subjects, clients, SPIFFE IDs);
//! * [`cedar`]: Cedar policies over one model of users, clients and workloads, strictly
//!   validated against a schema, sliced per route and action so that unrelated policies cost
//!   nothing, and failing closed (no permit, a forbid, or any evaluation error denies).
//!
//! Every [`Decision`] says why: a reason code, the policies that decided and the errors met.
//! [`record`] turns a decision's input into a record for the audit log, and back, which is what
//! `portcullis authz explain` and `portcullis authz replay` run on.

pub mod cedar;
pub mod record;
pub mod rules;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use portcullis_config::{AuthorizationConfig, AuthorizeConfig, Config};
use portcullis_core::Principal;

pub use cedar::{DEFAULT_SCHEMA, Policies, Slice, Verdict};
pub use record::InputRecord;
pub use rules::{RuleDenial, Rules, StepUp};

/// What authorization judges.
#[derive(Debug)]
pub struct Input<'a> {
    /// Who (shared: the policies' entity for a principal is reused while the same credential
    /// calls the same resource).
    pub principal: &'a Arc<Principal>,
    /// The route's id.
    pub route: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// The host the client addressed (without port).
    pub host: &'a str,
    /// The normalised path.
    pub path: &'a str,
    /// Parameters of the route's path template.
    pub params: &'a [(Arc<str>, Box<str>)],
    /// The client's address.
    pub client_ip: IpAddr,
    /// When.
    pub now: SystemTime,
    /// Whether the request came over TLS.
    pub tls: bool,
    /// Whether the client presented a verified certificate.
    pub mtls: bool,
    /// The request's risk score, when risk scoring ran.
    pub risk: Option<i64>,
}

/// The outcome of authorization, explained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Reason code (`allow`, `insufficient_scope`, `role_required`, `policy_forbid`...).
    pub code: &'static str,
    /// A short, safe explanation for the caller (no policy text, no claim values).
    pub detail: &'static str,
    /// The Cedar policies that decided, when Cedar ran.
    pub policies: Vec<String>,
    /// Evaluation errors, when Cedar ran into any (each denies).
    pub errors: Vec<String>,
}

impl Decision {
    fn allow(policies: Vec<String>) -> Decision {
        Decision { allowed: true, code: "allow", detail: "", policies, errors: Vec::new() }
    }
}

/// The token claims a decision may read, by top-level name: the roles and groups claims,
/// and the claims policies read as tags. `portcullis authz replay` cannot judge a decision
/// again when one of these was left out of the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimsRead {
    /// Claims read by name.
    pub names: std::collections::BTreeSet<String>,
    /// Some policy names a tag by an expression: any claim may be read.
    pub any: bool,
}

impl ClaimsRead {
    fn new(cfg: &AuthorizeConfig, shared: &AuthorizationConfig, policies: Option<&Arc<Policies>>) -> ClaimsRead {
        let root = |path: &str| path.split('.').next().unwrap_or(path).to_string();
        let mut reads = ClaimsRead::default();
        if !cfg.roles.is_empty() || policies.is_some() {
            reads.names.insert(root(&shared.roles_claim));
        }
        if !cfg.groups.is_empty() || policies.is_some() {
            reads.names.insert(root(&shared.groups_claim));
        }
        if !cfg.acr_values.is_empty() {
            reads.names.insert("acr".into());
        }
        if cfg.max_age.is_some() {
            reads.names.insert("auth_time".into());
        }
        if let Some(p) = policies {
            let (tags, any) = p.tags_read();
            reads.names.extend(tags);
            reads.any = any;
        }
        reads
    }

    /// Which of the `withheld` claims the decision may have read.
    pub fn missing<'a>(&self, withheld: &'a [String]) -> Vec<&'a str> {
        withheld.iter().filter(|c| self.any || self.names.contains(*c)).map(String::as_str).collect()
    }
}

/// One route's authorization: its rules and, when policies judge it, its slice of them.
#[derive(Debug)]
pub struct RouteAuthz {
    /// The route's rules.
    pub rules: Rules,
    /// The Cedar policies that may apply, per action.
    cedar: Option<RouteCedar>,
    /// The claims a decision may read.
    claims_read: ClaimsRead,
}

#[derive(Debug)]
struct RouteCedar {
    policies: Arc<Policies>,
    /// The route's fixed action, when it names one.
    fixed: Option<Slice>,
    /// Per HTTP method, when the action is the method.
    by_method: HashMap<&'static str, Slice>,
}

/// The HTTP methods that are actions of the built-in schema.
pub const METHOD_ACTIONS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl RouteAuthz {
    /// Compiles a route's authorization. `public` routes are judged by Cedar only when they
    /// ask for it.
    pub fn new(
        route_id: &str,
        cfg: Option<&AuthorizeConfig>,
        shared: &AuthorizationConfig,
        policies: Option<&Arc<Policies>>,
        public: bool,
    ) -> RouteAuthz {
        let default = AuthorizeConfig::default();
        let cfg = cfg.unwrap_or(&default);
        let judged = cfg.cedar.unwrap_or(!public);
        let cedar = policies.filter(|_| judged).map(|policies| RouteCedar {
            fixed: cfg.action.as_deref().map(|a| policies.slice(route_id, a)),
            by_method: match cfg.action {
                Some(_) => HashMap::new(),
                None => METHOD_ACTIONS.iter().map(|m| (*m, policies.slice(route_id, m))).collect(),
            },
            policies: policies.clone(),
        });
        let claims_read = ClaimsRead::new(cfg, shared, cedar.as_ref().map(|c| &c.policies));
        RouteAuthz { rules: Rules::new(cfg, shared), cedar, claims_read }
    }

    /// The authorization of one grant of the token service: who may obtain a token of
    /// `audience` by `action` (`token_exchange` or `client_credentials`). The rules always
    /// apply; Cedar judges when policies are configured, unless the rules say `cedar: false`.
    pub fn for_audience(
        audience: &str,
        action: &str,
        cfg: &AuthorizeConfig,
        shared: &AuthorizationConfig,
        policies: Option<&Arc<Policies>>,
    ) -> RouteAuthz {
        let cedar = policies.filter(|_| cfg.cedar.unwrap_or(true)).map(|policies| RouteCedar {
            fixed: Some(policies.audience_slice(audience, cfg.action.as_deref().unwrap_or(action))),
            by_method: HashMap::new(),
            policies: policies.clone(),
        });
        let claims_read = ClaimsRead::new(cfg, shared, cedar.as_ref().map(|c| &c.policies));
        RouteAuthz { rules: Rules::new(cfg, shared), cedar, claims_read }
    }

    /// The token claims a decision on this route may read.
    pub fn claims_read(&self) -> &ClaimsRead {
        &self.claims_read
    }

    /// Whether anything is checked at all (else every authenticated caller passes).
    pub fn is_open(&self) -> bool {
        self.rules.is_empty() && self.cedar.is_none()
    }

    /// Whether Cedar judges this route.
    pub fn uses_cedar(&self) -> bool {
        self.cedar.is_some()
    }

    /// The `scope` value of an `insufficient_scope` challenge.
    pub fn scope_list(&self) -> Option<&Arc<str>> {
        self.rules.scope_list.as_ref()
    }

    /// What a step-up asks for, when the route requires one.
    pub fn step_up(&self) -> Option<&StepUp> {
        self.rules.step_up.as_ref()
    }

    /// Decides: the rules first, then the policies.
    pub fn decide(&self, input: &Input<'_>) -> Decision {
        let now = input.now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Err(d) = self.rules.check_at(input.principal, now) {
            return Decision {
                allowed: false,
                code: d.code,
                detail: d.detail,
                policies: Vec::new(),
                errors: Vec::new(),
            };
        }
        let Some(cedar) = &self.cedar else { return Decision::allow(Vec::new()) };
        let slice = match &cedar.fixed {
            Some(s) => Some(s),
            None => cedar.by_method.get(input.method),
        };
        let Some(slice) = slice else {
            return Decision {
                allowed: false,
                code: "policy_no_action",
                detail: "no policy action covers this method",
                policies: Vec::new(),
                errors: Vec::new(),
            };
        };
        let v = cedar.policies.decide(slice, input);
        if v.allowed {
            return Decision::allow(v.policies);
        }
        let detail = match v.code {
            "policy_forbid" => "a policy forbids this request",
            "policy_error" => "the policy could not be evaluated for this request",
            _ => "no policy permits this request",
        };
        Decision { allowed: false, code: v.code, detail, policies: v.policies, errors: v.errors }
    }
}

/// Loads the Cedar policies of a config, if it has any.
pub fn load_policies(config: &Config) -> Result<Option<Arc<Policies>>, String> {
    match &config.authorization.cedar {
        None => Ok(None),
        Some(cedar) => Policies::load(cedar, &config.authorization).map(|p| Some(Arc::new(p))),
    }
}
