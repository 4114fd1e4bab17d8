//! The `consort` command line: run one task, benchmark a worker, or serve as a worker.
//!
//! Exit codes are part of the interface (scripts rely on them); see [`exit`].

use std::ffi::OsString;
use std::io;
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand};

mod bench;
mod bench_cache;
mod bench_ndarray;
mod bench_pool;
mod cache;
mod env;
mod interrupts;
mod map;
mod run;
mod shm;

/// Documented exit codes.
pub mod exit {
    /// The task completed.
    pub const COMPLETE: u8 = 0;
    /// The task failed, or its script cancelled it.
    pub const FAILED: u8 = 1;
    /// Usage error, or the worker could not be started.
    pub const USAGE: u8 = 2;
    /// The worker crashed before the task ended.
    pub const CRASHED: u8 = 3;
    /// `--timeout` passed; the task was cancelled with the kill escalation.
    pub const TIMED_OUT: u8 = 124;
    /// Interrupted by Ctrl-C (or SIGTERM, or SIGHUP).
    pub const INTERRUPTED: u8 = 130;
}

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
    #[command(long_about = RUN_LONG_ABOUT)]
    Run(run::RunArgs),
    /// Run a script once per JSON line of stdin on a pool of workers; JSON lines out, in order.
    #[command(long_about = map::LONG_ABOUT)]
    Map(map::MapArgs),
    /// Measure workers: task round trips, crash detection.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Serve as an Appose worker on this process's stdin and stdout.
    #[command(subcommand, long_about = WORKER_LONG_ABOUT)]
    Worker(WorkerCmd),
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

const RUN_LONG_ABOUT: &str = "\
Run one task and print its outputs as one JSON object on stdout (compact, one line).

Progress goes to stderr: a bar on a terminal, plain lines otherwise. With --events,
every event is printed as a JSON line on stdout instead (the COMPLETION event carries
the outputs).

Exit codes:
    0    the task completed
    1    the task failed (or its script cancelled it)
    2    usage error, or the worker could not be started
    3    the worker crashed before the task ended
  124    --timeout passed; the task was cancelled, with the kill escalation
  130    interrupted: the first Ctrl-C cancels the task (killing the worker if it does
         not stop within 2 s), a second Ctrl-C kills the worker at once; SIGTERM and
         SIGHUP (the terminal closed) count as a Ctrl-C";

const WORKER_LONG_ABOUT: &str = "\
Serve as an Appose worker on this process's stdin and stdout.

`consort worker python` runs consort's own Python worker (shipped inside this binary;
only python3 >= 3.9 is needed), so any Appose client, in Java or Python, can use it as
its worker command, e.g. in appose-python: Service(cwd, None, 'consort', 'worker', 'python').";

#[derive(Debug, Subcommand)]
enum WorkerCmd {
    /// Run consort's Python worker (Appose-compatible) on stdin/stdout.
    Python {
        /// The Python interpreter.
        #[arg(long, default_value = "python3")]
        python: OsString,
    },
}

/// Which worker to run tasks on; shared by `run` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// `consort` (consort's Python worker, the default), `appose` (Appose's Python
    /// worker; the interpreter needs `appose` installed), or a command line.
    #[arg(long, default_value = "consort")]
    worker: String,
    /// The Python interpreter of the `consort` and `appose` workers.
    #[arg(long, default_value = "python3")]
    python: OsString,
}

impl WorkerArgs {
    /// The service recipe for the chosen worker.
    fn builder(&self) -> anyhow::Result<consort::ServiceBuilder> {
        Ok(match self.worker.as_str() {
            "consort" => consort::Service::consort_python(&self.python),
            "appose" => consort::Service::appose_python(&self.python),
            line => consort::Service::new(Self::command_line(line)?),
        })
    }

    /// The command of a `--worker` given as a command line, split as a shell would.
    fn command_line(line: &str) -> anyhow::Result<Command> {
        let words =
            shell_words::split(line).map_err(|err| anyhow::anyhow!("--worker {line:?}: {err}"))?;
        let (program, args) = words
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("--worker is empty"))?;
        let mut command = Command::new(program);
        command.args(args);
        Ok(command)
    }

    /// Whether the worker runs Python scripts (so default scripts are Python).
    fn is_python(&self) -> bool {
        matches!(self.worker.as_str(), "consort" | "appose")
    }
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
        Cmd::Worker(WorkerCmd::Python { python }) => serve_python(&python),
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

/// Replaces this process with consort's Python worker, so it inherits stdin and stdout.
fn serve_python(python: &OsString) -> anyhow::Result<u8> {
    use std::os::unix::process::CommandExt;
    let err = consort::python::consort_worker_command(python).exec();
    Err(anyhow::anyhow!("cannot run {python:?}: {err}"))
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
