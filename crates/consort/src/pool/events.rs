//! What a pool tells about its workers: the events its monitor callback receives, and the
//! snapshot `Pool::stats` returns (published by the manager).

use std::sync::Arc;

use serde::Serialize;

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
        /// Consecutive deaths at start (see `PoolBuilder::with_backoff`).
        consecutive: u32,
        /// How long until the next start.
        delay_ms: u64,
        /// The wait is the per-minute restart cap's
        /// (`PoolBuilder::with_max_restarts_per_minute`), not only the backoff's.
        capped: bool,
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
    /// Of `queued`, the tasks waiting for a worker of their own: they were on a worker
    /// that died (see `PoolBuilder::with_rerun_suspects`).
    pub queued_alone: usize,
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

/// A pool's monitor callback.
pub(crate) type Monitor = Arc<dyn Fn(&PoolEvent) + Send + Sync>;
