//! The Rust worker SDK (`consort::worker`), through `examples/echo_worker.rs`, driven by
//! consort's own service and by raw pipes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use consort::{EventKind, ExitStatus, Service, ServiceBuilder, TaskError, TaskState};
use consort_tests::slowdown;
use serde_json::json;

use super::{
    assert_cancels_right_after_execute_are_honoured, assert_main_queue_is_fifo, finish, watchdog,
    Recorder, GRACE,
};

pub(super) fn echo_worker() -> ServiceBuilder {
    Service::new(Command::new(env!("CARGO_BIN_EXE_echo_worker")))
        .with_close_grace(Duration::from_secs(5))
        .with_kill_grace(GRACE)
}

/// Submits a 600 s `sleep` and waits until it runs.
#[track_caller]
fn running_sleep(service: &Service) -> consort::Task {
    let task = service
        .task("sleep")
        .input("seconds", 600)
        .submit()
        .expect("submit");
    assert!(consort_tests::wait_until(Duration::from_secs(30), || {
        task.state() == TaskState::Running
    }));
    task
}

#[test]
fn echo_progress_fail_and_panic_end_as_they_should() {
    let _watchdog = watchdog("sdk-basics");
    let service = echo_worker().start().expect("start");
    let echo = service
        .task("echo")
        .input("x", json!([1, "é"]))
        .submit()
        .expect("submit");
    assert_eq!(
        finish(&echo).expect("echo"),
        json!({"x": [1, "é"]}).as_object().cloned().unwrap()
    );

    let recorder = Recorder::default();
    let progress = service
        .task("progress")
        .input("n", 3)
        .listen(recorder.listener())
        .submit()
        .expect("submit");
    finish(&progress).expect("progress");
    let currents: Vec<_> = recorder
        .events()
        .into_iter()
        .filter(|(_, event)| event.kind == EventKind::Update)
        .map(|(_, event)| (event.current(), event.maximum()))
        .collect();
    assert_eq!(
        currents,
        [(Some(1), Some(3)), (Some(2), Some(3)), (Some(3), Some(3))]
    );

    let fail = service
        .task("fail")
        .input("message", "no good")
        .submit()
        .expect("submit");
    assert_eq!(
        finish(&fail),
        Err(TaskError::Failed {
            message: "no good".to_owned()
        })
    );

    let panic = service.task("panic").submit().expect("submit");
    match finish(&panic) {
        Err(TaskError::Failed { message }) => {
            assert!(message.contains("panic on request"), "{message}")
        }
        other => panic!("a panic should fail the task, got {other:?}"),
    }
    // The worker lives on.
    assert!(finish(&service.task("echo").submit().expect("submit")).is_ok());
    assert_eq!(service.close(), ExitStatus::Code(0));
}

#[test]
fn sleep_honours_cancel_promptly() {
    let _watchdog = watchdog("sdk-cancel");
    let service = echo_worker().start().expect("start");
    let recorder = Recorder::default();
    let task = service
        .task("sleep")
        .input("seconds", 600)
        .listen(recorder.listener())
        .submit()
        .expect("submit");
    assert!(consort_tests::wait_until(Duration::from_secs(30), || task
        .state()
        == TaskState::Running));
    let cancelled_at = Instant::now();
    task.cancel();
    assert_eq!(finish(&task), Err(TaskError::Canceled { forced: false }));
    let (seen_at, _) = recorder
        .events()
        .into_iter()
        .find(|(_, event)| event.kind == EventKind::Cancelation)
        .expect("a CANCELATION event");
    // The echo worker promises 10 ms; allow for a loaded machine, but not for a poll loop.
    let delay = seen_at.duration_since(cancelled_at);
    assert!(
        delay < Duration::from_millis(500) * slowdown(),
        "cancel took {delay:?}"
    );
}

#[test]
fn abort_crashes_the_task_with_sigabrt() {
    let _watchdog = watchdog("sdk-abort");
    let service = echo_worker().start().expect("start");
    let task = service.task("abort").submit().expect("submit");
    match finish(&task) {
        Err(TaskError::Crashed(report)) => assert_eq!(report.status, ExitStatus::Signal(6)),
        other => panic!("abort should crash the task, got {other:?}"),
    }
}

#[test]
fn tasks_run_concurrently_and_the_main_queue_in_order() {
    let _watchdog = watchdog("sdk-concurrency");
    let service = echo_worker().start().expect("start");
    let recorder = Recorder::default();
    // 16 sleeps of 2 s: all launch before any completes, or they are not concurrent.
    let sleeps: Vec<_> = (0..16)
        .map(|_| {
            service
                .task("sleep")
                .input("seconds", 2)
                .listen(recorder.listener())
                .submit()
                .expect("submit")
        })
        .collect();
    for task in &sleeps {
        finish(task).expect("sleep");
    }
    let kinds: Vec<_> = recorder
        .events()
        .into_iter()
        .map(|(_, event)| event.kind)
        .collect();
    let first_completion = kinds
        .iter()
        .position(|kind| *kind == EventKind::Completion)
        .expect("completions");
    assert_eq!(
        kinds[..first_completion]
            .iter()
            .filter(|kind| **kind == EventKind::Launch)
            .count(),
        16,
        "{kinds:?}"
    );

    assert_main_queue_is_fifo(&service, 20, "echo");
}

#[test]
fn stdin_eof_cancels_running_tasks_and_the_worker_exits() {
    let _watchdog = watchdog("sdk-eof");
    let service = echo_worker().start().expect("start");
    let task = running_sleep(&service);
    // close() starts with stdin EOF and would escalate after 5 s: exit 0 means EOF did it.
    assert_eq!(service.close(), ExitStatus::Code(0));
    assert_eq!(finish(&task), Err(TaskError::Canceled { forced: false }));
}

#[test]
fn sigterm_cancels_running_tasks_and_the_worker_exits() {
    let _watchdog = watchdog("sdk-sigterm");
    let service = echo_worker().start().expect("start");
    let task = running_sleep(&service);
    consort_tests::kill(service.pid(), 15);
    assert_eq!(finish(&task), Err(TaskError::Canceled { forced: false }));
    assert_eq!(
        service.wait_exit(Duration::from_secs(30)),
        Some(ExitStatus::Code(0))
    );
}

#[test]
fn responses_never_interleave_under_load() {
    let _watchdog = watchdog("sdk-load");
    let service = echo_worker().start().expect("start");
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                for _ in 0..100 {
                    let task = service
                        .task("progress")
                        .input("n", 5)
                        .submit()
                        .expect("submit");
                    assert_eq!(finish(&task).expect("progress")["n"], 5);
                }
            });
        }
    });
    assert_eq!(service.invalid_lines(), Vec::<String>::new());
}

#[test]
fn a_bad_request_fails_its_task_and_the_worker_keeps_serving() {
    let _watchdog = watchdog("sdk-bad-request");
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo_worker"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn echo_worker");
    let mut stdin = child.stdin.take().expect("stdin");
    let requests = concat!(
        "not json at all\n",
        "{\"task\":\"p\",\"requestType\":\"PING\"}\n",
        "{\"task\":\"i\",\"requestType\":\"EXECUTE\",\"script\":\"echo\",\"inputs\":[1]}\n",
        "{\"task\":\"ok\",\"requestType\":\"EXECUTE\",\"script\":\"echo\",\"inputs\":{\"a\":1},\"queue\":null}\n",
    );
    stdin.write_all(requests.as_bytes()).expect("write");
    stdin.flush().expect("flush");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut responses = Vec::new();
    while responses.len() < 4 {
        let line = lines.next().expect("a response").expect("read");
        responses.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON"));
    }
    drop(stdin);
    assert!(child.wait().expect("wait").success());
    let failures: Vec<_> = responses
        .iter()
        .filter(|response| response["responseType"] == "FAILURE")
        .map(|response| response["task"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(failures, ["p", "i"]);
    assert!(responses.iter().any(|response| {
        response["task"] == "ok"
            && response["responseType"] == "COMPLETION"
            && response["outputs"]["a"] == 1
    }));
}

#[test]
fn a_cancel_sent_right_after_its_execute_is_never_lost() {
    let _watchdog = watchdog("sdk-cancel-right-after-execute");
    let service = echo_worker().start().expect("start");
    // The CANCEL must find its task registered, whichever task thread reads which line.
    assert_cancels_right_after_execute_are_honoured(|| {
        service
            .task("sleep")
            .input("seconds", 600)
            .submit()
            .expect("submit")
    });
}
