//! Limit: a slot among the requests in flight on the route and to its upstream; then the
//! route's rate limits and those of the caller's plan, counted together in the shared
//! state. Runs after authorization, so that refused requests use up no one's allowance
//! and limits can be keyed by who the caller is.

use http::HeaderMap;
use portcullis_core::{Principal, Problem};
use portcullis_limits::concurrency::Slot;
use portcullis_limits::{Facts, Report};

use super::context::RequestCtx;
use crate::runtime::{Route, Runtime, Target};

/// What a request holds while it is in flight, and tells the client on its way back.
#[derive(Debug, Default)]
pub struct Limited {
    /// The `RateLimit` fields for the response.
    pub report: Option<Report>,
    /// The request's slots (route, upstream), given back when it is answered.
    pub slots: [Option<Slot>; 2],
}

/// What the request holds (none on a route without limits: boxed, so that such routes'
/// requests carry one pointer, not the fields and slots); `Err` (`429`, `503`) when it is
/// over a limit.
pub async fn limit(
    rt: &Runtime,
    ctx: &RequestCtx,
    route: &Route,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<Option<Box<Limited>>, Problem> {
    let plan = rt.plans.of(principal);
    let upstream = match &route.target {
        Target::Upstream(u) => u.concurrency.as_ref(),
        Target::Echo => None,
    };
    if route.rate_limits.is_empty() && plan.is_empty() && route.concurrency.is_none() && upstream.is_none() {
        return Ok(None);
    }
    // Boxed: the Redis round trip's state would otherwise enlarge every request's future.
    portcullis_http::boxed!(checked(rt, ctx, route, principal, headers, plan, upstream))
        .await
        .map(|l| Some(Box::new(l)))
}

async fn checked(
    rt: &Runtime,
    ctx: &RequestCtx,
    route: &Route,
    principal: &Principal,
    headers: &HeaderMap,
    plan: &portcullis_limits::Limits,
    upstream: Option<&portcullis_limits::concurrency::Concurrency>,
) -> Result<Limited, Problem> {
    let mut limited = Limited::default();
    // Slots first: a request refused for want of one is not counted by the rate limits.
    if let Some(c) = &route.concurrency {
        limited.slots[0] = Some(c.acquire().await?);
    }
    if let Some(c) = upstream {
        limited.slots[1] = Some(c.acquire().await?);
    }
    if let Some(state) = rt.state().filter(|_| !route.rate_limits.is_empty() || !plan.is_empty()) {
        let facts = Facts { principal, client_ip: ctx.client_ip, route: &route.id, headers };
        limited.report = portcullis_limits::check(state, &route.rate_limits, plan, &facts).await?;
    }
    Ok(limited)
}
