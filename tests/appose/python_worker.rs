//! tests/test_python_worker.py: appose's worker warns about numpy on stderr.
//!
//! Changes: upstream builds a uv environment with numpy; the test venv already has numpy,
//! so the system-environment service is used. These tests are about appose's worker only:
//! consort's worker does not scan installed distributions at start (it would cost its
//! cold start), so it never warns.

use consort::Service;
use consort_tests::python;

use super::{finish, watchdog};

fn numpy_warning(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|line| line.contains("[WARNING]") && line.contains("numpy"))
}

#[test]
fn test_numpy_warning() {
    let _watchdog = watchdog("test_numpy_warning");
    let service = Service::python(python()).start().expect("start");
    finish(&service.task("pass").submit().expect("submit")).expect("pass");
    assert!(
        numpy_warning(&service.stderr_lines()),
        "{:?}",
        service.stderr_lines()
    );
}

#[test]
fn test_numpy_no_warning() {
    let _watchdog = watchdog("test_numpy_no_warning");
    let service = Service::python(python())
        .with_init("import numpy")
        .start()
        .expect("start");
    finish(&service.task("pass").submit().expect("submit")).expect("pass");
    assert!(
        !numpy_warning(&service.stderr_lines()),
        "{:?}",
        service.stderr_lines()
    );
}
