//! Unit tests for `task`: the one-terminal-state machine, listener isolation, waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Wake;
use std::thread;

use super::*;

fn core_with(listeners: Vec<Listener>) -> Arc<TaskCore> {
    TaskCore::new(TaskId::new("t"), listeners)
}

fn complete(value: i64) -> Result<Args, TaskError> {
    let mut outputs = Args::new();
    outputs.insert("result".to_owned(), value.into());
    Ok(outputs)
}

#[test]
fn first_terminal_transition_wins_and_later_ones_change_nothing() {
    let core = core_with(Vec::new());
    assert!(core.launch());
    assert_eq!(core.state(), TaskState::Running);
    let ending = core
        .end(TaskState::Complete, complete(1))
        .expect("the first end wins");
    assert!(core
        .end(
            TaskState::Failed,
            Err(TaskError::Failed {
                message: "late".to_owned()
            })
        )
        .is_none());
    assert!(core.end(TaskState::Complete, complete(2)).is_none());
    // A LAUNCH after the end does not bring the task back to life.
    assert!(!core.launch());
    assert_eq!(core.state(), TaskState::Complete);
    ending.deliver();
    assert_eq!(core.wait_deadline(None), Some(complete(1)));
}

#[test]
fn concurrent_finishers_have_exactly_one_winner() {
    for _ in 0..200 {
        let core = core_with(Vec::new());
        let winners = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|idx| {
                let core = Arc::clone(&core);
                let winners = Arc::clone(&winners);
                thread::spawn(move || {
                    if core.end(TaskState::Complete, complete(idx)).is_some() {
                        winners.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("finisher thread");
        }
        assert_eq!(winners.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn waiters_are_released_only_after_delivery() {
    let core = core_with(Vec::new());
    let ending = core.end(TaskState::Complete, complete(7)).expect("ends");
    // Finished but not yet delivered: a bounded wait must time out, not return early.
    assert_eq!(
        core.wait_deadline(Some(Instant::now() + Duration::from_millis(20))),
        None
    );
    ending.deliver();
    assert_eq!(
        core.wait_deadline(Some(Instant::now() + Duration::from_millis(20))),
        Some(complete(7))
    );
}

#[test]
fn a_panicking_listener_does_not_stop_the_others() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let listeners: Vec<Listener> = vec![
        Box::new(|_| panic!("listener bug")),
        Box::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    ];
    let core = core_with(listeners);
    let event = TaskEvent::new(TaskId::new("t"), EventKind::Launch);
    core.deliver(&event);
    core.deliver(&event);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

#[test]
fn polling_registers_a_waker_that_release_wakes() {
    let core = core_with(Vec::new());
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    assert!(core.poll_result(&mut cx).is_pending());
    let finisher = {
        let core = Arc::clone(&core);
        thread::spawn(move || {
            core.end(TaskState::Complete, complete(3))
                .expect("ends")
                .deliver();
        })
    };
    // Park until woken; spurious wake-ups just poll again.
    let result = loop {
        match core.poll_result(&mut cx) {
            Poll::Ready(result) => break result,
            Poll::Pending => thread::park_timeout(Duration::from_secs(5)),
        }
    };
    finisher.join().expect("finisher thread");
    assert_eq!(result, complete(3));
}

#[test]
fn a_dropped_ending_still_tells_the_listeners_then_releases_the_waiters() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let core = core_with(vec![Box::new(move |event: &TaskEvent| {
        record.lock().unwrap().push(event.kind);
    })]);
    drop(core.end(
        TaskState::Canceled,
        Err(TaskError::Canceled { forced: true }),
    ));
    assert_eq!(*seen.lock().unwrap(), vec![EventKind::Cancelation]);
    assert_eq!(
        core.wait_deadline(Some(Instant::now())),
        Some(Err(TaskError::Canceled { forced: true }))
    );
}

#[test]
fn the_terminal_event_is_made_from_the_state_and_the_result() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let ends: Vec<(TaskState, Result<Args, TaskError>)> = vec![
        (TaskState::Complete, complete(1)),
        (
            TaskState::Failed,
            Err(TaskError::Failed {
                message: "boom".to_owned(),
            }),
        ),
        (
            TaskState::Canceled,
            Err(TaskError::Canceled { forced: true }),
        ),
        (
            TaskState::TimedOut,
            Err(TaskError::DeadlinePassed(Duration::from_secs(1))),
        ),
    ];
    for (state, result) in ends {
        let record = Arc::clone(&seen);
        let core = core_with(vec![Box::new(move |event: &TaskEvent| {
            record.lock().unwrap().push(event.clone());
        })]);
        core.end(state, result).expect("ends").deliver();
    }
    let seen = seen.lock().unwrap();
    let kinds: Vec<_> = seen.iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Completion,
            EventKind::Failure,
            EventKind::Cancelation,
            EventKind::Timeout
        ]
    );
    assert_eq!(seen[0].outputs, complete(1).ok());
    assert_eq!(seen[1].error.as_deref(), Some("boom"));
    // A CANCELATION carries no error, as on the wire.
    assert_eq!(seen[2].error, None);
    assert_eq!(
        seen[3].error.as_deref(),
        Some("task passed its deadline of 1s and was cancelled")
    );
}

#[test]
fn crash_report_formats_like_appose() {
    let report = CrashReport {
        pid: 42,
        status: ExitStatus::Signal(9),
        cause: None,
        stderr: vec!["one".to_owned(), "three".to_owned()],
        stdout: Vec::new(),
        sent: true,
        beside: None,
    };
    assert_eq!(
        report.appose_message(),
        "Worker crashed with exit code -9.\n\n[stdout]\n<none>\n\n[stderr]\none\nthree\n"
    );
    assert_eq!(
        report.to_string(),
        "worker (pid 42) ended with signal SIGKILL; last stderr line: three"
    );
}

#[test]
fn crash_report_says_who_was_beside_the_task_and_whether_it_was_sent() {
    let alone = CrashReport {
        pid: 7,
        status: ExitStatus::Signal(9),
        cause: None,
        stderr: Vec::new(),
        stdout: Vec::new(),
        sent: true,
        beside: Some(Vec::new()),
    };
    assert_eq!(
        alone.to_string(),
        "worker (pid 7) ended with signal SIGKILL; the task was alone on the worker"
    );
    let beside = CrashReport {
        beside: Some(vec![TaskId::new("a"), TaskId::new("b")]),
        ..alone.clone()
    };
    assert_eq!(
        beside.to_string(),
        "worker (pid 7) ended with signal SIGKILL; 2 other tasks were running on the worker: \
         a, b"
    );
    let many = CrashReport {
        beside: Some((0..10).map(|idx| TaskId::new(idx.to_string())).collect()),
        ..alone.clone()
    };
    assert!(many
        .to_string()
        .ends_with("10 other tasks were running on the worker: 0, 1, 2, 3, 4, 5, 6, 7, …"));
    let unsent = CrashReport {
        sent: false,
        beside: None,
        ..alone
    };
    assert_eq!(
        unsent.to_string(),
        "worker (pid 7) ended with signal SIGKILL; the task was never sent to it"
    );
}
