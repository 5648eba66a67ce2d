//! The CPU a memory-backed rate-limit check costs a request: one limit keyed by consumer,
//! the same caller every time (`one-caller`), 10,000 callers in turn (`many-callers`, a
//! bucket map bigger than the caches), and a route limit with a plan limit (`two-limits`).
//! The budget is 1 µs a request.
//!
//! `cargo bench -p portcullis-limits --bench check` (with the binary's allocator, mimalloc).

use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use portcullis_config::RateLimitConfig;
use portcullis_core::{Consumer, Principal};
use portcullis_limits::{Facts, Limits, check, route_limits};
use portcullis_state::State;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn limit(yaml: &str) -> RateLimitConfig {
    serde_saphyr::from_str(yaml).unwrap()
}

fn caller(n: usize) -> Principal {
    let name = format!("consumer-{n}");
    Principal {
        consumer: Some(Consumer { name: name.as_str().into(), plan: None }),
        subject: Some(name.into()),
        ..(*Principal::anonymous()).clone()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let state = State::memory(1 << 20);
    // Never reached: the cost of a request that passes.
    let utc = jiff::tz::TimeZone::UTC;
    let one = route_limits("bench", &[limit("{key: consumer, limit: 1000000, per: 1s, burst: 1000000000}")], &[], &utc);
    let two = route_limits("bench", &[limit("{key: route, limit: 1000000, per: 1s, burst: 1000000000}")], &[], &utc);
    let none = Limits::default();
    let headers = HeaderMap::new();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let callers: Vec<Principal> = (0..10_000).map(caller).collect();
    let mut g = c.benchmark_group("limit");
    g.bench_function("one-caller", |b| {
        let f = Facts { principal: &callers[0], client_ip: ip, route: "bench", headers: &headers };
        b.iter(|| rt.block_on(check(&state, &one, &none, &f)).unwrap())
    });
    g.bench_function("many-callers", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % callers.len();
            let f = Facts { principal: &callers[i], client_ip: ip, route: "bench", headers: &headers };
            rt.block_on(check(&state, &one, &none, &f)).unwrap()
        })
    });
    g.bench_function("two-limits", |b| {
        let f = Facts { principal: &callers[0], client_ip: ip, route: "bench", headers: &headers };
        b.iter(|| rt.block_on(check(&state, &one, &two, &f)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
