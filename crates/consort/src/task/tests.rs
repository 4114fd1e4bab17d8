//! Unit tests for `task`: the one-terminal-state machine, listener isolation, waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    assert!(core.finish(TaskState::Complete, complete(1)));
    assert!(!core.finish(
        TaskState::Failed,
        Err(TaskError::Failed {
            message: "late".to_owned()
        })
    ));
    assert!(!core.finish(TaskState::Complete, complete(2)));
    // A LAUNCH after the end does not bring the task back to life.
    assert!(!core.launch());
    assert_eq!(core.state(), TaskState::Complete);
    core.release_waiters();
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
                    if core.finish(TaskState::Complete, complete(idx)) {
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
    assert!(core.finish(TaskState::Complete, complete(7)));
    // Finished but not yet delivered: a bounded wait must time out, not return early.
    assert_eq!(
        core.wait_deadline(Some(Instant::now() + Duration::from_millis(20))),
        None
    );
    core.release_waiters();
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
            core.finish(TaskState::Complete, complete(3));
            core.release_waiters();
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
fn crash_report_formats_like_appose() {
    let report = CrashReport {
        pid: 42,
        status: ExitStatus::Signal(9),
        cause: None,
        stderr: vec!["one".to_owned(), "three".to_owned()],
        stdout: Vec::new(),
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
