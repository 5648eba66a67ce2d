//! The cost of an authorization decision with 10, 100 and 1,000 Cedar policies:
//! * `sliced`: one policy for the route being called, the rest for other routes (the usual
//!   shape: each team writes policies for its own routes) — slicing keeps the cost flat;
//! * `all-apply`: every policy's scope matches the route (conditions differ), the worst case;
//! * `*-distinct`: the same, but each request from another credential (two principals in
//!   turn) and in another second, so neither of the worker's memos (the entities of the last
//!   principal and resource, the context of the last second and client) helps: the cost of a
//!   first request.
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
            // Two equal principals of two credentials, in turn: every decision builds its entities.
            let twin = Arc::new((*principal).clone());
            let later = input.now + std::time::Duration::from_secs(1);
            let inputs = [Input { principal: &twin, now: later, ..input }, Input { principal: &principal, ..input }];
            let mut i = 0;
            group.bench_function(BenchmarkId::new(format!("{name}-distinct"), n), |b| {
                b.iter(|| {
                    i ^= 1;
                    route.decide(&inputs[i])
                })
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
