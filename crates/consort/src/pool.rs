//! A pool of workers started from one recipe, kept at its size and kept healthy: tasks go
//! to the least-loaded worker; crashed workers are restarted with backoff; leaky ones are
//! recycled between tasks; deadlines end tasks TIMED_OUT; tasks lost to a crash may be
//! sent again; a bounded queue pushes back on submitters.
//!
//! One **manager** thread owns the workers. Submitters push jobs on a bounded queue and
//! wake it; each attempt of a job is an ordinary [`Service`] task whose listener forwards
//! LAUNCH and UPDATE to the pool task's own listeners and sends the terminal event to the
//! manager, which decides: finish the pool task, or send it again. The manager also
//! watches the clock: deadlines, restarts waiting out their backoff, silent workers.
//!
//! # Invariants
//! 1. A pool task ends exactly once: its `TaskCore` is the one `task` uses, and every
//!    path that ends it (an attempt's end, a cancel before dispatch, the pool closing)
//!    goes through `TaskCore::finish`, the first caller wins.
//! 2. The listener of an attempt never takes a pool lock: it may run on any thread, even
//!    one that holds a pool lock (a service that refuses a task delivers its CRASH on the
//!    submitting thread), so it only forwards events and sends a message.
//! 3. A worker is recycled only when it runs no task: a retiring worker takes no new task
//!    and is closed once its last one has ended.
//! 4. Restarts of one slot are spaced by its backoff and capped per minute, whatever the
//!    worker does; a slot that keeps failing is reported (`PoolEvent::WorkerFailing`).
//! 5. `close` (and drop) is bounded: queued tasks end CANCELED, every worker gets
//!    `Service::close` (itself bounded) in parallel, and no worker outlives the pool.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::protocol::{Args, TaskId};
use crate::service::{Service, ServiceBuilder, StartError, SubmitError, TaskSpec};
use crate::task::{
    CrashReport, EventKind, Task, TaskCore, TaskError, TaskEvent, TaskLink, TaskState,
};

/// The environment variable that asks consort's own workers for heartbeats: its value is
/// the interval in seconds. Appose's workers never see it, so they never see a heartbeat.
pub const HEARTBEAT_ENV: &str = "CONSORT_HEARTBEAT_SECS";

/// How often the manager looks at its workers when nothing else wakes it.
const TICK: Duration = Duration::from_millis(10);

/// A worker that died within this long of its start without finishing a task "crashed at
/// start": consecutive ones are restarted with a growing delay.
const QUICK_DEATH: Duration = Duration::from_secs(2);

/// Why a pool could not be started or a task not submitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A setting is out of range.
    #[error("invalid pool setting: {0}")]
    Config(String),
    /// The first worker could not be started.
    #[error("cannot start the pool's first worker: {0}")]
    Start(#[source] StartError),
    /// The pool's manager thread could not be started.
    #[error("cannot start the pool's manager thread: {0}")]
    Thread(#[source] std::io::Error),
    /// An input could not be encoded.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// `try_submit` found the queue full (`with_queue_limit` tasks waiting).
    #[error("the pool's queue is full ({0} tasks waiting)")]
    QueueFull(usize),
    /// The pool is closing or closed.
    #[error("the pool is closed")]
    Closed,
}

/// Something that happened to a pool's workers, as its monitor callback sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PoolEvent {
    /// A worker process started in `slot`.
    WorkerStarted {
        /// The slot, `0..workers`.
        slot: usize,
        /// Its process id.
        pid: u32,
    },
    /// A worker ended without the pool asking; it will be restarted.
    WorkerExited {
        /// The slot.
        slot: usize,
        /// Its process id.
        pid: u32,
        /// How and why it ended (display form of the `CrashReport`).
        report: String,
    },
    /// A worker is being replaced between tasks.
    WorkerRecycled {
        /// The slot.
        slot: usize,
        /// Its process id.
        pid: u32,
        /// `max_tasks` or the memory limit.
        reason: String,
    },
    /// A worker stopped answering (no line, heartbeats included, for too long) and is killed.
    WorkerWedged {
        /// The slot.
        slot: usize,
        /// Its process id.
        pid: u32,
        /// How long it has been silent.
        silent_ms: u64,
    },
    /// A slot keeps failing at start: its next restart waits `delay_ms`.
    WorkerFailing {
        /// The slot.
        slot: usize,
        /// Consecutive deaths without a finished task.
        consecutive: u32,
        /// How long until the next start.
        delay_ms: u64,
        /// The last failure.
        last_error: String,
    },
}

/// A snapshot of a pool's workers and queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Process ids of the workers that take tasks (not those retiring), by slot; `None`
    /// for a slot waiting to restart.
    pub pids: Vec<Option<u32>>,
    /// Process ids of the workers running at least one task.
    pub busy: Vec<u32>,
    /// Tasks waiting for a worker.
    pub queued: usize,
    /// Tasks sent to workers and not ended.
    pub running: usize,
    /// Workers started to replace one that died.
    pub restarts: u64,
    /// Workers replaced between tasks (`max_tasks`, memory).
    pub recycled: u64,
    /// Workers killed because they stopped answering.
    pub wedged: u64,
    /// Slots whose last workers died at start, waiting out their backoff.
    pub failing: Vec<usize>,
}

impl PoolStats {
    /// How many workers are running and take tasks.
    pub fn alive(&self) -> usize {
        self.pids.iter().flatten().count()
    }
}

type Monitor = Arc<dyn Fn(&PoolEvent) + Send + Sync>;

/// A recipe for a pool: the worker recipe and the pool's policies.
#[derive(Clone)]
pub struct PoolBuilder {
    recipe: ServiceBuilder,
    settings: Settings,
    monitor: Option<Monitor>,
}

#[derive(Debug, Clone)]
struct Settings {
    workers: usize,
    tasks_per_worker: usize,
    queue_limit: usize,
    retries: u32,
    deadline: Option<Duration>,
    cancel_grace: Duration,
    max_tasks: Option<u64>,
    max_rss_growth: Option<u64>,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_restarts_per_minute: usize,
    heartbeat: Option<Duration>,
    wedged_after: Duration,
    spare: bool,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("recipe", &self.recipe)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Many workers from one recipe, kept at their number.
///
/// `Pool` is `Send + Sync`; submit from any thread. Dropping it does what
/// [`Pool::close`] does.
pub struct Pool {
    shared: Arc<Shared>,
    manager: Mutex<Option<JoinHandle<()>>>,
    wake: Mutex<Sender<Msg>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    settings: Settings,
    queue: Mutex<Queue>,
    /// Signalled when the queue has room, or the pool closes.
    space: Condvar,
    stats: Mutex<PoolStats>,
}

struct Queue {
    jobs: VecDeque<Arc<Job>>,
    closed: bool,
}

enum Msg {
    /// A job was queued.
    Queued,
    /// An attempt of `job` on service `service` ended; the attempt holds the result.
    Ended { job: Arc<Job>, service: u64 },
    /// The pool is closing.
    Close,
}

/// One pool task: its core, what to run, and which attempt runs it.
pub(crate) struct Job {
    core: Arc<TaskCore>,
    script: String,
    inputs: Args,
    queue: Option<String>,
    retries: u32,
    deadline: Option<Duration>,
    cancel_grace: Duration,
    state: Mutex<JobState>,
    /// The pool's queue, to leave it when cancelled while waiting there.
    pool: std::sync::Weak<Shared>,
}

#[derive(Default)]
struct JobState {
    /// The running attempt.
    attempt: Option<Task>,
    /// How many attempts were sent.
    n_attempts: u32,
    dispatched_at: Option<Instant>,
    timed_out: bool,
    /// The caller asked for a cancel: a crash after that is not retried.
    cancel_requested: bool,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.core.id)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A recipe for a pool of `workers` workers started from `recipe`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(recipe: ServiceBuilder, workers: usize) -> PoolBuilder {
        PoolBuilder {
            recipe,
            settings: Settings {
                workers,
                tasks_per_worker: 4,
                queue_limit: 10_000,
                retries: 0,
                deadline: None,
                cancel_grace: Duration::from_secs(1),
                max_tasks: None,
                max_rss_growth: None,
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(10),
                max_restarts_per_minute: 60,
                heartbeat: None,
                wedged_after: Duration::from_secs(5),
                spare: false,
            },
            monitor: None,
        }
    }

    /// Starts describing a task that runs `script` on some worker of the pool.
    ///
    /// # Caveats
    /// A task with a listener is RUNNING from its worker's LAUNCH, as a service task is. A
    /// task without one is RUNNING from when it is sent to a worker: its worker's events
    /// are not watched, which spares a thread hop per task.
    pub fn task(&self, script: impl Into<String>) -> PoolTaskBuilder<'_> {
        PoolTaskBuilder {
            pool: self,
            spec: TaskSpec::new(script.into()),
            retries: self.shared.settings.retries,
            deadline: self.shared.settings.deadline,
        }
    }

    /// Runs `script` once per item of `inputs` and yields the results in input order.
    ///
    /// At most `window` tasks are in flight or queued at once (blocking submission), so
    /// memory stays bounded however long `inputs` is.
    pub fn map<I>(&self, script: impl Into<String>, inputs: I) -> PoolMap<'_, I::IntoIter>
    where
        I: IntoIterator<Item = Args>,
    {
        let settings = &self.shared.settings;
        let window = (settings.workers * settings.tasks_per_worker * 2)
            .clamp(2, settings.queue_limit.max(2));
        PoolMap {
            pool: self,
            script: script.into(),
            inputs: inputs.into_iter(),
            window,
            pending: VecDeque::new(),
        }
    }

    /// A snapshot of the workers and the queue.
    pub fn stats(&self) -> PoolStats {
        let mut stats = lock(&self.shared.stats).clone();
        stats.queued = lock(&self.shared.queue).jobs.len();
        stats
    }

    /// Ends the pool within a bound: queued tasks end CANCELED, every worker is closed in
    /// parallel ([`Service::close`]: stdin EOF, SIGTERM, SIGKILL), and tasks still running
    /// end CRASHED with the cause "service closed". Calling it again does nothing.
    pub fn close(&self) {
        {
            let mut queue = lock(&self.shared.queue);
            queue.closed = true;
        }
        self.shared.space.notify_all();
        let _ = lock(&self.wake).send(Msg::Close);
        if let Some(manager) = lock(&self.manager).take() {
            let _ = manager.join();
        }
    }

    fn enqueue(&self, job: Arc<Job>, block: bool) -> Result<(), PoolError> {
        let limit = self.shared.settings.queue_limit;
        let was_empty = {
            let mut queue = lock(&self.shared.queue);
            loop {
                if queue.closed {
                    return Err(PoolError::Closed);
                }
                if queue.jobs.len() < limit {
                    break;
                }
                if !block {
                    return Err(PoolError::QueueFull(queue.jobs.len()));
                }
                queue = self
                    .shared
                    .space
                    .wait(queue)
                    .unwrap_or_else(|poison| poison.into_inner());
            }
            queue.jobs.push_back(job);
            queue.jobs.len() == 1
        };
        // Only the first job of an empty queue wakes the manager: with jobs already
        // waiting, the manager is either dispatching (it empties the queue or fills the
        // workers before it sleeps) or the workers are full and the next attempt's end
        // wakes it. The tick covers anything else.
        if was_empty {
            let _ = lock(&self.wake).send(Msg::Queued);
        }
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

impl PoolBuilder {
    /// Runs one task per worker at a time (default: up to 4), so that a hard cancel or a
    /// crash touches no other task.
    pub fn with_isolated(mut self, isolated: bool) -> PoolBuilder {
        self.settings.tasks_per_worker = if isolated { 1 } else { 4 };
        self
    }

    /// Sends up to `n` tasks to one worker at a time (default 4; 1 is isolated mode).
    pub fn with_tasks_per_worker(mut self, n: usize) -> PoolBuilder {
        self.settings.tasks_per_worker = n;
        self
    }

    /// At most `n` tasks wait for a worker (default 10,000): past that, `submit` blocks
    /// and `try_submit` returns [`PoolError::QueueFull`].
    pub fn with_queue_limit(mut self, n: usize) -> PoolBuilder {
        self.settings.queue_limit = n;
        self
    }

    /// Sends a task lost to a crash again, up to `n` more times (default 0). A task that
    /// failed in user code, was cancelled or timed out is never retried. Per task:
    /// [`PoolTaskBuilder::retries`].
    pub fn with_retries(mut self, n: u32) -> PoolBuilder {
        self.settings.retries = n;
        self
    }

    /// Gives every task a deadline, counted from when it is sent to a worker (per task:
    /// [`PoolTaskBuilder::deadline`]).
    pub fn with_deadline(mut self, deadline: Duration) -> PoolBuilder {
        self.settings.deadline = Some(deadline);
        self
    }

    /// How long a task past its deadline may take to acknowledge its CANCEL before its
    /// worker is killed (default 1 s).
    pub fn with_cancel_grace(mut self, grace: Duration) -> PoolBuilder {
        self.settings.cancel_grace = grace;
        self
    }

    /// Replaces a worker after it has run `n` tasks, between tasks.
    pub fn with_max_tasks(mut self, n: u64) -> PoolBuilder {
        self.settings.max_tasks = Some(n);
        self
    }

    /// Replaces a worker, between tasks, once its resident memory is `bytes` above what it
    /// was after its first task (loky's default is 300 MB). Linux only (read from `/proc`).
    pub fn with_max_rss_growth(mut self, bytes: u64) -> PoolBuilder {
        self.settings.max_rss_growth = Some(bytes);
        self
    }

    /// Restart delays for a slot whose workers keep dying at start: none for the first
    /// death, then `initial`, doubling up to `max` (default 100 ms to 10 s).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> PoolBuilder {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max;
        self
    }

    /// At most `n` restarts of one slot in any minute (default 60); past it the slot
    /// waits.
    pub fn with_max_restarts_per_minute(mut self, n: usize) -> PoolBuilder {
        self.settings.max_restarts_per_minute = n;
        self
    }

    /// Detects wedged workers: asks consort's own workers (through
    /// [`HEARTBEAT_ENV`]) for a heartbeat every `interval`, and kills a worker that says
    /// nothing at all for `wedged_after` (its tasks end CRASHED with a cause that says so,
    /// and it is replaced).
    ///
    /// # Caveats
    /// Only for workers that speak the heartbeat extension (consort's Rust SDK and Python
    /// worker): another worker idle for `wedged_after` would be killed. In consort's Python
    /// worker the heartbeat is a thread, so a task that holds the GIL in C code for longer
    /// than `wedged_after` looks wedged too: choose the bound with that in mind.
    pub fn with_heartbeat(mut self, interval: Duration, wedged_after: Duration) -> PoolBuilder {
        self.settings.heartbeat = Some(interval);
        self.settings.wedged_after = wedged_after;
        self
    }

    /// Keeps one more worker started and idle, to replace the next worker that dies or
    /// is recycled without waiting for a process to start (default off: it costs one idle
    /// process).
    pub fn with_spare(mut self, spare: bool) -> PoolBuilder {
        self.settings.spare = spare;
        self
    }

    /// Calls `monitor` with every [`PoolEvent`], on the pool's manager thread.
    pub fn with_monitor(
        mut self,
        monitor: impl Fn(&PoolEvent) + Send + Sync + 'static,
    ) -> PoolBuilder {
        self.monitor = Some(Arc::new(monitor));
        self
    }

    /// Starts the workers and the manager.
    ///
    /// # Errors
    /// [`PoolError::Config`] for a zero worker count, queue limit or tasks per worker;
    /// [`PoolError::Start`] when the first worker cannot be spawned (a missing program).
    /// Later spawn failures are treated as workers that died at start.
    pub fn start(self) -> Result<Pool, PoolError> {
        let settings = self.settings;
        if settings.workers == 0 || settings.tasks_per_worker == 0 || settings.queue_limit == 0 {
            return Err(PoolError::Config(
                "workers, tasks per worker and the queue limit must be at least 1".to_owned(),
            ));
        }
        let mut recipe = self.recipe;
        if let Some(interval) = settings.heartbeat {
            recipe = recipe.with_env(HEARTBEAT_ENV, format!("{}", interval.as_secs_f64()));
        }
        let first = recipe.start().map_err(PoolError::Start)?;
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            space: Condvar::new(),
            stats: Mutex::new(PoolStats::default()),
        });
        let (wake, messages) = mpsc::channel();
        let mut manager = Manager {
            shared: Arc::clone(&shared),
            recipe,
            monitor: self.monitor,
            messages,
            wake: wake.clone(),
            slots: (0..settings.workers).map(|_| Slot::default()).collect(),
            retiring: Vec::new(),
            running: HashMap::new(),
            closers: Vec::new(),
            restarts: 0,
            recycled: 0,
            wedged: 0,
            closing: false,
            spare: None,
            want_spare: false,
        };
        manager.install(0, first);
        for slot_idx in 1..settings.workers {
            manager.start_slot(slot_idx);
        }
        manager.start_spare();
        manager.publish();
        let handle = std::thread::Builder::new()
            .name("consort-pool".to_owned())
            .spawn(move || manager.run())
            .map_err(PoolError::Thread)?;
        Ok(Pool {
            shared,
            manager: Mutex::new(Some(handle)),
            wake: Mutex::new(wake),
        })
    }
}

/// A pool task being described; [`PoolTaskBuilder::submit`] queues it.
pub struct PoolTaskBuilder<'a> {
    pool: &'a Pool,
    spec: TaskSpec,
    retries: u32,
    deadline: Option<Duration>,
}

impl fmt::Debug for PoolTaskBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolTaskBuilder")
            .field("script", &self.spec.script)
            .field("inputs", &self.spec.inputs)
            .field("retries", &self.retries)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl PoolTaskBuilder<'_> {
    /// Binds an input variable. A value that cannot be encoded makes `submit` fail.
    pub fn input(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        self.spec.input(name.into(), value);
        self
    }

    /// Binds every entry of `inputs` as an input variable.
    pub fn inputs(mut self, inputs: impl IntoIterator<Item = (String, Value)>) -> Self {
        self.spec.inputs.extend(inputs);
        self
    }

    /// Runs the task on the named queue of its worker: `"main"` is the main thread.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.spec.queue = Some(queue.into());
        self
    }

    /// Adds a listener that receives every event of the task, every attempt's, in order.
    pub fn listen(mut self, listener: impl Fn(&TaskEvent) + Send + Sync + 'static) -> Self {
        self.spec.listeners.push(Box::new(listener));
        self
    }

    /// Sends the task again, up to `n` more times, when its worker dies under it.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Ends the task TIMED_OUT (with the cancel escalation) once it has run this long.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Queues the task, waiting while the queue is full.
    ///
    /// # Errors
    /// [`PoolError::Submit`] for an input that cannot be encoded, [`PoolError::Closed`]
    /// once the pool is closing.
    pub fn submit(self) -> Result<Task, PoolError> {
        self.send(true)
    }

    /// Queues the task, or declines at once when the queue is full.
    ///
    /// # Errors
    /// As [`PoolTaskBuilder::submit`], and [`PoolError::QueueFull`].
    pub fn try_submit(self) -> Result<Task, PoolError> {
        self.send(false)
    }

    fn send(self, block: bool) -> Result<Task, PoolError> {
        let TaskSpec {
            script,
            inputs,
            queue,
            listeners,
            error,
        } = self.spec;
        if let Some(err) = error {
            return Err(err.into());
        }
        let core = TaskCore::new(crate::service::new_task_id(), listeners);
        let job = Arc::new(Job {
            core: Arc::clone(&core),
            script,
            inputs,
            queue,
            retries: self.retries,
            deadline: self.deadline,
            cancel_grace: self.pool.shared.settings.cancel_grace,
            state: Mutex::new(JobState::default()),
            pool: Arc::downgrade(&self.pool.shared),
        });
        self.pool.enqueue(Arc::clone(&job), block)?;
        Ok(Task {
            core,
            link: TaskLink::Pool(job),
        })
    }
}

/// The results of [`Pool::map`], in input order.
pub struct PoolMap<'a, I> {
    pool: &'a Pool,
    script: String,
    inputs: I,
    window: usize,
    pending: VecDeque<Result<Task, PoolError>>,
}

impl<I> fmt::Debug for PoolMap<'_, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolMap")
            .field("window", &self.window)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Why one item of [`Pool::map`] has no outputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The task could not be queued.
    #[error(transparent)]
    Submit(#[from] PoolError),
    /// The task ended without outputs.
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl<I: Iterator<Item = Args>> Iterator for PoolMap<'_, I> {
    type Item = Result<Args, MapError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.len() < self.window {
            let Some(inputs) = self.inputs.next() else {
                break;
            };
            let task = self.pool.task(self.script.clone()).inputs(inputs).submit();
            self.pending.push_back(task);
        }
        let task = self.pending.pop_front()?;
        Some(match task {
            Ok(task) => task.wait().map_err(MapError::from),
            Err(err) => Err(err.into()),
        })
    }
}

// -- jobs ------------------------------------------------------------------------------

impl Job {
    /// A cooperative cancel: a queued task ends CANCELED now; a running one gets a CANCEL.
    pub(crate) fn cancel(&self) {
        let attempt = {
            let mut state = lock(&self.state);
            state.cancel_requested = true;
            match &state.attempt {
                Some(attempt) => attempt.clone_handle(),
                None => {
                    // The manager sees `cancel_requested` and never sends it.
                    drop(state);
                    self.leave_queue();
                    self.finish(
                        TaskState::Canceled,
                        Err(TaskError::Canceled { forced: false }),
                    );
                    return;
                }
            }
        };
        attempt.cancel();
    }

    /// The end of a hard cancel's grace: a queued task ends CANCELED; a running one has
    /// its worker killed (`Task::cancel_hard`'s escalation, on the attempt).
    pub(crate) fn hard_cancel(&self) {
        let attempt = {
            let mut state = lock(&self.state);
            state.cancel_requested = true;
            match &state.attempt {
                Some(attempt) => attempt.clone_handle(),
                None => {
                    drop(state);
                    self.leave_queue();
                    self.finish(
                        TaskState::Canceled,
                        Err(TaskError::Canceled { forced: true }),
                    );
                    return;
                }
            }
        };
        attempt.cancel_hard(Duration::ZERO);
    }

    /// Takes this job off the pool's queue, so a cancelled job frees its place at once.
    fn leave_queue(&self) {
        let Some(shared) = self.pool.upgrade() else {
            return;
        };
        let removed = {
            let mut queue = lock(&shared.queue);
            let before = queue.jobs.len();
            queue
                .jobs
                .retain(|job| !std::ptr::eq(Arc::as_ptr(job), self));
            queue.jobs.len() < before
        };
        if removed {
            shared.space.notify_one();
        }
    }

    /// Ends the pool task (first caller wins) and delivers its terminal event.
    fn finish(&self, state: TaskState, result: Result<Args, TaskError>) {
        let mut event = TaskEvent::new(
            self.core.id.clone(),
            match state {
                TaskState::Complete => EventKind::Completion,
                TaskState::Canceled => EventKind::Cancelation,
                TaskState::Failed => EventKind::Failure,
                TaskState::TimedOut => EventKind::Timeout,
                _ => EventKind::Crash,
            },
        );
        match &result {
            Ok(outputs) if self.core.has_listeners() => event.outputs = Some(outputs.clone()),
            Ok(_) => {}
            Err(TaskError::Failed { message }) => event.error = Some(message.clone()),
            Err(err) => event.error = Some(err.to_string()),
        }
        if self.core.finish(state, result) {
            self.core.deliver(&event);
            self.core.release_waiters();
        }
    }
}

impl Task {
    /// Another handle on the same task (crate-internal: pool jobs keep their attempt).
    fn clone_handle(&self) -> Task {
        Task {
            core: Arc::clone(&self.core),
            link: self.link.clone(),
        }
    }
}

// -- the manager -----------------------------------------------------------------------

#[derive(Default)]
struct Slot {
    worker: Option<Worker>,
    /// Consecutive deaths at start.
    failures: u32,
    /// When the slot may start its next worker, if it waits.
    restart_at: Option<Instant>,
    /// Recent restarts, for the per-minute cap.
    restart_times: VecDeque<Instant>,
    /// Waiting because of the per-minute cap.
    capped: bool,
    last_error: String,
}

struct Worker {
    service: Service,
    started: Instant,
    running: usize,
    n_tasks: u64,
    finished_a_task: bool,
    base_rss: Option<u64>,
    /// Being killed (wedged, or a hard cancel): takes no new task.
    killed: bool,
}

struct Manager {
    shared: Arc<Shared>,
    recipe: ServiceBuilder,
    monitor: Option<Monitor>,
    messages: Receiver<Msg>,
    wake: Sender<Msg>,
    slots: Vec<Slot>,
    /// Workers replaced between tasks, closed once idle.
    retiring: Vec<Worker>,
    /// Jobs sent to a worker, by task id, with the service running them.
    running: HashMap<TaskId, (Arc<Job>, u64)>,
    closers: Vec<JoinHandle<()>>,
    restarts: u64,
    recycled: u64,
    wedged: u64,
    closing: bool,
    /// A started, idle worker that replaces the next one to go (`with_spare`).
    spare: Option<Service>,
    want_spare: bool,
}

impl Manager {
    fn run(mut self) {
        loop {
            let msg = match self.messages.recv_timeout(TICK) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut closing = false;
            let mut next = msg;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Queued => {}
                    Msg::Ended { job, service } => self.on_ended(job, service),
                    Msg::Close => closing = true,
                }
                next = self.messages.try_recv().ok();
            }
            if closing {
                break;
            }
            self.check_workers();
            self.check_deadlines();
            self.dispatch();
            if std::mem::take(&mut self.want_spare) {
                self.start_spare();
            }
            self.publish();
        }
        self.shutdown();
    }

    fn emit(&self, event: PoolEvent) {
        tracing::debug!(target: "consort::pool", "{event:?}");
        if let Some(monitor) = &self.monitor {
            if catch_unwind(AssertUnwindSafe(|| monitor(&event))).is_err() {
                tracing::warn!("the pool monitor panicked; the pool carries on");
            }
        }
    }

    fn publish(&self) {
        let mut stats = lock(&self.shared.stats);
        stats.pids = self
            .slots
            .iter()
            .map(|slot| slot.worker.as_ref().map(|worker| worker.service.pid()))
            .collect();
        stats.busy = self
            .slots
            .iter()
            .filter_map(|slot| slot.worker.as_ref())
            .filter(|worker| worker.running > 0)
            .map(|worker| worker.service.pid())
            .collect();
        stats.running = self.running.len();
        stats.restarts = self.restarts;
        stats.recycled = self.recycled;
        stats.wedged = self.wedged;
        stats.failing = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.failures > 1 || (slot.capped && slot.worker.is_none()))
            .map(|(slot_idx, _)| slot_idx)
            .collect();
    }

    fn install(&mut self, slot_idx: usize, service: Service) {
        let pid = service.pid();
        self.slots[slot_idx].worker = Some(Worker {
            service,
            started: Instant::now(),
            running: 0,
            n_tasks: 0,
            finished_a_task: false,
            base_rss: None,
            killed: false,
        });
        self.emit(PoolEvent::WorkerStarted {
            slot: slot_idx,
            pid,
        });
    }

    /// Starts a worker in an empty slot, now; a spawn failure counts as a death at start.
    fn start_slot(&mut self, slot_idx: usize) {
        self.slots[slot_idx].restart_at = None;
        if let Some(spare) = self.spare.take() {
            if spare.is_alive() {
                self.install(slot_idx, spare);
                // Its replacement starts after this round's dispatch, off the task's path.
                self.want_spare = true;
                return;
            }
            // It died idle: fall back to a plain start, and do not replace it (a recipe
            // that dies at start must not start twice per restart).
            self.close_in_background(spare);
        }
        match self.recipe.start() {
            Ok(service) => self.install(slot_idx, service),
            Err(err) => {
                let message = err.to_string();
                self.schedule_restart(slot_idx, true, message);
            }
        }
    }

    /// Starts the standby worker, when the pool keeps one.
    fn start_spare(&mut self) {
        if !self.shared.settings.spare || self.closing || self.spare.is_some() {
            return;
        }
        match self.recipe.start() {
            Ok(service) => self.spare = Some(service),
            Err(err) => {
                tracing::warn!(target: "consort::pool", "cannot start a spare worker: {err}")
            }
        }
    }

    /// Decides when an empty slot starts its next worker: at once after a worker that
    /// lived, with a doubling delay after consecutive deaths at start, and never more than
    /// `max_restarts_per_minute` times in a minute.
    fn schedule_restart(&mut self, slot_idx: usize, died_at_start: bool, error: String) {
        let settings = &self.shared.settings;
        let slot = &mut self.slots[slot_idx];
        slot.failures = if died_at_start { slot.failures + 1 } else { 0 };
        slot.last_error = error;
        let mut delay = match slot.failures {
            0 | 1 => Duration::ZERO,
            n => settings
                .backoff_initial
                .saturating_mul(1 << (n - 2).min(20))
                .min(settings.backoff_max),
        };
        let now = Instant::now();
        slot.restart_times.push_back(now);
        while slot
            .restart_times
            .front()
            .is_some_and(|at| now.duration_since(*at) >= Duration::from_secs(60))
        {
            slot.restart_times.pop_front();
        }
        slot.capped = slot.restart_times.len() > settings.max_restarts_per_minute;
        if slot.capped {
            if let Some(oldest) = slot.restart_times.front() {
                let window_end = *oldest + Duration::from_secs(60);
                delay = delay.max(window_end.saturating_duration_since(now));
            }
        }
        slot.restart_at = Some(now + delay);
        if slot.failures > 1 || !delay.is_zero() {
            let event = PoolEvent::WorkerFailing {
                slot: slot_idx,
                consecutive: slot.failures,
                delay_ms: delay.as_millis() as u64,
                last_error: slot.last_error.clone(),
            };
            tracing::warn!(
                target: "consort::pool",
                "worker slot {slot_idx} keeps failing ({} in a row); next start in {delay:?}: {}",
                slot.failures,
                slot.last_error
            );
            self.emit(event);
        }
    }

    /// Finds dead and wedged workers, starts slots whose wait is over, closes idle
    /// retirees.
    fn check_workers(&mut self) {
        let now = Instant::now();
        for slot_idx in 0..self.slots.len() {
            let dead = match &self.slots[slot_idx].worker {
                Some(worker) => worker.service.crash_report().map(|report| {
                    // Silent on stdout and short-lived: it never got going.
                    let at_start = !worker.finished_a_task
                        && !worker.service.link.heard_anything()
                        && now.duration_since(worker.started) < QUICK_DEATH;
                    (report, at_start)
                }),
                None => None,
            };
            if let Some((report, at_start)) = dead {
                if let Some(worker) = self.slots[slot_idx].worker.take() {
                    self.emit(PoolEvent::WorkerExited {
                        slot: slot_idx,
                        pid: worker.service.pid(),
                        report: report.to_string(),
                    });
                    self.retire(worker);
                }
                self.restarts += 1;
                self.schedule_restart(slot_idx, at_start, report.to_string());
            } else if let Some(wedged_after) = self.wedged_after() {
                self.check_wedged(slot_idx, wedged_after);
            }
            let slot = &self.slots[slot_idx];
            // A fresh `now`: a restart scheduled just above with no delay is due now.
            if slot.worker.is_none() && slot.restart_at.is_some_and(|at| at <= Instant::now()) {
                self.start_slot(slot_idx);
            }
        }
        // Close retirees with no task left, off this thread (close may take seconds).
        let mut idx = 0;
        while idx < self.retiring.len() {
            if self.retiring[idx].running == 0 || !self.retiring[idx].service.is_alive() {
                let worker = self.retiring.swap_remove(idx);
                self.close_in_background(worker.service);
            } else {
                idx += 1;
            }
        }
        self.closers.retain(|closer| !closer.is_finished());
    }

    fn wedged_after(&self) -> Option<Duration> {
        self.shared
            .settings
            .heartbeat
            .map(|_| self.shared.settings.wedged_after)
    }

    fn check_wedged(&mut self, slot_idx: usize, wedged_after: Duration) {
        let Some(worker) = &mut self.slots[slot_idx].worker else {
            return;
        };
        let silent = worker.service.link.last_heard().elapsed();
        if silent < wedged_after || worker.killed {
            return;
        }
        worker.killed = true;
        let pid = worker.service.pid();
        let link = worker.service.link.clone();
        let cause = format!(
            "the worker stopped answering: nothing heard for {:.1} s (heartbeats expected \
             every {:.1} s), so it was killed as wedged or stopped",
            silent.as_secs_f64(),
            self.shared
                .settings
                .heartbeat
                .unwrap_or_default()
                .as_secs_f64()
        );
        self.wedged += 1;
        self.emit(PoolEvent::WorkerWedged {
            slot: slot_idx,
            pid,
            silent_ms: silent.as_millis() as u64,
        });
        // The kill is immediate; the monitor then crashes its tasks with this cause and
        // the next check finds the slot dead and restarts it.
        let fallback = link.clone();
        let spawned = std::thread::Builder::new()
            .name("consort-pool-kill".to_owned())
            .spawn(move || {
                link.kill_now(&cause);
            });
        match spawned {
            Ok(handle) => self.closers.push(handle),
            Err(_) => {
                fallback.kill_now("the worker stopped answering");
            }
        }
    }

    fn retire(&mut self, worker: Worker) {
        self.retiring.push(worker);
    }

    fn close_in_background(&mut self, service: Service) {
        let spawned = std::thread::Builder::new()
            .name("consort-pool-close".to_owned())
            .spawn(move || drop(service));
        match spawned {
            Ok(handle) => self.closers.push(handle),
            // No thread: close here; bounded, only slower.
            Err(err) => tracing::warn!("cannot start a thread to close a worker: {err}"),
        }
    }

    /// Hard-cancels running jobs past their deadline.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for (job, _) in self.running.values() {
            let Some(deadline) = job.deadline else {
                continue;
            };
            let attempt = {
                let mut state = lock(&job.state);
                match state.dispatched_at {
                    Some(at) if !state.timed_out && now.duration_since(at) >= deadline => {
                        state.timed_out = true;
                        state.attempt.as_ref().map(Task::clone_handle)
                    }
                    _ => None,
                }
            };
            if let Some(attempt) = attempt {
                attempt.cancel_hard(job.cancel_grace);
            }
        }
    }

    /// Sends queued jobs to the least-loaded workers that have room.
    fn dispatch(&mut self) {
        let cap = self.shared.settings.tasks_per_worker;
        loop {
            let Some(slot_idx) = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot_idx, slot)| {
                    let worker = slot.worker.as_ref()?;
                    (worker.running < cap && !worker.killed).then_some((
                        worker.running,
                        worker.n_tasks,
                        slot_idx,
                    ))
                })
                .min()
                .map(|(_, _, slot_idx)| slot_idx)
            else {
                return;
            };
            let job = {
                let mut queue = lock(&self.shared.queue);
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => return,
                }
            };
            self.shared.space.notify_one();
            self.send(slot_idx, job);
        }
    }

    /// Sends one attempt of `job` to the worker in `slot_idx`.
    fn send(&mut self, slot_idx: usize, job: Arc<Job>) {
        let Some(worker) = self.slots[slot_idx].worker.as_mut() else {
            return;
        };
        let service_id = worker.service.id();
        let mut state = lock(&job.state);
        if job.core.state().is_finished() || state.cancel_requested {
            // Cancelled while queued (`Job::cancel` ends it, if it has not yet).
            return;
        }
        let mut builder = worker
            .service
            .task(job.script.clone())
            .inputs(job.inputs.clone());
        // With listeners, the attempt's events are forwarded; without, only its end
        // matters, and a hook reports it without the dispatcher's thread hop.
        let listened = job.core.has_listeners();
        if listened {
            let forward = Arc::clone(&job);
            let wake = self.wake.clone();
            builder =
                builder.listen(move |event| forward_event(&forward, &wake, service_id, event));
        }
        if let Some(queue) = &job.queue {
            builder = builder.queue(queue.clone());
        }
        match builder.submit() {
            Ok(attempt) => {
                if !listened {
                    let ended = Arc::clone(&job);
                    let wake = self.wake.clone();
                    // Takes no pool lock (invariant 2): it may run right here.
                    attempt.core.on_end(Box::new(move || {
                        let _ = wake.send(Msg::Ended {
                            job: ended,
                            service: service_id,
                        });
                    }));
                    attempt.wake_reader();
                }
                if !listened {
                    // Nobody watches the LAUNCH (see `Pool::task`).
                    job.core.launch();
                }
                state.n_attempts += 1;
                state.dispatched_at = Some(Instant::now());
                state.attempt = Some(attempt);
                worker.running += 1;
                drop(state);
                self.running
                    .insert(job.core.id.clone(), (Arc::clone(&job), service_id));
            }
            Err(err) => {
                // Inputs were checked when the job was built; stay total regardless.
                drop(state);
                job.finish(
                    TaskState::Failed,
                    Err(TaskError::Failed {
                        message: err.to_string(),
                    }),
                );
            }
        }
    }

    fn worker_mut(&mut self, service_id: u64) -> Option<(Option<usize>, &mut Worker)> {
        if let Some(slot_idx) = self.slots.iter().position(|slot| {
            slot.worker
                .as_ref()
                .is_some_and(|worker| worker.service.id() == service_id)
        }) {
            return self.slots[slot_idx]
                .worker
                .as_mut()
                .map(|worker| (Some(slot_idx), worker));
        }
        self.retiring
            .iter_mut()
            .find(|worker| worker.service.id() == service_id)
            .map(|worker| (None, worker))
    }

    fn on_ended(&mut self, job: Arc<Job>, service_id: u64) {
        self.running.remove(&job.core.id);
        let Some(attempt) = lock(&job.state).attempt.take() else {
            debug_assert!(false, "an attempt ended twice");
            return;
        };
        let state = attempt.state();
        let result = attempt.core.peek_result().unwrap_or_else(|| {
            Err(TaskError::Failed {
                message: "internal error: the attempt ended without a result".to_owned(),
            })
        });
        let max_tasks = self.shared.settings.max_tasks;
        let max_growth = self.shared.settings.max_rss_growth;
        let mut recycle = None;
        let forced = matches!(result, Err(TaskError::Canceled { forced: true }));
        if let Some((slot_idx, worker)) = self.worker_mut(service_id) {
            worker.running = worker.running.saturating_sub(1);
            // A hard cancel is killing it: it must take no task meanwhile.
            worker.killed |= forced;
            if state != TaskState::Crashed {
                worker.n_tasks += 1;
                worker.finished_a_task = true;
                if let Some(slot_idx) = slot_idx {
                    let pid = worker.service.pid();
                    if max_tasks.is_some_and(|max| worker.n_tasks >= max) {
                        recycle = Some((slot_idx, format!("ran {} tasks", worker.n_tasks)));
                    } else if let Some(max_growth) = max_growth {
                        if let Some(rss) = rss_bytes(pid) {
                            let base = *worker.base_rss.get_or_insert(rss);
                            if rss > base.saturating_add(max_growth) {
                                recycle = Some((
                                    slot_idx,
                                    format!(
                                        "resident memory {} MB, over {} MB above its start",
                                        rss / 1_000_000,
                                        max_growth / 1_000_000
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        if state != TaskState::Crashed {
            if let Some(slot_idx) = slot_idx_of(&self.slots, service_id) {
                self.slots[slot_idx].failures = 0;
            }
        }
        if let Some((slot_idx, reason)) = recycle.filter(|_| !self.closing) {
            if let Some(worker) = self.slots[slot_idx].worker.take() {
                self.recycled += 1;
                self.emit(PoolEvent::WorkerRecycled {
                    slot: slot_idx,
                    pid: worker.service.pid(),
                    reason,
                });
                self.retire(worker);
                self.start_slot(slot_idx);
            }
        }
        self.settle(job, state, result);
    }

    /// Ends the pool task from its attempt's end, or sends it again.
    fn settle(&mut self, job: Arc<Job>, state: TaskState, result: Result<Args, TaskError>) {
        let (timed_out, retry) = {
            let mut job_state = lock(&job.state);
            job_state.dispatched_at = None;
            let retry = state == TaskState::Crashed
                && !job_state.timed_out
                && !job_state.cancel_requested
                && job_state.n_attempts <= job.retries
                && !lock(&self.shared.queue).closed;
            (
                job_state.timed_out,
                retry.then_some(job_state.n_attempts + 1),
            )
        };
        if timed_out && state != TaskState::Complete && state != TaskState::Failed {
            let deadline = job.deadline.unwrap_or_default();
            job.finish(TaskState::TimedOut, Err(TaskError::TimedOut(deadline)));
            return;
        }
        if state == TaskState::Crashed && job.core.hard_cancel_asked() {
            // Its own hard cancel was under way (another task's kill may have come first).
            job.finish(
                TaskState::Canceled,
                Err(TaskError::Canceled { forced: true }),
            );
            return;
        }
        if let Some(attempt) = retry {
            if job.core.has_listeners() {
                let mut event = TaskEvent::new(job.core.id.clone(), EventKind::Retry);
                event.error = result.as_ref().err().map(ToString::to_string);
                event.progress.info = Some(json!({ "attempt": attempt }));
                job.core.deliver(&event);
            }
            // Retries go to the front: they were submitted before what waits.
            lock(&self.shared.queue).jobs.push_front(job);
            return;
        }
        job.finish(state, result);
    }

    fn shutdown(mut self) {
        self.closing = true;
        let queued: Vec<_> = lock(&self.shared.queue).jobs.drain(..).collect();
        self.shared.space.notify_all();
        for job in queued {
            job.finish(
                TaskState::Canceled,
                Err(TaskError::Canceled { forced: false }),
            );
        }
        let mut services = Vec::new();
        for slot in &mut self.slots {
            if let Some(worker) = slot.worker.take() {
                services.push(worker.service);
            }
        }
        services.extend(self.retiring.drain(..).map(|worker| worker.service));
        services.extend(self.spare.take());
        for service in services {
            self.close_in_background(service);
        }
        for closer in self.closers.drain(..) {
            let _ = closer.join();
        }
        // Every service is closed: the attempts' last events are in the channel.
        while let Ok(msg) = self.messages.try_recv() {
            if let Msg::Ended { job, service } = msg {
                self.on_ended(job, service);
            }
        }
        for (_, (job, _)) in self.running.drain() {
            // The attempt's listener holds the job: break the cycle.
            let attempt = lock(&job.state).attempt.take();
            drop(attempt);
            let report = CrashReport {
                pid: 0,
                status: crate::task::ExitStatus::Unknown,
                cause: Some("the pool closed before the task ended".to_owned()),
                stderr: Vec::new(),
                stdout: Vec::new(),
            };
            job.finish(
                TaskState::Crashed,
                Err(TaskError::Crashed(Box::new(report))),
            );
        }
        self.publish();
    }
}

fn slot_idx_of(slots: &[Slot], service_id: u64) -> Option<usize> {
    slots.iter().position(|slot| {
        slot.worker
            .as_ref()
            .is_some_and(|worker| worker.service.id() == service_id)
    })
}

/// An attempt's listener: LAUNCH and UPDATE go to the pool task's listeners; the end goes
/// to the manager. Takes no pool lock (invariant 2).
fn forward_event(job: &Arc<Job>, wake: &Sender<Msg>, service: u64, event: &TaskEvent) {
    match event.kind {
        EventKind::Launch => {
            if job.core.launch() && job.core.has_listeners() {
                let mut event = event.clone();
                event.task = job.core.id.clone();
                job.core.deliver(&event);
            }
        }
        EventKind::Update => {
            if job.core.has_listeners() && !job.core.state().is_finished() {
                let mut event = event.clone();
                event.task = job.core.id.clone();
                job.core.deliver(&event);
            }
        }
        _ => {
            // The manager reads the result from the attempt: it stored the attempt before
            // it reads this message, even when the end was delivered during `submit`.
            let _ = wake.send(Msg::Ended {
                job: Arc::clone(job),
                service,
            });
        }
    }
}

/// The resident memory of `pid`, from `/proc` (Linux).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pool>();
}
