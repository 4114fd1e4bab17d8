//! issue 14: a task's child that called `setsid()` left the worker's process group, so the
//! group kill missed it and it outlived the run, in `consort run` and in `consort map`.
//! Every descendant of a worker that keeps the worker's environment now dies with it,
//! however the worker ends: closed, crashed, killed, in a service or a pool.

use std::os::fd::OwnedFd;

use consort::Pool;
use consort_tests::wait_until;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, pidfd_send_signal, PidfdFlags, Signal};

use super::*;

/// A process the test watches through a pidfd, which names it for good: a pid recycled by
/// the many processes tests start is never taken for it. SIGKILLed when the test ends,
/// whatever happened.
pub(super) struct Watched {
    pid: u32,
    pidfd: OwnedFd,
}

impl Watched {
    #[track_caller]
    pub(super) fn new(pid: u32) -> Watched {
        let raw = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("a valid pid");
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).expect("pidfd_open");
        Watched { pid, pidfd }
    }

    /// Whether the process has ended (a zombie counts: it runs no more).
    pub(super) fn has_ended(&self) -> bool {
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        matches!(rustix::event::poll(&mut fds, Some(&Timespec::default())), Ok(ready) if ready > 0)
    }

    #[track_caller]
    pub(super) fn assert_dies(&self) {
        assert!(
            wait_until(TASK_LIMIT, || self.has_ended()),
            "process {}, which left the worker's group, outlived the worker",
            self.pid
        );
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = pidfd_send_signal(&self.pidfd, Signal::KILL);
    }
}

/// The process a `spawn-escaped` task reported, once it runs `idle`.
#[track_caller]
pub(super) fn escaped(outputs: &Args) -> Watched {
    let pid = outputs["escaped"]
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
        .expect("the escaped child's pid");
    let watched = Watched::new(pid);
    assert!(wait_until(TASK_LIMIT, || consort_tests::cmdline(pid)
        .get(1)
        .is_some_and(|arg| arg == "idle")));
    assert!(!watched.has_ended(), "the escaped child runs");
    watched
}

#[test]
fn issue_14_a_setsid_child_dies_when_its_service_closes() {
    let _watchdog = watchdog("issue_14_a_setsid_child_dies_when_its_service_closes");
    let service = start_fake(&["serve"]);
    let escaped = escaped(&finish(&submit(&service, "spawn-escaped")).expect("spawned"));
    service.close();
    escaped.assert_dies();
}

#[test]
fn issue_14_a_setsid_child_dies_when_its_worker_is_killed() {
    let _watchdog = watchdog("issue_14_a_setsid_child_dies_when_its_worker_is_killed");
    let service = start_fake(&["serve"]);
    let escaped = escaped(&finish(&submit(&service, "spawn-escaped")).expect("spawned"));
    let pending = submit(&service, "hang");
    assert!(wait_until(TASK_LIMIT, || pending.state() == TaskState::Running));
    consort_tests::kill(service.pid(), 9);
    crashed(&pending);
    escaped.assert_dies();
}

#[test]
fn issue_14_a_setsid_child_dies_when_its_task_is_hard_cancelled() {
    let _watchdog = watchdog("issue_14_a_setsid_child_dies_when_its_task_is_hard_cancelled");
    let service = start_fake(&["serve"]);
    let escaped = escaped(&finish(&submit(&service, "spawn-escaped")).expect("spawned"));
    let task = submit(&service, "hang");
    assert!(wait_until(TASK_LIMIT, || task.state() == TaskState::Running));
    task.cancel_hard(Duration::ZERO);
    assert_eq!(finish(&task), Err(TaskError::Canceled { forced: true }));
    escaped.assert_dies();
}

#[test]
fn issue_14_a_setsid_child_of_a_pool_task_dies_when_the_pool_closes() {
    let _watchdog = watchdog("issue_14_a_setsid_child_of_a_pool_task_dies_when_the_pool_closes");
    let pool = Pool::new(fake(&["serve"]), 2)
        .start()
        .expect("start the pool");
    let children: Vec<Watched> = (0..4)
        .map(|_| {
            let task = pool.task("spawn-escaped").submit().expect("submit");
            escaped(&finish(&task).expect("spawned"))
        })
        .collect();
    pool.close();
    for child in &children {
        child.assert_dies();
    }
}

#[test]
fn issue_14_a_python_task_s_new_session_child_dies_with_the_worker() {
    let _watchdog = watchdog("issue_14_a_python_task_s_new_session_child_dies_with_the_worker");
    // What `consort run` does: consort's Python worker, one task, then close.
    let service = consort::Service::consort_python(consort_tests::python())
        .with_close_grace(GRACE)
        .with_kill_grace(GRACE)
        .start()
        .expect("start");
    let script = "import subprocess, sys\n\
        child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n\
            start_new_session=True, stdin=subprocess.DEVNULL,\n\
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
        child.pid";
    let outputs = finish(&submit(&service, script)).expect("spawned");
    let pid = outputs["result"]
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
        .expect("the child's pid");
    let child = Watched::new(pid);
    assert!(!child.has_ended(), "the new session's child runs");
    service.close();
    child.assert_dies();
}
