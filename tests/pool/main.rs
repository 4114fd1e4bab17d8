//! Pool tests: real worker processes, real signals (SIGKILL, SIGSTOP), each test under a
//! [`Watchdog`]. Their own binary, as the `kill` tests: they signal processes and count
//! this process's children and fds.
//!
//! Fast-starting workers (the SDK's `echo_worker`) serve the loops that kill many times;
//! consort's Python worker serves the tests that need scripts (memory growth, SIGSTOP,
//! retries of a self-killing script).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consort::pool::PoolEvent;
use consort::{
    EventKind, Pool, PoolBuilder, PoolError, Service, ServiceBuilder, Task, TaskError, TaskEvent,
    TaskState,
};
use consort_tests::{
    children, is_running, kill, open_fds, python, slowdown, wait_until, workers_the_machine_holds,
    Watchdog,
};
use serde_json::json;

/// How long any one test may run before its watchdog aborts the binary.
const LIMIT: Duration = Duration::from_secs(120);

/// How long a test waits for something that should happen, before failing.
const WAIT: Duration = Duration::from_secs(30);

const GRACE: Duration = Duration::from_millis(300);

fn echo_worker() -> ServiceBuilder {
    Service::new(Command::new(env!("CARGO_BIN_EXE_echo_worker")))
        .with_close_grace(GRACE)
        .with_kill_grace(GRACE)
}

fn python_worker() -> ServiceBuilder {
    consort::Service::consort_python(python())
        .with_close_grace(GRACE)
        .with_kill_grace(GRACE)
}

#[track_caller]
fn finish(task: &Task) -> Result<consort::Args, TaskError> {
    match task.wait_timeout(WAIT * slowdown()) {
        Err(TaskError::NotFinished(limit)) => {
            panic!("task {} did not end within {limit:?}", task.id())
        }
        result => result,
    }
}

fn recorder() -> (
    Arc<Mutex<Vec<TaskEvent>>>,
    impl Fn(&TaskEvent) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    (events, move |event: &TaskEvent| {
        sink.lock().unwrap().push(event.clone())
    })
}

/// Pool events, with when they were seen.
type Seen = Arc<Mutex<Vec<(Instant, PoolEvent)>>>;

fn pool_events(builder: PoolBuilder) -> (PoolBuilder, Seen) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let builder = builder.with_monitor(move |event| {
        sink.lock().unwrap().push((Instant::now(), event.clone()));
    });
    (builder, events)
}

fn no_zombie_children() -> bool {
    children().iter().all(|(_, state)| *state != 'Z')
}

#[test]
fn map_yields_results_in_input_order_across_workers() {
    let _watchdog = Watchdog::new("map_yields_results_in_input_order_across_workers", LIMIT);
    let pool = Pool::new(echo_worker(), 3).start().expect("start pool");
    let inputs = (0..200).map(|idx| {
        let mut args = consort::Args::new();
        args.insert("idx".to_owned(), json!(idx));
        args
    });
    let results: Vec<_> = pool.map("echo", inputs).collect();
    assert_eq!(results.len(), 200);
    for (idx, result) in results.into_iter().enumerate() {
        assert_eq!(result.expect("echo completes")["idx"], json!(idx));
    }
    let stats = pool.stats();
    assert_eq!(stats.alive(), 3);
}

#[test]
fn pool_task_has_the_service_task_api_and_events() {
    let _watchdog = Watchdog::new("pool_task_has_the_service_task_api_and_events", LIMIT);
    let pool = Pool::new(echo_worker(), 2).start().expect("start pool");
    let (events, listener) = recorder();
    let task = pool
        .task("progress")
        .input("n", 3)
        .listen(listener)
        .submit()
        .expect("submit");
    let outputs = finish(&task).expect("completes");
    assert_eq!(outputs["n"], 3);
    assert_eq!(task.state(), TaskState::Complete);
    let events = events.lock().unwrap();
    let kinds: Vec<_> = events.iter().map(|event| event.kind).collect();
    assert_eq!(kinds.first(), Some(&EventKind::Launch));
    assert_eq!(kinds.last(), Some(&EventKind::Completion));
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| **kind == EventKind::Update)
            .count(),
        3
    );
    assert!(events.iter().all(|event| &event.task == task.id()));
}

#[test]
fn sigkill_of_a_worker_crashes_its_tasks_and_the_pool_is_back_to_four() {
    let _watchdog = Watchdog::new("sigkill_of_a_worker_crashes_its_tasks", LIMIT);
    // Without suspect reruns: its two tasks would otherwise run again, alone.
    let pool = Pool::new(echo_worker(), 4)
        .with_rerun_suspects(false)
        .start()
        .expect("start pool");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            pool.task("sleep")
                .input("seconds", 60.0)
                .submit()
                .expect("submit")
        })
        .collect();
    assert!(wait_until(WAIT, || tasks
        .iter()
        .all(|task| task.state() == TaskState::Running)));
    let before = pool.stats().pids;
    let victim = before[0].expect("slot 0 has a worker");
    kill(victim, 9);
    // Exactly the victim's tasks end CRASHED; the others keep running.
    assert!(wait_until(WAIT, || tasks
        .iter()
        .any(|task| task.state() == TaskState::Crashed)));
    assert!(wait_until(WAIT, || pool.stats().alive() == 4
        && !pool.stats().pids.contains(&Some(victim))));
    let n_crashed = tasks
        .iter()
        .filter(|task| task.state() == TaskState::Crashed)
        .count();
    assert_eq!(n_crashed, 2, "the 8 tasks were spread 2 per worker");
    for task in tasks
        .iter()
        .filter(|task| task.state() == TaskState::Crashed)
    {
        match task.error() {
            Some(TaskError::Crashed(report)) => assert_eq!(report.pid, victim),
            other => panic!("expected a crash report, got {other:?}"),
        }
    }
    assert_eq!(
        tasks
            .iter()
            .filter(|task| task.state() == TaskState::Running)
            .count(),
        6
    );
    // The replacement takes tasks.
    let task = pool.task("echo").input("x", 1).submit().expect("submit");
    assert_eq!(finish(&task).expect("completes")["x"], 1);
    pool.close();
    for task in &tasks {
        assert!(task.state().is_finished());
    }
}

#[test]
fn a_task_lost_to_a_kill_is_retried_when_asked_and_each_attempt_is_an_event() {
    let _watchdog = Watchdog::new("a_task_lost_to_a_kill_is_retried", LIMIT);
    let pool = Pool::new(echo_worker(), 2)
        .with_isolated(true)
        .start()
        .expect("start pool");
    let (events, listener) = recorder();
    let task = pool
        .task("sleep")
        .input("seconds", 0.5)
        .retries(2)
        .listen(listener)
        .submit()
        .expect("submit");
    assert!(wait_until(WAIT, || task.state() == TaskState::Running));
    // Which worker runs it: the one with a task (isolated, a single task).
    let victim = wait_for_busy_pid(&pool);
    kill(victim, 9);
    finish(&task).expect("the second attempt completes");
    let events = events.lock().unwrap();
    let kinds: Vec<_> = events.iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Launch,
            EventKind::Retry,
            EventKind::Launch,
            EventKind::Completion
        ]
    );
    let retry = &events[1];
    assert_eq!(
        retry.info(),
        Some(&json!({"attempt": 2, "alone": true, "charged": true}))
    );
    assert!(retry.error.as_deref().unwrap_or("").contains("SIGKILL"));
}

/// The pid of the one worker that runs a task.
fn wait_for_busy_pid(pool: &Pool) -> u32 {
    let mut found = None;
    assert!(wait_until(WAIT, || {
        found = pool.stats().busy.first().copied();
        found.is_some()
    }));
    found.expect("a busy worker")
}

#[test]
fn a_task_that_fails_in_user_code_is_not_retried() {
    let _watchdog = Watchdog::new("a_task_that_fails_in_user_code_is_not_retried", LIMIT);
    let pool = Pool::new(echo_worker(), 1)
        .with_retries(3)
        .start()
        .expect("start pool");
    let (events, listener) = recorder();
    let task = pool
        .task("fail")
        .input("message", "no")
        .listen(listener)
        .submit()
        .expect("submit");
    assert!(matches!(finish(&task), Err(TaskError::Failed { .. })));
    let n_launches = events
        .lock()
        .unwrap()
        .iter()
        .filter(|event| event.kind == EventKind::Launch)
        .count();
    assert_eq!(n_launches, 1);
}

#[test]
fn hundred_kills_in_a_row_leave_no_zombie_no_fd_and_four_workers() {
    let _watchdog = Watchdog::new("hundred_kills_in_a_row", LIMIT);
    let pool = Pool::new(echo_worker(), 4)
        .with_isolated(true)
        .with_max_restarts_per_minute(1000)
        .start()
        .expect("start pool");
    // Warm up: every slot has run a task.
    let warm: Vec<_> = (0..8)
        .map(|_| pool.task("echo").submit().expect("submit"))
        .collect();
    for task in &warm {
        finish(task).expect("completes");
    }
    assert!(wait_until(WAIT, || pool.stats().alive() == 4));
    let fds_before = open_fds();
    for round in 0..100 {
        // A listener makes RUNNING mean the worker's LAUNCH (see `Pool::task`): the kill
        // hits a worker that got going, not one that dies before a word (a start failure).
        let task = pool
            .task("sleep")
            .input("seconds", 60.0)
            .listen(|_| {})
            .submit()
            .expect("submit");
        assert!(wait_until(WAIT, || task.state() == TaskState::Running));
        let victim = wait_for_busy_pid(&pool);
        kill(victim, 9);
        match finish(&task) {
            Err(TaskError::Crashed(report)) => assert_eq!(report.pid, victim, "round {round}"),
            other => panic!("round {round}: expected CRASHED, got {other:?}"),
        }
        assert!(
            wait_until(WAIT, || {
                let stats = pool.stats();
                stats.alive() == 4 && !stats.pids.contains(&Some(victim))
            }),
            "round {round}: the pool is not back to 4 workers: {:?}",
            pool.stats()
        );
    }
    assert_eq!(pool.stats().restarts, 100);
    assert!(
        wait_until(WAIT, no_zombie_children),
        "zombies: {:?}",
        children()
    );
    assert!(
        wait_until(WAIT, || open_fds() <= fds_before),
        "fds: {} before, {} after",
        fds_before,
        open_fds()
    );
    let pids: Vec<u32> = pool.stats().pids.into_iter().flatten().collect();
    pool.close();
    for pid in pids {
        assert!(!is_running(pid), "worker {pid} outlived the pool");
    }
    assert!(wait_until(WAIT, no_zombie_children));
}

#[test]
fn a_worker_whose_memory_grows_is_recycled_between_tasks_and_no_task_fails() {
    let _watchdog = Watchdog::new("memory_growth_recycle", LIMIT);
    let (builder, events) = pool_events(
        Pool::new(python_worker(), 1)
            .with_isolated(true)
            .with_max_rss_growth(60_000_000),
    );
    let pool = builder.start().expect("start pool");
    // Each task keeps 25 MB alive in the worker (bytes are touched, so resident).
    let script = "import builtins\n\
                  leak = builtins.__dict__.setdefault('_consort_leak', [])\n\
                  leak.append(b'x' * 25_000_000)\n\
                  len(leak)";
    for idx in 0..8 {
        let task = pool.task(script).submit().expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("task {idx} failed: {err}"));
        assert!(outputs["result"].as_u64().is_some());
    }
    let stats = pool.stats();
    assert!(stats.recycled >= 1, "no recycle: {stats:?}");
    assert_eq!(stats.restarts, 0, "recycling is not a crash: {stats:?}");
    let events = events.lock().unwrap();
    assert!(events.iter().any(|(_, event)| matches!(
        event,
        PoolEvent::WorkerRecycled { reason, .. } if reason.contains("resident memory")
    )));
}

#[test]
fn max_tasks_recycles_the_worker_between_tasks() {
    let _watchdog = Watchdog::new("max_tasks_recycles", LIMIT);
    let pool = Pool::new(echo_worker(), 1)
        .with_max_tasks(3)
        .start()
        .expect("start pool");
    let mut pids = Vec::new();
    for _ in 0..7 {
        let task = pool.task("echo").submit().expect("submit");
        finish(&task).expect("completes");
        pids.extend(pool.stats().pids.into_iter().flatten());
    }
    pids.dedup();
    assert!(pids.len() >= 3, "workers seen: {pids:?}");
    assert_eq!(pool.stats().recycled, 2);
}

#[test]
fn a_sigstopped_worker_is_detected_and_replaced_within_its_bound() {
    let _watchdog = Watchdog::new("sigstopped_worker_detected", LIMIT);
    let wedged_after = Duration::from_millis(1500);
    let pool = Pool::new(python_worker(), 2)
        .with_isolated(true)
        .with_heartbeat(Duration::from_millis(100), wedged_after)
        .start()
        .expect("start pool");
    let task = pool
        .task("import time\ntime.sleep(60)")
        .listen(|_| {})
        .submit()
        .expect("submit");
    assert!(wait_until(WAIT, || task.state() == TaskState::Running));
    let victim = wait_for_busy_pid(&pool);
    // A busy worker keeps its heartbeat: still alive after the bound.
    let stopped_at = Instant::now();
    kill(victim, 19);
    let error = match finish(&task) {
        Err(TaskError::Crashed(report)) => report,
        other => panic!("expected CRASHED, got {other:?}"),
    };
    let detected = stopped_at.elapsed();
    assert_eq!(error.pid, victim);
    let cause = error.cause.unwrap_or_default();
    assert!(cause.contains("stopped answering"), "cause: {cause}");
    // Detected no earlier than the bound (less the heartbeat interval: its last line came
    // up to one interval before the stop), and well within a generous bound, then replaced.
    assert!(
        detected + Duration::from_millis(100) >= wedged_after,
        "detected after {detected:?}"
    );
    assert!(
        detected < wedged_after + Duration::from_secs(10) * slowdown(),
        "detected only after {detected:?}"
    );
    assert!(wait_until(WAIT, || pool.stats().alive() == 2
        && !pool.stats().pids.contains(&Some(victim))));
    assert_eq!(pool.stats().wedged, 1);
    let task = pool.task("6 * 7").submit().expect("submit");
    assert_eq!(finish(&task).expect("completes")["result"], 42);
}

#[test]
fn heartbeats_keep_a_busy_worker_alive() {
    let _watchdog = Watchdog::new("heartbeats_keep_a_busy_worker_alive", LIMIT);
    let pool = Pool::new(python_worker(), 1)
        .with_heartbeat(Duration::from_millis(50), Duration::from_millis(800))
        .start()
        .expect("start pool");
    // Runs three times longer than the silence bound, saying nothing but heartbeats.
    let task = pool
        .task("import time\ntime.sleep(2.4)\n1")
        .submit()
        .expect("submit");
    assert_eq!(finish(&task).expect("completes")["result"], 1);
    assert_eq!(pool.stats().wedged, 0);
}

#[test]
fn restart_storm_is_spaced_by_the_backoff_and_reported() {
    let _watchdog = Watchdog::new("restart_storm", LIMIT);
    let mut command = Command::new("/bin/sh");
    command.args(["-c", "echo cannot start >&2; exit 3"]);
    let initial = Duration::from_millis(100);
    let (builder, events) = pool_events(
        Pool::new(Service::new(command), 1).with_backoff(initial, Duration::from_millis(400)),
    );
    let pool = builder.start().expect("start pool");
    let starts = || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, event)| matches!(event, PoolEvent::WorkerStarted { .. }))
            .map(|(at, _)| *at)
            .collect::<Vec<_>>()
    };
    assert!(wait_until(WAIT, || starts().len() >= 6));
    let starts = starts();
    // Deaths at start 1, 2, 3, 4, 5: delays 0, 100, 200, 400 (capped), 400 ms.
    let expected = [0, 100, 200, 400, 400];
    for (idx, min_ms) in expected.iter().enumerate() {
        let gap = starts[idx + 1].duration_since(starts[idx]);
        assert!(
            gap >= Duration::from_millis(*min_ms),
            "restart {} came {gap:?} after the previous start, before its {min_ms} ms backoff",
            idx + 1
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.failing, [0]);
    let events = events.lock().unwrap();
    let failing = events.iter().find_map(|(_, event)| match event {
        PoolEvent::WorkerFailing { last_error, .. } => Some(last_error.clone()),
        _ => None,
    });
    let failing = failing.expect("the pool reports the failing slot");
    assert!(failing.contains("exit code 3"), "{failing}");
}

#[test]
fn restarts_per_minute_are_capped() {
    let _watchdog = Watchdog::new("restarts_per_minute_are_capped", LIMIT);
    let mut command = Command::new("/bin/sh");
    command.args(["-c", "exit 3"]);
    let (builder, events) = pool_events(
        Pool::new(Service::new(command), 1)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(1))
            .with_max_restarts_per_minute(3),
    );
    let pool = builder.start().expect("start pool");
    assert!(wait_until(WAIT, || {
        events.lock().unwrap().iter().any(
        |(_, event)| matches!(event, PoolEvent::WorkerFailing { delay_ms, .. } if *delay_ms > 30_000)
    )
    }));
    let n_starts = events
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, event)| matches!(event, PoolEvent::WorkerStarted { .. }))
        .count();
    assert!(n_starts <= 4, "{n_starts} starts within a minute");
    drop(pool);
}

#[test]
fn a_task_past_its_deadline_ends_timed_out_through_the_kill_escalation() {
    let _watchdog = Watchdog::new("deadline_timed_out", LIMIT);
    let pool = Pool::new(python_worker(), 1)
        .with_isolated(true)
        .with_cancel_grace(Duration::from_millis(200))
        .start()
        .expect("start pool");
    // Ignores its CANCEL (blocked in C: the async exception cannot reach it).
    let (events, listener) = recorder();
    let task = pool
        .task("import time\nwhile True:\n    try:\n        time.sleep(60)\n    except BaseException:\n        pass")
        .deadline(Duration::from_millis(500))
        .listen(listener)
        .submit()
        .expect("submit");
    match finish(&task) {
        Err(TaskError::DeadlinePassed(deadline)) => {
            assert_eq!(deadline, Duration::from_millis(500))
        }
        other => panic!("expected TIMED_OUT, got {other:?}"),
    }
    assert_eq!(task.state(), TaskState::TimedOut);
    assert_eq!(
        events.lock().unwrap().last().map(|event| event.kind),
        Some(EventKind::Timeout)
    );
    // The killed worker is replaced and takes tasks.
    let task = pool.task("1 + 1").submit().expect("submit");
    assert_eq!(finish(&task).expect("completes")["result"], 2);
}

#[test]
fn a_full_queue_declines_try_submit_and_cancel_ends_a_queued_task() {
    let _watchdog = Watchdog::new("full_queue", LIMIT);
    let pool = Pool::new(echo_worker(), 1)
        .with_isolated(true)
        .with_queue_limit(2)
        .start()
        .expect("start pool");
    let running = pool
        .task("sleep")
        .input("seconds", 60.0)
        .submit()
        .expect("submit");
    assert!(wait_until(WAIT, || running.state() == TaskState::Running));
    let queued: Vec<_> = (0..2)
        .map(|_| pool.task("echo").try_submit().expect("room in the queue"))
        .collect();
    match pool.task("echo").try_submit() {
        Err(PoolError::QueueFull(2)) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }
    queued[0].cancel();
    assert!(matches!(
        finish(&queued[0]),
        Err(TaskError::Canceled { forced: false })
    ));
    // The cancelled task left the queue: there is room for one more.
    let third = pool.task("echo").try_submit().expect("room again");
    running.cancel();
    assert!(matches!(finish(&running), Err(TaskError::Canceled { .. })));
    finish(&queued[1]).expect("the other queued task runs");
    finish(&third).expect("the third queued task runs");
    // A blocking submit goes through once there is room.
    let task = pool.task("echo").input("x", 5).submit().expect("submit");
    assert_eq!(finish(&task).expect("completes")["x"], 5);
}

#[test]
fn close_ends_every_task_and_leaves_no_worker() {
    let _watchdog = Watchdog::new("close_ends_every_task", LIMIT);
    let pool = Pool::new(echo_worker(), 3)
        .with_isolated(true)
        .start()
        .expect("start pool");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            pool.task("sleep")
                .input("seconds", 60.0)
                .submit()
                .expect("submit")
        })
        .collect();
    assert!(wait_until(WAIT, || tasks
        .iter()
        .filter(|task| task.state() == TaskState::Running)
        .count()
        == 3));
    let pids: Vec<u32> = pool.stats().pids.into_iter().flatten().collect();
    assert_eq!(pids.len(), 3);
    drop(pool);
    for task in &tasks {
        assert!(task.state().is_finished(), "{task:?} did not end");
    }
    // The queued ones end CANCELED; the running ones CANCELED (the worker cancels its
    // tasks at stdin EOF) or CRASHED (closed before it answered).
    let n_canceled = tasks
        .iter()
        .filter(|task| task.state() == TaskState::Canceled)
        .count();
    assert!(n_canceled >= 7, "the queued tasks end CANCELED: {tasks:?}");
    assert!(tasks
        .iter()
        .all(|task| matches!(task.state(), TaskState::Canceled | TaskState::Crashed)));
    for pid in pids {
        assert!(!is_running(pid), "worker {pid} outlived the pool");
    }
    assert!(wait_until(WAIT, no_zombie_children));
}

#[test]
fn a_spare_worker_replaces_a_killed_one_at_once() {
    let _watchdog = Watchdog::new("spare_replaces_killed", LIMIT);
    let pool = Pool::new(echo_worker(), 1)
        .with_isolated(true)
        .with_spare(true)
        .start()
        .expect("start pool");
    let echo_workers = || {
        children()
            .into_iter()
            .filter(|(pid, state)| {
                *state != 'Z'
                    && consort_tests::cmdline(*pid)
                        .first()
                        .is_some_and(|arg| arg.ends_with("echo_worker"))
            })
            .map(|(pid, _)| pid)
            .collect::<Vec<_>>()
    };
    assert!(wait_until(WAIT, || echo_workers().len() == 2));
    let task = pool
        .task("sleep")
        .input("seconds", 60.0)
        .submit()
        .expect("submit");
    let victim = wait_for_busy_pid(&pool);
    let spare = echo_workers()
        .into_iter()
        .find(|pid| *pid != victim)
        .expect("a spare worker");
    kill(victim, 9);
    assert!(matches!(finish(&task), Err(TaskError::Crashed(_))));
    assert!(wait_until(WAIT, || pool.stats().pids == [Some(spare)]));
    let task = pool.task("echo").input("x", 3).submit().expect("submit");
    assert_eq!(finish(&task).expect("completes")["x"], 3);
    // A new spare stands by again.
    assert!(wait_until(WAIT, || echo_workers().len() == 2));
    drop(pool);
    assert!(wait_until(WAIT, || echo_workers().is_empty()));
}

#[test]
fn isolated_mode_a_hard_cancel_touches_no_other_task() {
    let _watchdog = Watchdog::new("isolated_hard_cancel", LIMIT);
    let pool = Pool::new(python_worker(), 2)
        .with_isolated(true)
        .start()
        .expect("start pool");
    // Ignores its CANCEL and the asynchronous exception: only the kill ends it.
    let stubborn = pool
        .task("import time\nwhile True:\n    try:\n        time.sleep(60)\n    except BaseException:\n        pass")
        .listen(|_| {})
        .submit()
        .expect("submit");
    let other = pool
        .task("import time\ntime.sleep(1.5)\n'done'")
        .listen(|_| {})
        .submit()
        .expect("submit");
    assert!(wait_until(WAIT, || stubborn.state() == TaskState::Running
        && other.state() == TaskState::Running));
    stubborn.cancel_hard(Duration::from_millis(200));
    assert!(matches!(
        finish(&stubborn),
        Err(TaskError::Canceled { forced: true })
    ));
    assert_eq!(
        finish(&other).expect("the other task completes")["result"],
        "done"
    );
    assert!(wait_until(WAIT, || pool.stats().alive() == 2));
}

#[test]
fn tasks_hard_cancelled_together_on_one_worker_all_end_canceled() {
    let _watchdog = Watchdog::new("hard_cancel_together", LIMIT);
    let pool = Pool::new(python_worker(), 1).start().expect("start pool");
    // Ignore their CANCEL and the asynchronous exception: only the kill ends them.
    let stubborn = "import time\nwhile True:\n    try:\n        time.sleep(60)\n    except BaseException:\n        pass";
    let tasks: Vec<Task> = (0..3)
        .map(|_| pool.task(stubborn).listen(|_| {}).submit().expect("submit"))
        .collect();
    assert!(wait_until(WAIT, || tasks
        .iter()
        .all(|task| task.state() == TaskState::Running)));
    // As `consort map` does on Ctrl-C: whichever grace ends first kills the one worker,
    // before the others' own kill; each must still end as the cancel it asked for.
    for (idx, task) in tasks.iter().enumerate() {
        task.cancel_hard(Duration::from_millis(100) * (1 + 50 * idx as u32));
    }
    for task in &tasks {
        assert!(
            matches!(finish(task), Err(TaskError::Canceled { forced: true })),
            "{:?}",
            task.error()
        );
    }
}

#[test]
fn memory_stays_bounded_through_many_submissions() {
    let _watchdog = Watchdog::new("memory_bounded", Duration::from_secs(600));
    // A million with CONSORT_SLOW_TESTS (about a minute); enough to see a per-task leak
    // of a few hundred bytes otherwise.
    let n_tasks = if consort_tests::slow_tests() {
        1_000_000
    } else {
        50_000
    };
    let pool = Pool::new(echo_worker(), 2)
        .with_queue_limit(1000)
        .start()
        .expect("start pool");
    let empty = || std::iter::repeat_with(consort::Args::new);
    for result in pool.map("echo", empty().take(5_000)) {
        result.expect("echo completes");
    }
    let rss_before = consort_tests::rss_bytes();
    let mut n_done = 0;
    for result in pool.map("echo", empty().take(n_tasks)) {
        result.expect("echo completes");
        n_done += 1;
    }
    assert_eq!(n_done, n_tasks);
    let growth = consort_tests::rss_bytes().saturating_sub(rss_before);
    assert!(
        growth < 32_000_000,
        "resident memory grew by {growth} bytes over {n_tasks} tasks"
    );
}

#[test]
fn a_sigstopped_rust_sdk_worker_is_detected_by_its_heartbeat() {
    let _watchdog = Watchdog::new("sigstopped_sdk_worker", LIMIT);
    let pool = Pool::new(echo_worker(), 1)
        .with_heartbeat(Duration::from_millis(50), Duration::from_millis(1000))
        .start()
        .expect("start pool");
    let task = pool
        .task("sleep")
        .input("seconds", 60.0)
        .submit()
        .expect("submit");
    let victim = wait_for_busy_pid(&pool);
    kill(victim, 19);
    match finish(&task) {
        Err(TaskError::Crashed(report)) => {
            assert_eq!(report.pid, victim);
            assert!(report
                .cause
                .unwrap_or_default()
                .contains("stopped answering"));
        }
        other => panic!("expected CRASHED, got {other:?}"),
    }
    assert!(wait_until(WAIT, || pool.stats().alive() == 1
        && !pool.stats().pids.contains(&Some(victim))));
}

#[test]
fn heartbeats_are_swallowed_by_the_supervisor_not_reported_as_noise() {
    let _watchdog = Watchdog::new("heartbeats_swallowed", LIMIT);
    // A plain service whose worker was asked for heartbeats: they flow during the task,
    // and none of them shows up as an invalid stdout line.
    let service = python_worker()
        .with_env(consort::protocol::HEARTBEAT_ENV, "0.02")
        .start()
        .expect("start");
    let task = service
        .task("import time\ntime.sleep(0.5)\n1")
        .submit()
        .expect("submit");
    assert_eq!(finish(&task).expect("completes")["result"], 1);
    assert_eq!(service.invalid_lines(), Vec::<String>::new());
    // And they are really written: read the worker's raw stdout.
    let mut raw = consort::python::consort_worker_command(python())
        .env(consort::protocol::HEARTBEAT_ENV, "0.02")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the Python worker");
    let stdout = raw.stdout.take().expect("stdout");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
        .expect("read a line");
    assert_eq!(
        first.trim_end().as_bytes(),
        consort::protocol::HEARTBEAT_LINE
    );
    drop(raw.stdin.take());
    raw.wait().expect("the worker exits at stdin EOF");
}

/// The events of `task` once it ended, with its id blanked and a worker's pid in an error
/// text made `_`, so that a service task's and a pool task's can be compared.
fn ended_events(task: &Task, events: &Mutex<Vec<TaskEvent>>) -> Vec<TaskEvent> {
    let _ = finish(task);
    // Listeners have seen the end before a wait returns (`task` invariant 2).
    let events = events.lock().unwrap().clone();
    events
        .into_iter()
        .map(|mut event| {
            event.task = consort::TaskId::new("");
            if let Some(error) = &mut event.error {
                // A pool task's crash also says whether it was alone on its worker.
                *error = error.replace("; the task was alone on the worker", "");
                if let Some(start) = error.find("(pid ") {
                    if let Some(len) = error[start..].find(')') {
                        error.replace_range(start..start + len + 1, "(pid _)");
                    }
                }
            }
            event
        })
        .collect()
}

#[test]
fn a_service_task_and_a_pool_task_that_end_the_same_way_send_the_same_events() {
    let _watchdog = Watchdog::new("same_events", LIMIT);
    let cases: [(&str, serde_json::Value, bool); 4] = [
        ("progress", json!({"n": 2}), false),
        ("fail", json!({"message": "no such thing"}), false),
        ("sleep", json!({"seconds": 30.0}), true),
        ("abort", json!({}), false),
    ];
    for (script, inputs, cancel) in cases {
        let inputs: consort::Args = serde_json::from_value(inputs).unwrap();
        let service = echo_worker().start().expect("start");
        let (service_events, listener) = recorder();
        let service_task = service
            .task(script)
            .inputs(inputs.clone())
            .listen(listener)
            .submit()
            .expect("submit");
        let pool = Pool::new(echo_worker(), 1).start().expect("pool");
        let (pool_events, listener) = recorder();
        let pool_task = pool
            .task(script)
            .inputs(inputs)
            .listen(listener)
            .submit()
            .expect("submit");
        if cancel {
            for task in [&service_task, &pool_task] {
                assert!(
                    wait_until(WAIT, || task.state() == TaskState::Running),
                    "{script}: the task never ran"
                );
                task.cancel();
            }
        }
        let from_service = ended_events(&service_task, &service_events);
        let from_pool = ended_events(&pool_task, &pool_events);
        assert!(
            from_service.len() >= 2,
            "{script}: a LAUNCH and an end at least: {from_service:?}"
        );
        assert_eq!(from_service, from_pool, "{script}: service vs pool");
        assert_eq!(service_task.state(), pool_task.state(), "{script}");
        pool.close();
        service.close();
    }
}

#[test]
fn in_isolated_mode_a_task_that_kills_its_worker_takes_no_other_down() {
    let _watchdog = Watchdog::new("isolated_killers", LIMIT);
    // One worker, one task at a time: each killer's worker is dead before the next task
    // is sent, and the next task must go to its replacement, not to the dead worker (its
    // exit may reach the manager after the killer's end).
    let pool = Pool::new(echo_worker(), 1)
        .with_isolated(true)
        .start()
        .expect("pool");
    let tasks: Vec<_> = (0..60)
        .map(|idx| {
            let script = if idx % 3 == 0 { "abort" } else { "echo" };
            pool.task(script)
                .input("idx", idx)
                .submit()
                .expect("submit")
        })
        .collect();
    for (idx, task) in tasks.iter().enumerate() {
        match finish(task) {
            Err(TaskError::Crashed(_)) if idx % 3 == 0 => {}
            Ok(outputs) if idx % 3 != 0 => assert_eq!(outputs["idx"], idx),
            other => panic!("task {idx}: {other:?}"),
        }
    }
    assert_eq!(pool.stats().restarts, 20);
}

/// Issue 14: a pool of 2 workers, 4 tasks each, where one task in ten aborts its worker,
/// lost 10 to 20 innocent tasks per 2,000 with one retry, and 53 to 62 with none: each
/// death crashed whatever ran beside the killer. Now a death with several tasks on the
/// worker charges none of them and reruns each alone, so every innocent task completes,
/// with or without retries, and the killer ends CRASHED alone.
#[test]
fn issue_14_a_task_that_kills_its_worker_takes_no_innocent_task_down() {
    let _watchdog = Watchdog::new("issue_14_killer_takes_no_innocent", LIMIT);
    for retries in [0, 1] {
        let pool = Pool::new(echo_worker(), 2)
            .with_retries(retries)
            .with_max_restarts_per_minute(1000)
            .start()
            .expect("start pool");
        let tasks: Vec<_> = (0..120)
            .map(|idx| {
                let builder = if idx % 10 == 3 {
                    pool.task("abort")
                } else {
                    pool.task("sleep").input("seconds", 0.02)
                };
                builder.input("idx", idx).submit().expect("submit")
            })
            .collect();
        for (idx, task) in tasks.iter().enumerate() {
            match finish(task) {
                Err(TaskError::Crashed(report)) if idx % 10 == 3 => assert_eq!(
                    report.beside,
                    Some(Vec::new()),
                    "retries {retries}, task {idx}: a killer ends CRASHED alone: {report}"
                ),
                Ok(_) if idx % 10 != 3 => {}
                other => panic!("retries {retries}, task {idx}: {other:?}"),
            }
        }
        pool.close();
    }
}

/// Issue 14: a worker that dies with two tasks on it charges neither. Each is rerun alone
/// (uncharged, even with no retries), the innocent one completes and the killer, alone,
/// is charged; every attempt's error says which tasks were beside it. With suspect reruns
/// off, both end CRASHED, each naming the other.
#[test]
fn issue_14_a_death_beside_others_is_charged_to_none_and_names_them() {
    let _watchdog = Watchdog::new("issue_14_death_beside_others", LIMIT);
    for rerun in [true, false] {
        let pool = Pool::new(echo_worker(), 1)
            .with_rerun_suspects(rerun)
            .start()
            .expect("start pool");
        let (innocent_events, listener) = recorder();
        // Long enough to still run when the killer kills, even on a loaded machine.
        let innocent = pool
            .task("sleep")
            .input("seconds", 3.0)
            .listen(listener)
            .submit()
            .expect("submit");
        assert!(wait_until(WAIT, || innocent.state() == TaskState::Running));
        let (killer_events, listener) = recorder();
        let killer = pool
            .task("abort")
            .listen(listener)
            .submit()
            .expect("submit");
        let innocent_id = innocent.id().to_string();
        let killer_id = killer.id().to_string();
        let killer_report = match finish(&killer) {
            Err(TaskError::Crashed(report)) => report,
            other => panic!("rerun {rerun}: the killer: {other:?}"),
        };
        if rerun {
            finish(&innocent).expect("the innocent task, rerun alone, completes");
            assert_eq!(killer_report.beside, Some(Vec::new()), "{killer_report}");
            assert!(
                killer_report
                    .to_string()
                    .contains("the task was alone on the worker"),
                "{killer_report}"
            );
            // Each one's first attempt died beside the other: a retry, alone, uncharged.
            for (events, other) in [
                (&innocent_events, &killer_id),
                (&killer_events, &innocent_id),
            ] {
                let events = events.lock().unwrap();
                let retry = events
                    .iter()
                    .find(|event| event.kind == EventKind::Retry)
                    .expect("a Retry event");
                assert_eq!(
                    retry.info(),
                    Some(&json!({"attempt": 2, "alone": true, "charged": false}))
                );
                let error = retry.error.as_deref().unwrap_or_default();
                assert!(
                    error.contains(&format!("1 other task was running on the worker: {other}")),
                    "{error}"
                );
            }
        } else {
            let innocent_report = match finish(&innocent) {
                Err(TaskError::Crashed(report)) => report,
                other => panic!("without reruns, the innocent task crashes: {other:?}"),
            };
            assert_eq!(
                innocent_report.beside.as_ref().map(|ids| ids.len()),
                Some(1),
                "{innocent_report}"
            );
            assert_eq!(innocent_report.beside.unwrap()[0].to_string(), killer_id);
            assert_eq!(killer_report.beside.unwrap()[0].to_string(), innocent_id);
        }
        pool.close();
    }
}

/// Issue 14: consort's Python worker holds a task's LAUNCH back for a millisecond, so a
/// task that kills its worker at once left stdout silent, and the death counted as a
/// death at start: backoff, then the per-minute cap (a minute with no worker, `consort
/// map` exiting 2 "the workers keep dying at start"). A worker that read a request got
/// going: whatever then killed it, its slot restarts at once, uncapped.
#[test]
fn issue_14_a_worker_killed_by_its_first_task_did_not_die_at_start() {
    let _watchdog = Watchdog::new("issue_14_first_task_kills", LIMIT);
    let (builder, events) = pool_events(
        Pool::new(python_worker(), 1)
            .with_isolated(true)
            .with_backoff(Duration::from_secs(60), Duration::from_secs(60))
            .with_max_restarts_per_minute(2),
    );
    let pool = builder.start().expect("start pool");
    let killers: Vec<_> = (0..6)
        .map(|_| {
            pool.task("import os\nos.kill(os.getpid(), 9)")
                .submit()
                .expect("submit")
        })
        .collect();
    let after = pool.task("6 * 7").submit().expect("submit");
    for (idx, killer) in killers.iter().enumerate() {
        assert!(
            matches!(finish(killer), Err(TaskError::Crashed(_))),
            "killer {idx}"
        );
    }
    assert_eq!(finish(&after).expect("completes")["result"], 42);
    let events = events.lock().unwrap();
    let failing: Vec<_> = events
        .iter()
        .filter(|(_, event)| matches!(event, PoolEvent::WorkerFailing { .. }))
        .collect();
    assert!(failing.is_empty(), "{failing:?}");
    assert_eq!(pool.stats().restarts, 6);
    assert!(pool.stats().failing.is_empty());
}

/// Issue 14: `Pool::start` started every worker before it returned, so `consort map
/// --workers 1000` did not hear SIGTERM for tens of seconds. Now it starts the first and
/// the manager starts the others, one per turn of its loop, hearing `close` between them.
/// The monitor holds the second start: `start` has returned by then, and `close` ends the
/// pool long before its 200 workers have all started.
#[test]
fn issue_14_start_returns_after_the_first_worker_and_close_is_heard_while_the_others_start() {
    let _watchdog = Watchdog::new("issue_14_incremental_start", LIMIT);
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Second {
        NotYet,
        Holding,
        Released,
        GaveUp,
    }
    let second = Arc::new((Mutex::new(Second::NotYet), std::sync::Condvar::new()));
    let n_started = Arc::new(Mutex::new(0));
    let builder = {
        let second = Arc::clone(&second);
        let n_started = Arc::clone(&n_started);
        // 200 workers, or two thirds of what this machine holds (`ulimit -n 1024` holds
        // about 160), as the pool itself reckons it.
        let n_workers = machine_holds().map_or(200, |max| (max * 2 / 3).min(200));
        assert!(
            n_workers >= 10,
            "this machine holds only {n_workers} workers"
        );
        Pool::new(echo_worker(), n_workers).with_monitor(move |event| {
            let PoolEvent::WorkerStarted { slot, .. } = event else {
                return;
            };
            *n_started.lock().unwrap() += 1;
            if *slot != 1 {
                return;
            }
            let (state, changed) = &*second;
            let mut state = state.lock().unwrap();
            *state = Second::Holding;
            changed.notify_all();
            let (mut state, timeout) = changed
                .wait_timeout_while(state, WAIT, |state| *state == Second::Holding)
                .unwrap();
            if timeout.timed_out() {
                *state = Second::GaveUp;
            }
        })
    };
    let pool = builder.start().expect("start pool");
    {
        let (state, changed) = &*second;
        let state = state.lock().unwrap();
        let (mut state, _) = changed
            .wait_timeout_while(state, WAIT, |state| *state == Second::NotYet)
            .unwrap();
        assert_eq!(
            *state,
            Second::Holding,
            "start returned only once the second worker's start was let go"
        );
        *state = Second::Released;
        changed.notify_all();
    }
    pool.close();
    let n_started = *n_started.lock().unwrap();
    assert!(
        n_started < 200,
        "all {n_started} workers started before close"
    );
    assert!(
        wait_until(WAIT, || children().is_empty()),
        "{:?}",
        children()
    );
}

/// Issue 14: `consort map --workers 100000` panicked on thread creation, then hung. A
/// count the machine cannot hold (each worker costs 7 processes or threads and 6 file
/// descriptors) is refused before anything starts, naming the limit.
#[test]
fn issue_14_more_workers_than_the_machine_holds_are_refused_naming_the_limit() {
    let _watchdog = Watchdog::new("issue_14_too_many_workers", LIMIT);
    // More than any Linux holds: pid_max is at most 2^22.
    match Pool::new(echo_worker(), 100_000_000).start() {
        Err(PoolError::Config(problem)) => {
            assert!(
                problem.contains("100000000 workers are more than this machine can hold")
                    && problem.contains("at most"),
                "{problem}"
            );
        }
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(pool) => panic!("started {} workers", pool.stats().alive()),
    }
    assert!(children().is_empty(), "{:?}", children());
}

/// How many workers the pool says this machine holds: the "at most N workers" of its
/// refusal of a count no machine holds; `None` when it names no limit.
fn machine_holds() -> Option<usize> {
    let err = Pool::new(echo_worker(), 100_000_000).start().err()?;
    workers_the_machine_holds(&err.to_string())
}
