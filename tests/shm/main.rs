//! Shared memory and n-d arrays against real Python: Rust and both Python workers (Appose's
//! and consort's) reading and writing the same memory, Appose's own `test_ndarray`, `.npy`
//! files numpy writes and reads, bad inputs, and `gc` after a SIGKILLed creator.
//!
//! Every test runs under a [`Watchdog`] and waits with bounds, never with sleeps.

mod appose_port;
mod bad_input;
mod gc;
mod interop;
mod npy;

use std::time::Duration;

use consort::shm::ShmError;
use consort::{Args, Service, ServiceBuilder, SharedMemory, Task, TaskError};
use consort_tests::{python, slowdown, Watchdog};

/// The two Python workers, by name.
fn workers() -> [(&'static str, ServiceBuilder); 2] {
    let python = python();
    [
        ("appose", Service::appose_python(&python)),
        ("consort", consort::Service::consort_python(&python)),
    ]
}

fn watchdog(name: &str) -> Watchdog {
    Watchdog::new(name, Duration::from_secs(180))
}

/// Waits, bounded, for a task to end.
#[track_caller]
fn finish(task: &Task) -> Result<Args, TaskError> {
    match task.wait_timeout(Duration::from_secs(60) * slowdown()) {
        Err(TaskError::NotFinished(limit)) => {
            panic!("task {} did not end within {limit:?}", task.id())
        }
        result => result,
    }
}

/// Runs `script` with `inputs` and returns its outputs, failing the test on any error.
#[track_caller]
fn run(
    service: &Service,
    worker: &str,
    script: &str,
    inputs: &[(&str, serde_json::Value)],
) -> Args {
    let task = service
        .task(script)
        .inputs(
            inputs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone())),
        )
        .submit()
        .expect("submit");
    finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"))
}

/// Whether a block of this name exists.
fn exists(name: &str) -> bool {
    !matches!(SharedMemory::attach(name), Err(ShmError::NotFound(_)))
}

/// Asserts that the worker's stderr says nothing about Python's resource tracker or leaks.
#[track_caller]
fn assert_no_tracker_noise(service: &Service, worker: &str) {
    let stderr = service.stderr_lines().join("\n");
    assert!(
        !stderr.contains("resource_tracker") && !stderr.contains("leaked"),
        "{worker}: {stderr}"
    );
}
