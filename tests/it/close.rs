//! Ending a worker within a bound: `close` against workers that exit, ignore stdin EOF,
//! ignore SIGTERM, flood stdout or are stopped; dropping a `Service`; and hard cancel.

use consort::ExitStatus;
use consort_tests::{cmdline, is_my_child, is_running, wait_until};

use super::*;

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;

/// Closes `service`, checks that it took no longer than the close bound, and that the worker
/// was reaped; returns the status.
#[track_caller]
fn close_within_bound(service: &Service) -> ExitStatus {
    let pid = service.pid();
    let started = Instant::now();
    let status = service.close();
    let took = started.elapsed();
    eprintln!("close took {took:?}: {status}");
    assert!(
        took <= close_bound(),
        "close took {took:?}, bound {:?}",
        close_bound()
    );
    assert!(
        !is_my_child(pid),
        "the worker {pid} is reaped, not a zombie"
    );
    status
}

/// Waits until the worker runs `fake_worker <mode>` (after any re-exec through `sh`).
#[track_caller]
fn wait_for_mode(service: &Service, mode: &str) {
    let pid = service.pid();
    assert!(wait_until(TASK_LIMIT, || {
        cmdline(pid).get(1).map(String::as_str) == Some(mode)
    }));
}

#[test]
fn close_returns_at_once_against_a_worker_that_exits_on_stdin_eof() {
    let _watchdog = watchdog("close_returns_at_once_against_a_worker_that_exits_on_stdin_eof");
    let service = start_fake(&["serve"]);
    finish(&submit(&service, "echo")).expect("the worker works");
    assert_eq!(close_within_bound(&service), ExitStatus::Code(0));
    assert_eq!(
        service.crash_report().and_then(|report| report.cause),
        Some("service closed".to_owned())
    );
}

#[test]
fn close_returns_against_worker_ignoring_stdin_eof() {
    let _watchdog = watchdog("close_returns_against_worker_ignoring_stdin_eof");
    let service = start_fake(&["ignore-eof"]);
    assert_eq!(close_within_bound(&service), ExitStatus::Signal(SIGTERM));
}

#[test]
fn close_returns_against_worker_ignoring_sigterm() {
    let _watchdog = watchdog("close_returns_against_worker_ignoring_sigterm");
    let service = start_fake(&["ignore-sigterm"]);
    wait_for_mode(&service, "ignore-eof");
    assert_eq!(close_within_bound(&service), ExitStatus::Signal(SIGKILL));
}

#[test]
fn close_returns_against_worker_flooding_stdout() {
    let _watchdog = watchdog("close_returns_against_worker_flooding_stdout");
    let service = start_fake(&["flood-stdout"]);
    let pending = submit(&service, "echo");
    assert!(wait_until(TASK_LIMIT, || !service
        .invalid_lines()
        .is_empty()));
    assert_eq!(close_within_bound(&service), ExitStatus::Signal(SIGTERM));
    let report = crashed(&pending);
    assert!(report.stdout.iter().any(|line| line.starts_with("flood")));
}

#[test]
fn close_returns_against_worker_blocked_writing_a_full_stdout_pipe() {
    let _watchdog = watchdog("close_returns_against_worker_blocked_writing_a_full_stdout_pipe");
    // A debug sink that blocks stops the stdout reader, so the worker's next write blocks on
    // a full pipe. close must not depend on the reader making progress.
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let sink_gate = Arc::clone(&gate);
    let service = fake(&["flood-stdout"])
        .with_debug(move |line| {
            if line.stream == consort::DebugStream::Stdout {
                let (open, opened) = &*sink_gate;
                let mut open = open.lock().unwrap_or_else(|poison| poison.into_inner());
                while !*open {
                    open = opened
                        .wait(open)
                        .unwrap_or_else(|poison| poison.into_inner());
                }
            }
        })
        .start()
        .expect("start");
    let pid = service.pid();
    // The flood writes in a tight loop and never reads: once it sleeps, it is blocked in
    // write(2) on the full pipe.
    assert!(wait_until(TASK_LIMIT, || matches!(
        consort_tests::ppid_and_state(pid),
        Some((_, 'S'))
    )));
    let started = Instant::now();
    let status = service.close();
    let took = started.elapsed();
    eprintln!("close took {took:?}: {status}");
    // Let the reader go: it finds the pipe at EOF, and the monitor publishes the exit.
    let (open, opened) = &*gate;
    *open.lock().unwrap_or_else(|poison| poison.into_inner()) = true;
    opened.notify_all();
    assert!(took <= close_bound(), "close took {took:?}");
    // close cannot report the status before the stuck reader let the monitor finish.
    assert!(
        matches!(status, ExitStatus::Signal(SIGTERM) | ExitStatus::Unknown),
        "{status}"
    );
    assert_eq!(
        service.wait_exit(TASK_LIMIT * slowdown()),
        Some(ExitStatus::Signal(SIGTERM))
    );
    assert!(!is_my_child(pid), "the worker {pid} is reaped");
}

#[test]
fn close_returns_against_a_stopped_worker() {
    let _watchdog = watchdog("close_returns_against_a_stopped_worker");
    for mode in ["serve", "ignore-sigterm"] {
        let service = start_fake(&[mode]);
        if mode == "ignore-sigterm" {
            wait_for_mode(&service, "ignore-eof");
        }
        consort_tests::kill(service.pid(), SIGSTOP);
        assert!(wait_until(TASK_LIMIT, || matches!(
            consort_tests::ppid_and_state(service.pid()),
            Some((_, 'T'))
        )));
        let status = close_within_bound(&service);
        let expected = if mode == "serve" {
            // SIGCONT lets it see stdin EOF or SIGTERM, whichever comes first.
            [ExitStatus::Code(0), ExitStatus::Signal(SIGTERM)]
        } else {
            [ExitStatus::Signal(SIGKILL), ExitStatus::Signal(SIGKILL)]
        };
        assert!(expected.contains(&status), "{mode}: {status}");
    }
}

#[test]
fn close_crashes_pending_tasks_with_the_cause_service_closed() {
    let _watchdog = watchdog("close_crashes_pending_tasks_with_the_cause_service_closed");
    let service = start_fake(&["ignore-eof"]);
    let tasks: Vec<Task> = (0..4).map(|_| submit(&service, "hang")).collect();
    close_within_bound(&service);
    for task in &tasks {
        let report = crashed(task);
        assert_eq!(report.cause.as_deref(), Some("service closed"));
        assert_eq!(report.status, ExitStatus::Signal(SIGTERM));
    }
    // After close, a new task is refused at once, with the same report.
    let late = submit(&service, "echo");
    assert_eq!(late.state(), TaskState::Crashed);
    assert_eq!(crashed(&late).cause.as_deref(), Some("service closed"));
}

#[test]
fn close_twice_returns_the_same_status_at_once() {
    let _watchdog = watchdog("close_twice_returns_the_same_status_at_once");
    let service = start_fake(&["ignore-eof"]);
    let first = close_within_bound(&service);
    let second = close_within_bound(&service);
    assert_eq!(first, second);
    assert_eq!(service.kill(), first);
}

#[test]
fn closing_from_many_threads_at_once_returns_within_the_bound() {
    let _watchdog = watchdog("closing_from_many_threads_at_once_returns_within_the_bound");
    let service = start_fake(&["ignore-sigterm"]);
    wait_for_mode(&service, "ignore-eof");
    let statuses: Vec<ExitStatus> = std::thread::scope(|scope| {
        let closers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| close_within_bound(&service)))
            .collect();
        closers
            .into_iter()
            .map(|closer| closer.join().expect("close"))
            .collect()
    });
    assert!(
        statuses
            .iter()
            .all(|status| *status == ExitStatus::Signal(SIGKILL)),
        "{statuses:?}"
    );
}

#[test]
fn dropping_a_service_closes_it_and_reaps_the_worker() {
    let _watchdog = watchdog("dropping_a_service_closes_it_and_reaps_the_worker");
    let service = start_fake(&["ignore-sigterm"]);
    wait_for_mode(&service, "ignore-eof");
    let pid = service.pid();
    let task = submit(&service, "hang");
    let started = Instant::now();
    drop(service);
    let took = started.elapsed();
    assert!(took <= close_bound(), "drop took {took:?}");
    assert!(!is_running(pid), "the worker {pid} is gone");
    assert!(!is_my_child(pid), "the worker {pid} is reaped");
    // A task outlives its service and still ends.
    let report = crashed(&task);
    assert_eq!(report.cause.as_deref(), Some("service closed"));
}

#[test]
fn kill_ends_the_worker_now() {
    let _watchdog = watchdog("kill_ends_the_worker_now");
    let service = start_fake(&["ignore-sigterm"]);
    let task = submit(&service, "hang");
    assert_eq!(service.kill(), ExitStatus::Signal(SIGKILL));
    assert!(!is_my_child(service.pid()));
    assert!(crashed(&task)
        .cause
        .is_some_and(|cause| cause.contains("Service::kill")));
}

#[test]
fn hard_cancel_kills_a_worker_that_ignores_cancel_and_crashes_its_siblings_saying_so() {
    let _watchdog = watchdog(
        "hard_cancel_kills_a_worker_that_ignores_cancel_and_crashes_its_siblings_saying_so",
    );
    let service = start_fake(&["serve"]);
    let recorder = Recorder::default();
    let stuck = service
        .task("hang")
        .listen(recorder.listener())
        .submit()
        .expect("submit");
    let siblings: Vec<Task> = (0..3).map(|_| submit(&service, "hang")).collect();
    assert!(wait_until(TASK_LIMIT, || stuck.state() == TaskState::Running));
    let grace = Duration::from_millis(100);
    let started = Instant::now();
    stuck.cancel_hard(grace);
    assert_eq!(finish(&stuck), Err(TaskError::Canceled { forced: true }));
    let took = started.elapsed();
    assert!(took <= grace + close_bound(), "hard cancel took {took:?}");
    assert_eq!(
        recorder.kinds_of(&stuck),
        [EventKind::Launch, EventKind::Cancelation]
    );
    for sibling in &siblings {
        let report = crashed(sibling);
        assert_eq!(report.status, ExitStatus::Signal(SIGKILL));
        let cause = report.cause.unwrap_or_default();
        assert!(
            cause.contains("hard-cancel") && cause.contains(stuck.id().as_str()),
            "the sibling's cause names the cancelled task: {cause}"
        );
    }
    assert!(wait_until(TASK_LIMIT, || !is_running(service.pid())));
}

#[test]
fn hard_cancel_of_a_cooperative_task_keeps_the_worker() {
    let _watchdog = watchdog("hard_cancel_of_a_cooperative_task_keeps_the_worker");
    let service = start_fake(&["serve"]);
    let task = submit(&service, "cancellable");
    assert!(wait_until(TASK_LIMIT, || task.state() == TaskState::Running));
    task.cancel_hard(Duration::from_secs(30));
    assert_eq!(finish(&task), Err(TaskError::Canceled { forced: false }));
    assert!(service.is_alive());
    let next = service.task("echo").input("x", 3).submit().expect("submit");
    assert_eq!(finish(&next).expect("the worker lives on")["x"], 3);
}

#[test]
fn a_task_whose_hard_cancel_is_under_way_ends_canceled_when_another_kill_comes_first() {
    let _watchdog = watchdog(
        "a_task_whose_hard_cancel_is_under_way_ends_canceled_when_another_kill_comes_first",
    );
    let service = start_fake(&["serve"]);
    let first = submit(&service, "hang");
    let second = submit(&service, "hang");
    let bystander = submit(&service, "hang");
    assert!(wait_until(TASK_LIMIT, || [&first, &second, &bystander]
        .iter()
        .all(|task| task.state() == TaskState::Running)));
    // The second's grace outlasts the test: the first one's kill ends the worker for both.
    second.cancel_hard(TASK_LIMIT * 10);
    first.cancel_hard(Duration::from_millis(50));
    assert_eq!(finish(&first), Err(TaskError::Canceled { forced: true }));
    assert_eq!(
        finish(&second),
        Err(TaskError::Canceled { forced: true }),
        "it was asked to stop, and it was stopped"
    );
    let report = crashed(&bystander);
    assert!(report
        .cause
        .unwrap_or_default()
        .contains(first.id().as_str()));
}
