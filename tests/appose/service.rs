//! tests/test_service.py (and the `execute_and_assert` helper of tests/test_base.py).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consort::{EventKind, Service, TaskError, TaskEvent, TaskState};
use consort_tests::{python, wait_until};

use super::{finish, watchdog, workers};

const COLLATZ_PYTHON: &str = r#"# Computes the stopping time of a given value
# according to the Collatz conjecture sequence.
time = 0
v = 9999
while v != 1:
    v = v//2 if v%2==0 else 3*v+1
    task.update(f"[{time}] -> {v}", current=time)
    time += 1
task.outputs["result"] = time
"#;

const CALC_SQRT_PYTHON: &str = r#"
from math import sqrt
def sqrt_age(age):
    return sqrt(age)
task.export(sqrt_age=sqrt_age)
task.outputs["result"] = sqrt_age(age)
"#;

const MAIN_THREAD_CHECK_PYTHON: &str = r#"
import threading
task.outputs["thread"] = threading.current_thread().name
"#;

/// `execute_and_assert`: 93 events, in order, with the right fields and states.
#[test]
fn test_python() {
    let _watchdog = watchdog("test_python");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let events = Arc::new(Mutex::new(Vec::<(TaskEvent, TaskState)>::new()));
        let task = {
            let events = Arc::clone(&events);
            service
                .task(COLLATZ_PYTHON)
                .listen(move |event| {
                    // The state the task is in when the event is seen, as upstream records.
                    let state = match event.kind {
                        EventKind::Launch | EventKind::Update => TaskState::Running,
                        EventKind::Completion => TaskState::Complete,
                        _ => TaskState::Failed,
                    };
                    events.lock().unwrap().push((event.clone(), state));
                })
                .submit()
                .expect("submit")
        };
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(outputs["result"], 91, "{worker}");
        let events = events.lock().unwrap().clone();
        assert_eq!(events.len(), 93, "{worker}: expected 93 events");
        assert_eq!(events[0].0.kind, EventKind::Launch);
        assert_eq!(events[0].1, TaskState::Running);
        let mut v: u64 = 9999;
        for idx in 0..91 {
            v = if v.is_multiple_of(2) {
                v / 2
            } else {
                3 * v + 1
            };
            let (update, state) = &events[idx + 1];
            assert_eq!(update.kind, EventKind::Update, "{worker}");
            assert_eq!(*state, TaskState::Running);
            assert_eq!(
                update.message(),
                Some(format!("[{idx}] -> {v}").as_str()),
                "{worker}"
            );
            assert_eq!(update.current(), Some(idx as i64), "{worker}");
            assert_eq!(update.maximum(), None, "{worker}");
            assert_eq!(update.error, None);
        }
        let completion = &events[92].0;
        assert_eq!(completion.kind, EventKind::Completion);
        assert_eq!(
            (
                completion.message(),
                completion.current(),
                completion.maximum()
            ),
            (None, None, None)
        );
        assert_eq!(completion.error, None);
        assert_eq!(task.state(), TaskState::Complete);
    }
}

#[test]
fn test_scope_python() {
    let _watchdog = watchdog("test_scope_python");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let task = service
            .task(CALC_SQRT_PYTHON)
            .input("age", 100)
            .submit()
            .expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(
            outputs["result"].as_f64().map(f64::round),
            Some(10.0),
            "{worker}"
        );
        let task = service
            .task("task.outputs['result'] = sqrt_age(age)")
            .input("age", 81)
            .submit()
            .expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(
            outputs["result"].as_f64().map(f64::round),
            Some(9.0),
            "{worker}"
        );
    }
}

#[test]
fn test_main_thread_queue_python() {
    let _watchdog = watchdog("test_main_thread_queue_python");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let task = service
            .task(MAIN_THREAD_CHECK_PYTHON)
            .queue("main")
            .submit()
            .expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(outputs["thread"], "MainThread", "{worker}");
        let task = service
            .task(MAIN_THREAD_CHECK_PYTHON)
            .submit()
            .expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_ne!(outputs["thread"], "MainThread", "{worker}");
    }
}

#[test]
fn test_init() {
    let _watchdog = watchdog("test_init");
    for (worker, builder) in workers() {
        let service = builder
            .with_init("init_value = 'initialized'")
            .start()
            .expect("start");
        let outputs = finish(&service.task("init_value").submit().expect("submit"))
            .unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(outputs["result"], "initialized", "{worker}");
    }
}

#[test]
fn test_task_failure_python() {
    let _watchdog = watchdog("test_task_failure_python");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        match finish(&service.task("whee\n").submit().expect("submit")) {
            Err(TaskError::Failed { message }) => {
                assert!(
                    message.contains("NameError: name 'whee' is not defined"),
                    "{worker}: {message}"
                );
            }
            other => panic!("{worker}: expected a failure, got {other:?}"),
        }
    }
}

/// Upstream polls `is_alive()` for 500 ms; here the first task must end CRASHED with the
/// import error instead of hanging, and the last stderr line is the error.
#[test]
fn test_startup_crash() {
    let _watchdog = watchdog("test_startup_crash");
    let mut command = Command::new(python());
    command.args(["-c", "import nonexistentpackage"]);
    let service = Service::new(command).start().expect("start");
    let task = service.task("1").submit().expect("submit");
    match finish(&task) {
        Err(TaskError::Crashed(report)) => {
            assert_eq!(
                report.stderr.last().map(String::as_str),
                Some("ModuleNotFoundError: No module named 'nonexistentpackage'")
            );
            assert_eq!(report.status, consort::ExitStatus::Code(1));
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!(!service.is_alive());
    assert_eq!(
        service.stderr_lines().last().map(String::as_str),
        Some("ModuleNotFoundError: No module named 'nonexistentpackage'")
    );
}

#[test]
fn test_python_sys_exit() {
    let _watchdog = watchdog("test_python_sys_exit");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        match finish(
            &service
                .task("import sys\nsys.exit(123)")
                .submit()
                .expect("submit"),
        ) {
            Err(TaskError::Failed { message }) => {
                assert!(
                    message.contains("thread death") || message.contains("SystemExit: 123"),
                    "{worker}: {message}"
                );
            }
            other => panic!("{worker}: expected a failure, got {other:?}"),
        }
        // The worker survived it.
        assert!(
            finish(&service.task("1").submit().expect("submit")).is_ok(),
            "{worker}"
        );
    }
}

const CRASH_SCRIPT: &str = "import sys\n\
sys.stderr.write('one\\n')\nsys.stderr.flush()\n\
print('two')\nsys.stdout.flush()\n\
sys.stderr.write('three\\n')\nsys.stderr.flush()\n\
task.update('halfway')\n\
print('four')\nsys.stdout.flush()\n\
sys.stderr.write('five\\n')\nsys.stderr.flush()\n\
print('six')\nsys.stdout.flush()\n\
sys.stderr.write('seven\\n')\n\
task.update('crash-me')\n\
import time; time.sleep(999)\n";

/// Changes: appose's worker prints three `[WARNING]` lines about numpy on stderr at start
/// when numpy is installed and not imported (it is, in the test venv); they are left out
/// before comparing, as they were absent where upstream's test runs. consort's worker sends
/// `print()` to stderr, not into the protocol stream, so there its stdout noise is empty
/// and the stderr lines are all seven, in order.
#[test]
fn test_crash_with_active_task() {
    let _watchdog = watchdog("test_crash_with_active_task");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let ready = Arc::new(AtomicBool::new(false));
        let reported = Arc::new(Mutex::new(None::<String>));
        let task = {
            let ready = Arc::clone(&ready);
            let reported = Arc::clone(&reported);
            service
                .task(CRASH_SCRIPT)
                .listen(move |event| {
                    if event.message() == Some("crash-me") {
                        ready.store(true, Ordering::SeqCst);
                    }
                    if event.kind == EventKind::Crash {
                        *reported.lock().unwrap() = event.error.clone();
                    }
                })
                .submit()
                .expect("submit")
        };
        assert!(
            wait_until(Duration::from_secs(60), || ready.load(Ordering::SeqCst)),
            "{worker}"
        );
        let status = service.kill();
        assert_ne!(status, consort::ExitStatus::Code(0), "{worker}");
        let report = match finish(&task) {
            Err(TaskError::Crashed(report)) => report,
            other => panic!("{worker}: expected a crash, got {other:?}"),
        };
        assert_eq!(task.state(), TaskState::Crashed);
        assert!(
            reported.lock().unwrap().is_some(),
            "{worker}: the CRASH event carried the error"
        );
        let stderr: Vec<_> = service
            .stderr_lines()
            .into_iter()
            .filter(|line| !line.starts_with("[WARNING]"))
            .collect();
        let (stdout, stderr_expected): (Vec<&str>, Vec<&str>) = match worker {
            "appose" => (
                vec!["two", "four", "six"],
                vec!["one", "three", "five", "seven"],
            ),
            _ => (
                vec![],
                vec!["one", "two", "three", "four", "five", "six", "seven"],
            ),
        };
        assert_eq!(service.invalid_lines(), stdout, "{worker}");
        assert_eq!(stderr, stderr_expected, "{worker}");
        if worker == "appose" {
            let mut report = *report;
            report.stderr.retain(|line| !line.starts_with("[WARNING]"));
            let message = report.appose_message();
            let generalized = message.replacen(
                &format!(
                    "exit code {}",
                    report.status.python_returncode().unwrap_or(0)
                ),
                "exit code ###",
                1,
            );
            assert_eq!(
                generalized,
                "Worker crashed with exit code ###.\n\n[stdout]\ntwo\nfour\nsix\n\n[stderr]\none\nthree\nfive\nseven\n"
            );
        }
    }
}

#[test]
fn test_task_result() {
    let _watchdog = watchdog("test_task_result");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let task = service.task("'success'").submit().expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(outputs["result"], "success", "{worker}");
        assert_eq!(task.outputs().expect("outputs")["result"], "success");
    }
}

#[test]
fn test_task_result_null() {
    let _watchdog = watchdog("test_task_result_null");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let task = service.task("print('no result')").submit().expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(outputs.get("result"), None, "{worker}");
        assert_eq!(task.state(), TaskState::Complete);
    }
}

/// 16 threads x 200 tasks, each thread waiting for its task before the next: zero
/// failures. Changes: no submit lock is needed (consort's submit is thread-safe), and
/// each wait is bounded. With appose's own service this scenario loses tasks (appose.md
/// §3.2); consort's reader recovers the lines the worker glues together.
#[test]
fn test_thread_death_stress() {
    let _watchdog = watchdog("test_thread_death_stress");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        let task = service
                            .task("task.outputs['result'] = 1")
                            .submit()
                            .expect("submit");
                        if let Err(err) = finish(&task) {
                            errors.lock().unwrap().push(err.to_string());
                        }
                    }
                });
            }
        });
        let errors = errors.into_inner().unwrap();
        assert!(
            errors.is_empty(),
            "{worker}: {} of 3200 tasks failed: {:?}",
            errors.len(),
            errors.first()
        );
    }
}
