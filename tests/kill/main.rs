//! Process-wide tests in a binary of their own: they count this process's fds, threads and
//! children, and SIGKILL a supervisor process. They run one at a time (`SERIAL`), so that one
//! test's workers never show up in another's counts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use consort::{ExitStatus, Service, ServiceBuilder, TaskError};
use consort_tests::{children, is_my_child, is_running, open_fds, threads, wait_until, Watchdog};

const SIGKILL: i32 = 9;

static SERIAL: Mutex<()> = Mutex::new(());

fn fake(mode: &str) -> ServiceBuilder {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fake_worker"));
    command.arg(mode);
    Service::new(command)
        .with_close_grace(Duration::from_millis(200))
        .with_kill_grace(Duration::from_millis(200))
}

/// What leaks would show: open fds, threads, and children (zombies included).
#[derive(Debug, PartialEq)]
struct Census {
    fds: usize,
    threads: usize,
    children: Vec<(u32, char)>,
}

fn census() -> Census {
    Census {
        fds: open_fds(),
        threads: threads(),
        children: children(),
    }
}

/// One worker's life, ended in one of six ways.
fn cycle(cycle_idx: usize) {
    let service = fake("serve").start().expect("start the fake worker");
    let pid = service.pid();
    match cycle_idx % 6 {
        0 => {
            service.kill();
        }
        1 => {
            // Killed from outside: the monitor notices and reaps.
            consort_tests::kill(pid, SIGKILL);
            assert_eq!(
                service.wait_exit(Duration::from_secs(10)),
                Some(ExitStatus::Signal(SIGKILL))
            );
        }
        2 => {
            let task = service.task("echo").input("x", 1).submit().expect("submit");
            assert_eq!(
                task.wait_timeout(Duration::from_secs(10)).expect("echo")["x"],
                1
            );
            assert_eq!(service.close(), ExitStatus::Code(0));
        }
        3 => {
            // Dropped with a task pending: drop closes.
            let task = service.task("hang").submit().expect("submit");
            drop(service);
            assert!(matches!(
                task.wait_timeout(Duration::from_secs(10)),
                Err(TaskError::Crashed(_))
            ));
        }
        4 => {
            // Hard cancel: its escalation thread must end too.
            let task = service.task("hang").submit().expect("submit");
            task.cancel_hard(Duration::ZERO);
            assert_eq!(
                task.wait_timeout(Duration::from_secs(10)),
                Err(TaskError::Canceled { forced: true })
            );
            assert!(service.wait_exit(Duration::from_secs(10)).is_some());
        }
        _ => {
            let task = service.task("hang").submit().expect("submit");
            consort_tests::kill(pid, SIGKILL);
            assert!(matches!(
                task.wait_timeout(Duration::from_secs(10)),
                Err(TaskError::Crashed(_))
            ));
        }
    }
    assert!(
        !is_my_child(pid),
        "cycle {cycle_idx}: worker {pid} was not reaped"
    );
}

#[test]
fn start_kill_cycles_leave_fds_threads_and_children_at_baseline() {
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let _watchdog = Watchdog::new(
        "start_kill_cycles_leave_fds_threads_and_children_at_baseline",
        Duration::from_secs(600),
    );
    // The first start creates the spawner thread, which lives as long as the process.
    cycle(0);
    census_threads_settled();
    let baseline = census();
    assert!(baseline.children.is_empty(), "{baseline:?}");
    let n_cycles = if consort_tests::slow_tests() {
        10_000
    } else {
        1_000
    };
    let started = std::time::Instant::now();
    for cycle_idx in 0..n_cycles {
        cycle(cycle_idx);
    }
    eprintln!("{n_cycles} start/end cycles took {:?}", started.elapsed());
    // Detached supervisor threads leave /proc a moment after they signal that they are done.
    let settled = wait_until(Duration::from_secs(10), || census() == baseline);
    assert!(settled, "before: {baseline:?}, after: {:?}", census());
}

/// The thread count once supervisor threads of earlier services have gone.
fn census_threads_settled() -> usize {
    let mut last = threads();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(5));
        let now = threads();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Kills stray pids when dropped, so that a failing test leaves nothing running.
struct Sweep(Vec<u32>);

impl Drop for Sweep {
    fn drop(&mut self) {
        for pid in &self.0 {
            if is_running(*pid) {
                let _ = consort::sys::Pid::new(*pid).signal(SIGKILL);
            }
        }
    }
}

#[test]
fn supervisor_sigkilled_its_worker_and_grandchild_die() {
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let _watchdog = Watchdog::new(
        "supervisor_sigkilled_its_worker_and_grandchild_die",
        Duration::from_secs(60),
    );
    let mut supervisor = Command::new(env!("CARGO_BIN_EXE_mini_supervisor"))
        .arg(env!("CARGO_BIN_EXE_fake_worker"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mini_supervisor");
    let mut sweep = Sweep(vec![supervisor.id()]);
    let mut line = String::new();
    BufReader::new(supervisor.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read the pids");
    let pids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let [worker, grandchild, escaped] = pids[..] else {
        panic!("mini_supervisor said {line:?}");
    };
    sweep.0.extend([worker, grandchild, escaped]);
    assert!(
        is_running(worker),
        "the worker outlived the thread that started it"
    );
    assert!(is_running(grandchild));
    consort_tests::kill(supervisor.id(), SIGKILL);
    supervisor.wait().expect("reap mini_supervisor");
    let bound = Duration::from_secs(2);
    assert!(
        wait_until(bound, || !is_running(worker)),
        "the worker {worker} outlived its supervisor"
    );
    assert!(
        wait_until(bound, || !is_running(grandchild)),
        "the grandchild {grandchild} outlived the supervisor"
    );
    // issue 14: the guardian finds it by the worker's lineage in its environment.
    assert!(
        wait_until(bound, || !is_running(escaped)),
        "the child {escaped} that left the worker's group outlived the supervisor"
    );
}
