//! Pool tasks ([`PoolJob`]) and the bounded queue they wait in for a worker.
//!
//! A job is what a pool's [`Task`] routes to: its cancel requests reach the attempt that
//! runs it, or take it off the queue while it waits.
//!
//! # Invariants
//! 1. A pool task ends exactly once: its `TaskCore` is the one `task` uses, and every path
//!    that ends it (an attempt's end, a cancel before dispatch, the pool closing) goes
//!    through [`PoolJob::finish`], the first caller wins.
//! 2. The queue never holds more than its limit: a blocking submitter waits for room, and a
//!    job cancelled while queued frees its place at once.
//! 3. Once the queue is closed, nothing more is queued.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::protocol::Args;
use crate::task::{Route, Task, TaskCore, TaskError, TaskState};

/// One pool task: its core, what to run, and which attempt runs it.
pub(crate) struct PoolJob {
    pub(crate) core: Arc<TaskCore>,
    pub(crate) spec: JobSpec,
    state: Mutex<JobState>,
    /// The queue, to leave it when cancelled while waiting there.
    waits_in: Weak<JobQueue>,
}

/// Where a job is in its attempts.
#[derive(Default)]
pub(crate) struct JobState {
    /// The running attempt.
    pub(crate) attempt: Option<Task>,
    /// How many attempts were sent (a dispatch the worker refused is none).
    pub(crate) n_attempts: u32,
    /// How many crashes were charged to it: deaths of a worker it was alone on.
    pub(crate) n_charged: u32,
    /// Runs alone on its worker from now on: it was on a worker that died.
    pub(crate) alone: bool,
    pub(crate) dispatched_at: Option<Instant>,
    pub(crate) timed_out: bool,
    /// The caller asked for a cancel: a crash after that is not retried.
    pub(crate) cancel_requested: bool,
}

impl fmt::Debug for PoolJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolJob")
            .field("id", &self.core.id)
            .finish_non_exhaustive()
    }
}

/// What a job is made of, as its builder gathered it.
pub(crate) struct JobSpec {
    pub(crate) script: String,
    pub(crate) inputs: Args,
    pub(crate) queue: Option<String>,
    pub(crate) retries: u32,
    pub(crate) deadline: Option<Duration>,
    pub(crate) cancel_grace: Duration,
}

impl PoolJob {
    pub(crate) fn new(core: Arc<TaskCore>, spec: JobSpec, waits_in: &Arc<JobQueue>) -> PoolJob {
        PoolJob {
            core,
            spec,
            state: Mutex::new(JobState::default()),
            waits_in: Arc::downgrade(waits_in),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, JobState> {
        lock(&self.state)
    }

    /// Ends the pool task (first caller wins) and delivers its terminal event here.
    pub(crate) fn finish(&self, state: TaskState, result: Result<Args, TaskError>) {
        if let Some(ending) = self.core.end(state, result) {
            ending.deliver();
        }
    }

    /// Marks a cancel asked for; the running attempt, or `None` when the job waits in the
    /// queue, which it then leaves, ending CANCELED (`forced` as asked).
    fn cancel_attempt(&self, forced: bool) -> Option<Task> {
        let mut state = self.state();
        state.cancel_requested = true;
        if let Some(attempt) = &state.attempt {
            return Some(attempt.clone_handle());
        }
        // The manager sees `cancel_requested` and never sends it.
        drop(state);
        if let Some(queue) = self.waits_in.upgrade() {
            queue.remove(self);
        }
        self.finish(TaskState::Canceled, Err(TaskError::Canceled { forced }));
        None
    }
}

impl Route for PoolJob {
    /// A cooperative cancel: a queued task ends CANCELED now; a running one gets a CANCEL.
    fn cancel(&self, _core: &Arc<TaskCore>) {
        if let Some(attempt) = self.cancel_attempt(false) {
            attempt.cancel();
        }
    }

    /// The end of a hard cancel's grace: a queued task ends CANCELED; a running one has its
    /// worker killed (`Task::cancel_hard`'s escalation, on the attempt).
    fn hard_cancel(&self, _core: &Arc<TaskCore>) {
        if let Some(attempt) = self.cancel_attempt(true) {
            attempt.cancel_hard(Duration::ZERO);
        }
    }
}

/// Jobs waiting for a worker, in order, at most `limit` of them.
pub(crate) struct JobQueue {
    inner: Mutex<Waiting>,
    /// Signalled when the queue has room, or closes.
    space: Condvar,
    limit: usize,
}

struct Waiting {
    jobs: VecDeque<Arc<PoolJob>>,
    closed: bool,
}

/// Why a job was not queued.
pub(crate) enum Declined {
    /// The queue is full (`try_submit`): this many jobs wait.
    Full(usize),
    /// The queue is closed.
    Closed,
}

impl JobQueue {
    pub(crate) fn new(limit: usize) -> JobQueue {
        JobQueue {
            inner: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                closed: false,
            }),
            space: Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        lock(&self.inner)
    }

    /// Queues `job`, waiting for room if `block`. Returns whether the queue was empty
    /// (the manager is woken only then: with jobs waiting, it is dispatching or its workers
    /// are full, and the next attempt's end wakes it).
    pub(crate) fn push(&self, job: Arc<PoolJob>, block: bool) -> Result<bool, Declined> {
        let mut waiting = self.lock();
        loop {
            if waiting.closed {
                return Err(Declined::Closed);
            }
            if waiting.jobs.len() < self.limit {
                break;
            }
            if !block {
                return Err(Declined::Full(waiting.jobs.len()));
            }
            waiting = self
                .space
                .wait(waiting)
                .unwrap_or_else(|poison| poison.into_inner());
        }
        waiting.jobs.push_back(job);
        Ok(waiting.jobs.len() == 1)
    }

    /// Puts a job sent again at the front: it was submitted before what waits.
    pub(crate) fn push_front(&self, job: Arc<PoolJob>) {
        self.lock().jobs.push_front(job);
    }

    /// The next job, if any; frees a place.
    pub(crate) fn pop(&self) -> Option<Arc<PoolJob>> {
        let job = self.lock().jobs.pop_front();
        if job.is_some() {
            self.space.notify_one();
        }
        job
    }

    /// Takes `job` off the queue, if it waits there.
    fn remove(&self, job: &PoolJob) {
        let removed = {
            let mut waiting = self.lock();
            let before = waiting.jobs.len();
            waiting
                .jobs
                .retain(|queued| !std::ptr::eq(Arc::as_ptr(queued), job));
            waiting.jobs.len() < before
        };
        if removed {
            self.space.notify_one();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closes the queue: blocked submitters return `Closed`, and nothing more is queued.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.space.notify_all();
    }

    /// Takes every waiting job (the pool is closing).
    pub(crate) fn drain(&self) -> Vec<Arc<PoolJob>> {
        let jobs = self.lock().jobs.drain(..).collect();
        self.space.notify_all();
        jobs
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
