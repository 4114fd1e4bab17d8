//! A pool of workers started from one recipe, kept at its size and kept healthy: tasks go
//! to the least-loaded worker; crashed workers are restarted (with backoff when they die at
//! start); leaky ones are recycled between tasks; deadlines end tasks TIMED_OUT; a crash
//! is charged only to a task that was alone on the worker, and the tasks that ran beside
//! others are rerun alone; tasks charged a crash may be sent again; a bounded queue pushes
//! back on submitters.
//!
//! One **manager** thread owns the workers (`pool/manager.rs`). Submitters push jobs on a
//! bounded queue (`pool/queue.rs`) and wake it; each attempt of a job is an ordinary
//! [`Service`](crate::service::Service) task whose end reaches the manager, which decides: finish the pool task, or
//! send it again. The manager sleeps until something happens: a job queued, an attempt's
//! end, a worker's exit, or the next deadline, restart or heartbeat check. This file holds
//! the API; `pool/settings.rs` the policies, `pool/capacity.rs` how many workers the
//! machine holds, `pool/events.rs` what the pool reports.
//! docs/design/pool.md tells the life of a pool task.
//!
//! # Invariants
//! 1. A pool task ends exactly once (see `pool/queue.rs`).
//! 2. The listener of an attempt never takes a pool lock: it may run on any thread, even
//!    one that holds a pool lock (a service that refuses a task delivers its CRASH on the
//!    submitting thread), so it only forwards events and sends a message.
//! 3. A worker is recycled only when it runs no task: a retiring worker takes no new task
//!    and is closed once its last one has ended.
//! 4. Restarts of one slot after deaths at start are spaced by its backoff and capped per
//!    minute, whatever the worker does; a slot that keeps failing is reported
//!    (`PoolEvent::WorkerFailing`). A worker that got going (it wrote a line or read a
//!    request) and then died is restarted at once: its death is charged to its tasks.
//! 5. `close` (and drop) is bounded: queued tasks end CANCELED, every worker gets
//!    `Service::close` (itself bounded) in parallel, and no worker outlives the pool.
//! 6. An idle pool costs no CPU: the manager has no tick.
//! 7. A crash is charged to a task (against its retries) only when the task was alone on
//!    the worker; the tasks of a worker that died running several are rerun alone,
//!    uncharged; a task the worker refused (it had ended) never ran and is not charged.

use std::collections::VecDeque;
use std::fmt;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::protocol::{new_task_id, Args, HEARTBEAT_ENV};
use crate::service::{ServiceBuilder, StartError, SubmitError, TaskSpec};
use crate::task::{Route, Task, TaskCore, TaskError, TaskEvent};

mod capacity;
mod events;
mod manager;
mod queue;
mod settings;

pub use events::{PoolEvent, PoolStats};

use events::Monitor;
use manager::Msg;
use queue::{lock, Declined, JobQueue, JobSpec, PoolJob};
use settings::Settings;

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

/// A recipe for a pool: the worker recipe and the pool's policies.
#[derive(Clone)]
pub struct PoolBuilder {
    recipe: ServiceBuilder,
    settings: Settings,
    monitor: Option<Monitor>,
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
    settings: Settings,
    queue: Arc<JobQueue>,
    /// Published by the manager.
    stats: Arc<Mutex<PoolStats>>,
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

impl Pool {
    /// A recipe for a pool of `workers` workers started from `recipe`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(recipe: ServiceBuilder, workers: usize) -> PoolBuilder {
        PoolBuilder {
            recipe,
            settings: Settings::new(workers),
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
            retries: self.settings.retries,
            deadline: self.settings.deadline,
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
        let settings = &self.settings;
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
        let mut stats = lock(&self.stats).clone();
        stats.queued = self.queue.len() + stats.queued_alone;
        stats
    }

    /// Ends the pool within a bound: queued tasks end CANCELED, every worker is closed in
    /// parallel ([`Service::close`](crate::service::Service::close): stdin EOF, SIGTERM, SIGKILL), and tasks still running
    /// end CRASHED with the cause "service closed". Calling it again does nothing.
    pub fn close(&self) {
        self.queue.close();
        let _ = lock(&self.wake).send(Msg::Close);
        if let Some(manager) = lock(&self.manager).take() {
            let _ = manager.join();
        }
    }

    fn enqueue(&self, job: Arc<PoolJob>, block: bool) -> Result<(), PoolError> {
        let was_empty = self
            .queue
            .push(job, block)
            .map_err(|declined| match declined {
                Declined::Full(n) => PoolError::QueueFull(n),
                Declined::Closed => PoolError::Closed,
            })?;
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

    /// Sends a task again after a crash charged to it, up to `n` more times (default 0). A
    /// crash is charged to a task only when it was alone on the worker that died (see
    /// [`PoolBuilder::with_rerun_suspects`]). A task that failed in user code, was
    /// cancelled or timed out is never retried. Per task: [`PoolTaskBuilder::retries`].
    pub fn with_retries(mut self, n: u32) -> PoolBuilder {
        self.settings.retries = n;
        self
    }

    /// Whether a worker that dies running several tasks has them rerun (default on).
    ///
    /// None of them is known to have killed it, so each is a suspect: it runs again alone
    /// (on a worker running nothing else, which takes no other task meanwhile), and the
    /// crash is charged to none of them. Only a crash with one task on the worker is
    /// charged to that task, against its retries; a task that was on a worker that died
    /// runs alone from then on. So whatever a task does to its worker, the others end as
    /// they would have alone, even with no retries; a task that ends CRASHED says whether
    /// it was alone ([`CrashReport::beside`](crate::task::CrashReport::beside)).
    ///
    /// Off, a crash is charged to every task on the worker, and only retries send them
    /// again (for scripts that must never run twice).
    pub fn with_rerun_suspects(mut self, rerun: bool) -> PoolBuilder {
        self.settings.rerun_suspects = rerun;
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
    ///
    /// A worker died at start when it ended within 2 s without writing a line on stdout,
    /// without reading a request from its stdin (Linux tells) and without finishing a task.
    /// A worker that did any of these got going: whatever then killed it, its slot restarts
    /// at once.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> PoolBuilder {
        self.settings.backoff_initial = initial;
        self.settings.backoff_max = max;
        self
    }

    /// At most `n` restarts of one slot in any minute after deaths at start (default 60);
    /// past it the slot waits. A worker that got going and then died is restarted at once,
    /// however often: its tasks pay for its deaths.
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

    /// Starts the first worker and the manager, which starts the others, one after
    /// another: `start` returns once the first is started, and the pool takes tasks (and
    /// `close`) at once.
    ///
    /// # Errors
    /// [`PoolError::Config`] for a zero worker count, queue limit or tasks per worker, and
    /// for more workers than the machine can hold (each costs 7 processes or threads and
    /// 6 file descriptors: the error names the limit, from `RLIMIT_NPROC`, `RLIMIT_NOFILE`,
    /// `kernel.threads-max`, `kernel.pid_max` or the cgroup's `pids.max`);
    /// [`PoolError::Start`] when the first worker cannot be spawned (a missing program).
    /// Later spawn failures (a thread or a process that cannot be created included) are
    /// treated as workers that died at start.
    pub fn start(self) -> Result<Pool, PoolError> {
        let settings = self.settings;
        if settings.workers == 0 || settings.tasks_per_worker == 0 || settings.queue_limit == 0 {
            return Err(PoolError::Config(
                "workers, tasks per worker and the queue limit must be at least 1".to_owned(),
            ));
        }
        let n_workers = settings.workers.saturating_add(usize::from(settings.spare));
        if let Some(capacity) = capacity::capacity() {
            if n_workers as u64 > capacity.max_workers {
                return Err(PoolError::Config(format!(
                    "{n_workers} workers are more than this machine can hold: {capacity}"
                )));
            }
        }
        let mut recipe = self.recipe;
        if let Some(interval) = settings.heartbeat {
            recipe = recipe.with_env(HEARTBEAT_ENV, format!("{}", interval.as_secs_f64()));
        }
        let first = recipe.start().map_err(PoolError::Start)?;
        let queue = Arc::new(JobQueue::new(settings.queue_limit));
        let stats = Arc::new(Mutex::new(PoolStats::default()));
        let (handle, wake) = manager::spawn(
            settings.clone(),
            Arc::clone(&queue),
            Arc::clone(&stats),
            recipe,
            self.monitor,
            first,
        )
        .map_err(PoolError::Thread)?;
        Ok(Pool {
            settings,
            queue,
            stats,
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

    /// Sends the task again, up to `n` more times, after a crash charged to it (see
    /// [`PoolBuilder::with_rerun_suspects`]).
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
        let core = TaskCore::new(new_task_id(), listeners);
        let spec = JobSpec {
            script,
            inputs,
            queue,
            retries: self.retries,
            deadline: self.deadline,
            cancel_grace: self.pool.settings.cancel_grace,
        };
        let job = Arc::new(PoolJob::new(Arc::clone(&core), spec, &self.pool.queue));
        self.pool.enqueue(Arc::clone(&job), block)?;
        Ok(Task::new(core, job as Arc<dyn Route>))
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

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pool>();
}
