//! The supervisor of one worker: start it and its threads, submit tasks, hard-cancel one.
//! Each thread's part of the shared state lives in its own file, with the invariants it
//! keeps:
//!
//! - `stdin.rs`: the single writer (a submitting thread, else the **writer** thread);
//! - `stdout.rs`: the **stdout** reader, and the waiter who reads its own answer;
//! - `stderr.rs`: the **stderr** reader's bounded tail;
//! - `exit.rs`: the **monitor**, the guardian and the close ladder;
//! - `dispatch.rs`: the task table and the **dispatcher**, which calls listeners;
//! - `drain.rs`: what the pipes gave, which the monitor waits on before it declares a crash.
//!
//! [`Supervisor`] holds one of each; its threads get the parts they need.
//!
//! # Invariants
//! 1. Every task ends exactly once, and every task ends: a task admitted to the table ends
//!    by its response (or one that names it and cannot be decoded), a hard cancel, an
//!    oversize line or the monitor, which a worker that closed its stdout is ended for
//!    (`run_stdout`), as one that stopped reading its stdin is (`run_writer`); a task refused
//!    (the worker ended, or the service is closing) ends CRASHED at once, on the
//!    submitting thread.
//! 2. A task is admitted before its EXECUTE is written, so its response always finds it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::config::{Config, DebugOut, DebugStream, StartError};
use super::dispatch::{self, Refused, Tasks};
use super::drain::Drain;
use super::exit::{self, Exit, ExitHook, Parts};
use super::spawner::{self, TempPath};
use super::stderr::Stderr;
use super::stdin::Stdin;
use super::stdout::{Sinks, Stdout};
use crate::protocol::{new_task_id, Args, Request};
use crate::sys::{self, signals, Pid};
use crate::task::{CrashReport, ExitStatus, Listener, Route, Task, TaskCore, TaskError, TaskState};

static NEXT_SERVICE: AtomicU64 = AtomicU64::new(1);

/// A handle on a running worker's supervisor, held by the `Service`, its tasks (as their
/// [`Route`]) and its threads.
#[derive(Clone)]
pub(crate) struct ServiceLink(Arc<Supervisor>);

/// One worker's shared state, a part per thread.
pub(crate) struct Supervisor {
    id: u64,
    config: Arc<Config>,
    debug: DebugOut,
    tasks: Tasks,
    stdin: Stdin,
    stdout: Stdout,
    stderr: Stderr,
    drain: Drain,
    exit: Exit,
}

impl Supervisor {
    fn parts(&self) -> Parts<'_> {
        Parts {
            exit: &self.exit,
            config: &self.config,
            tasks: &self.tasks,
            stdin: &self.stdin,
            stdout: &self.stdout,
            stderr: &self.stderr,
            drain: &self.drain,
            debug: &self.debug,
        }
    }

    fn sinks(&self) -> Sinks<'_> {
        Sinks {
            tasks: &self.tasks,
            drain: &self.drain,
            debug: &self.debug,
        }
    }

    /// Writes one request line (see `Stdin::send`).
    fn send(&self, request: Request) {
        let mut line = request.encode();
        self.debug.emit(DebugStream::Stdin, || line.clone());
        line.push('\n');
        self.stdin.send(line.as_bytes());
    }

    /// The writer thread, and what a failed write means: a worker that closed its stdin
    /// while alive can take no more tasks, and those it was sent may never run, so it is
    /// ended, and they end with it.
    fn run_writer(&self) {
        let Some(err) = self.stdin.run_writer() else {
            return;
        };
        // A worker that exits closes its stdin a moment before the monitor sees it exit:
        // a broken pipe alone does not tell it from one that lives on.
        if self.drain.exited_within(self.config.drain_silence) {
            return;
        }
        self.debug
            .note(|| format!("<cannot write to the worker: {err}>"));
        self.exit.signal_group(
            signals::KILL,
            Some(format!("the worker stopped reading its stdin ({err})")),
        );
    }

    /// The stdout thread, and what stdout's EOF means: a worker that closed its stdout
    /// while alive can answer nothing more, so it is ended (SIGTERM, then SIGKILL after
    /// `kill_grace`), and its pending tasks crash with it, the cause naming the EOF.
    fn run_stdout(&self, poll_fd: OwnedFd) {
        self.stdout.run(poll_fd, self.sinks());
        // A worker that exits closes its stdout a moment before the monitor sees it exit:
        // an EOF alone does not tell it from one that lives on. A worker being closed is
        // left to the close ladder, which bounds its shutdown already.
        if self.drain.exited_within(self.config.drain_silence) || self.tasks.is_closing() {
            return;
        }
        self.debug
            .note(|| "<the worker closed its stdout and lives on: ending it>".to_owned());
        self.exit
            .set_cause(|| "the worker closed its stdout; no answer could come".to_owned());
        self.exit.signal_group(signals::TERM, None);
        self.exit.signal_group(signals::CONT, None);
        if self.drain.exited_within(self.config.kill_grace) {
            return;
        }
        self.exit.signal_group(signals::KILL, None);
    }

    /// A report for a task refused before the worker ended.
    fn provisional_report(&self, cause: &str) -> CrashReport {
        CrashReport {
            pid: self.exit.pid().get(),
            status: ExitStatus::Unknown,
            cause: Some(cause.to_owned()),
            stderr: self.stderr.lines(),
            stdout: self.stdout.noise_lines(),
            sent: false,
            beside: None,
        }
    }
}

impl Route for Supervisor {
    fn cancel(&self, core: &Arc<TaskCore>) {
        self.send(Request::Cancel {
            task: core.id.clone(),
        });
    }

    /// Ends `core` CANCELED (forced) and kills the worker, unless the task ended first.
    fn hard_cancel(&self, core: &Arc<TaskCore>) {
        self.tasks.remove(&core.id);
        let Some(ending) = core.end(
            TaskState::Canceled,
            Err(TaskError::Canceled { forced: true }),
        ) else {
            return;
        };
        self.debug
            .note(|| format!("<hard cancel of task {}: killing the worker>", core.id));
        self.tasks.deliver(ending);
        self.exit.signal_group(
            signals::KILL,
            Some(format!(
                "the worker was killed to hard-cancel task {}",
                core.id
            )),
        );
    }

    fn read_while_waiting(&self, core: &TaskCore, deadline: Option<Instant>) {
        self.stdout.read_for(core, deadline, self.sinks());
    }

    fn wake_reader(&self) {
        self.stdout.wake_reader();
    }
}

/// Spawns the worker and its supervisor threads.
pub(crate) fn start(config: Arc<Config>) -> Result<ServiceLink, StartError> {
    let id = NEXT_SERVICE.fetch_add(1, Ordering::Relaxed);
    let init_file = match &config.init_script {
        Some(script) => {
            Some(TempPath::write("appose-init-", script).map_err(StartError::InitScript)?)
        }
        None => None,
    };
    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &config.cwd {
        command.current_dir(dir);
    }
    for (key, value) in &config.env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    if let Some(file) = &init_file {
        command.env("APPOSE_INIT_SCRIPT", file.path());
    }
    // The worker's tag, appended to the lineage it inherits (a worker started by a task
    // of another worker carries both), marks its descendants for the monitor.
    let lineage = sys::new_lineage_tag();
    let inherited = match config
        .env
        .iter()
        .rev()
        .find(|(key, _)| key == sys::LINEAGE_ENV)
    {
        Some((_, value)) => value.clone(),
        None => std::env::var_os(sys::LINEAGE_ENV),
    };
    let mut lineages = inherited.unwrap_or_default();
    if !lineages.is_empty() {
        lineages.push(":");
    }
    lineages.push(&lineage);
    command.env(sys::LINEAGE_ENV, lineages);
    let mut child = spawner::spawn(command).map_err(|source| StartError::Spawn {
        program: config.program.clone(),
        source,
    })?;
    let guardian = exit::spawn_guardian(Pid(child.id()), &lineage);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three pipes were requested");
    };
    // Our ends only (the worker's ends are other open file descriptions): a full stdin
    // makes a write return EAGAIN instead of blocking the submitting thread, and an empty
    // stdout makes a read return EAGAIN, so whoever reads it never blocks holding the lock.
    let nonblocking = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(fd)?;
        rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(())
    };
    let poll_stdout = nonblocking(stdin.as_fd())
        .and_then(|()| nonblocking(stdout.as_fd()))
        .and_then(|()| stdout.as_fd().try_clone_to_owned());
    let poll_stdout = match poll_stdout {
        Ok(fd) => fd,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartError::Thread(err));
        }
    };
    let (dispatch_tx, dispatch_rx) = mpsc::channel();
    let pid = child.id();
    let supervisor = Supervisor {
        id,
        debug: DebugOut::new(id, config.debug.clone()),
        tasks: Tasks::new(dispatch_tx),
        stdin: Stdin::new(stdin),
        stdout: Stdout::new(stdout, config.max_line, config.tail_bytes),
        stderr: Stderr::new(config.tail_bytes),
        drain: Drain::new(),
        exit: Exit::new(child, lineage, guardian, init_file),
        config,
    };
    let link = ServiceLink(Arc::new(supervisor));
    link.0
        .debug
        .note(|| format!("<worker process {pid} started>"));
    let spawned = link
        .spawn_thread("monitor", |sup| exit::run_monitor(sup.parts()))
        .and_then(|()| link.spawn_thread("stdout", move |sup| sup.run_stdout(poll_stdout)))
        .and_then(|()| {
            link.spawn_thread("stderr", move |sup| {
                sup.stderr
                    .run(stderr, sup.config.max_line, &sup.drain, &sup.debug)
            })
        })
        .and_then(|()| link.spawn_thread("writer", Supervisor::run_writer))
        .and_then(|()| {
            link.spawn_thread("dispatch", move |_| dispatch::run_dispatcher(dispatch_rx))
        });
    if let Err(err) = spawned {
        link.kill_now("a supervisor thread could not be started");
        return Err(StartError::Thread(err));
    }
    Ok(link)
}

/// Counts a supervisor thread out however it ends, so `close` can wait for them.
struct ThreadGuard(Arc<Supervisor>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        self.0.exit.thread_ended();
    }
}

impl ServiceLink {
    fn spawn_thread(
        &self,
        role: &str,
        body: impl FnOnce(&Supervisor) + Send + 'static,
    ) -> io::Result<()> {
        let supervisor = Arc::clone(&self.0);
        self.0.exit.thread_started();
        let result = std::thread::Builder::new()
            .name(format!("consort-{}-{role}", self.0.id))
            .spawn(move || {
                let guard = ThreadGuard(supervisor);
                body(&guard.0);
            });
        match result {
            Ok(_detached) => Ok(()),
            Err(err) => {
                self.0.exit.thread_ended();
                Err(err)
            }
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.exit.pid().get()
    }

    /// When the worker's last stdout line (a heartbeat counts) arrived, or its start.
    pub(crate) fn last_heard(&self) -> Instant {
        self.0.stdout.last_heard()
    }

    /// Whether the worker ever wrote a line on stdout.
    pub(crate) fn heard_anything(&self) -> bool {
        self.0.stdout.heard_anything()
    }

    /// Whether the worker read any request from its stdin (Linux; `false` elsewhere).
    pub(crate) fn read_a_request(&self) -> bool {
        self.0.stdin.worker_read()
    }

    /// Sends a task to the worker; a task refused (the worker ended, or the service is
    /// closing) is returned already CRASHED.
    pub(crate) fn submit(
        &self,
        script: String,
        inputs: Args,
        queue: Option<String>,
        listeners: Vec<Listener>,
    ) -> Task {
        let supervisor = &self.0;
        let core = TaskCore::new(new_task_id(), listeners);
        let task = Task::new(Arc::clone(&core), Arc::clone(&self.0) as Arc<dyn Route>);
        let refused = match supervisor.tasks.admit(&core) {
            Ok(()) => None,
            Err(Refused::Ended(report)) => Some(CrashReport {
                sent: false,
                ..(*report).clone()
            }),
            Err(Refused::Closing) => Some(supervisor.provisional_report("the service is closing")),
        };
        match refused {
            Some(report) => {
                // No dispatcher may be left: the end is delivered on this thread.
                if let Some(ending) = core.end(
                    TaskState::Crashed,
                    Err(TaskError::Crashed(Box::new(report))),
                ) {
                    ending.deliver();
                }
            }
            None => {
                supervisor.send(Request::Execute {
                    task: core.id.clone(),
                    script,
                    inputs,
                    queue,
                });
                if core.has_listeners() {
                    // Its events come through the stdout thread, not a waiter.
                    supervisor.stdout.wake_reader();
                }
            }
        }
        task
    }

    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.0.tasks.report().map(|report| report.status)
    }

    pub(crate) fn crash_report(&self) -> Option<CrashReport> {
        self.0.tasks.report().map(|report| (*report).clone())
    }

    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        self.0.stderr.lines()
    }

    pub(crate) fn invalid_lines(&self) -> Vec<String> {
        self.0.stdout.noise_lines()
    }

    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.0.tasks.wait_settled(timeout)
    }

    /// Runs `hook` once the worker has ended and its tasks with it (see `Exit::on_exit`).
    pub(crate) fn on_exit(&self, hook: ExitHook) {
        self.0.exit.on_exit(hook);
    }

    /// The bounded escalation: stdin EOF, SIGTERM, SIGKILL.
    pub(crate) fn close(&self) -> ExitStatus {
        exit::close(self.0.parts(), self.0.id)
    }

    /// SIGKILL to the group, then a bounded wait for the reap.
    pub(crate) fn kill_now(&self, cause: &str) -> ExitStatus {
        exit::kill_now(self.0.parts(), self.0.id, cause)
    }
}
