//! A pool of workers started from one recipe, kept at its size and kept healthy: tasks go
//! to the least-loaded worker; crashed workers are restarted with backoff; leaky ones are
//! recycled between tasks; deadlines end tasks TIMED_OUT; tasks lost to a crash may be
//! sent again; a bounded queue pushes back on submitters.
//!
//! One **manager** thread owns the workers. Submitters push jobs on a bounded queue and
//! wake it; each attempt of a job is an ordinary [`Service`](crate::Service) task whose listener forwards
//! LAUNCH and UPDATE to the pool task's own listeners and sends the terminal event to the
//! manager, which decides: finish the pool task, or send it again. The manager also
//! watches the clock: deadlines, restarts waiting out their backoff, silent workers. It
//! lives in `pool/manager.rs`; this file holds the API, the queue and the jobs.
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

use std::collections::VecDeque;
use std::fmt;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::protocol::Args;
use crate::service::{ServiceBuilder, StartError, SubmitError, TaskSpec};
use crate::task::{EventKind, Task, TaskCore, TaskError, TaskEvent, TaskLink, TaskState};

mod manager;

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
    /// parallel ([`Service::close`](crate::Service::close): stdin EOF, SIGTERM, SIGKILL), and tasks still running
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
        let (handle, wake) = manager::spawn(Arc::clone(&shared), recipe, self.monitor, first)?;
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pool>();
}
