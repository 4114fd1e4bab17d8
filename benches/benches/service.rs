//! A task's round trip through consort's `Service` and a Rust SDK worker (submit to
//! outputs, the sequential case `consort bench roundtrip` measures against a pipe), and a
//! worker's spawn to its first answer.

use std::process::Command;
use std::time::Duration;

use consort::Service;
use consort_bench::payload;
use criterion::{criterion_group, criterion_main, Criterion};

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bench-echo-worker"))
}

fn bench(c: &mut Criterion) {
    let service = Service::new(worker()).start().expect("start the worker");
    for (name, bytes) in [
        ("service_roundtrip_empty", 0),
        ("service_roundtrip_1kb", 1024),
    ] {
        let inputs = payload(bytes);
        c.bench_function(name, |b| {
            b.iter(|| {
                service
                    .task("echo")
                    .inputs(inputs.clone())
                    .submit()
                    .expect("submit")
                    .wait_timeout(Duration::from_secs(10))
                    .expect("the echo")
            })
        });
    }
    service.close();

    let mut group = c.benchmark_group("spawn");
    group.sample_size(20);
    group.bench_function("spawn_to_first_answer", |b| {
        b.iter(|| {
            let service = Service::new(worker()).start().expect("start the worker");
            service
                .task("echo")
                .submit()
                .expect("submit")
                .wait_timeout(Duration::from_secs(10))
                .expect("the first answer");
            service.close();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
