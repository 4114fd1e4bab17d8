//! An Appose worker written with consort's SDK, so the SDK can be driven from any Appose
//! client (consort, appose-python, appose-java).
//!
//! The script's first word is the operation:
//! - `echo`: outputs = inputs;
//! - `sleep`: sleeps `inputs.seconds` (a float), ending CANCELED within 10 ms of a cancel;
//! - `progress`: sends `inputs.n` UPDATEs (`current` 1..=n, `maximum` n), then completes;
//! - `fail`: fails with `inputs.message`;
//! - `panic`: panics (the task fails, the worker lives on);
//! - `abort`: aborts the whole process (a crash, for supervisors to see).
//!
//! Build it with `cargo build --release --examples`; it is then
//! `target/release/examples/echo_worker`.

use std::time::Duration;

use consort::worker::{self, Failure, TaskContext};
use consort::Args;

fn handle(task: &TaskContext) -> Result<Args, Failure> {
    let operation = task.script().split_whitespace().next().unwrap_or("");
    match operation {
        "echo" => Ok(task.inputs().clone()),
        "sleep" => {
            let seconds: f64 = task.input("seconds")?;
            let duration = Duration::try_from_secs_f64(seconds)
                .map_err(|err| Failure::Failed(format!("input \"seconds\": {err}")))?;
            if task.wait_cancelled(duration) {
                return Err(Failure::Cancelled);
            }
            Ok(Args::new())
        }
        "progress" => {
            let n_updates: i64 = task.input("n")?;
            for current in 1..=n_updates {
                if task.is_cancelled() {
                    return Err(Failure::Cancelled);
                }
                task.update(Some("step"), Some(current), Some(n_updates));
            }
            let mut outputs = Args::new();
            outputs.insert("n".to_owned(), n_updates.into());
            Ok(outputs)
        }
        "fail" => {
            let message: String = task
                .input("message")
                .unwrap_or_else(|_| "failed on request".to_owned());
            Err(Failure::Failed(message))
        }
        "panic" => panic!("panic on request"),
        "abort" => std::process::abort(),
        other => Err(Failure::Failed(format!(
            "unknown operation {other:?}: expected echo, sleep, progress, fail, panic or abort"
        ))),
    }
}

fn main() -> std::io::Result<()> {
    worker::serve(handle)
}
