//! Tasks: their states, the events listeners receive, the errors a wait returns, and the
//! one-way state machine that guarantees a single terminal state.
//!
//! A task knows nothing of what runs it: its cancel requests, and a waiter's offer to read
//! the answer itself, go through a `Route` that the service and the pool implement.
//!
//! # Invariants
//! 1. A task reaches exactly one terminal state. `TaskCore::end` is the only way there
//!    and it is a compare-and-set under the task's lock: the first caller wins (a COMPLETION,
//!    a FAILURE, a crash, a hard cancel, a deadline), every later one is told it lost and
//!    does nothing.
//! 2. Waiters are woken only once the terminal event has been delivered to every listener,
//!    so a caller that returns from [`Task::wait`] has seen all of the task's events: the
//!    winner of `end` holds an `Ending`, and only delivering it (or dropping it) releases
//!    the waiters, after the listeners.
//! 3. The terminal event is built in one place, from the state and the result, so a service
//!    task and a pool task that end the same way send the same event.
//! 4. A listener that panics is caught; the task and the service carry on.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::protocol::{Args, Progress, TaskId};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Sent to the worker, not started yet.
    Queued,
    /// The worker reported LAUNCH.
    Running,
    /// Finished with outputs.
    Complete,
    /// Failed in the worker.
    Failed,
    /// Cancelled, by the script's acknowledgement or by a hard cancel.
    Canceled,
    /// The worker died (or was killed) before the task finished.
    Crashed,
    /// Its deadline passed (a pool task's `deadline`); it was cancelled with the kill
    /// escalation.
    TimedOut,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_finished(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }
}

/// The kind of a [`TaskEvent`], named as on the Appose wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum EventKind {
    /// The task started running.
    Launch,
    /// Progress.
    Update,
    /// The task finished with outputs.
    Completion,
    /// The task was cancelled.
    Cancelation,
    /// The task failed.
    Failure,
    /// The worker died before the task finished (synthesized, never on the wire).
    Crash,
    /// A pool task lost to a crash is sent again; `error` says why and `info` holds
    /// `{"attempt": n}`, the attempt about to start (synthesized, never on the wire).
    Retry,
    /// A pool task passed its deadline (synthesized, never on the wire).
    Timeout,
}

/// Something that happened to a task, as delivered to listeners.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    /// The task.
    pub task: TaskId,
    /// What happened.
    #[serde(rename = "responseType")]
    pub kind: EventKind,
    /// Progress fields, for UPDATE.
    #[serde(flatten)]
    pub progress: Progress,
    /// The error text, for FAILURE and CRASH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The outputs, for COMPLETION.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Args>,
}

impl TaskEvent {
    pub(crate) fn new(task: TaskId, kind: EventKind) -> TaskEvent {
        TaskEvent {
            task,
            kind,
            progress: Progress::default(),
            error: None,
            outputs: None,
        }
    }

    /// The UPDATE message, if any.
    pub fn message(&self) -> Option<&str> {
        self.progress.message.as_deref()
    }

    /// The UPDATE `current` value, if any.
    pub fn current(&self) -> Option<i64> {
        self.progress.current
    }

    /// The UPDATE `maximum` value, if any.
    pub fn maximum(&self) -> Option<i64> {
        self.progress.maximum
    }

    /// The UPDATE `info` object, if any.
    pub fn info(&self) -> Option<&Value> {
        self.progress.info.as_ref()
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is still running, or consort could not learn how it ended.
    Unknown,
}

impl ExitStatus {
    /// The exit code as Python's `Popen.returncode` gives it: negative for a signal.
    pub fn python_returncode(self) -> Option<i32> {
        match self {
            ExitStatus::Code(code) => Some(code),
            ExitStatus::Signal(signal) => Some(-signal),
            ExitStatus::Unknown => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {}", signal_name(*signal)),
            ExitStatus::Unknown => f.write_str("unknown status"),
        }
    }
}

/// The conventional name of a signal number, such as `SIGKILL`.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// Why a worker's tasks ended CRASHED: how it ended, why, and what it last said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashReport {
    /// The worker's process id.
    pub pid: u32,
    /// How the process ended.
    pub status: ExitStatus,
    /// What consort did or saw, when it caused or explains the end: "killed to hard-cancel
    /// task …", "service closed", "the worker wrote a line longer than …".
    pub cause: Option<String>,
    /// The last lines the worker wrote to stderr (bounded).
    pub stderr: Vec<String>,
    /// The last non-protocol lines the worker wrote to stdout (bounded).
    pub stdout: Vec<String>,
    /// Whether the task was sent to the worker: `false` when the worker had already ended,
    /// or was being closed, when the task was submitted, so it never ran.
    pub sent: bool,
    /// For a pool task, the other pool tasks that were running on its worker when the
    /// worker ended: empty when it ran alone there. `None` for a service task.
    pub beside: Option<Vec<TaskId>>,
}

impl CrashReport {
    /// The error text in Appose's own format, as its Python and Java services build it.
    pub fn appose_message(&self) -> String {
        let code = match self.status.python_returncode() {
            Some(code) => code.to_string(),
            None => "unknown".to_owned(),
        };
        let join = |lines: &[String]| {
            if lines.is_empty() {
                "<none>".to_owned()
            } else {
                lines.join("\n")
            }
        };
        format!(
            "Worker crashed with exit code {code}.\n\n[stdout]\n{}\n\n[stderr]\n{}\n",
            join(&self.stdout),
            join(&self.stderr)
        )
    }
}

/// How many of the tasks beside a crashed one its error text names.
const MAX_LISTED: usize = 8;

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker (pid {}) ended with {}", self.pid, self.status)?;
        if let Some(cause) = &self.cause {
            write!(f, " ({cause})")?;
        }
        if !self.sent {
            write!(f, "; the task was never sent to it")?;
        }
        match self.beside.as_deref() {
            None => {}
            Some([]) => write!(f, "; the task was alone on the worker")?,
            Some(beside) => {
                let (plural, verb) = if beside.len() == 1 {
                    ("", "was")
                } else {
                    ("s", "were")
                };
                write!(
                    f,
                    "; {} other task{plural} {verb} running on the worker: ",
                    beside.len()
                )?;
                for (idx, id) in beside.iter().take(MAX_LISTED).enumerate() {
                    let sep = if idx == 0 { "" } else { ", " };
                    write!(f, "{sep}{id}")?;
                }
                if beside.len() > MAX_LISTED {
                    write!(f, ", …")?;
                }
            }
        }
        if let Some(last) = self.stderr.last() {
            write!(f, "; last stderr line: {last}")?;
        }
        Ok(())
    }
}

/// Why a task did not produce outputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task failed in the worker.
    #[error("task failed in the worker: {message}")]
    Failed {
        /// The worker's error text (a traceback for Python), or "unknown error".
        message: String,
    },
    /// The task was cancelled.
    #[error("{}", if *forced { "task was cancelled (the worker was killed)" } else { "task was cancelled" })]
    Canceled {
        /// True when the worker did not acknowledge in time and was killed.
        forced: bool,
    },
    /// The worker ended before the task finished.
    #[error("task crashed: {0}")]
    Crashed(Box<CrashReport>),
    /// The task passed its deadline (a pool task's) and was cancelled, with the kill
    /// escalation; the task ended [`TaskState::TimedOut`].
    #[error("task passed its deadline of {0:?} and was cancelled")]
    DeadlinePassed(Duration),
    /// [`Task::wait_timeout`] gave up waiting; the task has not ended and goes on.
    #[error("task did not finish within {0:?}")]
    NotFinished(Duration),
}

/// How long a waiter yields before it parks (see `TaskCore::wait_deadline`).
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(100);

/// Whether a waiter of this process is yielding before it parks (at most one is).
static SPINNING: AtomicBool = AtomicBool::new(false);

/// A callback that receives a task's events.
pub type Listener = Box<dyn Fn(&TaskEvent) + Send + Sync>;

/// The shared core of a task: state, result, listeners and waiters.
pub(crate) struct TaskCore {
    pub(crate) id: TaskId,
    listeners: Vec<Listener>,
    inner: Mutex<CoreInner>,
    done: Condvar,
    /// Mirrors `CoreInner::delivered`, so a waiter can spin briefly without the lock.
    delivered: AtomicBool,
    /// `Task::cancel_hard` was called: if the worker dies first, the task ends CANCELED.
    hard_cancel_asked: AtomicBool,
}

struct CoreInner {
    state: TaskState,
    result: Option<Result<Args, TaskError>>,
    /// Set once listeners have seen the terminal event; waiters wait for this.
    delivered: bool,
    wakers: Vec<Waker>,
    /// Threads waiting on `done`: a notify with none is a wasted system call, and it would
    /// be on the path of a waiter that reads its own answer.
    parked: usize,
    /// Called once, after the waiters are released (see `TaskCore::on_end`).
    on_end: Option<EndHook>,
}

/// What a pool runs when one attempt of its task has ended.
pub(crate) type EndHook = Box<dyn FnOnce() + Send>;

/// A task that has just ended and whose end nobody has been told yet: its terminal event,
/// owed to the listeners, and its waiters, released after them. Only [`TaskCore::end`]'s
/// winner holds one. Deliver it on any thread (a service sends it to its dispatcher);
/// dropped undelivered, it delivers itself, so no waiter is ever left behind.
#[must_use = "the waiters of an ended task are released only when its Ending is delivered"]
pub(crate) struct Ending {
    core: Arc<TaskCore>,
    event: Option<TaskEvent>,
}

impl Ending {
    /// The task that ended.
    pub(crate) fn core(&self) -> &Arc<TaskCore> {
        &self.core
    }

    /// Tells the listeners, then releases the waiters.
    pub(crate) fn deliver(mut self) {
        self.deliver_now();
    }

    fn deliver_now(&mut self) {
        if let Some(event) = self.event.take() {
            self.core.deliver(&event);
            self.core.release_waiters();
        }
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.deliver_now();
    }
}

impl fmt::Debug for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ending")
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TaskCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCore")
            .field("id", &self.id)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl TaskCore {
    pub(crate) fn new(id: TaskId, listeners: Vec<Listener>) -> Arc<TaskCore> {
        Arc::new(TaskCore {
            id,
            listeners,
            inner: Mutex::new(CoreInner {
                state: TaskState::Queued,
                result: None,
                delivered: false,
                wakers: Vec::new(),
                parked: 0,
                on_end: None,
            }),
            done: Condvar::new(),
            delivered: AtomicBool::new(false),
            hard_cancel_asked: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CoreInner> {
        // A panic never happens while this lock is held (listeners run outside it), but a
        // poisoned lock must not take the supervisor down either.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub(crate) fn state(&self) -> TaskState {
        self.lock().state
    }

    /// The result, once `finish` has set it (listeners may not have seen it yet).
    pub(crate) fn peek_result(&self) -> Option<Result<Args, TaskError>> {
        self.lock().result.clone()
    }

    pub(crate) fn ask_hard_cancel(&self) {
        self.hard_cancel_asked.store(true, Ordering::Release);
    }

    /// Whether `Task::cancel_hard` was called: a death of its worker is then the cancel
    /// it asked for, not a crash.
    pub(crate) fn hard_cancel_asked(&self) -> bool {
        self.hard_cancel_asked.load(Ordering::Acquire)
    }

    /// Whether the waiters were released (the task ended and its listeners saw it).
    pub(crate) fn is_delivered(&self) -> bool {
        self.delivered.load(Ordering::Acquire)
    }

    pub(crate) fn has_listeners(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// Marks the task running, unless it already ended.
    pub(crate) fn launch(&self) -> bool {
        let mut inner = self.lock();
        if inner.state == TaskState::Queued {
            inner.state = TaskState::Running;
            true
        } else {
            !inner.state.is_finished()
        }
    }

    /// Ends the task in `state` with `result`, unless it had already ended: the first
    /// terminal transition wins, and only the winner gets the [`Ending`], whose delivery
    /// tells the listeners and then releases the waiters.
    ///
    /// The terminal event is made here, for every task: COMPLETION (with the outputs, when
    /// someone listens), FAILURE (with the worker's error text), CANCELATION, CRASH and
    /// TIMEOUT (with the error's text).
    pub(crate) fn end(
        self: &Arc<Self>,
        state: TaskState,
        result: Result<Args, TaskError>,
    ) -> Option<Ending> {
        let kind = match state {
            TaskState::Complete => EventKind::Completion,
            TaskState::Failed => EventKind::Failure,
            TaskState::Canceled => EventKind::Cancelation,
            TaskState::Crashed => EventKind::Crash,
            TaskState::TimedOut => EventKind::Timeout,
            TaskState::Queued | TaskState::Running => {
                debug_assert!(false, "{state:?} is not a terminal state");
                return None;
            }
        };
        let mut event = TaskEvent::new(self.id.clone(), kind);
        match &result {
            Ok(outputs) if self.has_listeners() => event.outputs = Some(outputs.clone()),
            Ok(_) | Err(TaskError::Canceled { .. }) => {}
            Err(TaskError::Failed { message }) => event.error = Some(message.clone()),
            Err(err) => event.error = Some(err.to_string()),
        }
        {
            let mut inner = self.lock();
            if inner.state.is_finished() {
                return None;
            }
            inner.state = state;
            inner.result = Some(result);
        }
        Some(Ending {
            core: Arc::clone(self),
            event: Some(event),
        })
    }

    /// Calls every listener with `event`, isolating panics.
    pub(crate) fn deliver(&self, event: &TaskEvent) {
        for listener in &self.listeners {
            if catch_unwind(AssertUnwindSafe(|| listener(event))).is_err() {
                tracing::warn!(task = %self.id, "a task listener panicked; the task carries on");
            }
        }
    }

    /// Wakes waiters; called (by `Ending`) after the terminal event was delivered.
    fn release_waiters(&self) {
        let (wakers, on_end, parked) = {
            let mut inner = self.lock();
            inner.delivered = true;
            self.delivered.store(true, Ordering::Release);
            (
                std::mem::take(&mut inner.wakers),
                inner.on_end.take(),
                inner.parked,
            )
        };
        if parked > 0 {
            self.done.notify_all();
        }
        for waker in wakers {
            waker.wake();
        }
        if let Some(on_end) = on_end {
            on_end();
        }
    }

    /// Runs `hook` once the task has ended and its waiters are released, on the thread
    /// that releases them (at once, here, if that already happened). A pool uses it
    /// instead of a listener when nobody listens, to spare the dispatcher's thread hop.
    pub(crate) fn on_end(&self, hook: EndHook) {
        let mut inner = self.lock();
        if inner.delivered {
            drop(inner);
            hook();
        } else {
            inner.on_end = Some(hook);
        }
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> Option<Result<Args, TaskError>> {
        // Most tasks end within microseconds of being waited on. Waking a parked thread
        // costs tens of microseconds on a virtual machine (the wake crosses CPUs and the
        // idle one must come out of its halt), so first yield for a moment, the way lock
        // implementations spin before they park. One waiter at a time in this process
        // does: many yielding threads would take the CPU from the workers they wait for.
        if !self.delivered.load(Ordering::Acquire)
            && SPINNING
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            let spin_until = Instant::now() + SPIN_BEFORE_PARK;
            while !self.delivered.load(Ordering::Acquire)
                && !deadline.is_some_and(|deadline| Instant::now() >= deadline)
                && Instant::now() < spin_until
            {
                std::thread::yield_now();
            }
            SPINNING.store(false, Ordering::Release);
        }
        let mut inner = self.lock();
        loop {
            if inner.delivered {
                return inner.result.clone();
            }
            match deadline {
                None => {
                    inner.parked += 1;
                    inner = self
                        .done
                        .wait(inner)
                        .unwrap_or_else(|poison| poison.into_inner());
                    inner.parked -= 1;
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    inner.parked += 1;
                    inner = self
                        .done
                        .wait_timeout(inner, deadline - now)
                        .unwrap_or_else(|poison| poison.into_inner())
                        .0;
                    inner.parked -= 1;
                }
            }
        }
    }

    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<Args, TaskError>> {
        let mut inner = self.lock();
        if inner.delivered {
            if let Some(result) = inner.result.clone() {
                return Poll::Ready(result);
            }
        }
        if !inner.wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            inner.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Where a task's requests go: the service that runs it, or the pool that routes it to a
/// worker (and may send it again). `task` knows its route only through this trait.
pub(crate) trait Route: Send + Sync {
    /// Asks for a cooperative cancel of `core` (a CANCEL request to its worker).
    fn cancel(&self, core: &Arc<TaskCore>);

    /// The end of a hard cancel's grace: `core` ends CANCELED (forced) and what runs it is
    /// killed, unless it ended first.
    fn hard_cancel(&self, core: &Arc<TaskCore>);

    /// Called by a thread about to wait for `core` (a task without listeners) until
    /// `deadline`: the route may read the answer on this thread. By default it does not.
    fn read_while_waiting(&self, _core: &TaskCore, _deadline: Option<Instant>) {}

    /// Makes sure the answer is read without a waiter's help, for a task whose end a
    /// hook or a future observes. By default there is nothing to do.
    fn wake_reader(&self) {}
}

/// A task submitted to a worker.
///
/// Wait for it with [`Task::wait`] or [`Task::wait_timeout`], or `.await` it: `Task` is a
/// [`Future`] that needs no particular runtime. Dropping a `Task` does not cancel it.
pub struct Task {
    pub(crate) core: Arc<TaskCore>,
    route: Arc<dyn Route>,
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.core.id)
            .field("state", &self.core.state())
            .finish()
    }
}

impl Task {
    pub(crate) fn new(core: Arc<TaskCore>, route: Arc<dyn Route>) -> Task {
        Task { core, route }
    }

    /// Another handle on the same task (crate-internal: a pool job keeps its attempt).
    pub(crate) fn clone_handle(&self) -> Task {
        Task {
            core: Arc::clone(&self.core),
            route: Arc::clone(&self.route),
        }
    }

    /// The task's identifier, as sent to the worker.
    pub fn id(&self) -> &TaskId {
        &self.core.id
    }

    /// The task's current state.
    pub fn state(&self) -> TaskState {
        self.core.state()
    }

    /// Asks the worker to cancel the task (a CANCEL request) and returns at once.
    ///
    /// The script decides: an Appose script sees `task.cancel_requested` and may stop.
    /// Use [`Task::cancel_hard`] when it may not.
    pub fn cancel(&self) {
        if !self.core.state().is_finished() {
            self.route.cancel(&self.core);
        }
    }

    /// Cancels the task and makes sure it ends: CANCEL, then, if the task has not ended
    /// within `grace`, the task ends CANCELED and the worker is killed.
    ///
    /// Returns at once; the escalation runs on a thread of its own.
    ///
    /// # Caveats
    /// Killing the worker ends its other tasks too: they end CRASHED, and their
    /// [`CrashReport::cause`] names this task. A task whose own hard cancel is under way
    /// when its worker dies, whatever killed it, ends CANCELED (forced) instead: it was
    /// going to be killed, and that is what was asked.
    pub fn cancel_hard(&self, grace: Duration) {
        if self.core.state().is_finished() {
            return;
        }
        self.core.ask_hard_cancel();
        self.route.cancel(&self.core);
        let core = Arc::clone(&self.core);
        let route = Arc::clone(&self.route);
        let spawned = std::thread::Builder::new()
            .name("consort-hard-cancel".to_owned())
            .spawn(move || {
                if core.wait_deadline(Some(Instant::now() + grace)).is_some() {
                    return;
                }
                route.hard_cancel(&core);
            });
        if spawned.is_err() {
            // No thread to wait with: escalate now rather than not at all.
            self.route.hard_cancel(&self.core);
        }
    }

    /// Blocks until the task ends, then returns its outputs.
    ///
    /// For a quick task of a service, the waiting thread reads the worker's answer itself
    /// (for up to 1 ms, looking without sleeping for the first 50 µs), which saves a thread
    /// hop; lines for other tasks it meets are routed on the way. Listeners never run on it.
    ///
    /// # Errors
    /// [`TaskError::Failed`], [`TaskError::Canceled`] or [`TaskError::Crashed`].
    pub fn wait(&self) -> Result<Args, TaskError> {
        self.read_while_waiting(None);
        self.core
            .wait_deadline(None)
            .unwrap_or_else(|| unreachable_result(&self.core.id))
    }

    /// Blocks until the task ends or `timeout` passes.
    ///
    /// # Errors
    /// As [`Task::wait`], and [`TaskError::NotFinished`] when the time ran out; the task is
    /// not cancelled then.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Args, TaskError> {
        let deadline = Instant::now().checked_add(timeout);
        self.read_while_waiting(deadline);
        match self.core.wait_deadline(deadline) {
            Some(result) => result,
            None => Err(TaskError::NotFinished(timeout)),
        }
    }

    /// Lets the route read the answer on this thread (a service does, see
    /// `service::stdout`): a task with listeners needs the dispatcher to end.
    fn read_while_waiting(&self, deadline: Option<Instant>) {
        if !self.core.has_listeners() && !self.core.is_delivered() {
            self.route.read_while_waiting(&self.core, deadline);
        }
    }

    /// Makes sure the answer is read without a waiter (see [`Route::wake_reader`]), for a
    /// task whose end is observed by a hook or a future rather than by a waiter.
    pub(crate) fn wake_reader(&self) {
        self.route.wake_reader();
    }

    /// The outputs, once the task completed.
    pub fn outputs(&self) -> Option<Args> {
        let inner = self.core.lock();
        match (&inner.result, inner.delivered) {
            (Some(Ok(outputs)), true) => Some(outputs.clone()),
            _ => None,
        }
    }

    /// The error, once the task ended without outputs.
    pub fn error(&self) -> Option<TaskError> {
        let inner = self.core.lock();
        match (&inner.result, inner.delivered) {
            (Some(Err(err)), true) => Some(err.clone()),
            _ => None,
        }
    }
}

fn unreachable_result(id: &TaskId) -> Result<Args, TaskError> {
    // `wait_deadline(None)` only returns once the result is set; stay total regardless.
    debug_assert!(false, "task {id} was released without a result");
    Err(TaskError::Failed {
        message: format!("internal error: task {id} ended without a result"),
    })
}

impl Future for Task {
    type Output = Result<Args, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let poll = self.core.poll_result(cx);
        if poll.is_pending() {
            // Its answer comes through the stdout thread, not a waiter.
            self.wake_reader();
        }
        poll
    }
}

#[cfg(test)]
mod tests;
