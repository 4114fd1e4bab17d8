//! `consort bench`: the subcommands that measure workers, pools, arrays and caches, each
//! with reference points taken in the same run (`bench/reference.rs`), since these
//! machines are shared and only side-by-side ratios mean anything.
//!
//! Each benchmark is a module of its own under `bench/`; this file is their command line.

use clap::Subcommand;

mod cache;
mod crash;
mod ndarray;
mod pool;
mod reference;
mod roundtrip;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Tiny and 1 ms-CPU tasks through consort's pool vs ProcessPoolExecutor and loky;
    /// SIGKILL to the replacement taking a task.
    Pool(pool::PoolArgs),
    /// N tiny tasks on one service, at most C in flight: rate, latency, final states.
    Roundtrip(roundtrip::RoundtripArgs),
    /// N times: start a worker, run a task that waits, SIGKILL the worker, time the CRASH.
    Crash(crash::CrashArgs),
    /// An N MiB float32 array handed to a worker through shared memory, then inline as JSON.
    Ndarray(ndarray::NdarrayArgs),
    /// consort-cache gets and inserts against LMDB, moka and Redis, side by side.
    Cache(cache::CacheBenchArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Pool(args) => pool::run(&args),
        BenchCmd::Roundtrip(args) => roundtrip::run(&args),
        BenchCmd::Crash(args) => crash::run(&args),
        BenchCmd::Ndarray(args) => ndarray::run(&args),
        BenchCmd::Cache(args) => cache::run(&args),
    }
}
