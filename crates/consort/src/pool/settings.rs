//! A pool's policies, as `PoolBuilder` sets them, and their defaults.

use std::time::Duration;

/// A worker that died within this long of its start, without a word on stdout, without
/// reading a request and without finishing a task "died at start": consecutive ones are
/// restarted with a growing delay, and at most `max_restarts_per_minute` times a minute.
pub(crate) const QUICK_DEATH: Duration = Duration::from_secs(2);

/// How many workers a pool keeps, how many tasks each takes, and what it does when they
/// die, leak, stall or run late.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) workers: usize,
    pub(crate) tasks_per_worker: usize,
    pub(crate) queue_limit: usize,
    pub(crate) retries: u32,
    /// Reruns alone, uncharged, the tasks of a worker that died running several.
    pub(crate) rerun_suspects: bool,
    pub(crate) deadline: Option<Duration>,
    pub(crate) cancel_grace: Duration,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) max_rss_growth: Option<u64>,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_restarts_per_minute: usize,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) wedged_after: Duration,
    pub(crate) spare: bool,
}

impl Settings {
    /// The defaults for `workers` workers.
    pub(crate) fn new(workers: usize) -> Settings {
        Settings {
            workers,
            tasks_per_worker: 4,
            queue_limit: 10_000,
            retries: 0,
            rerun_suspects: true,
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
        }
    }
}
