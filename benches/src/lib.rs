//! Shared setup for consort's criterion benchmarks (`cargo bench -p consort-bench`).
//!
//! - `protocol`: encoding a request and decoding a response line, as the supervisor does.
//! - `service`: a task's round trip through a `Service` and a Rust SDK worker, and a
//!   worker's start to its first answer.
//! - `cache`: consort-cache's get and insert.
//!
//! Side-by-side comparisons with other tools (a pipe ping-pong, Appose's worker, LMDB,
//! moka, Redis) are `consort bench`'s job; these track consort against itself.

use consort::Args;
use serde_json::Value;

/// The inputs of a task whose payload is a string of `bytes` bytes.
pub fn payload(bytes: usize) -> Args {
    let mut args = Args::new();
    args.insert("payload".to_owned(), Value::String("x".repeat(bytes)));
    args
}
