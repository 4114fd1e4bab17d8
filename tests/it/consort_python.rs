//! consort's own Python worker: its task threads take turns reading stdin (a task runs on
//! the thread that read it), and that must never cost concurrency or a lost CANCEL.

use super::*;

fn consort_python() -> ServiceBuilder {
    consort::Service::consort_python(consort_tests::python())
        .with_close_grace(GRACE)
        .with_kill_grace(GRACE)
}

/// A task that runs until it is cancelled.
const UNTIL_CANCELLED: &str =
    "import time\nwhile not task.cancel_requested:\n    time.sleep(0.005)\ntask.cancel()";

#[test]
fn a_cancel_is_read_while_every_task_thread_is_busy() {
    let _watchdog = watchdog("a_cancel_is_read_while_every_task_thread_is_busy");
    // Two task threads: two tasks run, two wait for a thread, and a CANCEL for each must
    // still be read (the reader is a thread of its own once all task threads are busy).
    let service = consort_python()
        .with_env("CONSORT_WORKER_THREADS", "2")
        .start()
        .expect("start");
    let tasks: Vec<Task> = (0..4).map(|_| submit(&service, UNTIL_CANCELLED)).collect();
    assert!(wait_until(TASK_LIMIT * slowdown(), || tasks
        .iter()
        .filter(|task| task.state() == TaskState::Running)
        .count()
        == 2));
    for task in &tasks {
        task.cancel();
    }
    for task in &tasks {
        assert!(
            matches!(finish(task), Err(TaskError::Canceled { forced: false })),
            "{:?}",
            task.state()
        );
    }
    assert!(service.is_alive());
}

#[test]
fn tasks_read_by_one_thread_after_another_all_run_at_once() {
    let _watchdog = watchdog("tasks_read_by_one_thread_after_another_all_run_at_once");
    // Each task waits until all eight run: if a reader ran its task while no other thread
    // read on, the barrier would break and the tasks fail.
    let service = consort_python()
        .with_init("import threading\nbarrier = threading.Barrier(8, timeout=30)")
        .start()
        .expect("start");
    for round in 0..3 {
        let tasks: Vec<Task> = (0..8)
            .map(|idx| {
                service
                    .task("barrier.wait()\nidx")
                    .input("idx", idx)
                    .submit()
                    .expect("submit")
            })
            .collect();
        for (idx, task) in tasks.iter().enumerate() {
            let outputs = finish(task).unwrap_or_else(|err| panic!("round {round}: {err}"));
            assert_eq!(outputs["result"], idx);
        }
    }
}

#[test]
fn a_cancel_sent_right_after_its_execute_is_never_lost() {
    let _watchdog = watchdog("python-cancel-right-after-execute");
    // Threads switch every microsecond, not every 5 ms: a reader that let go of stdin
    // before it registered its task would lose this race at once.
    let service = consort_python()
        .with_init("import sys\nsys.setswitchinterval(1e-6)")
        .start()
        .expect("start");
    assert_cancels_right_after_execute_are_honoured(|| submit(&service, UNTIL_CANCELLED));
}

#[test]
fn main_queue_tasks_start_in_the_order_they_came() {
    let _watchdog = watchdog("python-main-queue-order");
    let service = consort_python()
        .with_init("import sys\nsys.setswitchinterval(1e-6)")
        .start()
        .expect("start");
    assert_main_queue_is_fifo(&service, 40, "idx");
}
