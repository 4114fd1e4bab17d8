//! `consort bench`: the subcommands that measure workers, pools, arrays and caches, each
//! with reference points taken in the same run (`bench/reference.rs`), since these
//! machines are shared and only side-by-side ratios mean anything.
//!
//! Each benchmark is a module of its own under `bench/`; this file is their command line.

use clap::Subcommand;

use crate::args::{EnvArgs, WorkerArgs};

mod cache;
mod crash;
mod idle;
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
    /// What idle costs: CPU of consort and of its workers over a service whose one task
    /// sleeps, then over an idle pool.
    Idle {
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        env: EnvArgs,
        #[command(flatten)]
        idle: idle::IdleArgs,
    },
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Pool(args) => pool::run(&args),
        BenchCmd::Roundtrip(args) => roundtrip::run(&args),
        BenchCmd::Crash(args) => crash::run(&args),
        BenchCmd::Ndarray(args) => ndarray::run(&args),
        BenchCmd::Cache(args) => cache::run(&args),
        // `idle` takes the recipe rather than the arguments: it stays one file that an
        // older consort-cli can also run (see its header).
        BenchCmd::Idle { worker, env, idle } => {
            let recipe = worker.recipe(Some(&env))?;
            idle::run(&idle, &recipe.builder, recipe.is_python(), &recipe.label)
        }
    }
}
