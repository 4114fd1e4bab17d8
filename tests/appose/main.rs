//! Appose's own Python test suite, ported to consort's `Service`.
//!
//! Provenance: <https://github.com/apposed/appose-python> at commit
//! 57885bb6be07be9efbf120e275c7e202c0d01e7e (the protocol of appose 0.12.0 on PyPI):
//! tests/test_service.py, tests/test_base.py, tests/test_task_exception.py,
//! tests/test_python_worker.py and tests/util/test_message.py. Each module names its file
//! and lists its own changes; the ported tests keep their upstream names.
//!
//! Licence of the original (LICENSE.txt; the files say `SPDX-License-Identifier:
//! BSD-2-Clause`), reproduced as its first condition asks:
//!
//! ```text
//! Copyright (c) 2023 - 2026, Appose developers.
//! All rights reserved.
//!
//! Redistribution and use in source and binary forms, with or without modification,
//! are permitted provided that the following conditions are met:
//!
//! 1. Redistributions of source code must retain the above copyright notice, this
//!    list of conditions and the following disclaimer.
//!
//! 2. Redistributions in binary form must reproduce the above copyright notice,
//!    this list of conditions and the following disclaimer in the documentation
//!    and/or other materials provided with the distribution.
//!
//! THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
//! AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
//! IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE
//! ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE
//! LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR
//! CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
//! SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
//! INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN
//! CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE)
//! ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE
//! POSSIBILITY OF SUCH DAMAGE.
//! ```
//!
//! Changes from the original, for every test:
//! - the service is consort's `Service`. Each test runs against the real appose 0.12.0
//!   worker (`Service::appose_python`, the `R` rows of the report's test table) and, where the
//!   behaviour is the Appose script contract rather than an appose quirk, against consort's
//!   own Python worker too (`consort::Service::consort_python`);
//! - every wait is bounded (`wait_timeout`, `wait_until`) and every test runs under a
//!   watchdog, since upstream's `wait_for()` has no timeout and a lost response hangs it;
//! - `env.python()` (appose's "system" environment) becomes the test venv's interpreter,
//!   `consort_tests::python()`, which has appose 0.12.0 and numpy;
//! - `TaskException` becomes `TaskError`, `task.error` the error's text, and
//!   `service.error_lines()` becomes `service.stderr_lines()`.
//!
//! Not ported here:
//! - `test_groovy` and `test_main_thread_queue_groovy`: need appose-java's jars;
//! - `test_service_startup_failure`: about appose's environment builders, not the service;
//! - `test_init_numpy`: needs pixi and appose 0.7.2; its point, `init("import numpy")`,
//!   is covered by `python_worker::test_numpy_no_warning`;
//! - tests/test_syntax.py (`get_var`, `put_var`, `call`, proxies, the `R*` rows): consort
//!   has no ScriptSyntax helpers or proxies;
//! - tests/test_shm.py `test_ndarray`: it lives with the other shared-memory tests, in
//!   tests/shm/appose_port.rs;
//! - tests/builder/*: environment builders, not part of consort.

use std::time::Duration;

use consort::{Service, ServiceBuilder, Task, TaskError};
use consort_tests::{python, slowdown, Watchdog};

mod message;
mod python_worker;
mod service;
mod task_exception;

/// The two Python workers, by name.
fn workers() -> [(&'static str, ServiceBuilder); 2] {
    let python = python();
    [
        ("appose", Service::appose_python(&python)),
        ("consort", consort::Service::consort_python(&python)),
    ]
}

/// Waits, bounded, for a task to end.
#[track_caller]
fn finish(task: &Task) -> Result<consort::Args, TaskError> {
    match task.wait_timeout(Duration::from_secs(60) * slowdown()) {
        Err(TaskError::NotFinished(limit)) => {
            panic!("task {} did not end within {limit:?}", task.id())
        }
        result => result,
    }
}

fn watchdog(name: &str) -> Watchdog {
    Watchdog::new(name, Duration::from_secs(180))
}
