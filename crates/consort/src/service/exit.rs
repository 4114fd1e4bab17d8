//! How a worker ends: the **monitor** (waits for the exit, kills what is left of the group,
//! waits for the pipes to drain, reaps, crashes the pending tasks), the **guardian** (a
//! `sh` in the worker's group that SIGKILLs it if this process dies), and the **close
//! ladder** (stdin EOF, SIGTERM, SIGKILL).
//!
//! # Invariants
//! 1. The worker's process group is signalled only while its leader is unreaped
//!    (`Proc::reaped` is checked under the same lock the monitor reaps under), so a
//!    recycled id is never signalled.
//! 2. A crash is declared only once both pipes reached EOF, or stayed silent for
//!    `drain_silence`, or 10 s passed ([`Drain::wait`]), so a response written just before
//!    the exit is never lost.
//! 3. Nothing here waits without a bound: not `close`, not `kill_now`, not the guardian's
//!    reaping.
//! 4. No worker and no worker's child outlives the supervisor: the parent-death signal ends
//!    the worker, and the guardian, reading a pipe only the supervisor writes, SIGKILLs the
//!    group when that pipe closes. While the guardian lives, the group id cannot be reused.
//! 5. Every descendant of a worker dies with it, however it ends: the monitor SIGKILLs the
//!    group, then every process that carries the worker's lineage tag in its environment
//!    (`sys::kill_lineage`: those that left the group, `setsid` and all), before `close`
//!    and `wait_exit` return: after the crash is declared, or before it if the pipes stay
//!    open (such a process may hold them).
//! 6. Exit hooks run once, after the worker's tasks have ended (the pool learns of the
//!    death without polling).

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::config::{lock, Config, DebugOut};
use super::dispatch::Tasks;
use super::drain::{Drain, Drained};
use super::spawner::TempPath;
use super::stderr::Stderr;
use super::stdin::Stdin;
use super::stdout::Stdout;
use crate::sys::{self, signals, Pgid, Pid};
use crate::task::{CrashReport, ExitStatus, TaskError, TaskState};

/// The longest the monitor waits for the pipes to drain after the worker exited, however
/// much they keep producing (a process that escaped the group may flood them forever).
const MAX_DRAIN: Duration = Duration::from_secs(10);

/// How long the pipes may stay silent and open, after the group was killed, before the
/// monitor looks for descendants that left the group (one may hold them) rather than wait
/// for the drain first.
const LINEAGE_FIRST_AFTER: Duration = Duration::from_millis(1);

/// The longest the monitor lets listeners take with the crash events before it looks for
/// the descendants that left the group.
const DELIVERY_FIRST: Duration = Duration::from_millis(20);

/// What runs once the worker has ended (see [`Exit::on_exit`]).
pub(crate) type ExitHook = Box<dyn FnOnce() + Send>;

/// The worker process, its lifeline, and why consort ended it.
pub(crate) struct Exit {
    pid: Pid,
    /// The worker's tag in `sys::LINEAGE_ENV`, which its descendants inherit.
    lineage: String,
    /// Guards signalling the group against reaping its leader.
    proc: Mutex<Proc>,
    /// The worker's lifeline (see [`spawn_guardian`]), reaped by the monitor.
    guardian: Mutex<Option<Child>>,
    /// Why consort ended the worker, when it did; the first cause is kept.
    kill_cause: Mutex<Option<String>>,
    /// The init script's temporary file, removed when the worker ends.
    init_file: Mutex<Option<TempPath>>,
    /// Run once the worker has ended; `None` once they ran.
    hooks: Mutex<Option<Vec<ExitHook>>>,
    /// The supervisor threads still running, so `close` can wait for them (bounded).
    threads: Mutex<usize>,
    threads_done: Condvar,
}

struct Proc {
    child: Option<Child>,
    reaped: bool,
}

/// Everything the monitor and the close ladder touch.
#[derive(Clone, Copy)]
pub(crate) struct Parts<'a> {
    pub(crate) exit: &'a Exit,
    pub(crate) config: &'a Config,
    pub(crate) tasks: &'a Tasks,
    pub(crate) stdin: &'a Stdin,
    pub(crate) stdout: &'a Stdout,
    pub(crate) stderr: &'a Stderr,
    pub(crate) drain: &'a Drain,
    pub(crate) debug: &'a DebugOut,
}

impl Exit {
    pub(crate) fn new(
        child: Child,
        lineage: String,
        guardian: Option<Child>,
        init_file: Option<TempPath>,
    ) -> Exit {
        Exit {
            pid: Pid(child.id()),
            lineage,
            proc: Mutex::new(Proc {
                child: Some(child),
                reaped: false,
            }),
            guardian: Mutex::new(guardian),
            kill_cause: Mutex::new(None),
            init_file: Mutex::new(init_file),
            hooks: Mutex::new(Some(Vec::new())),
            threads: Mutex::new(0),
            threads_done: Condvar::new(),
        }
    }

    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Records `cause` as the reason the worker ended, unless one was recorded already.
    pub(crate) fn set_cause(&self, cause: impl FnOnce() -> String) {
        lock(&self.kill_cause).get_or_insert_with(cause);
    }

    /// Signals the worker's process group, unless it was reaped already. Records `cause`
    /// as the reason the worker ended, unless an earlier cause was recorded.
    pub(crate) fn signal_group(&self, signal: i32, cause: Option<String>) {
        if let Some(cause) = cause {
            lock(&self.kill_cause).get_or_insert(cause);
        }
        let proc = lock(&self.proc);
        if proc.reaped {
            return;
        }
        // The leader is unreaped, so its pid still names this group and nothing else.
        let pgid = Pgid(self.pid.get());
        if let Err(err) = pgid.signal(signal) {
            // ESRCH: the whole group is gone already; nothing to do.
            tracing::debug!("signal {signal} to process group {}: {err}", pgid.0);
        }
    }

    /// Runs `hook` once the worker has ended and its tasks with it: on the monitor's
    /// thread, or here at once if that happened already.
    pub(crate) fn on_exit(&self, hook: ExitHook) {
        let mut hooks = lock(&self.hooks);
        match hooks.as_mut() {
            Some(hooks) => hooks.push(hook),
            None => {
                drop(hooks);
                hook();
            }
        }
    }

    /// Counts a supervisor thread that is starting.
    pub(crate) fn thread_started(&self) {
        *lock(&self.threads) += 1;
    }

    /// Counts a supervisor thread that ended (or never started).
    pub(crate) fn thread_ended(&self) {
        let mut alive = lock(&self.threads);
        *alive -= 1;
        if *alive == 0 {
            self.threads_done.notify_all();
        }
    }

    /// Waits, bounded, for the supervisor threads to end.
    fn wait_threads(&self, bound: Duration, service: u64) {
        let deadline = Instant::now() + bound;
        let mut alive = lock(&self.threads);
        while *alive > 0 {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!(
                    "{} supervisor thread(s) of service {service} still running after close",
                    *alive,
                );
                return;
            };
            alive = self
                .threads_done
                .wait_timeout(alive, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// Reaps the guardian, which the group SIGKILL just ended (bounded: a process stuck in
    /// the kernel is left behind rather than waited for).
    fn reap_guardian(&self, kill_grace: Duration) {
        let Some(mut guardian) = lock(&self.guardian).take() else {
            return;
        };
        drop(guardian.stdin.take());
        let deadline = Instant::now() + kill_grace.max(Duration::from_secs(1));
        loop {
            match guardian.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!("the lifeline of worker {} did not exit", self.pid.get());
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Reaps the worker (it has exited) and says how it ended.
    fn reap(&self) -> ExitStatus {
        let mut proc = lock(&self.proc);
        let status = proc.child.as_mut().map(Child::wait);
        proc.reaped = true;
        proc.child = None;
        match status {
            Some(Ok(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Code(code),
                (None, Some(signal)) => ExitStatus::Signal(signal),
                (None, None) => ExitStatus::Unknown,
            },
            _ => ExitStatus::Unknown,
        }
    }
}

/// The monitor thread: from the worker's exit to its tasks' end.
pub(crate) fn run_monitor(parts: Parts<'_>) {
    let Parts {
        exit,
        config,
        tasks,
        stdin,
        stdout,
        stderr,
        drain,
        debug,
    } = parts;
    let pid = exit.pid;
    if let Err(err) = pid.wait_exited_keep_zombie() {
        tracing::error!("waiting for worker {}: {err}", pid.get());
    }
    drain.worker_exited();
    stdout.wake_reader();
    // Whatever is left of the group (grandchildren) would hold our pipes open and
    // outlive the worker: end it before the leader is reaped and its id freed.
    exit.signal_group(signals::KILL, None);
    // The descendants that left the group carry the worker's lineage. Finding them scans
    // `/proc` (a fraction of a millisecond per hundred processes), so it waits until the
    // tasks have ended, unless the pipes stay open: one of them may hold them, and then it
    // goes first, so the drain does not wait out the silence for it.
    let drain_started = Instant::now();
    let mut lineage_killed = false;
    let mut drained = drain.wait(LINEAGE_FIRST_AFTER, MAX_DRAIN);
    if drained == Drained::GaveUp {
        kill_lineage(exit, debug);
        lineage_killed = true;
        let left = MAX_DRAIN.saturating_sub(drain_started.elapsed());
        drained = drain.wait(config.drain_silence, left);
    }
    if drained == Drained::GaveUp {
        debug.note(|| {
            "<worker pipes still open after exit (held by an escaped process?)>".to_owned()
        });
    }
    let status = exit.reap();
    let report = Arc::new(CrashReport {
        pid: pid.get(),
        status,
        cause: lock(&exit.kill_cause).clone(),
        stderr: stderr.lines(),
        stdout: stdout.noise_lines(),
        sent: true,
        beside: None,
    });
    let pending = tasks.worker_ended(&report);
    debug.note(|| {
        format!(
            "<worker process terminated with {status}; {} pending task(s)>",
            pending.len()
        )
    });
    for core in pending {
        if core.hard_cancel_asked() {
            // Its own hard cancel was under way: the death is the kill it asked for.
            tasks.end(
                &core,
                TaskState::Canceled,
                Err(TaskError::Canceled { forced: true }),
            );
        } else {
            tasks.end(
                &core,
                TaskState::Crashed,
                Err(TaskError::Crashed(Box::new((*report).clone()))),
            );
        }
    }
    if !lineage_killed {
        // Once the tasks' ends are out (listeners called, waiters woken; bounded), so that
        // the scan takes no CPU their threads need; before `settle`, so that `close`
        // returns only once the descendants are dead too.
        tasks.wait_delivered(DELIVERY_FIRST);
        std::thread::yield_now();
        kill_lineage(exit, debug);
    }
    tasks.settle();
    // Let the writer and the dispatcher run out once their queues are empty.
    stdin.worker_exited();
    tasks.stop_dispatcher();
    // The init script's file, if the worker never removed it, goes with the worker.
    lock(&exit.init_file).take();
    let hooks = lock(&exit.hooks).take().unwrap_or_default();
    for hook in hooks {
        hook();
    }
    // The group SIGKILL above ended the guardian; reaped last, off the crash's path.
    exit.reap_guardian(config.kill_grace);
}

/// SIGKILLs the worker's descendants that left its group (`sys::kill_lineage`).
fn kill_lineage(exit: &Exit, debug: &DebugOut) {
    let escaped = sys::kill_lineage(&exit.lineage);
    if escaped > 0 {
        debug.note(|| format!("<killed {escaped} descendant(s) that left the worker's group>"));
    }
}

/// The bounded escalation: stdin EOF, then SIGTERM, then SIGKILL.
pub(crate) fn close(parts: Parts<'_>, service: u64) -> ExitStatus {
    let Parts {
        exit,
        config,
        tasks,
        stdin,
        stdout,
        debug,
        ..
    } = parts;
    if let Some(status) = tasks.start_closing() {
        return status;
    }
    stdout.wake_reader();
    exit.set_cause(|| "service closed".to_owned());
    debug.note(|| "<closing worker stdin>".to_owned());
    stdin.close();
    if let Some(status) = tasks.wait_settled(config.close_grace) {
        exit.wait_threads(config.kill_grace, service);
        return status;
    }
    debug.note(|| {
        format!(
            "<worker did not exit within {:?} of stdin EOF: SIGTERM to its process group>",
            config.close_grace
        )
    });
    exit.signal_group(signals::TERM, None);
    // A stopped worker cannot act on SIGTERM until it is continued.
    exit.signal_group(signals::CONT, None);
    if let Some(status) = tasks.wait_settled(config.kill_grace) {
        exit.wait_threads(config.kill_grace, service);
        return status;
    }
    kill_now(
        parts,
        service,
        "service closed; the worker ignored stdin EOF and SIGTERM",
    )
}

/// SIGKILL to the group, then a bounded wait for the reap.
pub(crate) fn kill_now(parts: Parts<'_>, service: u64, cause: &str) -> ExitStatus {
    let Parts {
        exit,
        config,
        tasks,
        stdout,
        debug,
        ..
    } = parts;
    tasks.start_closing();
    stdout.wake_reader();
    debug.note(|| "<SIGKILL to the worker's process group>".to_owned());
    exit.signal_group(signals::KILL, Some(cause.to_owned()));
    // After SIGKILL the exit is immediate unless the process is stuck in the kernel
    // (uninterruptible sleep); never wait for that without a bound.
    let bound = config.kill_grace.max(Duration::from_secs(1));
    let deadline = Instant::now() + bound;
    let status = tasks.wait_settled(bound).unwrap_or(ExitStatus::Unknown);
    // One bound for both waits, so that close stays within close_grace + kill_grace +
    // max(kill_grace, 1 s) even when a supervisor thread is stuck (in a debug sink).
    exit.wait_threads(deadline.saturating_duration_since(Instant::now()), service);
    status
}

/// Starts the worker's lifeline: a `sh` that joins the worker's process group and waits for
/// EOF on a pipe that only this process writes to, then SIGKILLs the worker's descendants
/// that left the group (those whose environment carries `lineage`, found by one `grep` over
/// `/proc/*/environ`, twice) and the whole group.
///
/// The parent-death signal ends the worker when this process dies, however it dies, but not
/// the worker's own children, and nothing of this process is left to signal their group. The
/// kernel closes the pipe when this process dies, and the guardian does it. As long as the
/// guardian lives, the group id cannot be reused, so its `kill` never hits another group.
/// Without `/bin/sh` the worker runs without a lifeline (logged); without `grep`, the
/// lifeline kills the group only.
pub(crate) fn spawn_guardian(pid: Pid, lineage: &str) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    // By pid, as a shell must: a process found would have to exit, and its pid be reused,
    // in the instant before its kill. The monitor, which outlives nothing, uses pidfds.
    const LIFELINE: &str = "read -r _\n\
        for round in 1 2; do\n\
        for found in $(grep -lsF -e \"$1\" /proc/[0-9]*/environ); do\n\
        found=${found#/proc/}; kill -9 \"${found%/environ}\"\n\
        done\n\
        done 2>/dev/null\n\
        kill -9 0";
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(LIFELINE)
        .arg("consort-lifeline")
        .arg(lineage)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(i32::try_from(pid.get()).ok()?);
    match command.spawn() {
        Ok(guardian) => Some(guardian),
        Err(err) => {
            tracing::warn!(
                "cannot start the lifeline of worker {}: its children may outlive this \
                 process if it is killed: {err}",
                pid.get()
            );
            None
        }
    }
}
