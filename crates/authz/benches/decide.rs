//! The cost of an authorization decision with 10, 100 and 1,000 Cedar policies:
//! * `sliced`: one policy for the route being called, the rest for other routes (the usual
//!   shape: each team writes policies for its own routes) — slicing keeps the cost flat;
//! * `all-apply`: every policy's scope matches the route (conditions differ), the worst case;
//! * `*-first`: the same, but each request from a new credential and in another second, so
//!   that nothing a worker keeps helps (the entities of its last request, the principals' parts
//!   of the entities of its recent callers, the context of the last second and client): the
//!   cost of a credential's first request;
//! * `*-paths`: one credential, another resource (path and parameters) on every request, as a
//!   client working through an API calls: the principal's part of the entities is reused, the
//!   resource's is built;
//! * `*-callers`: 64 credentials interleaved, each on another resource each time: a worker
//!   serving many clients at once.
//!
//! `cargo bench -p portcullis-authz --bench decide` (with the binary's allocator, mimalloc).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_authz::{Input, RouteAuthz};
use portcullis_config::{AuthorizationConfig, CedarConfig};
use portcullis_core::{AuthnMethod, Principal, PrincipalKind};

// The allocator of the portcullis binary: building entities allocates a good deal.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A route's path parameters, as the router hands them over.
type Params = [(Arc<str>, Box<str>); 1];

fn policies(n: usize, all_apply: bool) -> String {
    let mut text = String::from(
        "@id(\"readers\") permit(principal, action == Action::\"GET\", resource == Route::\"orders\") \
         when { principal in Role::\"reader\" && context.client_ip.isInRange(ip(\"127.0.0.0/8\")) };\n",
    );
    for i in 1..n {
        let resource = if all_apply { "Route::\"orders\"".to_string() } else { format!("Route::\"route-{i}\"") };
        text.push_str(&format!(
            "@id(\"p{i}\") permit(principal, action == Action::\"GET\", resource == {resource}) \
             when {{ principal.hasTag(\"team\") && principal.getTag(\"team\") == \"team-{i}\" }};\n"
        ));
    }
    text
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portcullis-authz-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut principal = Principal::new(PrincipalKind::User, AuthnMethod::Jwt);
    // Filled below, then shared as every request of one credential shares it.
    principal.subject = Some(Arc::from("alice"));
    principal.scopes = vec![Arc::from("orders.read")].into();
    let claims = serde_json::json!({"sub": "alice", "roles": ["reader"], "team": "team-0", "email": "a@example.com"});
    principal.claims = Some(portcullis_core::Claims::from_map(claims.as_object().unwrap().clone()));
    let principal = Arc::new(principal);
    let params = [(Arc::from("id"), Box::from("7"))];

    let mut group = c.benchmark_group("decide");
    for all_apply in [false, true] {
        for n in [10, 100, 1000] {
            let file: PathBuf = dir.join(format!("p-{n}-{all_apply}.cedar"));
            std::fs::write(&file, policies(n, all_apply)).unwrap();
            let shared = AuthorizationConfig::default();
            let cfg = CedarConfig { policies: vec![file], schema: None, entities: None };
            let loaded = Arc::new(portcullis_authz::Policies::load(&cfg, &shared).unwrap());
            let route = RouteAuthz::new("orders", None, &shared, Some(&loaded), false);
            let input = Input {
                principal: &principal,
                route: "orders",
                method: "GET",
                host: "api.example.com",
                path: "/orders/7",
                params: &params,
                client_ip: "127.0.0.1".parse().unwrap(),
                now: SystemTime::now(),
                tls: true,
                mtls: false,
                risk: None,
            };
            assert!(route.decide(&input).allowed, "the benchmark's request is allowed");
            let name = if all_apply { "all-apply" } else { "sliced" };
            group.bench_with_input(BenchmarkId::new(name, n), &input, |b, input| b.iter(|| route.decide(input)));
            // A credential's first request: a new principal each time (made in the loop, so its
            // allocation is timed too), in another second than the last request, so that no
            // memo or cache of the worker helps.
            let mut second = 0;
            group.bench_function(BenchmarkId::new(format!("{name}-first"), n), |b| {
                b.iter(|| {
                    second += 1;
                    let fresh = Arc::new((*principal).clone());
                    let now = input.now + std::time::Duration::from_secs(second);
                    route.decide(&Input { principal: &fresh, now, ..input })
                })
            });
            // One credential, another resource each time (`/orders/1`, `/orders/2`...): the
            // usual shape of a client working through an API.
            let paths: Vec<(String, Params)> =
                (0..64).map(|k| (format!("/orders/{k}"), [(Arc::from("id"), Box::from(k.to_string()))])).collect();
            let mut k = 0;
            group.bench_function(BenchmarkId::new(format!("{name}-paths"), n), |b| {
                b.iter(|| {
                    k = (k + 1) % paths.len();
                    route.decide(&Input { path: &paths[k].0, params: &paths[k].1, ..input })
                })
            });
            // 64 credentials interleaved, each on another resource: a busy worker serving many
            // clients at once.
            let callers: Vec<Arc<Principal>> = (0..64).map(|_| Arc::new((*principal).clone())).collect();
            let mut c = 0;
            group.bench_function(BenchmarkId::new(format!("{name}-callers"), n), |b| {
                b.iter(|| {
                    c = (c + 1) % callers.len();
                    let k = (c * 7) % paths.len();
                    route.decide(&Input { principal: &callers[c], path: &paths[k].0, params: &paths[k].1, ..input })
                })
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
