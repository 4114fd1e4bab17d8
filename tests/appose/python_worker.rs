//! Port of appose-python's tests/test_python_worker.py: appose's worker warns on stderr
//! when numpy is installed but was not imported by the init script.
//!
//! Provenance: apposed/appose-python at 57885bb6be07be9efbf120e275c7e202c0d01e7e.
//! Licence: BSD-2-Clause, "Copyright (c) 2023 - 2026, Appose developers. All rights
//! reserved."; the full text is in main.rs.
//!
//! Changes, besides those listed in main.rs for every test:
//! - upstream builds a uv environment with numpy (`target/envs/pyworker-numpy`); the test
//!   venv already has numpy, so its interpreter is used as it is;
//! - `test_no_warnings` uses appose's "system" environment, upstream's own Python without
//!   numpy. Here the numpy-free environment is made from the test venv: its interpreter
//!   runs with `-S` (no site-packages) and `PYTHONPATH` naming a temporary folder that
//!   holds only links to the `appose` package and its `.dist-info`. The test first checks
//!   that numpy is really out of reach there;
//! - stderr is read by a thread of the service, so a line may not be in `stderr_lines()`
//!   yet when a task ends. Upstream checks at once (and `test_no_warnings` right after
//!   `start()`, which is racy, as appose.md §6 notes); here the warning is waited for
//!   (bounded), and its absence is checked once a marker line, written to stderr by a task
//!   after the worker started, has arrived;
//! - these tests are about appose's worker only: consort's worker does not scan the
//!   installed distributions at start (it would cost its cold start), so it never warns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use consort::Service;
use consort_tests::{python, wait_until};

use super::service::NUMPY_WARNING;
use super::{finish, watchdog};

const MARKER: &str = "--- consort test marker ---";

fn numpy_warning(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|line| line.contains("[WARNING]") && line.contains("numpy"))
}

/// Runs a task that writes [`MARKER`] to stderr and returns the stderr lines before it:
/// everything the worker wrote until then.
fn stderr_until_marker(service: &Service) -> Vec<String> {
    let script = format!("import sys\nsys.stderr.write({MARKER:?} + '\\n')\nsys.stderr.flush()");
    finish(&service.task(script).submit().expect("submit")).expect("marker task");
    assert!(
        wait_until(Duration::from_secs(30), || service
            .stderr_lines()
            .iter()
            .any(|line| line == MARKER)),
        "no marker on stderr: {:?}",
        service.stderr_lines()
    );
    let mut lines = service.stderr_lines();
    lines.truncate(lines.iter().position(|line| line == MARKER).unwrap());
    lines
}

/// Tests that a warning is issued when numpy is installed but not imported via init.
#[test]
fn test_numpy_warning() {
    let _watchdog = watchdog("test_numpy_warning");
    let service = Service::appose_python(python()).start().expect("start");
    finish(&service.task("pass").submit().expect("submit")).expect("pass");
    assert!(
        wait_until(Duration::from_secs(30), || numpy_warning(
            &service.stderr_lines()
        )),
        "{:?}",
        service.stderr_lines()
    );
    // Added: the warning is exactly appose 0.12.0's three lines, before anything else.
    assert_eq!(stderr_until_marker(&service), NUMPY_WARNING);
}

/// Tests that no warning is issued when numpy is imported via the init script.
#[test]
fn test_numpy_no_warning() {
    let _watchdog = watchdog("test_numpy_no_warning");
    let service = Service::appose_python(python())
        .with_init("import numpy")
        .start()
        .expect("start");
    finish(&service.task("pass").submit().expect("submit")).expect("pass");
    let lines = stderr_until_marker(&service);
    assert!(!numpy_warning(&lines), "{lines:?}");
}

/// A folder for `PYTHONPATH` that holds only the `appose` package and its metadata, linked
/// from the test venv's site-packages; removed when dropped.
struct ApposeOnly(PathBuf);

impl ApposeOnly {
    fn new() -> ApposeOnly {
        let output = Command::new(python())
            .args([
                "-c",
                "import appose, os; print(os.path.dirname(appose.__file__))",
            ])
            .output()
            .expect("run python");
        assert!(output.status.success(), "{output:?}");
        let package = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
        let site = package.parent().expect("site-packages");
        let dir = std::env::temp_dir().join(format!("consort-appose-only-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("create temp dir");
        for entry in std::fs::read_dir(site)
            .expect("read site-packages")
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "appose" || (name.starts_with("appose-") && name.ends_with(".dist-info")) {
                std::os::unix::fs::symlink(entry.path(), dir.join(&*name)).expect("symlink");
            }
        }
        ApposeOnly(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ApposeOnly {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tests that no warning is issued in numpy-free environments.
#[test]
fn test_no_warnings() {
    let _watchdog = watchdog("test_no_warnings");
    let appose_only = ApposeOnly::new();
    let mut command = Command::new(python());
    command
        .args([
            "-S",
            "-c",
            "import appose.python_worker; appose.python_worker.main()",
        ])
        .env("PYTHONPATH", appose_only.path());
    let service = Service::new(command).start().expect("start");

    // The environment really is numpy-free, and it is appose 0.12.0 that runs.
    let outputs = finish(
        &service
            .task(
                "import importlib.util, importlib.metadata\n\
                 task.outputs['numpy'] = importlib.util.find_spec('numpy') is not None\n\
                 task.outputs['appose'] = importlib.metadata.version('appose')",
            )
            .submit()
            .expect("submit"),
    )
    .expect("probe task");
    assert_eq!(outputs["numpy"], false);
    assert_eq!(outputs["appose"], "0.12.0");

    let lines = stderr_until_marker(&service);
    assert!(
        !lines.iter().any(|line| line.contains("[WARNING]")),
        "{lines:?}"
    );
}
