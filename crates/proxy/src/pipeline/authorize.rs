//! Authorize: the route's rules, then its policies, decide; the decision is kept in the
//! request's context for the audit log.

use std::sync::Arc;
use std::time::SystemTime;

use http::StatusCode;
use portcullis_core::{Challenge, ChallengeScheme, Principal, Problem};

use super::context::{Connection, Decision, Explained, RequestCtx};
use crate::runtime::{Route, Runtime};

/// The route's rules, then its policies. A refusal is `403` with RFC 6750 §3.1
/// `insufficient_scope` (naming the scopes the route requires, when it does).
#[allow(clippy::too_many_arguments)]
pub fn authorize(
    rt: &Runtime,
    conn: &Connection,
    ctx: &mut RequestCtx,
    route: &Route,
    principal: &Arc<Principal>,
    method: &http::Method,
    host: &str,
    path: &str,
) -> Result<(), Problem> {
    if route.authz.is_open() {
        ctx.decision = Some(Decision::Allow);
        return Ok(());
    }
    let input = portcullis_authz::Input {
        principal,
        route: &route.id,
        method: method.as_str(),
        host,
        path,
        params: &ctx.params,
        client_ip: ctx.client_ip,
        now: SystemTime::now(),
        tls: conn.tls(),
        mtls: conn.mtls(),
        risk: None,
    };
    let decision = route.authz.decide(&input);
    ctx.decision = Some(if decision.allowed { Decision::Allow } else { Decision::Deny });
    if route.authz.uses_cedar() || !decision.allowed {
        // Claims the log does not keep are withheld here, before the record is built.
        let facts = rt.access_log.as_ref().and_then(|log| {
            let mut facts = portcullis_authz::InputRecord::of(&input);
            facts.principal.withhold_claims(&log.kept_claims());
            serde_json::to_value(facts).ok()
        });
        ctx.explained = Some(Explained { policies: decision.policies, errors: decision.errors, facts });
    }
    if decision.allowed {
        return Ok(());
    }
    if decision.code == "insufficient_user_authentication" {
        return Err(step_up(route, principal, decision.detail));
    }
    Err(Problem::new(StatusCode::FORBIDDEN, decision.code, decision.detail).challenge(Challenge {
        scope: route.authz.scope_list().map(|s| s.to_string()),
        ..Challenge::new(ChallengeScheme::Bearer, "insufficient_scope")
    }))
}

/// `401` asking for a stronger or more recent authentication (RFC 9470 §3): what the route
/// accepts, in `acr_values` and `max_age`.
#[cold]
fn step_up(route: &Route, principal: &Principal, detail: &'static str) -> Problem {
    let wanted = route.authz.step_up();
    let scheme = match principal.method {
        portcullis_core::AuthnMethod::Dpop => ChallengeScheme::DPoP,
        _ => ChallengeScheme::Bearer,
    };
    Problem::new(StatusCode::UNAUTHORIZED, "insufficient_user_authentication", detail).challenge(Challenge {
        description: Some(detail.into()),
        acr_values: wanted.and_then(|s| s.acr_values.as_deref()).map(str::to_string),
        max_age: wanted.and_then(|s| s.max_age),
        ..Challenge::new(scheme, "insufficient_user_authentication").in_realm(portcullis_authn::REALM)
    })
}
