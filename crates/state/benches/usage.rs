//! The CPU metering costs a request: counting it in the meter (`Meter::record`), for the
//! same series every time (`one-series`) and for 10,000 consumers in turn (`many-series`,
//! a new entry each time the map was flushed). Flushes (once a second) are not on the
//! request path.
//!
//! `cargo bench -p portcullis-state --bench usage` (with the binary's allocator, mimalloc).

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_state::usage::{Meter, Record};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn record(c: &mut Criterion) {
    let meter = Meter::new(Duration::from_secs(86_400), 1_000_000, None);
    let one = Record {
        consumer: "acme",
        plan: "gold",
        route: "orders",
        status: 200,
        requests: 1,
        request_bytes: 0,
        response_bytes: 512,
    };
    c.bench_function("usage/one-series", |b| b.iter(|| meter.record(std::hint::black_box(&one))));
    let names: Vec<String> = (0..10_000).map(|i| format!("consumer-{i}")).collect();
    let meter = Meter::new(Duration::from_secs(86_400), 1_000_000, None);
    let mut i = 0;
    c.bench_function("usage/many-series", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            meter.record(std::hint::black_box(&Record { consumer: &names[i], ..one }));
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
