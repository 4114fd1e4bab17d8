//! How many workers this machine can hold. Each worker costs this process threads and file
//! descriptors, and the machine processes; the kernel caps each of them. `Pool::start`
//! refuses a count past the tightest cap, naming it, rather than fail worker after worker
//! (and run out of threads for everything else on the way).
//!
//! The figures are upper bounds: other processes draw on the same limits, and a worker's
//! own threads come on top. A worker that cannot be started within them is a start
//! failure, restarted with backoff, as any other.

use std::fmt;

/// Processes and threads one worker costs: the worker itself, its guardian, and its
/// supervisor's five threads (monitor, stdout, stderr, writer, dispatcher).
pub(crate) const TASKS_PER_WORKER: u64 = 7;

/// File descriptors one worker holds in this process: its three pipes, a second handle on
/// its stdout (for `poll`) and on its stdin (the writer's, once the pipe fills), and its
/// guardian's pipe.
pub(crate) const FDS_PER_WORKER: u64 = 6;

/// The tightest of the machine's limits on workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Capacity {
    /// How many workers fit.
    pub(crate) max_workers: u64,
    /// The limit: "kernel.pid_max allows 32768 process ids, 120 in use".
    limit: String,
    /// What one worker costs of it.
    cost: &'static str,
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "each worker costs {} and {}: at most {} workers",
            self.cost, self.limit, self.max_workers
        )
    }
}

/// The tightest limit on workers this machine has, if any can be read.
pub(crate) fn capacity() -> Option<Capacity> {
    let tasks = "7 processes or threads (the worker, its guardian and 5 supervisor threads)";
    let fds = "6 file descriptors in this process";
    let mut limits = Vec::new();
    let n_tasks = tasks_in_use();
    if let Some(nproc) = nproc_limit() {
        let limit = format!("RLIMIT_NPROC (ulimit -u) allows {nproc} processes and threads");
        limits.push((nproc, 0, TASKS_PER_WORKER, limit, tasks));
    }
    for (path, what) in [
        ("/proc/sys/kernel/threads-max", "kernel.threads-max allows"),
        ("/proc/sys/kernel/pid_max", "kernel.pid_max allows"),
    ] {
        if let Some(max) = read_number(path) {
            let used = n_tasks.unwrap_or(0);
            let limit = format!("{what} {max} processes and threads, {used} in use");
            limits.push((max, used, TASKS_PER_WORKER, limit, tasks));
        }
    }
    if let Some((max, used)) = cgroup_pids() {
        let limit = format!("this cgroup's pids.max is {max}, {used} in use");
        limits.push((max, used, TASKS_PER_WORKER, limit, tasks));
    }
    if let Some(nofile) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        let used = open_fds().unwrap_or(0);
        let limit = format!("RLIMIT_NOFILE (ulimit -n) allows {nofile} open files, {used} open");
        limits.push((nofile, used, FDS_PER_WORKER, limit, fds));
    }
    limits
        .into_iter()
        .map(|(max, used, per_worker, limit, cost)| Capacity {
            max_workers: max.saturating_sub(used) / per_worker,
            limit,
            cost,
        })
        .min_by_key(|capacity| capacity.max_workers)
}

/// The soft RLIMIT_NPROC, which the kernel does not apply to root.
fn nproc_limit() -> Option<u64> {
    if rustix::process::getuid().is_root() {
        return None;
    }
    rustix::process::getrlimit(rustix::process::Resource::Nproc).current
}

/// How many processes and threads the machine runs now (`/proc/loadavg`: "… 3/412 …").
fn tasks_in_use() -> Option<u64> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let running_total = loadavg.split_whitespace().nth(3)?;
    running_total.split_once('/')?.1.parse().ok()
}

/// This process's cgroup's `pids.max` and `pids.current`, when it has a number there
/// (cgroup v2, or the v1 `pids` controller).
fn cgroup_pids() -> Option<(u64, u64)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let dir = match controllers {
            "" => format!("/sys/fs/cgroup{path}"),
            list if list.split(',').any(|name| name == "pids") => {
                format!("/sys/fs/cgroup/pids{path}")
            }
            _ => continue,
        };
        if let (Some(max), Some(current)) = (
            read_number(&format!("{dir}/pids.max")),
            read_number(&format!("{dir}/pids.current")),
        ) {
            return Some((max, current));
        }
    }
    None
}

/// How many file descriptors this process has open.
fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// A file holding one number ("max" and the like are not).
fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
