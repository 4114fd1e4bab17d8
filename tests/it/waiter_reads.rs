//! A thread that waits for a task reads the worker's stdout itself (no thread hop), and
//! the stdout thread stands aside meanwhile. The first test shows that it happens (which
//! thread handled each COMPLETION); the others, that nothing else pays for it: tasks with
//! listeners, futures, tasks nobody waits for, waiters that give up, a worker that dies.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;
use std::time::Duration;

use consort::{DebugStream, EventKind, Service, Task, TaskError, TaskId, TaskState};
use consort_tests::{slowdown, wait_until};

use super::worker_sdk::echo_worker;
use super::{finish, is_terminal, watchdog, Recorder, TASK_LIMIT};

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `task` as a future on this thread until it is ready, failing instead of hanging.
#[track_caller]
fn block_on(task: Task) -> Result<consort::Args, TaskError> {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut task = pin!(task);
    let deadline = std::time::Instant::now() + TASK_LIMIT * slowdown();
    loop {
        if let Poll::Ready(result) = task.as_mut().poll(&mut context) {
            return result;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a future never became ready"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// A waiter just read its own answer, and no other task is pending: the moment the stdout
/// thread stands aside. Whatever comes next must still be read.
#[track_caller]
fn leave_stdout_to_waiters(service: &Service) {
    for _ in 0..3 {
        finish(&service.task("echo").submit().expect("submit")).expect("echo");
    }
}

/// A stdout line, and the thread its debug sink ran on: the thread that handled it.
struct Handled {
    thread: ThreadId,
    thread_name: Option<String>,
    line: String,
}

/// Whether `line` is the COMPLETION of `task`.
fn is_completion_of(line: &str, task: &TaskId) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|response| {
        response["responseType"] == "COMPLETION" && response["task"] == task.as_str()
    })
}

#[test]
fn sequential_waits_on_an_idle_worker_read_their_own_completions() {
    let _watchdog = watchdog("sequential_waits_on_an_idle_worker_read_their_own_completions");
    // The debug sink runs on the thread that handles the line (`with_debug`): the stdout
    // thread, or a waiter reading its own answer.
    let handled: Arc<Mutex<Vec<Handled>>> = Arc::default();
    let sink = Arc::clone(&handled);
    let service = echo_worker()
        .with_debug(move |line| {
            if line.stream == DebugStream::Stdout {
                let thread = std::thread::current();
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Handled {
                        thread: thread.id(),
                        thread_name: thread.name().map(str::to_owned),
                        line: line.text.clone(),
                    });
            }
        })
        .start()
        .expect("start");
    let stdout_thread = format!("consort-{}-stdout", service.id());
    let waiter = std::thread::current().id();

    // One task at a time, each waited for as soon as it is submitted: the worker is idle
    // between them and nothing else is pending, the case the waiter reads for.
    let n_tasks = 200;
    let tasks: Vec<TaskId> = (0..n_tasks)
        .map(|task_idx| {
            let task = service
                .task("echo")
                .input("idx", task_idx)
                .submit()
                .expect("submit");
            let outputs = if task_idx % 2 == 0 {
                task.wait()
            } else {
                task.wait_timeout(TASK_LIMIT * slowdown())
            };
            assert_eq!(outputs.expect("echo")["idx"], task_idx);
            task.id().clone()
        })
        .collect();
    let completion_of = |task: &TaskId| {
        let handled = handled.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = handled
            .iter()
            .filter(|seen| is_completion_of(&seen.line, task))
            .map(|seen| (seen.thread, seen.thread_name.clone()));
        let first = found.next();
        assert!(found.next().is_none(), "task {task}: two COMPLETION lines");
        first
    };
    assert!(
        wait_until(TASK_LIMIT, || tasks
            .iter()
            .all(|task| completion_of(task).is_some())),
        "the debug sink did not see every COMPLETION"
    );

    let mut n_on_waiter = 0;
    let mut n_on_stdout_thread = 0;
    for task in &tasks {
        let (thread, thread_name) = completion_of(task).expect("seen above");
        if thread == waiter {
            n_on_waiter += 1;
        } else {
            assert_eq!(
                thread_name.as_deref(),
                Some(stdout_thread.as_str()),
                "task {task}: its COMPLETION was handled by neither its waiter nor the stdout thread"
            );
            n_on_stdout_thread += 1;
        }
    }
    eprintln!(
        "COMPLETIONs read by the waiting thread: {n_on_waiter}; by {stdout_thread}: {n_on_stdout_thread}"
    );
    // Not all of them: on a loaded machine a round trip can outlast the 1 ms a waiter reads
    // for, or the stdout thread can come back between two tasks and win the line. Most of
    // them: with no waiter reading, none would be.
    assert!(
        n_on_waiter * 2 > n_tasks,
        "only {n_on_waiter} of {n_tasks} sequential waits read their own COMPLETION \
         ({n_on_stdout_thread} went through {stdout_thread}): the waiter does not read its answer"
    );
}

#[test]
fn a_task_nobody_waits_for_still_ends_after_a_waiter_read_stdout() {
    let _watchdog = watchdog("a_task_nobody_waits_for_still_ends_after_a_waiter_read_stdout");
    let service = echo_worker().start().expect("start");
    for round in 0..20 {
        leave_stdout_to_waiters(&service);
        let task = service
            .task("echo")
            .input("round", round)
            .submit()
            .expect("submit");
        assert!(
            wait_until(TASK_LIMIT * slowdown(), || task.state()
                == TaskState::Complete),
            "round {round}: an unwaited task stayed {:?}",
            task.state()
        );
        assert_eq!(task.outputs().expect("outputs")["round"], round);
    }
}

#[test]
fn listeners_and_futures_get_their_events_after_a_waiter_read_stdout() {
    let _watchdog = watchdog("listeners_and_futures_get_their_events_after_a_waiter_read_stdout");
    let service = echo_worker().start().expect("start");
    for round in 0..20 {
        leave_stdout_to_waiters(&service);
        let recorder = Recorder::default();
        let listened = service
            .task("progress")
            .input("n", 3)
            .listen(recorder.listener())
            .submit()
            .expect("submit");
        assert!(
            wait_until(TASK_LIMIT * slowdown(), || recorder
                .kinds_of(&listened)
                .into_iter()
                .any(is_terminal)),
            "round {round}: the listener never saw the end: {:?}",
            recorder.kinds_of(&listened)
        );
        assert_eq!(
            recorder.kinds_of(&listened),
            [
                EventKind::Launch,
                EventKind::Update,
                EventKind::Update,
                EventKind::Update,
                EventKind::Completion
            ]
        );

        leave_stdout_to_waiters(&service);
        let future = service
            .task("echo")
            .input("round", round)
            .submit()
            .expect("submit");
        assert_eq!(block_on(future).expect("future")["round"], round);
    }
}

#[test]
fn a_waiter_that_stops_reading_hands_stdout_back() {
    let _watchdog = watchdog("a_waiter_that_stops_reading_hands_stdout_back");
    let service = echo_worker().start().expect("start");
    // Longer than a waiter reads for: the stdout thread must deliver the answer.
    let slow = service
        .task("sleep")
        .input("seconds", 0.02)
        .submit()
        .expect("submit");
    finish(&slow).expect("a 20 ms task");
    // A waiter that times out while reading, then one that waits it out.
    let slower = service
        .task("sleep")
        .input("seconds", 0.2)
        .submit()
        .expect("submit");
    assert!(matches!(
        slower.wait_timeout(Duration::from_micros(200)),
        Err(TaskError::NotFinished(_))
    ));
    assert!(wait_until(TASK_LIMIT * slowdown(), || slower.state()
        == TaskState::Complete));
    assert!(slower.wait_timeout(Duration::ZERO).is_ok());
}

#[test]
fn waiters_listeners_futures_and_unwaited_tasks_share_stdout_under_load() {
    let _watchdog =
        watchdog("waiters_listeners_futures_and_unwaited_tasks_share_stdout_under_load");
    let service = echo_worker().start().expect("start");
    let n = 300;
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let service = &service;
            scope.spawn(move || {
                for idx in 0..n {
                    let task = service
                        .task("echo")
                        .input("thread", thread)
                        .input("idx", idx)
                        .submit()
                        .expect("submit");
                    let outputs = finish(&task).expect("waited task");
                    assert_eq!(
                        (outputs["thread"].clone(), outputs["idx"].clone()),
                        (thread.into(), idx.into())
                    );
                }
            });
        }
        scope.spawn(|| {
            let recorder = Recorder::default();
            let tasks: Vec<Task> = (0..n)
                .map(|idx| {
                    service
                        .task("echo")
                        .input("idx", idx)
                        .listen(recorder.listener())
                        .submit()
                        .expect("submit")
                })
                .collect();
            assert!(
                wait_until(TASK_LIMIT * slowdown(), || tasks.iter().all(|task| {
                    recorder.kinds_of(task).last() == Some(&EventKind::Completion)
                })),
                "a listened task never completed"
            );
        });
        scope.spawn(|| {
            for idx in 0..n {
                let task = service
                    .task("echo")
                    .input("idx", idx)
                    .submit()
                    .expect("submit");
                assert_eq!(block_on(task).expect("future")["idx"], idx);
            }
        });
        scope.spawn(|| {
            let tasks: Vec<Task> = (0..n)
                .map(|idx| {
                    service
                        .task("echo")
                        .input("idx", idx)
                        .submit()
                        .expect("submit")
                })
                .collect();
            assert!(
                wait_until(TASK_LIMIT * slowdown(), || tasks
                    .iter()
                    .all(|task| task.state() == TaskState::Complete)),
                "an unwaited task never completed"
            );
        });
    });
    assert!(service.is_alive());
    assert!(service.invalid_lines().is_empty());
}

#[test]
fn a_worker_that_dies_while_a_waiter_reads_crashes_the_task() {
    let _watchdog = watchdog("a_worker_that_dies_while_a_waiter_reads_crashes_the_task");
    for round in 0..10 {
        let service = echo_worker().start().expect("start");
        leave_stdout_to_waiters(&service);
        // The worker aborts as soon as it reads the request: the waiter is reading then.
        let task = service.task("abort").submit().expect("submit");
        match finish(&task) {
            Err(TaskError::Crashed(report)) => {
                assert_eq!(
                    report.status,
                    consort::ExitStatus::Signal(6),
                    "round {round}"
                )
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

#[test]
fn a_waiter_meets_its_deadline_while_the_worker_floods_stdout() {
    let _watchdog = watchdog("a_waiter_meets_its_deadline_while_the_worker_floods_stdout");
    // The task makes the worker write noise as fast as it can, never answering, while a slow debug sink (it runs on
    // whichever thread reads) keeps the pipe full: every read is a full one. The waiter
    // must still give up at its deadline rather than read for ever.
    let service = super::fake(&["serve"])
        .with_debug(|line| {
            if line.stream == consort::DebugStream::Stdout {
                std::thread::sleep(Duration::from_micros(10));
            }
        })
        .start()
        .expect("start");
    // The stdout thread stands aside: the waiter takes stdout before the flood starts.
    leave_stdout_to_waiters(&service);
    let task = service.task("flood").submit().expect("submit");
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert!(matches!(
            task.wait_timeout(Duration::from_millis(50)),
            Err(TaskError::NotFinished(_))
        ));
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5) * slowdown(),
            "a 50 ms wait took {took:?}"
        );
    }
    assert!(!service.invalid_lines().is_empty());
}
