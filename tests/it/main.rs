//! Integration tests: one binary, one module per area.
//!
//! `framing`, `crash`, `close` and `concurrency` drive `fake_worker` (tests/bin), a worker
//! that misbehaves on request; `python` drives the real appose 0.12.0 Python worker; `tidy`
//! checks the source tree itself. Each test names the behaviour it pins down and runs
//! under a [`Watchdog`].

mod close;
mod concurrency;
mod consort_python;
mod crash;
mod deep_json;
mod descendants;
mod framing;
mod interop;
mod python;
mod shm;
mod tidy;
mod waiter_reads;
mod worker_sdk;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consort::{
    Args, CrashReport, EventKind, Service, ServiceBuilder, Task, TaskError, TaskEvent, TaskState,
};
use consort_tests::{slowdown, wait_until, Watchdog};

/// The close and kill grace periods of test services: short, so an escalating close is quick.
const GRACE: Duration = Duration::from_millis(200);

/// How long any one test may run before its watchdog aborts the binary.
const LIMIT: Duration = Duration::from_secs(120);

/// How long a test waits for a task that should end, before failing (not hanging).
const TASK_LIMIT: Duration = Duration::from_secs(30);

/// A recipe for `fake_worker` with `args`, and short grace periods.
fn fake(args: &[&str]) -> ServiceBuilder {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fake_worker"));
    command.args(args);
    Service::new(command)
        .with_close_grace(GRACE)
        .with_kill_grace(GRACE)
}

/// Starts `fake_worker` with `args`.
#[track_caller]
fn start_fake(args: &[&str]) -> Service {
    fake(args).start().expect("start the fake worker")
}

/// Submits `script` with no inputs.
#[track_caller]
fn submit(service: &Service, script: &str) -> Task {
    service.task(script).submit().expect("submit")
}

/// Submits `script` `n` times (each with `listener`, if any) and waits until all run.
#[track_caller]
fn submit_running(
    service: &Service,
    n: usize,
    script: &str,
    recorder: Option<&Recorder>,
) -> Vec<Task> {
    let tasks: Vec<Task> = (0..n)
        .map(|_| {
            let builder = service.task(script);
            let builder = match recorder {
                Some(recorder) => builder.listen(recorder.listener()),
                None => builder,
            };
            builder.submit().expect("submit")
        })
        .collect();
    assert!(
        wait_until(TASK_LIMIT * slowdown(), || tasks
            .iter()
            .all(|task| task.state() == TaskState::Running)),
        "{n} tasks did not all start"
    );
    tasks
}

/// Submits `n` tasks of `script` (input `idx`) to the main queue, and checks that they
/// launched in the order they were submitted.
#[track_caller]
fn assert_main_queue_is_fifo(service: &Service, n: usize, script: &str) {
    let recorder = Recorder::default();
    let tasks: Vec<Task> = (0..n)
        .map(|idx| {
            service
                .task(script)
                .input("idx", idx)
                .queue("main")
                .listen(recorder.listener())
                .submit()
                .expect("submit")
        })
        .collect();
    for task in &tasks {
        finish(task).expect("main-queue task");
    }
    let launches: Vec<_> = recorder
        .events()
        .into_iter()
        .filter(|(_, event)| event.kind == EventKind::Launch)
        .map(|(_, event)| event.task)
        .collect();
    let submitted: Vec<_> = tasks.iter().map(|task| task.id().clone()).collect();
    assert_eq!(launches, submitted, "the main queue is first in, first out");
}

/// Submits 100 tasks with `submit`, each cancelled at once (the CANCEL follows its EXECUTE
/// in the pipe, often in the same read), and checks that every one ends CANCELED.
#[track_caller]
fn assert_cancels_right_after_execute_are_honoured(submit: impl Fn() -> Task) {
    let tasks: Vec<Task> = (0..100)
        .map(|_| {
            let task = submit();
            task.cancel();
            task
        })
        .collect();
    for task in &tasks {
        assert!(
            matches!(finish(task), Err(TaskError::Canceled { forced: false })),
            "{:?}",
            task.state()
        );
    }
}

/// Waits for `task` to end, failing the test instead of hanging.
#[track_caller]
fn finish(task: &Task) -> Result<Args, TaskError> {
    match task.wait_timeout(TASK_LIMIT * slowdown()) {
        Err(TaskError::NotFinished(limit)) => {
            panic!("task {} did not end within {limit:?}", task.id())
        }
        result => result,
    }
}

/// The crash report of a task that must have ended CRASHED.
#[track_caller]
fn crashed(task: &Task) -> CrashReport {
    match finish(task) {
        Err(TaskError::Crashed(report)) => {
            assert_eq!(task.state(), TaskState::Crashed);
            *report
        }
        other => panic!("task {} should have crashed, got {other:?}", task.id()),
    }
}

/// The bound `close` promises: stdin EOF and `close_grace`, SIGTERM and `kill_grace`, then
/// SIGKILL and at most `max(kill_grace, 1 s)` for the reap; plus slack for a loaded machine.
fn close_bound() -> Duration {
    (GRACE + GRACE + GRACE.max(Duration::from_secs(1)) + Duration::from_millis(500)) * slowdown()
}

/// Arms the watchdog of a test.
fn watchdog(name: &str) -> Watchdog {
    Watchdog::new(name, LIMIT)
}

/// Records every event a task's listeners see, with the time it was seen.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Instant, TaskEvent)>>>);

impl Recorder {
    fn listener(&self) -> impl Fn(&TaskEvent) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |event| {
            events
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .push((Instant::now(), event.clone()));
        }
    }

    fn events(&self) -> Vec<(Instant, TaskEvent)> {
        self.0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The kinds of the events of `task`, in order.
    fn kinds_of(&self, task: &Task) -> Vec<EventKind> {
        self.events()
            .into_iter()
            .filter(|(_, event)| &event.task == task.id())
            .map(|(_, event)| event.kind)
            .collect()
    }
}

fn is_terminal(kind: EventKind) -> bool {
    !matches!(kind, EventKind::Launch | EventKind::Update)
}
