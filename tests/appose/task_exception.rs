//! tests/test_task_exception.py.

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
            text.contains("failed") && text.contains("NameError"),
            "{worker}: {text}"
        );
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
