//! Policy benchmarks: a cached decision (the hot path for repeated and prepared statements), a
//! decision on simple-protocol statements that differ only in literals (cached by shape), and
//! an uncached classification of typical OLTP statements. Targets: cached decision p50 < 2 µs,
//! uncached classification < 20 µs.
//!
//! `cargo bench -p airlock --bench policy` (criterion), followed by a per-call latency
//! distribution (p50/p99) measured directly, since criterion reports means of batches.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use airlock::config::Config;
use airlock::model::{Command, Dialect, Protocol, Workload};
use airlock::policy::{Engine, Limits, Request, classify};
use criterion::Criterion;

const OLTP: &[&str] = &[
    "SELECT id, email, name FROM customers WHERE id = $1",
    "UPDATE orders SET status = $1, updated_at = now() WHERE id = $2",
    "INSERT INTO order_items (order_id, sku, qty, price) VALUES ($1, $2, $3, $4) RETURNING id",
    "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = $1",
];

/// What `pgbench -S -M simple` sends: one shape, a different literal every time.
fn pgbench_select_texts() -> Vec<String> {
    (0..1024u64)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i * 7919 % 100_000 + 1
            )
        })
        .collect()
}

fn demo_engine() -> Engine {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/demo.yaml");
    let config = Config::load(&path).expect("demo policy");
    Engine::new(&config).expect("engine")
}

fn benches(c: &mut Criterion) {
    let engine = demo_engine();
    let identity = engine.identify(
        &Workload {
            user: Some("root".into()),
            ..Default::default()
        },
        None,
    );
    let first = Command::sql(Dialect::Postgres, OLTP[0]);
    let req = Request {
        identity: &identity,
        target: "demo-db",
        protocol: Protocol::Postgres,
        command: &first,
    };
    black_box(engine.decide(&req));
    c.bench_function("decide_cached_select", |b| {
        b.iter(|| black_box(engine.decide(black_box(&req))))
    });
    let texts = pgbench_select_texts();
    let mut i = 0;
    c.bench_function("decide_simple_varying_literals", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            let command = Command::sql(Dialect::Postgres, &texts[i]);
            let req = Request {
                command: &command,
                ..req
            };
            black_box(engine.decide(black_box(&req)))
        })
    });
    let limits = Limits::default();
    c.bench_function("classify_uncached_pgbench_select", |b| {
        b.iter(|| black_box(classify(black_box(&texts[0]), Dialect::Postgres, &limits)))
    });
    for (i, sql) in OLTP.iter().enumerate() {
        c.bench_function(&format!("classify_uncached_oltp_{i}"), |b| {
            b.iter(|| black_box(classify(black_box(sql), Dialect::Postgres, &limits)))
        });
    }
}

fn percentiles(name: &str, mut samples: Vec<u128>) {
    samples.sort_unstable();
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    println!(
        "{name}: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs ({} samples)",
        p(0.5),
        p(0.9),
        p(0.99),
        samples.len()
    );
}

fn latency_distribution() {
    let engine = demo_engine();
    let identity = engine.identify(
        &Workload {
            user: Some("root".into()),
            ..Default::default()
        },
        None,
    );
    let first = Command::sql(Dialect::Postgres, OLTP[0]);
    let req = Request {
        identity: &identity,
        target: "demo-db",
        protocol: Protocol::Postgres,
        command: &first,
    };
    black_box(engine.decide(&req));
    let samples = (0..200_000)
        .map(|_| {
            let t = Instant::now();
            black_box(engine.decide(black_box(&req)));
            t.elapsed().as_nanos()
        })
        .collect();
    percentiles("decide (cached)", samples);
    let texts = pgbench_select_texts();
    let samples = (0..200_000)
        .map(|i| {
            let command = Command::sql(Dialect::Postgres, &texts[i % texts.len()]);
            let req = Request {
                command: &command,
                ..req
            };
            let t = Instant::now();
            black_box(engine.decide(black_box(&req)));
            t.elapsed().as_nanos()
        })
        .collect();
    percentiles("decide (simple protocol, varying literals)", samples);
    let limits = Limits::default();
    for (i, sql) in OLTP.iter().enumerate() {
        let samples = (0..20_000)
            .map(|_| {
                let t = Instant::now();
                black_box(classify(black_box(sql), Dialect::Postgres, &limits));
                t.elapsed().as_nanos()
            })
            .collect();
        percentiles(&format!("classify (uncached) oltp_{i}"), samples);
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    latency_distribution();
}
