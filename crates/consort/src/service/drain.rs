//! What the worker's pipes have given, and whether the worker has exited: the readers
//! report here, and the monitor waits here for the pipes to drain before it declares a
//! crash (`exit.rs`).
//!
//! # Invariants
//! 1. The pipes count as drained when both reached EOF, or stayed silent (no bytes, and the
//!    stdout reader idle) for the silence bound, or the overall bound passed: a wait here
//!    always ends.
//! 2. A stdout reader still handling bytes it read (decoding a long line) is progress, not
//!    silence, so the COMPLETION in that line is not lost to a crash declared too early.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The readers' progress and the worker's exit, under one lock with one condition.
pub(crate) struct Drain {
    state: Mutex<DrainState>,
    changed: Condvar,
}

#[derive(Default)]
struct DrainState {
    stdout_eof: bool,
    stderr_eof: bool,
    /// Bytes read from both pipes; the monitor watches it to tell silence from progress.
    bytes: u64,
    /// The stdout reader is handling bytes it has read (decoding a long line can take a
    /// while): that is progress too, not silence.
    stdout_busy: bool,
    /// The worker has exited (not yet reaped); set by the monitor as soon as it knows.
    exited: bool,
}

/// How a wait for the pipes ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Both pipes reached EOF.
    Both,
    /// A pipe is still open: silent for the silence bound, or still producing after the
    /// overall bound (held by a process that escaped the worker's group).
    GaveUp,
}

impl Drain {
    pub(crate) fn new() -> Drain {
        Drain {
            state: Mutex::new(DrainState::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DrainState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The stderr reader read `n_read` bytes.
    pub(crate) fn progress(&self, n_read: usize) {
        self.lock().bytes += n_read as u64;
    }

    /// `Some(n_read)`: the stdout reader read `n_read` bytes and is handling them; `None`:
    /// it is done and about to read again.
    pub(crate) fn stdout_busy(&self, read: Option<usize>) {
        let mut state = self.lock();
        state.stdout_busy = read.is_some();
        state.bytes += read.unwrap_or(0) as u64;
    }

    pub(crate) fn stdout_ended(&self) {
        let mut state = self.lock();
        state.stdout_eof = true;
        state.stdout_busy = false;
        self.changed.notify_all();
    }

    pub(crate) fn stderr_ended(&self) {
        self.lock().stderr_eof = true;
        self.changed.notify_all();
    }

    /// The monitor saw the worker exit.
    pub(crate) fn worker_exited(&self) {
        self.lock().exited = true;
        self.changed.notify_all();
    }

    /// Whether the worker has exited, waiting up to `bound` for the monitor to see it.
    pub(crate) fn exited_within(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let mut state = self.lock();
        while !state.exited {
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .changed
                .wait_timeout(state, remaining)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
        true
    }

    /// Waits until both pipes reached EOF, or stayed silent for `silence`, or `max` passed.
    pub(crate) fn wait(&self, silence: Duration, max: Duration) -> Drained {
        let started = Instant::now();
        let mut state = self.lock();
        let mut seen = state.bytes;
        let mut quiet_since = Instant::now();
        while !(state.stdout_eof && state.stderr_eof) {
            let remaining = silence
                .checked_sub(quiet_since.elapsed())
                .filter(|_| started.elapsed() < max);
            let Some(remaining) = remaining else {
                return Drained::GaveUp;
            };
            state = self
                .changed
                .wait_timeout(state, remaining.min(Duration::from_millis(20)))
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
            if state.bytes != seen || state.stdout_busy {
                seen = state.bytes;
                quiet_since = Instant::now();
            }
        }
        Drained::Both
    }
}
