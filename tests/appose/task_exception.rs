//! Port of appose-python's tests/test_task_exception.py: a failed task is an error of
//! the wait, and a successful one is not.
//!
//! Provenance: apposed/appose-python at 57885bb6be07be9efbf120e275c7e202c0d01e7e.
//! Licence: BSD-2-Clause, "Copyright (c) 2023 - 2026, Appose developers. All rights
//! reserved."; the full text is in main.rs.
//!
//! Changes, besides those listed in main.rs for every test:
//! - `pytest.raises(TaskException)` becomes `expect_err` on the bounded wait, and
//!   `str(e)` the error's `Display`;
//! - `e.task is task` has no counterpart (a `TaskError` does not hold its task); instead
//!   `task.error()` must be the same error the wait returned.

use consort::{TaskError, TaskState};

use super::{finish, watchdog, workers};

#[test]
fn test_task_exception_on_failure() {
    let _watchdog = watchdog("test_task_exception_on_failure");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let task = service.task("undefined_variable").submit().expect("submit");
        let err = finish(&task).expect_err("the task fails");
        let text = err.to_string();
        assert!(
            text.to_lowercase().contains("failed") && text.contains("NameError"),
            "{worker}: {text}"
        );
        assert_eq!(task.error().as_ref(), Some(&err), "{worker}");
        assert_eq!(task.state(), TaskState::Failed);
        match task.error() {
            Some(TaskError::Failed { message }) => {
                assert!(message.contains("NameError"), "{worker}")
            }
            other => panic!("{worker}: {other:?}"),
        }
    }
}

#[test]
fn test_no_exception_on_success() {
    let _watchdog = watchdog("test_no_exception_on_success");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let task = service.task("2 + 2").submit().expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(outputs["result"], 4, "{worker}");
        assert_eq!(task.state(), TaskState::Complete);
    }
}
