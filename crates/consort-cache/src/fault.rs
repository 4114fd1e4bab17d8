//! Crash points for tests: every writer calls [`point`] right after each of its
//! shared-memory stores, so a test can stop it dead between any two of them.
//!
//! - With the `fault` feature, a process can be told to SIGKILL (or SIGSTOP) itself right
//!   after its Nth store (`tests/crash.rs`, `tests/processes.rs`).
//! - Under `cfg(loom)`, a model thread can be told to die right after its Nth store: from then
//!   on its stores are lost (see `sync`), which is what a SIGKILL does to the stores
//!   that would have followed (`tests/loom.rs`).
//! - Otherwise [`point`] is an empty inline function.
//!
//! This is the lowest module: it uses nothing of the crate (`sync` uses it, under loom).

#[cfg(all(feature = "fault", not(loom)))]
mod imp {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static COUNTDOWN: AtomicU64 = AtomicU64::new(0);
    static PASSED: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);

    /// SIGKILL this process right after its `n`th store from now (`n` ≥ 1; 0 disarms).
    pub fn crash_after(n: u64) {
        STOP.store(false, Ordering::SeqCst);
        COUNTDOWN.store(n, Ordering::SeqCst);
    }

    /// SIGSTOP this process right after its `n`th store from now; it carries on when
    /// continued (a live, stopped lock holder).
    pub fn stop_after(n: u64) {
        STOP.store(true, Ordering::SeqCst);
        COUNTDOWN.store(n, Ordering::SeqCst);
    }

    /// How many crash points this process has passed while armed.
    pub fn points_passed() -> u64 {
        PASSED.load(Ordering::SeqCst)
    }

    #[inline]
    pub(crate) fn point() {
        // Disarmed (the usual case, e.g. benches built with the feature): one relaxed load.
        let left = COUNTDOWN.load(Ordering::Relaxed);
        if left == 0 {
            return;
        }
        PASSED.fetch_add(1, Ordering::Relaxed);
        COUNTDOWN.store(left - 1, Ordering::Relaxed);
        if left == 1 {
            let me = rustix::process::getpid();
            if STOP.load(Ordering::Relaxed) {
                let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
            } else {
                let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
                std::process::abort();
            }
        }
    }
}

#[cfg(loom)]
mod imp {
    use std::cell::Cell;

    loom::thread_local! {
        static COUNTDOWN: Cell<u64> = Cell::new(0);
        static PASSED: Cell<u64> = Cell::new(0);
        static CRASHED: Cell<bool> = Cell::new(false);
    }

    /// Kills the calling loom thread right after its `n`th store from now (`n` ≥ 1; 0
    /// disarms): it runs on, but none of its later stores happens.
    pub fn crash_after(n: u64) {
        CRASHED.with(|crashed| crashed.set(false));
        PASSED.with(|passed| passed.set(0));
        COUNTDOWN.with(|countdown| countdown.set(n));
    }

    /// How many crash points the calling loom thread has passed while armed.
    pub fn points_passed() -> u64 {
        PASSED.with(Cell::get)
    }

    /// Whether the calling loom thread has died.
    pub(crate) fn crashed() -> bool {
        CRASHED.with(Cell::get)
    }

    pub(crate) fn point() {
        let left = COUNTDOWN.with(Cell::get);
        if left == 0 {
            return;
        }
        PASSED.with(|passed| passed.set(passed.get() + 1));
        COUNTDOWN.with(|countdown| countdown.set(left - 1));
        if left == 1 {
            CRASHED.with(|crashed| crashed.set(true));
        }
    }
}

#[cfg(loom)]
pub(crate) use imp::crashed;
#[cfg(any(feature = "fault", loom))]
pub(crate) use imp::point;
#[cfg(all(feature = "fault", not(loom)))]
pub use imp::stop_after;
#[cfg(any(feature = "fault", loom))]
pub use imp::{crash_after, points_passed};

/// No crash points in this build.
#[cfg(not(any(feature = "fault", loom)))]
#[inline(always)]
pub(crate) fn point() {}
