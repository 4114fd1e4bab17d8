//! Appose's own Python test suite, ported to consort's `Service`.
//!
//! Provenance: apposed/appose-python at 57885bb (the protocol of appose 0.12.0 on PyPI),
//! files tests/test_service.py, tests/test_base.py, tests/test_task_exception.py and
//! tests/test_python_worker.py.
//! Licence of the original: BSD-2-Clause, "Copyright (c) 2023 - 2026, Appose developers.
//! All rights reserved." The ported tests keep their names.
//!
//! Changes from the original, for every test:
//! - each test runs against the real appose 0.12.0 worker (`Service::python`) and, where
//!   the behaviour is the Appose script contract rather than an Appose quirk, against
//!   consort's own Python worker too (`consort::worker::python::service`);
//! - every wait is bounded (`wait_timeout`) and every test runs under a watchdog, since
//!   upstream's `wait_for()` has no timeout and a lost response would hang it;
//! - `TaskException` becomes `TaskError`; `task.error` is the error's text.
//!
//! Not ported: `test_groovy` and `test_main_thread_queue_groovy` (need appose-java's jars),
//! `test_service_startup_failure` (about appose's environment builders, not the service),
//! `test_init_numpy` (needs pixi; its point, `init("import numpy")`, is in
//! `python_worker::test_numpy_no_warning`), the tests of test_syntax.py (`get_var`,
//! `put_var`, `call`, proxies: not implemented by consort), and test_shm.py's
//! `test_ndarray` (n-d arrays come with the shared-memory issue).

use std::time::Duration;

use consort::{Service, ServiceBuilder, Task, TaskError};
use consort_tests::{python, slowdown, Watchdog};

mod python_worker;
mod service;
mod task_exception;

/// The two Python workers, by name.
fn workers() -> [(&'static str, ServiceBuilder); 2] {
    let python = python();
    [
        ("appose", Service::python(&python)),
        ("consort", consort::worker::python::service(&python)),
    ]
}

/// Waits, bounded, for a task to end.
#[track_caller]
fn finish(task: &Task) -> Result<consort::Args, TaskError> {
    match task.wait_timeout(Duration::from_secs(60) * slowdown()) {
        Err(TaskError::Timeout(limit)) => panic!("task {} did not end within {limit:?}", task.id()),
        result => result,
    }
}

fn watchdog(name: &str) -> Watchdog {
    Watchdog::new(name, Duration::from_secs(180))
}
