//! The real Appose Python `Service` (appose 0.12.0) drives consort's two workers: the Rust
//! SDK's `echo_worker` and consort's embedded Python worker.
//!
//! The cases live in `tests/python/test_interop.py` (they need Appose's Python client);
//! this test runs that script with both workers' command lines and fails with its output.

use std::process::Command;
use std::time::Duration;

use consort_tests::{python, workspace_root, Watchdog};

#[test]
fn appose_python_service_drives_consort_workers() {
    let _watchdog = Watchdog::new("interop", Duration::from_secs(300));
    let python = python();
    let consort_python = consort::python::consort_worker_command(&python);
    let mut python_worker = vec![consort_python.get_program().to_string_lossy().into_owned()];
    python_worker.extend(
        consort_python
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    let workers = serde_json::json!({
        "echo": [env!("CARGO_BIN_EXE_echo_worker")],
        "python": python_worker,
    });
    let output = Command::new(&python)
        .arg("-W")
        .arg("ignore::ResourceWarning")
        .arg(workspace_root().join("tests/python/test_interop.py"))
        .env("CONSORT_INTEROP_WORKERS", workers.to_string())
        .output()
        .expect("run the Python interop suite");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the interop suite failed:\n{report}"
    );
    assert!(
        report.contains("Ran 13 tests"),
        "unexpected report:\n{report}"
    );
}
