//! Many threads at once: submitting, starting, listening (and panicking in listeners); and
//! exactly one terminal event per task, whatever races.

use std::collections::HashMap;

use consort::ExitStatus;
use consort_tests::{is_running, wait_until};

use super::*;

/// From `n_threads` threads at once, submits `n_tasks` echo tasks (some delayed) each whose `payload` input
/// is `payload(task_idx)`, and checks that each gets its own inputs back and that no request
/// line was mangled by another.
fn echo_from_threads(
    service: &Service,
    n_threads: usize,
    n_tasks: usize,
    payload: impl Fn(usize) -> String + Sync,
) {
    std::thread::scope(|scope| {
        for thread_idx in 0..n_threads {
            let payload = &payload;
            scope.spawn(move || {
                let tasks: Vec<(usize, Task)> = (0..n_tasks)
                    .map(|task_idx| {
                        // Some answer later, on their own thread: out of order.
                        let script = if task_idx % 10 == 0 {
                            "sleep 1"
                        } else {
                            "echo"
                        };
                        let task = service
                            .task(script)
                            .input("thread", thread_idx)
                            .input("task", task_idx)
                            .input("payload", payload(task_idx))
                            .submit()
                            .expect("submit");
                        (task_idx, task)
                    })
                    .collect();
                for (task_idx, task) in tasks {
                    let outputs = finish(&task).expect("complete");
                    assert_eq!(outputs["thread"], thread_idx);
                    assert_eq!(outputs["task"], task_idx);
                    assert_eq!(outputs["payload"], payload(task_idx).as_str());
                }
            });
        }
    });
    assert!(service.is_alive());
    assert!(
        service.invalid_lines().is_empty(),
        "requests never interleave"
    );
}

#[test]
fn tasks_submitted_from_many_threads_all_complete() {
    let _watchdog = watchdog("tasks_submitted_from_many_threads_all_complete");
    let service = start_fake(&["serve"]);
    echo_from_threads(&service, 8, 250, |task_idx| format!("small {task_idx}"));
}

#[test]
fn lines_larger_than_the_pipe_never_interleave_with_other_threads_lines() {
    let _watchdog = watchdog("lines_larger_than_the_pipe_never_interleave");
    let service = start_fake(&["serve"]);
    // 200 KiB is over the pipe's 64 KiB: those writes are partial and finished by the
    // writer thread while other threads keep submitting small lines.
    echo_from_threads(&service, 6, 60, |task_idx| {
        if task_idx % 3 == 0 {
            "x".repeat(200 * 1024)
        } else {
            format!("small {task_idx}")
        }
    });
}

#[test]
fn services_started_from_many_threads_at_once_all_work() {
    let _watchdog = watchdog("services_started_from_many_threads_at_once_all_work");
    let services: Vec<Service> = std::thread::scope(|scope| {
        let starters: Vec<_> = (0..16)
            .map(|_| scope.spawn(|| start_fake(&["serve"])))
            .collect();
        starters
            .into_iter()
            .map(|starter| starter.join().expect("start"))
            .collect()
    });
    // Every starting thread has ended: the workers must not have died with them (the
    // parent-death signal follows the thread that forked, hence the spawner thread).
    for (service_idx, service) in services.iter().enumerate() {
        assert!(
            service.is_alive(),
            "worker {service_idx} died with its starting thread"
        );
        let task = service
            .task("echo")
            .input("i", service_idx)
            .submit()
            .expect("submit");
        assert_eq!(finish(&task).expect("complete")["i"], service_idx);
    }
    let pids: Vec<u32> = services.iter().map(Service::pid).collect();
    std::thread::scope(|scope| {
        for service in &services {
            scope.spawn(move || assert_eq!(service.close(), ExitStatus::Code(0)));
        }
    });
    assert!(pids.iter().all(|pid| !is_running(*pid)));
}

#[test]
fn a_panicking_listener_does_not_stop_the_service_or_other_tasks() {
    let _watchdog = watchdog("a_panicking_listener_does_not_stop_the_service_or_other_tasks");
    let service = start_fake(&["serve"]);
    let recorder = Recorder::default();
    let panicking = service
        .task("updates 5")
        .input("x", 1)
        .listen(|event| panic!("listener panics on {:?}", event.kind))
        .listen(recorder.listener())
        .submit()
        .expect("submit");
    let bystander = service
        .task("updates 5")
        .input("x", 2)
        .listen(recorder.listener())
        .submit()
        .expect("submit");
    assert_eq!(finish(&panicking).expect("complete")["x"], 1);
    assert_eq!(finish(&bystander).expect("complete")["x"], 2);
    // The listener after the panicking one still saw every event.
    for task in [&panicking, &bystander] {
        let kinds = recorder.kinds_of(task);
        assert_eq!(kinds.len(), 7, "{kinds:?}");
        assert_eq!(kinds.last(), Some(&EventKind::Completion));
    }
    assert!(service.is_alive());
    let later = service.task("echo").input("x", 3).submit().expect("submit");
    assert_eq!(finish(&later).expect("the service carries on")["x"], 3);
}

#[test]
fn the_first_terminal_response_wins_and_later_ones_are_ignored() {
    let _watchdog = watchdog("the_first_terminal_response_wins_and_later_ones_are_ignored");
    let service = start_fake(&["serve"]);
    let recorder = Recorder::default();
    let tasks: Vec<Task> = (0..20)
        .map(|_| {
            service
                .task("double-terminal")
                .listen(recorder.listener())
                .submit()
                .expect("submit")
        })
        .collect();
    for task in &tasks {
        assert_eq!(
            finish(task),
            Err(TaskError::Failed {
                message: "first terminal".to_owned()
            })
        );
    }
    // The COMPLETION that follows each FAILURE is read but ignored: wait until the worker
    // answered a later task, then count.
    let last = service.task("echo").submit().expect("submit");
    finish(&last).expect("complete");
    for task in &tasks {
        assert_eq!(
            recorder.kinds_of(task),
            [EventKind::Launch, EventKind::Failure]
        );
        assert_eq!(task.state(), TaskState::Failed);
    }
}

#[test]
fn every_task_gets_exactly_one_terminal_event_when_the_worker_is_killed_mid_flood() {
    let _watchdog =
        watchdog("every_task_gets_exactly_one_terminal_event_when_the_worker_is_killed_mid_flood");
    let n_tasks = if consort_tests::slow_tests() {
        10_000
    } else {
        2_000
    };
    for round in 0..3 {
        let service = start_fake(&["serve"]);
        let recorder = Recorder::default();
        let tasks: Vec<Task> = (0..n_tasks)
            .map(|task_idx| {
                let script = match task_idx % 4 {
                    0 => "sleep 2",
                    1 => "hang",
                    _ => "echo",
                };
                service
                    .task(script)
                    .listen(recorder.listener())
                    .submit()
                    .expect("submit")
            })
            .collect();
        // Kill somewhere in the middle of the flood of responses.
        let kill_after = n_tasks / 4 * (round + 1);
        assert!(wait_until(TASK_LIMIT, || tasks
            .iter()
            .filter(|task| task.state().is_finished())
            .count()
            >= kill_after / 2));
        consort_tests::kill(service.pid(), 9);
        let mut n_by_state: HashMap<TaskState, usize> = HashMap::new();
        for task in &tasks {
            let _ = finish(task);
            *n_by_state.entry(task.state()).or_default() += 1;
        }
        let events = recorder.events();
        let mut terminals: HashMap<&consort::TaskId, Vec<EventKind>> = HashMap::new();
        for (_, event) in &events {
            if is_terminal(event.kind) {
                terminals.entry(&event.task).or_default().push(event.kind);
            }
        }
        for task in &tasks {
            let kinds = terminals.get(task.id()).cloned().unwrap_or_default();
            assert_eq!(
                kinds.len(),
                1,
                "task {}: terminal events {kinds:?}",
                task.id()
            );
            let expected = match task.state() {
                TaskState::Complete => EventKind::Completion,
                TaskState::Crashed => EventKind::Crash,
                other => panic!("task {} ended {other:?}", task.id()),
            };
            assert_eq!(kinds[0], expected, "the event matches the state");
        }
        eprintln!("round {round}: {n_by_state:?}");
        assert!(n_by_state.get(&TaskState::Crashed).copied().unwrap_or(0) >= n_tasks / 4);
    }
}

#[test]
fn cancel_racing_completion_ends_each_task_once() {
    let _watchdog = watchdog("cancel_racing_completion_ends_each_task_once");
    let service = start_fake(&["serve"]);
    let recorder = Recorder::default();
    let tasks: Vec<Task> = (0..500)
        .map(|task_idx| {
            let script = if task_idx % 2 == 0 {
                "cancellable"
            } else {
                "echo"
            };
            service
                .task(script)
                .listen(recorder.listener())
                .submit()
                .expect("submit")
        })
        .collect();
    for task in &tasks {
        task.cancel();
    }
    for task in &tasks {
        match finish(task) {
            Ok(_) | Err(TaskError::Canceled { forced: false }) => {}
            other => panic!("task {}: {other:?}", task.id()),
        }
        let kinds = recorder.kinds_of(task);
        assert_eq!(
            kinds.iter().filter(|kind| is_terminal(**kind)).count(),
            1,
            "{kinds:?}"
        );
    }
    assert!(service.is_alive());
}

#[test]
fn tasks_submitted_while_the_service_closes_all_end() {
    let _watchdog = watchdog("tasks_submitted_while_the_service_closes_all_end");
    for _round in 0..10 {
        let service = start_fake(&["serve"]);
        let tasks: Vec<Task> = std::thread::scope(|scope| {
            let submitters: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..200)
                            .map(|task_idx| {
                                let script = if task_idx % 3 == 0 { "hang" } else { "echo" };
                                submit(&service, script)
                            })
                            .collect::<Vec<Task>>()
                    })
                })
                .collect();
            scope.spawn(|| service.close());
            submitters
                .into_iter()
                .flat_map(|submitter| submitter.join().expect("submit"))
                .collect()
        });
        for task in &tasks {
            match finish(task) {
                Ok(_) | Err(TaskError::Crashed(_)) => {}
                other => panic!("task {}: {other:?}", task.id()),
            }
        }
        assert!(!service.is_alive());
    }
}

#[test]
fn submitting_to_a_stopped_worker_never_blocks_and_nothing_is_lost() {
    let _watchdog = watchdog("submitting_to_a_stopped_worker_never_blocks");
    let service = start_fake(&["serve"]);
    let pid = service.pid();
    consort_tests::kill(pid, 19); // SIGSTOP: the worker reads nothing.
    let big = "y".repeat(100 * 1024);
    // 8 MiB of requests, a hundred times the pipe: if a submit blocked on the full pipe,
    // this loop would never end and the watchdog would fail the test.
    let tasks: Vec<Task> = (0..80)
        .map(|idx| {
            service
                .task("echo")
                .input("idx", idx)
                .input("payload", big.as_str())
                .submit()
                .expect("submit")
        })
        .collect();
    assert!(tasks.iter().all(|task| !task.state().is_finished()));
    consort_tests::kill(pid, 18); // SIGCONT
    for (idx, task) in tasks.iter().enumerate() {
        let outputs = finish(task).expect("complete");
        assert_eq!(outputs["idx"], idx);
    }
    assert!(service.invalid_lines().is_empty());
}
