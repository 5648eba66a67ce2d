//! The JSON threat limits' cost: a typical API body of about 1 KiB (objects, short strings,
//! numbers), a 1 MiB array of such objects, and a 1 MiB document that is mostly long
//! strings. The budget is 2 µs a KiB, and at least 1 GB/s on one core.
//!
//! `cargo bench -p portcullis-limits --bench json`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_limits::json::{JsonLimits, Scanner};

const LIMITS: JsonLimits =
    JsonLimits { max_depth: 32, max_keys: 1000, max_string: 1 << 20, max_items: 100_000, max_values: 10_000_000 };

fn order(i: usize) -> String {
    format!(
        r#"{{"id": "ord_{i:08}", "customer": {{"id": 1234567, "name": "Ada Lovelace", "email": "ada@example.com"}}, "items": [{{"sku": "SKU-1001", "qty": 2, "price": 19.99}}, {{"sku": "SKU-2002", "qty": 1, "price": 5.5}}], "shipping": {{"street": "12 Analytical Engine Road", "city": "London", "zip": "NW1 6XE", "country": "GB"}}, "notes": "Leave at the door, please. Ring twice.", "paid": true, "coupon": null, "total": 45.48, "tags": ["priority", "gift", "fragile"], "created_at": "2026-12-07T20:30:00Z"}}"#
    )
}

fn scan(doc: &[u8]) {
    let mut s = Scanner::new(LIMITS);
    s.feed(doc).unwrap();
    s.finish().unwrap();
}

fn bench(c: &mut Criterion) {
    let small = format!("{{\"orders\": [{}, {}]}}", order(1), order(2));
    let mut big = String::from("[");
    let mut i = 0;
    while big.len() < 1 << 20 {
        if i > 0 {
            big.push(',');
        }
        big.push_str(&order(i));
        i += 1;
    }
    big.push(']');
    let text: String = format!("[\"{}\"]", "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(18_000));
    let mut g = c.benchmark_group("json");
    for (name, doc) in
        [("api-body", small.as_bytes()), ("orders-1MiB", big.as_bytes()), ("strings-1MiB", text.as_bytes())]
    {
        g.throughput(Throughput::Bytes(doc.len() as u64));
        g.bench_function(name, |b| b.iter(|| scan(std::hint::black_box(doc))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
