//! Route rules: the common cases (scopes, roles, groups, subjects, clients, SPIFFE IDs)
//! without a policy language.

use std::sync::Arc;

use portcullis_config::{AuthorizationConfig, AuthorizeConfig};
pub use portcullis_core::ClaimPath;
use portcullis_core::Principal;

/// Why the route rules refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleDenial {
    /// Reason code, for the audit log and the problem's `type`.
    pub code: &'static str,
    /// A short, safe explanation for the caller.
    pub detail: &'static str,
}

/// A SPIFFE ID pattern: segments matched exactly, `*` for one segment, a final `**` for one
/// or more.
#[derive(Clone, Debug)]
pub struct SpiffePattern {
    domain: String,
    segments: Vec<String>,
}

impl SpiffePattern {
    /// Parses a pattern validated by the config.
    pub fn new(pattern: &str) -> SpiffePattern {
        let rest = pattern.strip_prefix("spiffe://").unwrap_or(pattern);
        let mut parts = rest.split('/');
        let domain = parts.next().unwrap_or_default().to_string();
        SpiffePattern { domain, segments: parts.map(str::to_string).collect() }
    }

    /// Whether `id` (a valid SPIFFE ID) matches.
    pub fn matches(&self, id: &str) -> bool {
        let Some((domain, path)) = portcullis_core::spiffe::parse_id(id) else { return false };
        if domain != self.domain {
            return false;
        }
        let mut got = path.split('/').skip(1).filter(|_| !path.is_empty());
        for (i, want) in self.segments.iter().enumerate() {
            if want == "**" && i + 1 == self.segments.len() {
                return got.next().is_some();
            }
            match got.next() {
                Some(seg) if want == "*" || seg == want => {}
                _ => return false,
            }
        }
        got.next().is_none()
    }
}

/// A route's rules, compiled.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    scopes: Vec<String>,
    /// The required scopes as the challenge's `scope` value.
    pub scope_list: Option<Arc<str>>,
    any_scopes: Vec<String>,
    roles: Vec<String>,
    groups: Vec<String>,
    subjects: Vec<String>,
    clients: Vec<String>,
    spiffe_ids: Vec<SpiffePattern>,
    roles_claim: Option<ClaimPath>,
    groups_claim: Option<ClaimPath>,
    /// What a step-up asks for (`acr_values`, `max_age`), when the route requires one.
    pub step_up: Option<StepUp>,
}

/// A route's step-up requirement (RFC 9470), and the challenge parameters that say it.
#[derive(Clone, Debug, Default)]
pub struct StepUp {
    acr: Vec<String>,
    /// `acr_values`: the accepted classes, space-separated.
    pub acr_values: Option<Arc<str>>,
    /// `max_age`, in seconds.
    pub max_age: Option<u64>,
}

impl StepUp {
    /// Whether `p` authenticated strongly enough, and recently enough, at `now` (seconds
    /// since the epoch). A token without `acr` or `auth_time` does not.
    fn satisfied(&self, p: &Principal, now: u64) -> bool {
        let claim = |name: &str| p.claims.as_ref().and_then(|c| c.get(name));
        if !self.acr.is_empty()
            && !claim("acr").and_then(|v| v.as_str()).is_some_and(|a| self.acr.iter().any(|w| w == a))
        {
            return false;
        }
        match self.max_age {
            // A minute of clock skew: a login just made at the provider may read as a little
            // ahead of this clock.
            Some(max) => claim("auth_time")
                .and_then(|v| v.as_u64())
                .is_some_and(|t| t <= now + 60 && now.saturating_sub(t) <= max),
            None => true,
        }
    }
}

impl Rules {
    /// Compiles a route's `authorize` block.
    pub fn new(a: &AuthorizeConfig, shared: &AuthorizationConfig) -> Rules {
        let mut scope_list: Vec<&str> = a.scopes.iter().map(String::as_str).collect();
        if scope_list.is_empty() {
            scope_list = a.any_scopes.iter().map(String::as_str).collect();
        }
        Rules {
            scopes: a.scopes.clone(),
            scope_list: (!scope_list.is_empty()).then(|| Arc::from(scope_list.join(" "))),
            any_scopes: a.any_scopes.clone(),
            roles: a.roles.clone(),
            groups: a.groups.clone(),
            subjects: a.subjects.clone(),
            clients: a.clients.clone(),
            spiffe_ids: a.spiffe_ids.iter().map(|p| SpiffePattern::new(p)).collect(),
            roles_claim: (!a.roles.is_empty()).then(|| ClaimPath::new(&shared.roles_claim)),
            groups_claim: (!a.groups.is_empty()).then(|| ClaimPath::new(&shared.groups_claim)),
            step_up: (!a.acr_values.is_empty() || a.max_age.is_some()).then(|| StepUp {
                acr: a.acr_values.clone(),
                acr_values: (!a.acr_values.is_empty()).then(|| Arc::from(a.acr_values.join(" "))),
                max_age: a.max_age.map(|d| d.get().as_secs()),
            }),
        }
    }

    /// Whether the route has any rule at all.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
            && self.any_scopes.is_empty()
            && self.roles.is_empty()
            && self.groups.is_empty()
            && self.subjects.is_empty()
            && self.clients.is_empty()
            && self.spiffe_ids.is_empty()
            && self.step_up.is_none()
    }

    /// Checks every rule; the first that fails is the reason. Step-up comes last: a caller
    /// refused for who it is would gain nothing by authenticating again.
    pub fn check(&self, p: &Principal) -> Result<(), RuleDenial> {
        self.check_at(p, std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    /// [`Rules::check`] at `now` (seconds since the epoch).
    pub fn check_at(&self, p: &Principal, now: u64) -> Result<(), RuleDenial> {
        let deny = |code, detail| Err(RuleDenial { code, detail });
        if !self.scopes.iter().all(|s| p.has_scope(s)) {
            return deny("insufficient_scope", "the credential lacks a scope this route requires");
        }
        if !self.any_scopes.is_empty() && !self.any_scopes.iter().any(|s| p.has_scope(s)) {
            return deny("insufficient_scope", "the credential holds none of the scopes this route accepts");
        }
        if let Some(claim) = &self.roles_claim
            && !claim.values(p).any(|r| self.roles.iter().any(|want| want == r))
        {
            return deny("role_required", "the caller has none of the roles this route requires");
        }
        if let Some(claim) = &self.groups_claim
            && !claim.values(p).any(|g| self.groups.iter().any(|want| want == g))
        {
            return deny("group_required", "the caller is in none of the groups this route requires");
        }
        if !self.subjects.is_empty() && !p.subject.as_deref().is_some_and(|s| self.subjects.iter().any(|w| w == s)) {
            return deny("subject_not_allowed", "this caller may not use this route");
        }
        if !self.clients.is_empty() && !p.client_id.as_deref().is_some_and(|c| self.clients.iter().any(|w| w == c)) {
            return deny("client_not_allowed", "this client application may not use this route");
        }
        if !self.spiffe_ids.is_empty()
            && !p.spiffe_id.as_deref().is_some_and(|id| self.spiffe_ids.iter().any(|pat| pat.matches(id)))
        {
            return deny("workload_not_allowed", "this workload may not use this route");
        }
        if let Some(step_up) = &self.step_up
            && !step_up.satisfied(p, now)
        {
            return deny(
                "insufficient_user_authentication",
                "this route needs a stronger or more recent authentication",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{AuthnMethod, PrincipalKind};

    #[test]
    fn spiffe_patterns() {
        let p = SpiffePattern::new("spiffe://example.org/ns/*/sa/api");
        assert!(p.matches("spiffe://example.org/ns/prod/sa/api"));
        assert!(!p.matches("spiffe://example.org/ns/prod/sa/web"));
        assert!(!p.matches("spiffe://example.org/ns/prod/sa/api/x"));
        assert!(!p.matches("spiffe://evil.org/ns/prod/sa/api"));
        let below = SpiffePattern::new("spiffe://example.org/ns/prod/**");
        assert!(below.matches("spiffe://example.org/ns/prod/sa/api"));
        assert!(!below.matches("spiffe://example.org/ns/prod"));
        assert!(!below.matches("spiffe://example.org/ns/production/x"));
        let exact = SpiffePattern::new("spiffe://example.org/web");
        assert!(exact.matches("spiffe://example.org/web"));
        assert!(!exact.matches("spiffe://example.org/web/x"));
        assert!(!exact.matches("spiffe://example.org.evil/web"));
        let domain = SpiffePattern::new("spiffe://example.org/**");
        assert!(!domain.matches("spiffe://example.org"));
    }

    #[test]
    fn roles_from_nested_claims() {
        let mut p = Principal::new(PrincipalKind::User, AuthnMethod::Jwt);
        let claims = serde_json::json!({"realm_access": {"roles": ["admin", "ops"]}, "groups": "a b"});
        p.claims = Some(portcullis_core::Claims::from_map(claims.as_object().unwrap().clone()));
        let roles: Vec<&str> = ClaimPath::new("realm_access.roles").values(&p).collect();
        assert_eq!(roles, ["admin", "ops"]);
        let groups: Vec<&str> = ClaimPath::new("groups").values(&p).collect();
        assert_eq!(groups, ["a", "b"]);
        assert_eq!(ClaimPath::new("missing.path").values(&p).count(), 0);
        assert_eq!(ClaimPath::new("realm_access.roles.x").values(&p).count(), 0);
    }
}
