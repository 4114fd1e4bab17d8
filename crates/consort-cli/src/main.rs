//! The `consort` command line: run one task, map a script over lines, benchmark a worker,
//! serve as a worker, build environments, inspect shared memory and caches.
//!
//! This file holds only the top level of the command line and `main`; every command
//! lives in its own module, and no module imports this one. Exit codes are part of the
//! interface (scripts rely on them); see [`exit`].

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod bench;
mod cache;
mod env;
mod exit;
mod interrupts;
mod map;
mod run;
mod shm;
mod worker;

#[derive(Debug, Parser)]
#[command(
    name = "consort",
    version,
    about = "Run work in worker processes (the Appose protocol) without hanging, leaking or losing a result"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one task and print its outputs as one JSON object.
    #[command(long_about = run::LONG_ABOUT)]
    Run(run::RunArgs),
    /// Run a script once per JSON line of stdin on a pool of workers; JSON lines out, in order.
    #[command(long_about = map::LONG_ABOUT)]
    Map(map::MapArgs),
    /// Measure workers: task round trips, crash detection, idle cost, pools, arrays, caches.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Serve as an Appose worker on this process's stdin and stdout.
    #[command(subcommand, long_about = worker::LONG_ABOUT)]
    Worker(worker::WorkerCmd),
    /// Build or delete Python environments (uv, pixi, micromamba) for workers.
    #[command(subcommand)]
    Env(env::EnvCmd),
    /// Shared-memory blocks consort created: list them, remove those of dead creators.
    #[command(subcommand)]
    Shm(shm::ShmCmd),
    /// Inspect or torture a shared-memory cache (consort-cache).
    #[command(subcommand)]
    Cache(cache::CacheCmd),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let result = match cli.command {
        Cmd::Run(args) => run::run(args),
        Cmd::Map(args) => map::run(args),
        Cmd::Bench(cmd) => bench::run(cmd).map(|()| exit::COMPLETE),
        Cmd::Worker(cmd) => worker::run(cmd),
        Cmd::Env(cmd) => env::run(cmd),
        Cmd::Shm(cmd) => shm::run(cmd).map(|()| exit::COMPLETE),
        Cmd::Cache(cmd) => cache::run(cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("consort: {}", describe(&err));
            ExitCode::from(exit::USAGE)
        }
    }
}

/// The error and its causes, leaving out a cause its parent's message already quotes.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    let mut last = text.clone();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !last.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        last = cause;
    }
    text
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io_err| io_err.kind() == io::ErrorKind::BrokenPipe)
    })
}
