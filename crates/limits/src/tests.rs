use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{Claims, Consumer};

use jiff::tz::TimeZone;

use super::*;

fn limit(yaml: &str) -> RateLimitConfig {
    serde_saphyr::from_str(yaml).unwrap()
}

fn rates(list: &[RateLimitConfig]) -> Limits {
    route_limits("orders", list, &[], &TimeZone::UTC)
}

fn anonymous() -> Principal {
    (*Principal::anonymous()).clone()
}

fn consumer(name: &str, plan: Option<&str>) -> Principal {
    Principal {
        consumer: Some(Consumer { name: name.into(), plan: plan.map(Into::into) }),
        subject: Some(name.into()),
        ..anonymous()
    }
}

fn facts<'a>(p: &'a Principal, ip: [u8; 4], headers: &'a HeaderMap) -> Facts<'a> {
    Facts { principal: p, client_ip: IpAddr::V4(Ipv4Addr::from(ip)), route: "orders", headers }
}

async fn count_admitted(state: &State, limits: &Limits, f: &Facts<'_>, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if check(state, limits, &Limits::default(), f).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn exactly_the_limit_passes_then_429_with_retry_after() {
    let state = State::memory(1000);
    let limits = rates(&[limit("{key: client_ip, limit: 5, per: 1m}")]);
    let h = HeaderMap::new();
    let p = anonymous();
    let f = facts(&p, [10, 0, 0, 1], &h);
    for i in 0..5u64 {
        let r = check(&state, &limits, &Limits::default(), &f).await.unwrap().unwrap();
        assert_eq!(r.policy, "\"client_ip\";q=5;w=60");
        assert_eq!(r.current.to_str().unwrap(), format!("\"client_ip\";r={};t={}", 4 - i, 12 * (i + 1)));
    }
    let refused = check(&state, &limits, &Limits::default(), &f).await.unwrap_err();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.code, "rate_limited");
    let header = |n: &str| refused.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_str().unwrap().to_string());
    // The next request may come when one interval (12 s) has passed; the bucket is full
    // again when all five have drained.
    assert_eq!(header("retry-after").as_deref(), Some("12"));
    assert_eq!(header("ratelimit").as_deref(), Some("\"client_ip\";r=0;t=60"));
    // Another address has its own bucket.
    let other = facts(&p, [10, 0, 0, 2], &h);
    assert!(check(&state, &limits, &Limits::default(), &other).await.is_ok());
}

#[tokio::test]
async fn buckets_refill_one_interval_at_a_time() {
    let state = State::memory(1000);
    // One every 40 ms, 2 at once.
    let limits = rates(&[limit("{key: route, limit: 25, per: 1s, burst: 2}")]);
    let h = HeaderMap::new();
    let p = anonymous();
    let f = facts(&p, [10, 0, 0, 1], &h);
    assert_eq!(count_admitted(&state, &limits, &f, 5).await, 2);
    tokio::time::sleep(Duration::from_millis(45)).await;
    assert_eq!(count_admitted(&state, &limits, &f, 5).await, 1);
    tokio::time::sleep(Duration::from_millis(90)).await;
    assert_eq!(count_admitted(&state, &limits, &f, 5).await, 2);
}

#[tokio::test]
async fn a_request_refused_by_one_limit_is_not_counted_by_another() {
    let state = State::memory(1000);
    let limits = rates(&[
        limit("{name: wide, key: route, limit: 10, per: 1m}"),
        limit("{name: narrow, key: client_ip, limit: 2, per: 1m}"),
    ]);
    let h = HeaderMap::new();
    let p = anonymous();
    assert_eq!(count_admitted(&state, &limits, &facts(&p, [10, 0, 0, 1], &h), 6).await, 2);
    // The four refusals took nothing from the route-wide limit: 8 remain for others.
    assert_eq!(count_admitted(&state, &limits, &facts(&p, [10, 0, 0, 2], &h), 2).await, 2);
    assert_eq!(count_admitted(&state, &limits, &facts(&p, [10, 0, 0, 3], &h), 2).await, 2);
    assert_eq!(count_admitted(&state, &limits, &facts(&p, [10, 0, 0, 4], &h), 2).await, 2);
    assert_eq!(count_admitted(&state, &limits, &facts(&p, [10, 0, 0, 5], &h), 3).await, 2);
    assert_eq!(count_admitted(&state, &limits, &facts(&p, [10, 0, 0, 6], &h), 2).await, 0);
}

#[tokio::test]
async fn the_report_names_the_limit_closest_to_exhaustion() {
    let state = State::memory(1000);
    let limits = rates(&[
        limit("{name: minute, key: route, limit: 100, per: 1m}"),
        limit("{name: second, key: route, limit: 4, per: 1s}"),
    ]);
    let h = HeaderMap::new();
    let p = anonymous();
    let r = check(&state, &limits, &Limits::default(), &facts(&p, [1, 1, 1, 1], &h)).await.unwrap().unwrap();
    // 3 of 4 left is closer to exhaustion than 99 of 100.
    assert_eq!(r.current, "\"second\";r=3;t=1");
    assert_eq!(r.policy, "\"second\";q=4;w=1");
}

#[tokio::test]
async fn concurrent_requests_get_exactly_the_limit() {
    let state = State::memory(1000);
    let limits = Arc::new(rates(&[limit("{key: route, limit: 100, per: 1h}")]));
    let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (state, limits, admitted) = (state.clone(), limits.clone(), admitted.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let h = HeaderMap::new();
                let p = anonymous();
                let f = facts(&p, [10, 0, 0, 1], &h);
                for _ in 0..4 {
                    if rt.block_on(check(&state, &limits, &Limits::default(), &f)).is_ok() {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 100);
}

#[tokio::test]
async fn keys_separate_callers_and_fall_back_to_the_address() {
    let state = State::memory(1000);
    let limits = rates(&[limit("{key: consumer, limit: 1, per: 1h}")]);
    let h = HeaderMap::new();
    let (alice, bob, anon) = (consumer("alice", None), consumer("bob", None), anonymous());
    assert!(check(&state, &limits, &Limits::default(), &facts(&alice, [1, 1, 1, 1], &h)).await.is_ok());
    assert!(
        check(&state, &limits, &Limits::default(), &facts(&alice, [2, 2, 2, 2], &h)).await.is_err(),
        "one consumer, two addresses"
    );
    assert!(check(&state, &limits, &Limits::default(), &facts(&bob, [1, 1, 1, 1], &h)).await.is_ok());
    // Anonymous callers are counted by address, apart from a consumer named like one.
    let named_like_ip = consumer("3.3.3.3", None);
    assert!(check(&state, &limits, &Limits::default(), &facts(&named_like_ip, [9, 9, 9, 9], &h)).await.is_ok());
    assert!(check(&state, &limits, &Limits::default(), &facts(&anon, [3, 3, 3, 3], &h)).await.is_ok());
    assert!(check(&state, &limits, &Limits::default(), &facts(&anon, [3, 3, 3, 3], &h)).await.is_err());
}

#[tokio::test]
async fn header_keys_and_their_absence() {
    let state = State::memory(1000);
    let limits = rates(&[limit("{key: 'header:X-Tenant', limit: 1, per: 1h}")]);
    let p = anonymous();
    let mut a = HeaderMap::new();
    a.insert("x-tenant", HeaderValue::from_static("a"));
    let mut b = HeaderMap::new();
    b.insert("x-tenant", HeaderValue::from_static("b"));
    let none = HeaderMap::new();
    assert!(check(&state, &limits, &Limits::default(), &facts(&p, [1, 1, 1, 1], &a)).await.is_ok());
    assert!(check(&state, &limits, &Limits::default(), &facts(&p, [1, 1, 1, 1], &a)).await.is_err());
    assert!(check(&state, &limits, &Limits::default(), &facts(&p, [1, 1, 1, 1], &b)).await.is_ok());
    // Requests without the header share one bucket, whatever their address.
    assert!(check(&state, &limits, &Limits::default(), &facts(&p, [1, 1, 1, 1], &none)).await.is_ok());
    assert!(check(&state, &limits, &Limits::default(), &facts(&p, [2, 2, 2, 2], &none)).await.is_err());
}

#[tokio::test]
async fn plans_come_from_the_consumer_or_a_claim() {
    let config: Config = serde_saphyr::from_str(
        "server: {listen: '127.0.0.1:0'}\nplan_claim: tier\nplans:\n  gold: {rate_limits: [{name: gold, limit: 3, per: 1h}]}\n  free: {rate_limits: [{name: free, limit: 1, per: 1h}]}\n",
    )
    .unwrap();
    let plans = Plans::new(&config, &TimeZone::UTC);
    assert!(!plans.is_empty());
    let state = State::memory(1000);
    let h = HeaderMap::new();
    let gold = consumer("g", Some("gold"));
    assert_eq!(plans.of(&gold).iter().count(), 1);
    let mut n = 0;
    while check(&state, &Limits::default(), plans.of(&gold), &facts(&gold, [1, 1, 1, 1], &h)).await.is_ok() {
        n += 1;
    }
    assert_eq!(n, 3);
    let mut claims = serde_json::Map::new();
    claims.insert("tier".into(), "free".into());
    let user = Principal { subject: Some("u".into()), claims: Some(Claims::from_map(claims)), ..anonymous() };
    assert_eq!(plans.of(&user).iter().count(), 1);
    assert!(check(&state, &Limits::default(), plans.of(&user), &facts(&user, [1, 1, 1, 1], &h)).await.is_ok());
    assert!(check(&state, &Limits::default(), plans.of(&user), &facts(&user, [1, 1, 1, 1], &h)).await.is_err());
    // No plan, or an unknown one: no plan limits, unless there is a default plan.
    assert!(plans.of(&anonymous()).is_empty());
    assert!(plans.of(&consumer("x", Some("platinum"))).is_empty());
    let mut config = config;
    config.default_plan = Some("free".into());
    let plans = Plans::new(&config, &TimeZone::UTC);
    for who in [anonymous(), consumer("x", Some("platinum")), consumer("y", None)] {
        assert_eq!(plans.of(&who).iter().next().map(RateLimit::name), Some("free"));
    }
    assert_eq!(plans.of(&gold).iter().next().map(RateLimit::name), Some("gold"));
}

#[tokio::test]
async fn an_unreachable_state_fails_open_or_closed_as_configured() {
    let config: portcullis_config::StateConfig =
        serde_saphyr::from_str("backend: redis\nredis_url: redis://127.0.0.1:1\nredis: {timeout: 100ms}\n").unwrap();
    let state = State::build(&config).unwrap();
    let h = HeaderMap::new();
    let p = anonymous();
    let f = facts(&p, [1, 1, 1, 1], &h);
    let open = rates(&[limit("{key: route, limit: 1, per: 1h}")]);
    assert_eq!(check(&state, &open, &Limits::default(), &f).await.unwrap(), None);
    let closed = rates(&[limit("{key: route, limit: 1, per: 1h, on_error: closed}")]);
    let e = check(&state, &closed, &Limits::default(), &f).await.unwrap_err();
    assert_eq!(e.status, 503);
    assert!(e.headers.iter().any(|(k, v)| k == "retry-after" && v == "1"));
}

#[tokio::test]
async fn a_quota_counts_to_its_limit_in_its_window() {
    let state = State::memory(1000);
    let quota: QuotaConfig = serde_saphyr::from_str("{key: client_ip, limit: 3, per: day}").unwrap();
    let limits = route_limits("orders", &[limit("{key: client_ip, limit: 100, per: 1s}")], &[quota], &TimeZone::UTC);
    let h = HeaderMap::new();
    let p = anonymous();
    let f = facts(&p, [10, 0, 0, 1], &h);
    for left in [2, 1, 0] {
        let r = check(&state, &limits, &Limits::default(), &f).await.unwrap().unwrap();
        // The quota is closer to exhaustion than the rate limit: it is the one reported.
        assert_eq!(r.policy, "\"day\";q=3;w=86400");
        assert!(r.current.to_str().unwrap().starts_with(&format!("\"day\";r={left};t=")), "{:?}", r.current);
    }
    let refused = check(&state, &limits, &Limits::default(), &f).await.unwrap_err();
    assert_eq!((refused.status.as_u16(), refused.code), (429, "quota_exceeded"));
    let retry: u64 =
        refused.headers.iter().find(|(k, _)| k == "retry-after").unwrap().1.to_str().unwrap().parse().unwrap();
    let midnight = 86_400 - jiff::Timestamp::now().as_second() as u64 % 86_400;
    assert!(retry.abs_diff(midnight) <= 1, "{retry} against {midnight}");
    // The refusal took nothing from the rate limit: 97 of its 100 are left.
    let r = check(&state, &rates(&[limit("{key: client_ip, limit: 100, per: 1s}")]), &Limits::default(), &f)
        .await
        .unwrap()
        .unwrap();
    assert!(r.current.to_str().unwrap().starts_with("\"client_ip\";r=96;"), "{:?}", r.current);
}
