//! The supervisor's share of a round trip on the wire: encoding an EXECUTE and decoding a
//! COMPLETION, each with a 1 KiB string.

use std::hint::black_box;

use consort::protocol::{decode_line, Request, Response, ResponseKind, TaskId};
use consort_bench::payload;
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let task = TaskId::new("0123456789abcdef0123456789abcdef");
    let execute = Request::Execute {
        task: task.clone(),
        script: "echo".to_owned(),
        inputs: payload(1024),
        queue: None,
    };
    c.bench_function("protocol_encode_execute_1kb", |b| {
        b.iter(|| black_box(execute.encode()))
    });

    let line = Response {
        task,
        kind: ResponseKind::Completion(payload(1024)),
    }
    .encode();
    let mut decoded = Vec::new();
    c.bench_function("protocol_decode_completion_1kb", |b| {
        b.iter(|| {
            decode_line(black_box(line.as_bytes()), &mut decoded);
            black_box(decoded.drain(..).count())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
