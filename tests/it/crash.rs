//! A worker that dies: every pending task ends CRASHED, quickly, with the exit status and the
//! last words of the worker; a response written just before the exit is not lost; a worker
//! that never starts fails its first task (or `start`) with the reason.

use consort::ExitStatus;
use consort_tests::{is_running, wait_until};

use super::*;

const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;

#[test]
fn worker_exit_mid_task_crashes_every_pending_task_with_code_and_tails() {
    let _watchdog = watchdog("worker_exit_mid_task_crashes_every_pending_task_with_code_and_tails");
    let service = start_fake(&["serve"]);
    let bystanders: Vec<Task> = (0..7).map(|_| submit(&service, "hang")).collect();
    let culprit = submit(&service, "crash-mid-task 42");
    for task in bystanders.iter().chain([&culprit]) {
        let report = crashed(task);
        assert_eq!(report.status, ExitStatus::Code(42));
        assert_eq!(report.pid, service.pid());
        assert_eq!(report.cause, None, "consort did not end this worker");
        assert!(
            report
                .stderr
                .iter()
                .any(|line| line == "fake_worker: crashing mid-task"),
            "stderr tail: {:?}",
            report.stderr
        );
        assert!(
            report
                .stdout
                .iter()
                .any(|line| line == "fake_worker noise before the crash"),
            "non-protocol stdout tail: {:?}",
            report.stdout
        );
        let message = TaskError::Crashed(Box::new(report)).to_string();
        assert!(message.contains("exit code 42"), "{message}");
    }
    assert_eq!(service.exit_status(), Some(ExitStatus::Code(42)));
}

#[test]
fn sigkill_with_pending_tasks_crashes_them_within_50ms_with_the_signal_name() {
    let _watchdog =
        watchdog("sigkill_with_pending_tasks_crashes_them_within_50ms_with_the_signal_name");
    // The issue's bound is 50 ms; the slack absorbs a loaded test machine.
    let bound = (Duration::from_millis(50) + Duration::from_millis(450)) * slowdown();
    for _round in 0..5 {
        let service = start_fake(&["serve"]);
        let recorder = Recorder::default();
        let tasks = submit_running(&service, 8, "hang", Some(&recorder));
        let killed_at = Instant::now();
        consort_tests::kill(service.pid(), SIGKILL);
        for task in &tasks {
            let report = crashed(task);
            assert_eq!(report.status, ExitStatus::Signal(SIGKILL));
            let message = TaskError::Crashed(Box::new(report)).to_string();
            assert!(message.contains("signal SIGKILL"), "{message}");
        }
        let events = recorder.events();
        let crashes: Vec<Instant> = events
            .iter()
            .filter(|(_, event)| event.kind == EventKind::Crash)
            .map(|(seen, _)| *seen)
            .collect();
        assert_eq!(crashes.len(), tasks.len(), "one CRASH event per task");
        let latency = crashes
            .iter()
            .map(|seen| seen.duration_since(killed_at))
            .max()
            .expect("eight crashes");
        eprintln!("SIGKILL -> every task CRASHED in {latency:?}");
        assert!(latency <= bound, "took {latency:?}, bound {bound:?}");
    }
}

#[test]
fn completion_written_just_before_exit_is_not_lost() {
    let _watchdog = watchdog("completion_written_just_before_exit_is_not_lost");
    // Small enough to sit whole in the pipe at exit, one pipe buffer, and many buffers.
    for bytes in [10, 60_000, 100_000, 4 << 20].into_iter().cycle().take(24) {
        let service = start_fake(&["serve"]);
        let task = service
            .task(format!("complete-then-exit {bytes}"))
            .input("n", bytes)
            .submit()
            .expect("submit");
        let outputs = finish(&task).expect("the COMPLETION written before exit wins");
        assert_eq!(outputs["big"].as_str().map(str::len), Some(bytes));
        assert_eq!(outputs["n"], bytes);
        assert_eq!(
            service.wait_exit(TASK_LIMIT * slowdown()),
            Some(ExitStatus::Code(0))
        );
    }
}

#[test]
fn exit_without_reply_crashes_the_task_with_exit_code_0() {
    let _watchdog = watchdog("exit_without_reply_crashes_the_task_with_exit_code_0");
    let service = start_fake(&["serve"]);
    let report = crashed(&submit(&service, "exit-without-reply"));
    assert_eq!(report.status, ExitStatus::Code(0));
    assert!(report
        .appose_message()
        .starts_with("Worker crashed with exit code 0."));
}

#[test]
fn crash_before_launch_crashes_the_first_task_with_its_stderr() {
    let _watchdog = watchdog("crash_before_launch_crashes_the_first_task_with_its_stderr");
    let service = start_fake(&["crash-before-launch"]);
    let recorder = Recorder::default();
    let task = service
        .task("anything")
        .listen(recorder.listener())
        .submit()
        .expect("submit");
    let report = crashed(&task);
    assert_eq!(report.status, ExitStatus::Code(3));
    assert_eq!(
        report.stderr.last().map(String::as_str),
        Some("fake_worker: crashing before launch")
    );
    assert_eq!(recorder.kinds_of(&task), [EventKind::Crash]);
}

#[test]
fn a_worker_that_exits_at_once_fails_its_first_task_with_the_reason() {
    let _watchdog = watchdog("a_worker_that_exits_at_once_fails_its_first_task_with_the_reason");
    // Submitted at once, the task races the exit: it may be written to a live worker, to a
    // dead one (EPIPE), or refused after the exit. Every path must end it with the reason.
    for round in 0..20 {
        let service = start_fake(&["exit", "7", "ImportError: No module named 'numpy'"]);
        if round % 2 == 1 {
            assert!(wait_until(TASK_LIMIT, || !service.is_alive()));
        }
        let report = crashed(&submit(&service, "echo"));
        assert_eq!(report.status, ExitStatus::Code(7));
        assert_eq!(
            report.stderr,
            ["ImportError: No module named 'numpy'"],
            "round {round}"
        );
        let message = report.to_string();
        assert!(
            message.contains("exit code 7") && message.contains("ImportError"),
            "{message}"
        );
        assert!(
            report.cause.is_none(),
            "round {round}: the worker exited by itself, yet the cause says {:?}",
            report.cause
        );
    }
}

#[test]
fn a_task_submitted_after_the_worker_died_ends_crashed_at_once() {
    let _watchdog = watchdog("a_task_submitted_after_the_worker_died_ends_crashed_at_once");
    let service = start_fake(&["exit", "5", "gone"]);
    assert!(wait_until(TASK_LIMIT, || !service.is_alive()));
    let recorder = Recorder::default();
    let task = service
        .task("echo")
        .listen(recorder.listener())
        .submit()
        .expect("submit");
    // Already ended when submit returns: no wait at all.
    assert_eq!(task.state(), TaskState::Crashed);
    assert!(matches!(task.error(), Some(TaskError::Crashed(_))));
    assert_eq!(recorder.kinds_of(&task), [EventKind::Crash]);
    assert_eq!(crashed(&task).status, ExitStatus::Code(5));
    // The CRASH event says what the task's error says, as for a task the crash caught
    // pending.
    let crash_event = recorder
        .events()
        .into_iter()
        .map(|(_, event)| event)
        .next_back();
    let error = task.error().map(|err| err.to_string());
    assert_eq!(crash_event.and_then(|event| event.error), error);
    assert!(error.is_some_and(|error| error.starts_with("task crashed: ")));
}

#[test]
fn a_missing_or_unrunnable_program_fails_start_with_the_reason() {
    let _watchdog = watchdog("a_missing_or_unrunnable_program_fails_start_with_the_reason");
    let missing = Service::new(Command::new("/nonexistent/consort-fake-worker"))
        .start()
        .expect_err("no such program");
    let message = missing.to_string();
    assert!(
        message.contains("/nonexistent/consort-fake-worker"),
        "{message}"
    );
    // A file that is not executable.
    let manifest = consort_tests::workspace_root().join("Cargo.toml");
    let refused = Service::new(Command::new(&manifest))
        .start()
        .expect_err("not executable");
    assert!(refused.to_string().contains("Cargo.toml"), "{refused}");
}

#[test]
fn tails_of_stderr_and_stdout_stay_bounded() {
    let _watchdog = watchdog("tails_of_stderr_and_stdout_stay_bounded");
    let tail = 4096;
    let service = fake(&["serve"])
        .with_tail_bytes(tail)
        .start()
        .expect("start");
    let spam = submit(&service, "stderr-spam 4000000");
    finish(&spam).expect("spam completes");
    let crash = submit(&service, "crash-mid-task 9");
    let report = crashed(&crash);
    let stderr_bytes: usize = report.stderr.iter().map(String::len).sum();
    assert!(
        stderr_bytes <= tail,
        "stderr tail holds {stderr_bytes} bytes"
    );
    assert_eq!(
        report.stderr.last().map(String::as_str),
        Some("fake_worker: crashing mid-task"),
        "the tail keeps the last lines"
    );
    let stdout_bytes: usize = report.stdout.iter().map(String::len).sum();
    assert!(
        stdout_bytes <= tail,
        "stdout tail holds {stdout_bytes} bytes"
    );
}

#[test]
fn grandchildren_die_with_the_worker() {
    let _watchdog = watchdog("grandchildren_die_with_the_worker");
    for end in ["kill", "close", "crash"] {
        let service = start_fake(&["ignore-eof"]);
        let outputs = finish(&submit(&service, "spawn-grandchild")).expect("spawned");
        let grandchild = outputs["grandchild"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .expect("the grandchild's pid");
        assert!(is_running(grandchild));
        match end {
            "kill" => {
                service.kill();
            }
            "close" => {
                service.close();
            }
            _ => {
                consort_tests::kill(service.pid(), SIGKILL);
                assert!(service.wait_exit(TASK_LIMIT * slowdown()).is_some());
            }
        }
        assert!(
            wait_until(Duration::from_secs(2), || !is_running(grandchild)),
            "the grandchild {grandchild} outlived its worker ({end})"
        );
    }
}

#[test]
fn a_worker_that_closes_its_stdin_ends_its_tasks_crashed_with_the_reason() {
    let _watchdog =
        watchdog("a_worker_that_closes_its_stdin_ends_its_tasks_crashed_with_the_reason");
    let service = start_fake(&["close-stdin"]);
    let pid = service.pid();
    // Once `sh` has closed fd 0 and exec'd `fake_worker idle`, the pipe has no reader.
    assert!(wait_until(TASK_LIMIT, || {
        consort_tests::cmdline(pid).get(1).map(String::as_str) == Some("idle")
    }));
    let report = crashed(&submit(&service, "echo"));
    assert_eq!(report.status, ExitStatus::Signal(SIGKILL));
    let cause = report.cause.unwrap_or_default();
    assert!(cause.contains("stopped reading its stdin"), "{cause}");
}

#[test]
fn a_stopped_worker_that_is_killed_crashes_its_tasks() {
    let _watchdog = watchdog("a_stopped_worker_that_is_killed_crashes_its_tasks");
    let service = start_fake(&["serve"]);
    let task = submit(&service, "hang");
    assert!(wait_until(TASK_LIMIT, || task.state() == TaskState::Running));
    consort_tests::kill(service.pid(), SIGSTOP);
    assert!(wait_until(TASK_LIMIT, || matches!(
        consort_tests::ppid_and_state(service.pid()),
        Some((_, 'T'))
    )));
    consort_tests::kill(service.pid(), SIGKILL);
    assert_eq!(crashed(&task).status, ExitStatus::Signal(SIGKILL));
}

#[test]
fn a_child_that_escaped_the_group_dies_without_delaying_the_crash() {
    let _watchdog = watchdog("a_child_that_escaped_the_group_dies_without_delaying_the_crash");
    let silence = Duration::from_millis(200);
    let service = fake(&["serve"])
        .with_drain_silence(silence)
        .start()
        .expect("start");
    // It holds the worker's stdout and stderr open, and no group kill reaches it.
    let escaped =
        super::descendants::escaped(&finish(&submit(&service, "spawn-escaped")).expect("spawned"));
    let pending = submit(&service, "hang");
    assert!(wait_until(TASK_LIMIT, || pending.state() == TaskState::Running));
    let killed_at = Instant::now();
    consort_tests::kill(service.pid(), SIGKILL);
    assert_eq!(crashed(&pending).status, ExitStatus::Signal(SIGKILL));
    let latency = killed_at.elapsed();
    eprintln!("crash declared {latency:?} after the kill");
    assert!(
        latency <= (silence + Duration::from_millis(500)) * slowdown(),
        "{latency:?}"
    );
    // Killed by its lineage (issue 14): it no longer outlives the worker.
    escaped.assert_dies();
}

/// issue 14: a worker that closed its stdout and lived on was waited on until it exited,
/// and its pending tasks with it, silently. No answer can come once stdout is closed: its
/// tasks now end CRASHED with the cause, within the bound of a crash after an exit
/// (`drain_silence`, then the kill ladder), and a COMPLETION written before the EOF wins.
#[test]
fn issue_14_a_worker_that_closes_its_stdout_and_lives_on_crashes_its_pending_tasks() {
    let _watchdog =
        watchdog("issue_14_a_worker_that_closes_its_stdout_and_lives_on_crashes_its_pending_tasks");
    let silence = Duration::from_millis(200);
    let service = fake(&["serve"])
        .with_drain_silence(silence)
        .start()
        .expect("start");
    let pending = submit(&service, "hang");
    assert!(wait_until(TASK_LIMIT, || pending.state() == TaskState::Running));
    let closer = submit(&service, "close-stdout");
    finish(&closer).expect("the COMPLETION written before stdout closed wins");
    let closed_at = Instant::now();
    let report = crashed(&pending);
    let latency = closed_at.elapsed();
    eprintln!("pending task crashed {latency:?} after stdout closed");
    let cause = report.cause.clone().unwrap_or_default();
    assert!(cause.contains("closed its stdout"), "{report:?}");
    let message = TaskError::Crashed(Box::new(report)).to_string();
    assert!(message.contains("closed its stdout"), "{message}");
    // The silence, then SIGTERM and its grace, then the reap; plus slack.
    let bound =
        (silence + GRACE + Duration::from_secs(1) + Duration::from_millis(500)) * slowdown();
    assert!(latency <= bound, "took {latency:?}, bound {bound:?}");
    assert!(
        service.exit_status().is_some(),
        "the mute worker was ended, not waited on"
    );
}
