//! `consort worker python`: this process becomes consort's Python worker, so any Appose
//! client can use `consort worker python` as its worker command.

use std::ffi::OsString;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum WorkerCmd {
    /// Run consort's Python worker (Appose-compatible) on stdin/stdout.
    Python {
        /// The Python interpreter.
        #[arg(long, default_value = "python3")]
        python: OsString,
    },
}

/// `consort worker --help`.
pub const LONG_ABOUT: &str = "\
Serve as an Appose worker on this process's stdin and stdout.

`consort worker python` runs consort's own Python worker (shipped inside this binary;
only python3 >= 3.9 is needed), so any Appose client, in Java or Python, can use it as
its worker command, e.g. in appose-python: Service(cwd, None, 'consort', 'worker', 'python').";

/// Replaces this process with the worker, so it inherits stdin and stdout; returns only
/// when that fails.
pub fn run(cmd: WorkerCmd) -> anyhow::Result<u8> {
    use std::os::unix::process::CommandExt;
    match cmd {
        WorkerCmd::Python { python } => {
            let err = consort::python::consort_worker_command(&python).exec();
            Err(anyhow::anyhow!("cannot run {python:?}: {err}"))
        }
    }
}
