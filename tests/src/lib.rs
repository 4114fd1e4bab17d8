//! Shared support for consort's test binaries: where the Python with appose lives, a
//! watchdog that turns a hang into a failure, and process/fd/thread leak counters.
//!
//! Tests never assert a maximum runtime and never sleep-then-assert: they poll with
//! [`wait_until`] under a [`Watchdog`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Python interpreter that has `appose==0.12.0` and `numpy` installed.
///
/// `CONSORT_TEST_PYTHON` if set, else the workspace's `.venv/bin/python` (made by
/// `scripts/test.sh`). Panics with a clear message when neither exists.
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("CONSORT_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with appose: set CONSORT_TEST_PYTHON or run scripts/test.sh, which makes {}",
        venv.display()
    );
    venv
}

/// The workspace root (the folder holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

/// A factor for time bounds: `CONSORT_TEST_SLOWDOWN` (default 1), for slow machines.
pub fn slowdown() -> u32 {
    std::env::var("CONSORT_TEST_SLOWDOWN")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1)
}

/// Whether the slow tests (long stress loops) were asked for with `CONSORT_SLOW_TESTS`.
pub fn slow_tests() -> bool {
    std::env::var_os("CONSORT_SLOW_TESTS").is_some()
}

/// Aborts the whole test process, with a message naming the test, if it is still armed
/// when `limit` passes. Dropping it disarms it.
#[derive(Debug)]
#[must_use = "the watchdog is disarmed when dropped"]
pub struct Watchdog {
    disarmed: Arc<AtomicBool>,
}

impl Watchdog {
    /// Arms a watchdog for `name` that fires after `limit` (times [`slowdown`]).
    pub fn new(name: &str, limit: Duration) -> Watchdog {
        let disarmed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&disarmed);
        let name = name.to_owned();
        let limit = limit * slowdown();
        std::thread::Builder::new()
            .name(format!("watchdog-{name}"))
            .spawn(move || {
                let deadline = Instant::now() + limit;
                while Instant::now() < deadline {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !flag.load(Ordering::Acquire) {
                    eprintln!("WATCHDOG: test {name} still running after {limit:?}: aborting");
                    std::process::abort();
                }
            })
            .expect("spawn watchdog thread");
        Watchdog { disarmed }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarmed.store(true, Ordering::Release);
    }
}

/// Polls `condition` every few milliseconds until it holds or `limit` passes; returns
/// whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit * slowdown();
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// The pids of this process's children, zombies included, from `/proc`.
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        if let Some((ppid, state)) = ppid_and_state(pid) {
            if ppid == me {
                found.push((pid, state));
            }
        }
    }
    found
}

/// The parent pid and state letter (`R`, `S`, `Z`, `T`, ...) of `pid`, if it exists.
pub fn ppid_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Whether a process with this pid exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    matches!(ppid_and_state(pid), Some((_, state)) if state != 'Z')
}

/// Sends signal number `signal` to `pid` (SIGKILL is 9, SIGSTOP 19, SIGCONT 18).
pub fn kill(pid: u32, signal: i32) {
    consort::sys::Pid::new(pid)
        .signal(signal)
        .unwrap_or_else(|err| panic!("signal {signal} to {pid}: {err}"));
}

/// The resident set size of this process, in bytes (0 when `/proc` cannot tell).
pub fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The command line of `pid`, one string per argument (empty once it has exited).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|byte| *byte == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is a child of this process, running or zombie.
pub fn is_my_child(pid: u32) -> bool {
    matches!(ppid_and_state(pid), Some((ppid, _)) if ppid == std::process::id())
}

/// The N of "at most N workers" in consort's refusal of a worker count the machine cannot
/// hold (`PoolError::Config`, `consort map --workers`): how many it holds; `None` when the
/// text names no such limit.
pub fn workers_the_machine_holds(refusal: &str) -> Option<usize> {
    let (_, rest) = refusal.split_once("at most ")?;
    rest.split_whitespace().next()?.parse().ok()
}
